"""Liveness and crash recovery with REAL worker processes on PostgreSQL.

Each test writes a small worker script into ``tmp_path`` and runs it with this
interpreter. The job records every run in a ``runs`` table of the same database,
so the tests can see exactly which jobs ran, where, and how often.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.job import WorkerInfo
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import ScriptProcesses, wait_exit
from tests.worker_support import connect, job_row

WORKER_SCRIPT = """
import asyncio, logging, os, sys

from soniq import JobContext, Soniq

URL = os.environ["CRASH_DB_URL"]
logging.basicConfig(
    level=logging.INFO, stream=sys.stderr,
    format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
)
app = Soniq(
    database_url=URL, heartbeat_interval=0.2, heartbeat_timeout=1.5, cleanup_interval=0.3,
    poll_interval=0.2, error_retry_delay=0.2, pool_min_size=1,
    shutdown_timeout=float(os.environ.get("CRASH_SHUTDOWN", "5")),
)


@app.job(name="crash.record", retries=5)
async def record(n: int, ctx: JobContext, sleep: float = 0.0, first_only: bool = False):
    async with app.backend.acquire() as conn:
        await conn.execute(
            "INSERT INTO runs (job_id, n, pid, worker_id, attempt) VALUES ($1, $2, $3, $4, $5)",
            ctx.job_id, n, os.getpid(), ctx.worker_id, ctx.attempt,
        )
    if sleep and not (first_only and ctx.attempt > 1):
        await asyncio.sleep(sleep)
    return n


async def main():
    await app.run_worker(
        concurrency=int(os.environ.get("CRASH_CONCURRENCY", "4")),
        run_once=os.environ.get("CRASH_MODE") == "once",
    )
    await app.close()


