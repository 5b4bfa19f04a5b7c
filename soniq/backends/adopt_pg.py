"""``soniq setup`` on a database the published ``soniq`` package (0.0.x) created.

Its tables have our names but other columns, so our first migration would fail
on them. ``adoption(conn)`` wraps the migration run: when it finds that schema it
opens one transaction, moves the published tables into the schema
``soniq_published`` (out of the way, kept intact), lets our migrations create
ours, then copies the queued and finished jobs, dead letters, schedules and
webhook endpoints across, and commits. Any failure rolls everything back: the
database is then exactly as the published package left it.

Workers of the published package must be stopped first: they would write to
tables that are no longer theirs. After checking the result, drop the old
tables with ``DROP SCHEMA soniq_published CASCADE``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from soniq.errors import MigrationError
from soniq.sql import postgres_queries as q

log = logging.getLogger("soniq.migrations")

_COPIES = (
    ("jobs", "soniq_jobs", q.ADOPT_COPY_JOBS),
    ("dead letters", "soniq_dead_letter_jobs", q.ADOPT_COPY_DEAD_LETTERS),
    ("schedules", "soniq_recurring_jobs", q.ADOPT_COPY_SCHEDULES),
    ("webhooks", "soniq_webhook_endpoints", q.ADOPT_COPY_WEBHOOKS),
)


@dataclass
class Adoption:
    """What an adoption did (``active`` is false on an ordinary database)."""

    active: bool = False
    copied: dict[str, int] = field(default_factory=dict)
    webhooks_with_secret: int = 0


async def is_published_schema(conn: Any) -> bool:
    """Does this database hold the published package's schema (not yet adopted)?"""
    return bool(await conn.fetchval(q.ADOPT_DETECT))


@contextlib.asynccontextmanager
async def adoption(conn: Any) -> AsyncIterator[Adoption]:
    """Run the body (our migrations) inside the adoption of a published database, if any.

    Called under the migration lock. On an ordinary database it does nothing.
    """
    if not await is_published_schema(conn):
        yield Adoption()
        return
    result = Adoption(active=True)
    async with conn.transaction():
        await _move_aside(conn)
        yield result
        for label, table, sql in _COPIES:
            if await conn.fetchval(q.ADOPT_TABLE_PRESENT, table):
                status = await conn.execute(sql)
                result.copied[label] = int(status.rsplit(" ", 1)[-1])
        if await conn.fetchval(q.ADOPT_TABLE_PRESENT, "soniq_webhook_endpoints"):
            result.webhooks_with_secret = await conn.fetchval(q.ADOPT_WEBHOOKS_WITH_SECRET)
        await conn.execute(q.MIGRATION_RECORD, q.ADOPT_STEP)
    log.warning(
        "Adopted a database of the published soniq package: copied %s. Its original tables "
        "are kept in the schema soniq_published; drop them with "
        "`DROP SCHEMA soniq_published CASCADE` once you no longer need them.%s",
        ", ".join(f"{n} {label}" for label, n in result.copied.items()) or "nothing",
        _secret_note(result.webhooks_with_secret),
    )


def _secret_note(count: int) -> str:
    if not count:
        return ""
    return (
        f" {count} webhook endpoint(s) with a secret were not copied: the published package "
        "stored secrets encrypted with its own key. Register them again with "
        "`await app.webhooks.register(url, events=..., secret=...)`."
    )


async def _move_aside(conn: Any) -> None:
    try:
        await conn.execute(q.ADOPT_MOVE)
    except asyncpg.DuplicateSchemaError:
        raise MigrationError(
            q.ADOPT_STEP,
            "this database has the published soniq package's tables and already a schema "
            "named soniq_published, so they cannot be moved aside",
            suggestions=[
                "If soniq_published holds an earlier adoption you no longer need, drop it "
                "(DROP SCHEMA soniq_published CASCADE) and run `soniq setup` again.",
                "Otherwise rename that schema first (ALTER SCHEMA soniq_published RENAME TO ...).",
            ],
        ) from None


__all__ = ["Adoption", "adoption", "is_published_schema"]
