"""The ``Soniq`` facade (SPEC §1): URL/backend selection, lifecycle, isolation, errors, setup."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from soniq import Soniq
from soniq.backends.memory import MemoryBackend
from soniq.backends.migrations_pg import migration_files
from soniq.errors import DatabaseUnavailableError, SchemaMissingError, UnknownTaskError
from tests.helpers import FAST_SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
def no_soniq_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SONIQ_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


# --- URL and backend selection ------------------------------------------------


def test_url_fallbacks(no_soniq_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Soniq().database_url == "postgresql://postgres@localhost/soniq"
    assert Soniq().backend.name == "postgres"
    monkeypatch.setenv("SONIQ_DATABASE_URL", "postgresql://app@db.internal/orders")
    assert Soniq().database_url == "postgresql://app@db.internal/orders"
    assert Soniq("postgresql://x@y/z").database_url == "postgresql://x@y/z"


@pytest.mark.parametrize(
    "url", ["jobs.db", "/tmp/x/jobs.sqlite", "data/jobs.sqlite3", "sqlite:///rel.db", "JOBS.DB"]
)
def test_sqlite_detected(url: str, no_soniq_env: None) -> None:
    assert Soniq(url).backend.name == "sqlite"


def test_explicit_backends(no_soniq_env: None) -> None:
    assert Soniq(backend="memory").backend.name == "memory"
    assert Soniq("postgresql://h/db", backend="memory").backend.name == "memory"
    assert Soniq("x.db", backend="postgres").backend.name == "postgres"
    instance = MemoryBackend(Soniq(backend="memory").settings)
    wrapped = Soniq(backend=instance).backend
    assert wrapped.inner is instance  # type: ignore[attr-defined]  # behind the input rules
    assert wrapped.name == "memory"
    with pytest.raises(ValueError, match="Unknown backend"):
        Soniq(backend="mongodb")


def test_env_url_selects_sqlite(no_soniq_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_DATABASE_URL", "local.sqlite3")
    assert Soniq().backend.name == "sqlite"


# --- lifecycle -----------------------------------------------------------------


async def test_pool_is_lazy(pg_url: str) -> None:
    # Constructing never connects, even to a server that does not exist.
    Soniq("postgresql://postgres@127.0.0.1:1/nowhere")
    app = Soniq(pg_url, **FAST_SETTINGS)
    assert app.backend._pool is None  # type: ignore[attr-defined]

    @app.job()
    async def noop() -> None: ...

    await app.enqueue(noop)  # first use opens the pool
    assert app.backend._pool is not None  # type: ignore[attr-defined]
    await app.close()


async def test_ensure_initialized_and_close_idempotent(pg_url: str) -> None:
    app = Soniq(pg_url, **FAST_SETTINGS)
    await app.ensure_initialized()
    await app.ensure_initialized()
    pool = app.backend._pool  # type: ignore[attr-defined]
    assert pool is not None
    await app.close()
    await app.close()
    assert pool._closed
    # Closed instances reopen lazily.
    assert await app.list_jobs() == []
    await app.close()


async def test_close_without_open(no_soniq_env: None) -> None:
    app = Soniq("postgresql://postgres@127.0.0.1:1/nowhere")
    await app.close()
    await app.close()


async def test_concurrent_ensure_initialized_opens_one_pool(pg_url: str) -> None:
    app = Soniq(pg_url, **FAST_SETTINGS)
    await asyncio.gather(*(app.ensure_initialized() for _ in range(10)))
    pool = app.backend._pool  # type: ignore[attr-defined]
    await app.ensure_initialized()
    assert app.backend._pool is pool  # type: ignore[attr-defined]
    await app.close()


async def test_async_with_closes(pg_url: str) -> None:
    async with Soniq(pg_url, **FAST_SETTINGS) as app:

        @app.job()
        async def hello(message: str) -> None: ...

        job_id = await app.enqueue(hello, message="hi")
        pool = app.backend._pool  # type: ignore[attr-defined]
        assert (await app.get_job(job_id))["status"] == "queued"  # type: ignore[index]
    assert pool._closed
    assert app.backend._pool is None  # type: ignore[attr-defined]


async def test_backend_acquire(app: Soniq) -> None:
    await app.ensure_initialized()
    async with app.backend.acquire() as conn:
        assert isinstance(conn, asyncpg.Connection)
        assert await conn.fetchval("SELECT count(*) FROM soniq_jobs") == 0
    # acquire() also opens the pool lazily.
    await app.close()
    async with app.backend.acquire() as conn:
        assert await conn.fetchval("SELECT 1") == 1


async def test_two_instances_are_isolated(pg_url: str) -> None:
    a = Soniq(pg_url, **FAST_SETTINGS)
    b = Soniq(pg_url, **FAST_SETTINGS)

    @a.job(name="only.on.a")
    async def only_a() -> None: ...

    @b.job(name="only.on.b", queue="bq")
    async def only_b() -> None: ...

    assert a._get_job_registry() is not b._get_job_registry()
    assert a._get_job_registry().names() == ["only.on.a"]
    assert b._get_job_registry().names() == ["only.on.b"]
    with pytest.raises(UnknownTaskError):
        await b.enqueue(only_a)
    with pytest.raises(UnknownTaskError):
        await a.enqueue("only.on.b")
    ja = await a.enqueue(only_a)
    jb = await b.enqueue(only_b)
    assert a.backend._pool is not b.backend._pool  # type: ignore[attr-defined]
    # Same database: both see both rows.
    assert (await a.get_job(jb))["queue"] == "bq"  # type: ignore[index]
    await a.close()
    # Closing one leaves the other working.
    assert (await b.get_job(ja))["job_name"] == "only.on.a"  # type: ignore[index]
    await b.close()


async def test_two_databases_are_isolated(pg_url: str, app: Soniq, pg_admin_url: str) -> None:
    other_name = f"soniq_t_{uuid.uuid4().hex[:12]}"
    other_url = _with_db(pg_admin_url, other_name)
    other = Soniq(other_url, **FAST_SETTINGS)
    await other.setup()
    try:

        @app.job(name="t.job")
        async def job_a() -> None: ...

        @other.job(name="t.job")
        async def job_b() -> None: ...

        await app.enqueue(job_a)
        assert len(await app.list_jobs()) == 1
        assert await other.list_jobs() == []
    finally:
        await other.close()
        conn = await asyncpg.connect(pg_admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)')
        await conn.close()


# --- errors ----------------------------------------------------------------------


async def test_unreachable_database(no_soniq_env: None) -> None:
    app = Soniq("postgresql://postgres:hunter2@127.0.0.1:1/orders_db")
    with pytest.raises(DatabaseUnavailableError) as info:
        await app.ensure_initialized()
    message = str(info.value)
    assert "host=127.0.0.1" in message
    assert "port=1" in message
    assert "database=orders_db" in message
    assert "hunter2" not in message
    assert isinstance(info.value, ConnectionError)
    # The same error from any first use, e.g. an enqueue.

    @app.job()
    async def noop() -> None: ...

    with pytest.raises(DatabaseUnavailableError):
        await app.enqueue(noop)
    await app.close()


async def test_schema_missing(empty_pg_url: str, pg_admin_url: str) -> None:
    name = urlsplit(empty_pg_url).path.lstrip("/")
    conn = await asyncpg.connect(pg_admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    app = Soniq(empty_pg_url, **FAST_SETTINGS)
    with pytest.raises(SchemaMissingError, match="soniq setup"):
        await app.ensure_initialized()
    with pytest.raises(SchemaMissingError):
        await app.list_jobs()
    await app.close()


async def test_missing_database_is_unavailable(empty_pg_url: str) -> None:
    app = Soniq(empty_pg_url, **FAST_SETTINGS)
    with pytest.raises(DatabaseUnavailableError, match="soniq setup"):
        await app.ensure_initialized()


# --- migrations ------------------------------------------------------------------


async def test_setup_creates_database_and_is_idempotent(empty_pg_url: str) -> None:
    app = Soniq(empty_pg_url, **FAST_SETTINGS)
    names = [name for name, _ in migration_files()]
    assert names and names == sorted(names)
    first = await app.setup()
    assert first.database_created is True
    assert first.applied == names
    assert first.already_applied == []
    second = await app.setup()
    assert second.database_created is False
    assert second.applied == []
    assert second.already_applied == names

    @app.job()
    async def noop() -> None: ...

    job_id = await app.enqueue(noop)
    assert (await app.get_job(job_id))["status"] == "queued"  # type: ignore[index]
    async with app.backend.acquire() as conn:
        recorded = await conn.fetch("SELECT name FROM soniq_migrations ORDER BY name")
    assert [r["name"] for r in recorded] == names
    await app.close()


async def test_setup_on_migrated_database_applies_nothing(pg_url: str) -> None:
    report = await Soniq(pg_url).setup()
    assert report.applied == [] and report.database_created is False


SETUP_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from soniq import Soniq
    report = asyncio.run(Soniq(sys.argv[1]).setup())
    print(json.dumps({"applied": report.applied, "created": report.database_created}))
    """
)


