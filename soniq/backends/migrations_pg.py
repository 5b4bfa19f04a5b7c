"""Numbered, forward-only PostgreSQL migrations, applied under an advisory lock.

Two ``soniq setup`` runs at once are safe: the second waits on the lock, then
finds nothing pending. Each file runs in its own transaction, so a failing file
leaves nothing of itself behind.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from soniq.backends import MigrationInfo, MigrationReport
from soniq.backends.adopt_pg import adoption
from soniq.errors import DatabaseUnavailableError, MigrationError, setup_command
from soniq.sql import migration_files as packaged_migrations
from soniq.sql import postgres_queries as q
from soniq.utils import describe_target, mask_url


def migration_files() -> list[tuple[str, str]]:
    return packaged_migrations("postgres")


def unavailable(url: str, exc: BaseException) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"Cannot connect to PostgreSQL ({describe_target(url)}): {exc}. "
        "Check that the server is running and reachable, and that SONIQ_DATABASE_URL "
        f"(now {mask_url(url)}) is right. If the server runs but the database does not exist "
        f"yet, create it with {setup_command(url)}."
    )


async def _connect(url: str) -> Any:
    try:
        return await asyncpg.connect(url)
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        raise unavailable(url, exc) from None


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` if it does not exist; True if created."""
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        pass
    except (OSError, asyncpg.InterfaceError, asyncpg.PostgresError) as exc:
        raise unavailable(url, exc) from None
    else:
        await conn.close()
        return False
    parts = urlsplit(url)
    name = (parts.path or "/").lstrip("/")
    admin = await _connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), chr(34) * 2)}"')
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Another `soniq setup` created it a moment ago. Two CREATE DATABASE racing
        # each other report a unique violation on pg_database, not DuplicateDatabase.
        return False
    finally:
        await admin.close()
    return True


async def apply_migrations(url: str, extra: Sequence[tuple[str, str]] = ()) -> MigrationReport:
    """Apply our pending migrations, then ``extra`` ones (plugins'), each once.

    A database the published soniq package created is adopted first, in the same
    transaction as the migrations (soniq/backends/adopt_pg.py).
    """
    created = await ensure_database(url)
    conn = await _connect(url)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", q.MIGRATION_LOCK_KEY)
        try:
            async with adoption(conn) as adopted:
                await conn.execute(q.MIGRATIONS_TABLE)
                done = {r["name"] for r in await conn.fetch(q.MIGRATIONS_APPLIED)}
                applied: list[str] = [q.ADOPT_STEP] if adopted.active else []
                for name, sql in [*migration_files(), *extra]:
                    if name in done:
                        continue
                    await _apply_one(conn, name, sql)
                    applied.append(name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", q.MIGRATION_LOCK_KEY)
    finally:
        await conn.close()
    return MigrationReport(applied=applied, already_applied=sorted(done), database_created=created)


async def _apply_one(conn: Any, name: str, sql: str) -> None:
    try:
        async with conn.transaction():
            await conn.execute(sql)
            await conn.execute(q.MIGRATION_RECORD, name)
    except asyncpg.PostgresError as exc:
        raise MigrationError(
            name,
            f"{exc}. It was rolled back and nothing of {name} was applied; fix the cause "
            "(permissions, a conflicting object) and run `soniq setup` again",
        ) from None


async def migration_status(url: str) -> list[MigrationInfo]:
    conn = await _connect(url)
    try:
        exists = await conn.fetchval("SELECT to_regclass('soniq_migrations') IS NOT NULL")
        rows = await conn.fetch(q.MIGRATIONS_APPLIED) if exists else []
    finally:
        await conn.close()
    applied = {r["name"]: r["applied_at"] for r in rows}
    return [
        MigrationInfo(name=name, applied=name in applied, applied_at=applied.get(name))
        for name, _ in migration_files()
    ]
