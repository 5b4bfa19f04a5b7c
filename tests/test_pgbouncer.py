"""Soniq through a real PgBouncer in transaction mode, started by these tests.

* Soniq notices the pooler at connect and uses no named prepared statements on its
  pool: enqueue, enqueue_many, dedup, reads and transactional enqueue all work
  with many clients sharing a few server connections.
* Workers work through it. Without ``SONIQ_LISTEN_DATABASE_URL`` a worker polls
  and says so once at start (and holds no liveness lock); with it, LISTEN and the
  lock go straight to PostgreSQL, so wake-ups are instant and a SIGKILLed
  worker's jobs are requeued within seconds.

PgBouncer comes from the machine (Debian's ``pgbouncer``); when it is missing and
cannot be installed, the tests fail saying so — nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.backends.migrations_pg import apply_migrations
from soniq.backends.pg_liveness import POOLER_WARNING
from tests.chaos_support import (
    RUNS_TABLE,
    PgBouncer,
    PgServer,
    SetupError,
    WorkerProcs,
    pg_server,
    run_counts,
    settled,
)
from tests.helpers import FAST_SETTINGS, wait_until
from tests.worker_support import connect, make_worker, running


def _installed() -> bool:
    return bool(shutil.which("pgbouncer")) or Path("/usr/sbin/pgbouncer").exists()


def ensure_pgbouncer() -> None:
    """Install Debian's pgbouncer when missing (root with apt-get), else fail clearly."""
    if _installed():
        return
    tried = "not root or no apt-get"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        for argv in (["apt-get", "install", "-y", "pgbouncer"], ["apt-get", "update"],
                     ["apt-get", "install", "-y", "pgbouncer"]):  # fmt: skip
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
            tried = (done.stderr or done.stdout)[-500:]
            if _installed():
                return
    pytest.fail(
        f"pgbouncer is not installed and could not be installed ({tried}). Install it "
        "(`apt-get install -y pgbouncer`) and run the tests again.",
        pytrace=False,
    )


@pytest.fixture(scope="module")
def bouncer() -> Iterator[tuple[PgServer, PgBouncer]]:
    ensure_pgbouncer()
    try:
        with pg_server() as server:
            pool = PgBouncer(server, pool_size=4)  # 4 server connections for every client
            pool.start()
            try:
                yield server, pool
            finally:
                pool.stop()
    except SetupError as exc:
        pytest.fail(f"PgBouncer tests: {exc}", pytrace=False)


@pytest.fixture
async def urls(bouncer: tuple[PgServer, PgBouncer]) -> tuple[str, str]:
    """(through PgBouncer, direct) URLs of a fresh, migrated database."""
    server, pool = bouncer
    name = f"pgb_{uuid.uuid4().hex[:10]}"
    async with connect(server.admin_url) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    direct = server.url(name)
    await apply_migrations(direct)  # setup runs against PostgreSQL itself (README)
    return pool.url(name), direct


@pytest.fixture
async def app(urls: tuple[str, str]) -> AsyncIterator[Soniq]:
    via_pgbouncer, _ = urls
    instance = Soniq(database_url=via_pgbouncer, **{**FAST_SETTINGS, "poll_interval": 0.3})

    @instance.job(name="pgb.echo")
    async def echo(n: int) -> int:
        return n

    yield instance
    await instance.close()


async def test_enqueue_and_reads_through_pgbouncer(
    app: Soniq, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="soniq")
    await app.ensure_initialized()
    assert "transaction-mode pooler" in caplog.text
    # Many clients over four server connections: a named prepared statement would land
    # on a server connection that never prepared it.
    ids = await asyncio.gather(*(app.enqueue("pgb.echo", args={"n": i}) for i in range(200)))
    ids += await app.enqueue_many("pgb.echo", [{"n": i} for i in range(200, 300)])
    twice = [await app.enqueue("pgb.echo", args={"n": 1}, dedup_key="once") for _ in range(2)]
    assert twice[0] == twice[1]
    rows = await asyncio.gather(*(app.get_job(job_id) for job_id in ids))
    assert sorted(r["args"]["n"] for r in rows if r) == list(range(300))
    stats = await app.backend.queue_stats()
    assert sum(s.queued for s in stats) == 301


async def test_bulk_enqueue_through_pgbouncer(app: Soniq) -> None:
    """Big batches go in by COPY (its column-type look-up is an unnamed statement here),
    several clients at once over the pooler's few server connections; dedup batches keep
    their rule."""
    await app.ensure_initialized()
    batches = await asyncio.gather(*(
        app.enqueue_many("pgb.echo", [{"n": b * 1000 + i} for i in range(500)]) for b in range(8)
    ))  # fmt: skip
    assert len({i for ids in batches for i in ids}) == 8 * 500
    unique = await asyncio.gather(*(
        app.enqueue_many("pgb.echo", [{"n": i % 50} for i in range(200)], unique=True)
        for _ in range(4)
    ))  # fmt: skip
    assert all(ids == unique[0] for ids in unique) and len(set(unique[0])) == 50
    stats = await app.backend.queue_stats()
    assert sum(s.queued for s in stats) == 8 * 500 + 50