def _run_setups(url: str, count: int) -> list[dict[str, Any]]:
    import json

    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SETUP_SCRIPT, url],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


async def test_concurrent_setups_in_two_processes(empty_pg_url: str) -> None:
    names = [name for name, _ in migration_files()]
    results = await asyncio.to_thread(_run_setups, empty_pg_url, 2)
    applied = [r["applied"] for r in results]
    # Exactly one process applied every migration; the other found nothing to do.
    assert sorted(applied, key=len) == [[], names]
    assert sum(1 for r in results if r["created"]) <= 1
    conn = await asyncpg.connect(empty_pg_url)
    try:
        rows = await conn.fetch("SELECT name FROM soniq_migrations ORDER BY name")
        assert [r["name"] for r in rows] == names
        assert await conn.fetchval("SELECT to_regclass('soniq_jobs') IS NOT NULL")
    finally:
        await conn.close()


async def test_many_concurrent_setups_race_on_create_database(empty_pg_url: str) -> None:
    results = await asyncio.to_thread(_run_setups, empty_pg_url, 4)
    assert sum(1 for r in results if r["applied"]) == 1


def test_repr_masks_password(no_soniq_env: None) -> None:
    text = repr(Soniq("postgresql://u:secret@h/db"))
    assert "secret" not in text and "postgres" in text


def test_usable_from_successive_event_loops(pg_url: str) -> None:
    """`asyncio.run(app.enqueue(...))` twice (scripts, sync frameworks) reopens the pool."""
    app = Soniq(pg_url, **FAST_SETTINGS)

    @app.job()
    async def send_welcome(to: str) -> None: ...

    first = asyncio.run(app.enqueue(send_welcome, to="a"))
    second = asyncio.run(app.enqueue(send_welcome, to="b"))
    assert first != second
    jobs = asyncio.run(app.list_jobs())
    assert {j["id"] for j in jobs} == {first, second}
    asyncio.run(app.run_worker(run_once=True))
    assert asyncio.run(app.get_result(first)) is None
    assert asyncio.run(app.get_job(first))["status"] == "done"  # type: ignore[index]
    asyncio.run(app.close())
    asyncio.run(app.close())