asyncio.run(main())
"""

RUNS_TABLE = """
CREATE TABLE runs (
    job_id uuid NOT NULL, n int NOT NULL, pid int NOT NULL, worker_id uuid, attempt int,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class Workers(ScriptProcesses):
    """Worker processes of the script above; the fixture kills every one of them at the end."""

    def __init__(self, url: str, tmp_path: Path) -> None:
        super().__init__(tmp_path, "crash_worker.py", WORKER_SCRIPT, CRASH_DB_URL=url)

    def start(
        self, concurrency: int = 4, mode: str = "continuous", shutdown: float = 5.0
    ) -> subprocess.Popen[bytes]:
        return self.spawn(
            CRASH_CONCURRENCY=str(concurrency), CRASH_MODE=mode, CRASH_SHUTDOWN=str(shutdown)
        )


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    with Workers(pg_url, tmp_path) as w:
        yield w


@pytest.fixture
async def producer(pg_url: str) -> Any:
    """Enqueues ``crash.record`` jobs (a stub with the worker script's signature)."""
    async with connect(pg_url) as conn:
        await conn.execute(RUNS_TABLE)
    app = stub_app(pg_url)
    yield app
    await app.close()


def stub_app(url: str) -> Soniq:
    """A producer: ``crash.record`` registered with the worker script's signature."""
    app = Soniq(database_url=url, **FAST_SETTINGS)

    @app.job(name="crash.record", retries=5)
    async def record(n: int, ctx: Any = None, sleep: float = 0.0, first_only: bool = False) -> int:
        raise AssertionError("runs in the worker processes only")  # pragma: no cover

    app.record = record  # type: ignore[attr-defined]
    return app


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    async with connect(url) as conn:
        return await conn.fetchval(sql, *args)


async def fetch(url: str, sql: str, *args: Any) -> list[Any]:
    async with connect(url) as conn:
        return list(await conn.fetch(sql, *args))


async def all_done(url: str, ids: list[str]) -> bool:
    n = await fetchval(
        url, "SELECT count(*) FROM soniq_jobs WHERE id = ANY($1::uuid[]) AND status = 'done'", ids
    )
    return bool(n == len(ids))


async def worker_ids_of(url: str, pid: int) -> list[str]:
    rows = await fetch(url, "SELECT id::text FROM soniq_workers WHERE pid = $1", pid)
    return [r[0] for r in rows]


# --- (a) SIGKILL mid-job: another worker finishes everything -------------------------------


async def test_sigkilled_worker_jobs_are_recovered_by_another(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    ids = await producer.enqueue_many(
        producer.record,  # type: ignore[attr-defined]
        [{"n": i, "sleep": 30, "first_only": True} for i in range(2)]
        + [{"n": i, "sleep": 0.05} for i in range(2, 8)],
    )
    a = workers.start(concurrency=2)
    await wait_until(
        lambda: fetchval(pg_url, "SELECT count(*) = 2 FROM runs WHERE n < 2"),
        timeout=15, message="worker A mid-job on both long jobs",
    )  # fmt: skip
    [a_id] = await worker_ids_of(pg_url, a.pid)
    processing = await fetch(
        pg_url, "SELECT id::text, worker_id::text FROM soniq_jobs WHERE status = 'processing'"
    )
    assert sorted(r[0] for r in processing) == sorted(ids[:2])
    assert {r[1] for r in processing} == {a_id}

    a.send_signal(signal.SIGKILL)
    assert await wait_exit(a, 5) == -signal.SIGKILL
    b = workers.start(concurrency=4)
    await wait_until(lambda: all_done(pg_url, ids), timeout=20, message="every job done")

    runs = await fetch(pg_url, "SELECT job_id::text, n, pid, attempt FROM runs")
    assert {r["n"] for r in runs} == set(range(8))  # none lost
    for job_id in ids[:2]:  # the killed jobs ran again on B (at-least-once)
        theirs = sorted((r["pid"], r["attempt"]) for r in runs if r["job_id"] == job_id)
        assert theirs == sorted([(a.pid, 1), (b.pid, 2)])
        assert (await job_row(pg_url, job_id))["attempts"] == 2
    # A's row was removed as stale; B is the only live worker
    assert await worker_ids_of(pg_url, a.pid) == []
    assert len(await worker_ids_of(pg_url, b.pid)) == 1
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 1
    assert "Recovered 2 jobs" in workers.log(b)


# --- (b) four processes, 2,000 jobs, each exactly once -----------------------------------------


async def test_four_processes_run_two_thousand_jobs_exactly_once(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    procs = [workers.start(concurrency=4) for _ in range(4)]
    await wait_until(
        lambda: fetchval(pg_url, "SELECT count(*) = 4 FROM soniq_workers"),
        timeout=20, message="4 workers registered",
    )  # fmt: skip
    ids = await producer.enqueue_many(
        producer.record,  # type: ignore[attr-defined]
        [{"n": i} for i in range(2000)],
    )
    assert len(set(ids)) == 2000
    await wait_until(lambda: all_done(pg_url, ids), timeout=60, message="2,000 jobs done")
    row = await fetch(
        pg_url, "SELECT count(*), count(DISTINCT job_id), count(DISTINCT n) FROM runs"
    )
    assert tuple(row[0]) == (2000, 2000, 2000)  # no duplicates, none missing
    assert await fetchval(pg_url, "SELECT max(attempts) FROM soniq_jobs") == 1
    pids = {r[0] for r in await fetch(pg_url, "SELECT DISTINCT pid FROM runs")}
    assert pids <= {p.pid for p in procs}
    assert len(pids) >= 2, "the workers competed"
    for proc in procs:
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
    for proc in procs:
        assert await wait_exit(proc, 15) == 0
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 0


# --- (c) the database drops every connection ----------------------------------------------------


async def test_worker_survives_pg_terminate_backend(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    record = producer.record  # type: ignore[attr-defined]
    first = await producer.enqueue_many(record, [{"n": i, "sleep": 0.1} for i in range(40)])
    proc = workers.start(concurrency=4)
    seen = 0
    for _ in range(3):  # kill everything a few times while jobs are in flight
        seen = await wait_until(
            partial(_runs_beyond, pg_url, seen), timeout=15, message="worker busy"
        )
        async with connect(pg_url) as conn:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert killed >= 2  # the worker's pool and its LISTEN connection at least
    await producer.close()  # its pooled connections were terminated too
    later = stub_app(pg_url)
    try:
        second = await later.enqueue_many(
            later.record,  # type: ignore[attr-defined]
            [{"n": i} for i in range(30, 60)],
        )
        await wait_until(
            lambda: all_done(pg_url, first + second), timeout=30, message="all 60 jobs done"
        )
    finally:
        await later.close()
    ns = {r[0] for r in await fetch(pg_url, "SELECT DISTINCT n FROM runs")}
    assert ns == set(range(60))  # none lost
    assert proc.poll() is None  # it survived
    log = workers.log(proc)
    assert "LISTEN connection lost" in log and "LISTEN connection re-established" in log, log
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 15) == 0
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 0


# --- (d) SIGTERM: graceful within the grace period, else requeue unspent -----------------------


async def test_sigterm_waits_for_running_job_and_stops_claiming(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    record = producer.record  # type: ignore[attr-defined]
    long_id = await producer.enqueue(record, n=1, sleep=1.0)
    proc = workers.start(concurrency=1, shutdown=10)
    await wait_until(
        lambda: fetchval(pg_url, "SELECT count(*) = 1 FROM runs"), timeout=15, message="started"
    )
    later_id = await producer.enqueue(record, n=2)
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 15) == 0
    assert (await job_row(pg_url, long_id))["status"] == "done"  # finished within grace
    later = await job_row(pg_url, later_id)
    assert later["status"] == "queued" and later["attempts"] == 0  # never claimed
    assert await fetchval(pg_url, "SELECT count(*) FROM runs") == 1
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 0
    assert "Received SIGTERM" in workers.log(proc)


async def test_sigterm_past_grace_requeues_with_attempt_unspent(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    record = producer.record  # type: ignore[attr-defined]
    job_id = await producer.enqueue(record, n=1, sleep=60)
    proc = workers.start(concurrency=2, shutdown=0.3)
    await wait_until(
        lambda: fetchval(pg_url, "SELECT count(*) = 1 FROM runs"), timeout=15, message="started"
    )
    row = await job_row(pg_url, job_id)
    assert row["status"] == "processing" and row["attempts"] == 1
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert await wait_exit(proc, 10) == 0
    assert time.monotonic() - started < 5
    row = await job_row(pg_url, job_id)
    assert row["status"] == "queued"
    assert row["attempts"] == 0  # back to its previous value: the attempt was not spent
    assert row["worker_id"] is None and row["lease"] is None
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 0


# --- (f) a crashed run_once worker's job is recovered ------------------------------------------


async def test_job_of_a_crashed_run_once_worker_is_recovered(
    pg_url: str, producer: Soniq, workers: Workers
) -> None:
    record = producer.record  # type: ignore[attr-defined]
    job_id = await producer.enqueue(record, n=7, sleep=60, first_only=True)
    once = workers.start(concurrency=1, mode="once")
    await wait_until(
        lambda: fetchval(pg_url, "SELECT count(*) = 1 FROM runs"), timeout=15, message="started"
    )
    [once_id] = await worker_ids_of(pg_url, once.pid)  # run_once workers register too
    assert (await job_row(pg_url, job_id))["worker_id"] is not None
    once.send_signal(signal.SIGKILL)
    await wait_exit(once, 5)
    rescuer = workers.start(concurrency=2)
    await wait_until(lambda: all_done(pg_url, [job_id]), timeout=20, message="recovered")
    runs = await fetch(pg_url, "SELECT pid, attempt FROM runs ORDER BY at")
    assert [tuple(r) for r in runs] == [(once.pid, 1), (rescuer.pid, 2)]
    assert once_id not in [r[0] for r in await fetch(pg_url, "SELECT id::text FROM soniq_workers")]


# --- helpers ------------------------------------------------------------------------------------


def _info() -> WorkerInfo:
    import uuid

    return WorkerInfo(str(uuid.uuid4()), "test-host", os.getpid(), None, 1)


def _ack(job: Any, outcome: Any) -> Any:
    from soniq.job import Ack

    return Ack(job, outcome)


async def _runs_beyond(url: str, count: int) -> int:
    """The number of runs once it exceeds ``count`` (else 0, to keep waiting)."""
    n = int(await fetchval(url, "SELECT count(*) FROM runs"))
    return n if n > count else 0


async def _gone(url: str, job_id: str) -> bool:
    return await job_row(url, job_id) is None


# --- two Soniq instances in one worker process ---------------------------------------------

TWO_APPS_SCRIPT = """
import asyncio, logging, os, sys

from soniq import Soniq

URL = os.environ["CRASH_DB_URL"]
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
settings = dict(
    heartbeat_interval=0.2, heartbeat_timeout=1.5, cleanup_interval=0.3, poll_interval=0.2,
    pool_min_size=1,
)
a = Soniq(database_url=URL, **settings)
b = Soniq(database_url=URL, **settings)


@a.job(name="two.a", queue="qa")
async def job_a(n: int):
    return n


@b.job(name="two.b", queue="qb")
async def job_b(n: int):
    return n


async def main():
    await asyncio.gather(a.run_worker(queues=["qa"]), b.run_worker(queues=["qb"]))
    await a.close()
    await b.close()


asyncio.run(main())
"""


async def test_one_process_two_instances_both_stop_on_sigterm(pg_url: str, tmp_path: Path) -> None:
    procs = ScriptProcesses(tmp_path, "two_apps.py", TWO_APPS_SCRIPT, CRASH_DB_URL=pg_url)
    proc = procs.spawn()
    producer = Soniq(database_url=pg_url, enqueue_validation="none", **FAST_SETTINGS)
    try:
        await wait_until(
            lambda: fetchval(pg_url, "SELECT count(*) = 2 FROM soniq_workers"),
            timeout=15, message="both workers registered",
        )  # fmt: skip
        ja = await producer.enqueue("two.a", args={"n": 1}, queue="qa")
        jb = await producer.enqueue("two.b", args={"n": 2}, queue="qb")
        await wait_until(lambda: all_done(pg_url, [ja, jb]), timeout=10, message="both done")
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0, procs.log(proc)
        assert await fetchval(pg_url, "SELECT count(*) FROM soniq_workers") == 0
    finally:
        await producer.close()
        procs.kill_all()