async def test_transactional_enqueue_through_pgbouncer(app: Soniq) -> None:
    await app.ensure_initialized()
    async with app.backend.acquire() as conn:
        await conn.execute("CREATE TABLE orders (id serial PRIMARY KEY, total int)")
        async with conn.transaction():
            order = await conn.fetchval("INSERT INTO orders (total) VALUES (42) RETURNING id")
            kept = await app.enqueue("pgb.echo", args={"n": order}, connection=conn)
        with pytest.raises(RuntimeError, match="roll back"):
            async with conn.transaction():
                await conn.execute("INSERT INTO orders (total) VALUES (7)")
                gone = await app.enqueue("pgb.echo", args={"n": -1}, connection=conn)
                raise RuntimeError("roll back")
        assert await conn.fetchval("SELECT count(*) FROM orders") == 1
    row = await app.get_job(kept)
    assert row is not None and row["status"] == "queued"
    assert await app.get_job(gone) is None


async def test_worker_without_a_direct_url_polls_and_says_so_once(
    app: Soniq, urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="soniq")
    _, direct = urls
    worker = make_worker(app)
    async with running(worker, concurrency=4):
        ids = [await app.enqueue("pgb.echo", args={"n": i}) for i in range(20)]
        await wait_until(lambda: _all_done(direct, ids), timeout=20, message="jobs done by polling")
        async with connect(direct) as conn:
            key = await conn.fetchval(
                "SELECT lock_key FROM soniq_workers WHERE id = $1", worker.worker_id
            )
        assert key is None  # no session to hold a lock on: the heartbeat rule applies
    assert caplog.text.count(POOLER_WARNING) == 1
    assert "polling" in caplog.text


async def test_worker_with_a_direct_listen_url(urls: tuple[str, str]) -> None:
    via_pgbouncer, direct = urls
    settings = {**FAST_SETTINGS, "poll_interval": 30.0, "listen_database_url": direct}
    app = Soniq(database_url=via_pgbouncer, **settings)
    seen: dict[int, float] = {}

    @app.job(name="pgb.mark")
    async def mark(n: int) -> None:
        seen[n] = time.monotonic()

    try:
        worker = make_worker(app)
        async with running(worker, concurrency=2):
            for n in range(3):
                sent = time.monotonic()
                await app.enqueue(mark, n=n)
                await wait_until(partial(seen.__contains__, n), timeout=10, message="NOTIFY")
                assert seen[n] - sent < 2.0  # poll_interval is 30 s: this was LISTEN
            async with connect(direct) as conn:
                key = await conn.fetchval(
                    "SELECT lock_key FROM soniq_workers WHERE id = $1", worker.worker_id
                )
                assert key is not None
                assert await conn.fetchval("SELECT pg_try_advisory_lock($1)", key) is False
    finally:
        await app.close()


async def test_sigkilled_worker_behind_pgbouncer_is_recovered_in_seconds(
    urls: tuple[str, str], tmp_path: Path
) -> None:
    via_pgbouncer, direct = urls
    async with connect(direct) as conn:
        await conn.execute(RUNS_TABLE)
    procs = WorkerProcs(
        via_pgbouncer, tmp_path, CHAOS_LISTEN_URL=direct, CHAOS_HEARTBEAT="0.5", CHAOS_POLL="0.5"
    )
    producer = Soniq(database_url=via_pgbouncer, enqueue_validation="none", **FAST_SETTINGS)
    try:
        ids = await producer.enqueue_many(
            "chaos.run", [{"n": i, "sleep": 60, "first_only": True} for i in range(2)]
        )
        a = procs.start(CHAOS_CONCURRENCY="2")
        await wait_until(lambda: _runs(direct, ids, 2), timeout=30, message="A runs both jobs")
        b = procs.start(CHAOS_CONCURRENCY="2")
        await wait_until(
            lambda: _count(direct, "SELECT count(*) = 2 FROM soniq_workers"), timeout=30,
            message="B registered",
        )  # fmt: skip
        a.kill()
        killed_at = time.monotonic()
        await wait_until(lambda: _all_done(direct, ids), timeout=30, message="recovered and done")
        assert time.monotonic() - killed_at < 10  # heartbeat_timeout is 300 s
        counts = await run_counts(direct, ids)
        assert [counts[j][0] for j in ids] == [2, 2]
        assert "Recovered 2 jobs" in procs.log(b)
        assert POOLER_WARNING not in procs.log(b)  # it has a direct URL
    finally:
        procs.kill_all()
        await producer.close()


async def _all_done(url: str, ids: list[str]) -> bool:
    done, _dead, _open = await settled(url, ids)
    return done == len(ids)


async def _runs(url: str, ids: list[str], n: int) -> bool:
    return len(await run_counts(url, ids)) >= n


async def _count(url: str, sql: str, *args: Any) -> Any:
    async with connect(url) as conn:
        return await conn.fetchval(sql, *args)
