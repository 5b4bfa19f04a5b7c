"""Reliability, proven on real worker processes and a real PostgreSQL.

* The kill matrix: one test per way a worker (or the scheduler leader) can stop.
  After each, every job is done or dead-lettered as its handler decided, none is
  lost, none is stuck in ``processing``.
* Crash recovery in seconds with ``heartbeat_timeout`` at its documented 300 s: a
  SIGKILLed worker's liveness lock is released by PostgreSQL at once, and the
  surviving worker's sweep requeues its jobs (soniq/backends/pg_liveness.py).
* The soak (2,000 jobs, 4 workers, 20 random SIGKILLs) and the no-duplicates run
  (4 workers x 5,000 jobs) are marked ``chaos``.
* PostgreSQL faults (a restart mid-drain, a pg_terminate_backend storm) on a
  throwaway server this module owns; a half-open LISTEN connection through a
  TCP proxy inside the test; the bloat drill (a long transaction holds back
  vacuum while jobs churn).

Every job records each run of its handler in ``chaos_runs`` (tests/chaos_support.py),
so "ran exactly once" and "ran again only because its worker was killed" are facts
read from the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import subprocess
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from soniq import JobContext, Soniq
from soniq.backends.migrations_pg import apply_migrations
from soniq.errors import DatabaseUnavailableError
from tests.chaos_support import (
    RUNS_TABLE,
    PgServer,
    PickupTimer,
    SetupError,
    StallingProxy,
    WorkerProcs,
    pg_server,
    run_counts,
    settled,
    unexplained_duplicates,
)
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import SoniqProcess, wait_exit
from tests.worker_support import connect, make_worker, running

HEARTBEAT = "0.5"  # liveness tick 0.5 s, lock grace 2 s; heartbeat_timeout stays 300 s


# --- fixtures ----------------------------------------------------------------------


@dataclass
class Chaos:
    url: str
    procs: WorkerProcs
    producer: Soniq
    killed: set[int] = field(default_factory=set)

    async def enqueue(self, items: list[dict[str, Any]]) -> list[str]:
        return await self.producer.enqueue_many("chaos.run", items)

    async def value(self, sql: str, *args: Any) -> Any:
        async with connect(self.url) as conn:
            return await conn.fetchval(sql, *args)

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        async with connect(self.url) as conn:
            return list(await conn.fetch(sql, *args))

    def kill(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        if sig == signal.SIGKILL:
            self.killed.add(proc.pid)
        proc.send_signal(sig)

    async def worker_ids(self, proc: subprocess.Popen[bytes]) -> list[str]:
        rows = await self.rows("SELECT id::text FROM soniq_workers WHERE pid = $1", proc.pid)
        return [r[0] for r in rows]

    async def registered(self, proc: subprocess.Popen[bytes]) -> bool:
        assert proc.poll() is None, self.procs.log(proc)
        return bool(await self.worker_ids(proc))

    async def running_in(self, proc: subprocess.Popen[bytes], n: int) -> bool:
        count = await self.value(
            "SELECT count(*) FROM soniq_jobs j JOIN soniq_workers w ON w.id = j.worker_id "
            "WHERE j.status = 'processing' AND w.pid = $1",
            proc.pid,
        )
        return bool(count >= n)

    async def started_in(self, proc: subprocess.Popen[bytes], n: int) -> bool:
        """``n`` handlers have started in ``proc`` (their runs are recorded), not only been
        claimed by it: a job killed between the two would not count its first run."""
        count = await self.value("SELECT count(*) FROM chaos_runs WHERE pid = $1", proc.pid)
        return bool(count >= n)

    async def settle(self, ids: list[str], timeout: float = 60) -> tuple[int, int]:
        """Wait until none of ``ids`` is queued or processing; (done, dead-lettered)."""

        async def no_open() -> tuple[int, int, int] | None:
            state = await settled(self.url, ids)
            return state if state[2] == 0 else None

        done, dead, _ = await wait_until(no_open, timeout=timeout, message="every job settled")
        assert done + dead == len(ids), "a job was lost"
        return done, dead


def stub_producer(url: str) -> Soniq:
    """Enqueues ``chaos.run`` with the worker script's signature (it never runs here)."""
    app = Soniq(database_url=url, **FAST_SETTINGS)

    @app.job(name="chaos.run", retries=3)
    async def run(
        n: int, ctx: Any = None, sleep: float = 0.0, fail: bool = False, first_only: bool = False
    ) -> int:
        raise AssertionError("runs in the worker processes only")  # pragma: no cover

    return app


@contextlib.asynccontextmanager
async def chaos_on(url: str, root: Path, **env: str) -> AsyncIterator[Chaos]:
    async with connect(url) as conn:
        await conn.execute(RUNS_TABLE)
    procs = WorkerProcs(url, root, CHAOS_HEARTBEAT=HEARTBEAT, CHAOS_POLL="0.5", **env)
    producer = stub_producer(url)
    try:
        yield Chaos(url, procs, producer)
    finally:
        procs.kill_all()
        await producer.close()


@pytest.fixture
async def chaos(pg_url: str, tmp_path: Path) -> AsyncIterator[Chaos]:
    async with chaos_on(pg_url, tmp_path) as c:
        yield c


# --- the kill matrix -----------------------------------------------------------------


async def test_sigkill_mid_job_is_recovered_within_seconds(chaos: Chaos) -> None:
    long = await chaos.enqueue([{"n": i, "sleep": 60, "first_only": True} for i in range(2)])
    short = await chaos.enqueue([{"n": i} for i in range(2, 10)])
    a = chaos.procs.start(CHAOS_CONCURRENCY="2")
    await wait_until(lambda: chaos.started_in(a, 2), timeout=20, message="A runs both long jobs")
    b = chaos.procs.start(CHAOS_CONCURRENCY="4")
    await wait_until(lambda: chaos.registered(b), timeout=20, message="B registered")
    [a_id] = await chaos.worker_ids(a)
    assert await chaos.value("SELECT lock_key IS NOT NULL FROM soniq_workers WHERE id = $1", a_id)

    chaos.kill(a)
    killed_at = time.monotonic()
    await wait_until(
        lambda: chaos.value(
            "SELECT count(*) = 0 FROM soniq_jobs WHERE worker_id = $1 AND status = 'processing'",
            a_id,
        ),
        timeout=15, message="A's jobs requeued",
    )  # fmt: skip
    recovery = time.monotonic() - killed_at
    assert recovery < 8, f"recovered after {recovery:.1f}s with heartbeat_timeout=300"
    assert await chaos.settle(long + short) == (10, 0)
    counts = await run_counts(chaos.url, long + short)
    assert all(counts[j][0] == 2 for j in long)  # A's run, then B's
    assert all(counts[j][0] == 1 for j in short)
    assert not unexplained_duplicates(counts, chaos.killed)
    assert "Recovered 2 jobs from 1 lost workers" in chaos.procs.log(b)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_signal_finishes_running_jobs(chaos: Chaos, sig: int) -> None:
    busy = await chaos.enqueue([{"n": i, "sleep": 1.0} for i in range(2)])
    a = chaos.procs.start(CHAOS_CONCURRENCY="2")
    await wait_until(lambda: chaos.started_in(a, 2), timeout=20, message="A busy")
    later = await chaos.enqueue([{"n": i} for i in range(2, 6)] + [{"n": 6, "fail": True}])
    chaos.kill(a, sig)
    assert await wait_exit(a, 15) == 0, chaos.procs.log(a)
    assert (await settled(chaos.url, busy))[0] == 2  # finished within the grace period
    chaos.procs.start()
    assert await chaos.settle(busy + later) == (6, 1)  # the failing one dead-lettered
    counts = await run_counts(chaos.url, busy + later)
    assert [counts[j][0] for j in busy + later[:-1]] == [1] * 6  # nothing ran twice
    assert counts[later[-1]][0] == 4  # retries=3: four attempts, then the dead letters


@pytest.mark.parametrize("how", ["double SIGTERM", "SIGTERM past the grace period"])
async def test_interrupted_jobs_are_requeued_unspent(chaos: Chaos, how: str) -> None:
    ids = await chaos.enqueue([{"n": i, "sleep": 60, "first_only": True} for i in range(2)])
    shutdown = "30" if how == "double SIGTERM" else "0.5"
    a = chaos.procs.start(CHAOS_CONCURRENCY="2", CHAOS_SHUTDOWN=shutdown)
    await wait_until(lambda: chaos.started_in(a, 2), timeout=20, message="A busy")
    stopped_at = time.monotonic()
    chaos.kill(a, signal.SIGTERM)
    if how == "double SIGTERM":
        await wait_until(lambda: "finishing running jobs" in chaos.procs.log(a), timeout=10)
        chaos.kill(a, signal.SIGTERM)
    assert await wait_exit(a, 15) == 0, chaos.procs.log(a)
    assert time.monotonic() - stopped_at < 10
    rows = await chaos.rows("SELECT status, attempts FROM soniq_jobs WHERE id = ANY($1)", ids)
    assert [tuple(r) for r in rows] == [("queued", 0)] * 2  # the attempt was given back
    chaos.procs.start()
    assert await chaos.settle(ids) == (2, 0)
    counts = await run_counts(chaos.url, ids)
    assert all(counts[j][0] == 2 for j in ids)  # interrupted, then run again


SLOW_ACK = """
CREATE FUNCTION chaos_slow_ack() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN PERFORM pg_sleep(3); RETURN NEW; END $$;
CREATE TRIGGER chaos_slow_ack BEFORE UPDATE ON soniq_jobs FOR EACH ROW
WHEN (NEW.status = 'done' AND OLD.status = 'processing' AND (OLD.args ->> 'n')::int >= 1000)
EXECUTE FUNCTION chaos_slow_ack();
"""


async def test_sigkill_during_the_ack_write(chaos: Chaos) -> None:
    """The ack statement is in flight when the worker dies: it either commits (the job
    is done, nothing re-runs) or it does not (the job is recovered and re-run)."""
    async with connect(chaos.url) as conn:
        await conn.execute(SLOW_ACK)
    ids = await chaos.enqueue([{"n": 1000}, {"n": 1}, {"n": 2}])
    a = chaos.procs.start(CHAOS_CONCURRENCY="4")
    await wait_until(
        lambda: chaos.value(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event = 'PgSleep'"
        ),
        timeout=20, message="the ack write in progress",
    )  # fmt: skip
    chaos.kill(a)
    await wait_exit(a, 5)
    chaos.procs.start()
    assert await chaos.settle(ids) == (3, 0)
    counts = await run_counts(chaos.url, ids)
    assert counts[ids[0]][0] in (1, 2)
    assert not unexplained_duplicates(counts, chaos.killed)


TICKS = """
import asyncpg
from soniq import JobContext, Soniq

URL = {url!r}
app = Soniq(database_url=URL)


@app.periodic(every=1, name="tick")
async def tick(ctx: JobContext):
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute("INSERT INTO ticks (job_id) VALUES ($1)", ctx.job_id)
    finally:
        await conn.close()
"""


async def test_sigkill_of_the_scheduler_leader(chaos: Chaos, tmp_path: Path) -> None:
    await chaos.value("CREATE TABLE ticks (job_id uuid NOT NULL)")
    (tmp_path / "tick_jobs.py").write_text(textwrap.dedent(TICKS.format(url=chaos.url)))
    env = {k: v for k, v in chaos.procs.env.items()}
    env = {
        **{k: v for k, v in __import__("os").environ.items() if not k.startswith("SONIQ_")},
        "SONIQ_DATABASE_URL": chaos.url, "SONIQ_JOBS_MODULES": "tick_jobs",
        "SONIQ_POLL_INTERVAL": "0.2", "SONIQ_HEARTBEAT_INTERVAL": HEARTBEAT,
    }  # fmt: skip
    procs = [SoniqProcess(["scheduler", "--tick", "0.2"], env, tmp_path) for _ in range(2)]
    worker = SoniqProcess(["worker", "--concurrency", "2"], env, tmp_path)
    procs.append(worker)
    try:

        async def scheduler_leading() -> SoniqProcess | None:
            """The scheduler holding the lease; not a worker's brief probe of it (a worker
            takes the free lease for a moment to warn that no scheduler runs)."""
            owner = await chaos.value("SELECT owner FROM soniq_leases WHERE role = 'scheduler'")
            return next((p for p in procs[:2] if owner and f":{p.pid}:" in owner), None)

        leader = await wait_until(scheduler_leading, timeout=20, message="a scheduler leads")
        await wait_until(lambda: chaos.value("SELECT count(*) >= 2 FROM ticks"), timeout=20)
        leader.kill()
        before = await chaos.value("SELECT count(*) FROM ticks")
        await wait_until(
            lambda: chaos.value("SELECT count(*) >= $1 FROM ticks", before + 3),
            timeout=30, message="the standby keeps the schedule running",
        )  # fmt: skip
        for proc in procs[:2]:
            proc.stop()
        ids = [r[0] for r in await chaos.rows("SELECT id::text FROM soniq_jobs")]
        done, dead = await chaos.settle(ids, timeout=30)
        assert dead == 0
        keys = await chaos.rows("SELECT dedup_key, count(*) FROM soniq_jobs GROUP BY 1")
        assert all(r[1] == 1 for r in keys), "a due time was enqueued twice"
        runs = await chaos.rows("SELECT job_id, count(*) FROM ticks GROUP BY 1")
        assert len(runs) == done and all(r[1] == 1 for r in runs)
    finally:
        for proc in procs:
            proc.kill()


# --- the soak and the no-duplicates run (chaos) -----------------------------------------


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_soak_2000_jobs_4_workers_20_sigkills(chaos: Chaos) -> None:
    rng = random.Random(12)
    ids = await chaos.enqueue(
        [{"n": i, "sleep": rng.choice([0.0, 0.02, 0.05, 0.2])} for i in range(2000)]
    )
    for _ in range(4):
        chaos.procs.start(CHAOS_CONCURRENCY="4")
    for _ in range(20):
        victim = await wait_until(
            lambda: _busy_worker(chaos, rng), timeout=60, message="a busy worker"
        )
        chaos.kill(victim)
        await wait_exit(victim, 10)
        chaos.procs.start(CHAOS_CONCURRENCY="4")
    done, dead = await chaos.settle(ids, timeout=300)
    assert (done, dead) == (2000, 0)  # 0 lost
    counts = await run_counts(chaos.url, ids)
    assert set(counts) == set(ids)
    assert not unexplained_duplicates(counts, chaos.killed)  # only runs cut short by a kill
    duplicates = sum(runs - 1 for runs, _ in counts.values())
    print(f"soak: 2000 jobs, 20 SIGKILLs, 0 lost, {duplicates} re-runs of interrupted jobs")


async def _busy_worker(chaos: Chaos, rng: random.Random) -> subprocess.Popen[bytes] | None:
    alive = chaos.procs.alive()
    busy = [p for p in alive if await chaos.running_in(p, 1)]
    return rng.choice(busy) if busy else None


@pytest.mark.chaos
@pytest.mark.timeout(600)
async def test_no_duplicates_without_crashes_4_workers_5000_jobs_each(chaos: Chaos) -> None:
    procs = [chaos.procs.start(CHAOS_CONCURRENCY="8") for _ in range(4)]
    await wait_until(
        lambda: chaos.value("SELECT count(*) = 4 FROM soniq_workers"), timeout=30,
        message="4 workers registered",
    )  # fmt: skip
    ids: list[str] = []
    for start in range(0, 20_000, 5000):
        ids += await chaos.enqueue([{"n": i} for i in range(start, start + 5000)])
    assert await chaos.settle(ids, timeout=400) == (20_000, 0)
    row = await chaos.rows(
        "SELECT count(*), count(DISTINCT job_id), count(DISTINCT pid) FROM chaos_runs"
    )
    runs, distinct, pids = row[0]
    assert (runs, distinct) == (20_000, 20_000), "a job ran twice without any crash"
    assert pids == 4
    assert await chaos.value("SELECT max(attempts) FROM soniq_jobs") == 1
    for proc in procs:
        chaos.kill(proc, signal.SIGTERM)
    for proc in procs:
        assert await wait_exit(proc, 20) == 0


# --- PostgreSQL faults, on a server this module owns ------------------------------------


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PgServer]:
    """A throwaway PostgreSQL we may stop, start and restart (never the shared one)."""
    try:
        with pg_server() as server:
            yield server
    except SetupError as exc:
        pytest.fail(f"The PostgreSQL fault drills need a throwaway server: {exc}", pytrace=False)


@pytest.fixture
async def own_url(own_pg: PgServer) -> str:
    name = f"chaos_{uuid.uuid4().hex[:10]}"
    async with connect(own_pg.admin_url) as conn:
        await conn.execute(f'CREATE DATABASE "{name}"')
    url = own_pg.url(name)
    await apply_migrations(url)
    return url


SCHEDULER_JOBS = """
import os
from soniq import Soniq

app = Soniq(database_url=os.environ["SONIQ_DATABASE_URL"])


@app.job(name="chaos.run", retries=3)
async def run(n: int, ctx=None, sleep: float = 0.0, fail: bool = False, first_only: bool = False):
    raise AssertionError("the chaos workers run it")
"""
SCHEDULED_DONE = (
    "SELECT count(*) FROM soniq_jobs WHERE dedup_key LIKE 'schedule:chaos-tick:%' "
    "AND status = 'done'"
)


async def test_postgres_restart_mid_drain(own_pg: PgServer, own_url: str, tmp_path: Path) -> None:
    (tmp_path / "chaos_jobs.py").write_text(SCHEDULER_JOBS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env.update(SONIQ_DATABASE_URL=own_url, SONIQ_JOBS_MODULES="chaos_jobs")
    scheduler = SoniqProcess(["scheduler", "--tick", "0.2"], env, tmp_path)
    try:
        async with chaos_on(own_url, tmp_path, CHAOS_MARK_DIR=str(tmp_path)) as c:
            await _restart_drill(c, own_pg, scheduler, tmp_path)
    finally:
        scheduler.kill()


async def _restart_drill(c: Chaos, server: PgServer, scheduler: SoniqProcess, marks: Path) -> None:
    await c.producer.scheduler.add("chaos.run", every=1, args={"n": 5000}, name="chaos-tick")
    a, b = c.procs.start(CHAOS_CONCURRENCY="4"), c.procs.start(CHAOS_CONCURRENCY="4")
    for proc in (a, b):
        await wait_until(partial(c.registered, proc), timeout=30, message="workers up")
    await wait_until(lambda: c.value(SCHEDULED_DONE), timeout=30, message="a scheduled run")
    slow = await c.enqueue([{"n": 10_000 + i, "sleep": 2.5} for i in range(2)])
    ids = await c.enqueue([{"n": i, "sleep": 0.05} for i in range(300)])
    await wait_until(lambda: _runs_of(c, slow, 2), timeout=30, message="both slow jobs run")

    await asyncio.to_thread(server.stop, "fast")  # the outage begins
    down_at = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="retryable: enqueue again"):
        await c.producer.enqueue("chaos.run", args={"n": -1})  # a producer already open
    producer = stub_producer(c.url)
    with pytest.raises(DatabaseUnavailableError, match="Check that the server is running"):
        await producer.enqueue("chaos.run", args={"n": -2})  # one opening its pool now
    # The slow jobs finish while the database is away: their outcomes wait in the workers.
    await wait_until(
        lambda: all((marks / f"finished-{10_000 + i}").exists() for i in range(2)),
        timeout=20, message="the slow jobs finishing during the outage",
    )  # fmt: skip
    await wait_until(
        lambda: "job outcomes failed" in c.procs.log(a) + c.procs.log(b), timeout=20,
        message="outcomes waiting to be written",
    )  # fmt: skip
    await asyncio.to_thread(server.start)
    up_at = time.monotonic()
    done_before = (await settled(c.url, ids + slow))[0]
    await wait_until(
        lambda: _done_beyond(c.url, ids + slow, done_before), timeout=30,
        message="a job done after the restart",
    )  # fmt: skip
    resume = time.monotonic() - up_at
    late = await producer.enqueue("chaos.run", args={"n": 999})  # enqueue works again
    await producer.close()
    assert await c.settle([*ids, *slow, late], timeout=60) == (303, 0)  # 0 lost
    counts = await run_counts(c.url, slow)
    assert [counts[j][0] for j in slow] == [1, 1], "an outcome computed offline was lost"
    assert [await _result(c.url, j) for j in slow] == [10_000, 10_001]
    assert a.poll() is None and b.poll() is None
    fired = await c.value(SCHEDULED_DONE)  # the scheduler is back too
    await wait_until(
        lambda: _at_least(c, SCHEDULED_DONE, fired + 2), timeout=30,
        message="scheduled runs after the restart",
    )  # fmt: skip
    scheduler.assert_alive()
    print(f"restart: outage {up_at - down_at:.1f}s, first job done {resume:.2f}s after start")
    assert resume < 10


async def test_pg_terminate_backend_storm(own_url: str, tmp_path: Path) -> None:
    async with chaos_on(own_url, tmp_path) as c:
        ids = await c.enqueue([{"n": i, "sleep": 0.05} for i in range(400)])
        workers = [c.procs.start(CHAOS_CONCURRENCY="4") for _ in range(2)]
        done = killed = 0
        for _ in range(6):  # terminate every Soniq connection, again and again, mid-drain
            done = await wait_until(partial(_done_beyond, own_url, ids, done), timeout=30)
            killed += await c.value(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        assert killed >= 12  # pools, LISTEN and liveness connections, reopened each time
        await c.producer.close()
        assert await c.settle(ids, timeout=90) == (400, 0)
        assert all(w.poll() is None for w in workers)
        logs = "".join(c.procs.log(w) for w in workers)
        assert "LISTEN connection re-established" in logs


async def _at_least(c: Chaos, sql: str, n: int) -> bool:
    return bool(await c.value(sql) >= n)


async def _runs_of(c: Chaos, ids: list[str], n: int) -> bool:
    return len(await run_counts(c.url, ids)) >= n


async def _done_beyond(url: str, ids: list[str], count: int) -> int:
    done = (await settled(url, ids))[0]
    return done if done > count else 0


async def _result(url: str, job_id: str) -> Any:
    async with connect(url) as conn:
        return await conn.fetchval("SELECT result::int FROM soniq_jobs WHERE id = $1", job_id)


# --- a half-open LISTEN connection -----------------------------------------------------


async def test_half_open_listen_connection(pg_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="soniq")
    port = int(pg_url.split("@127.0.0.1:", 1)[1].split("/", 1)[0]) if "@127.0.0.1:" in pg_url else 0
    if not port:
        pytest.fail(f"the proxy test needs a 127.0.0.1 PostgreSQL URL, got {pg_url}")
    proxy = StallingProxy(port)
    await proxy.start()
    via_proxy = pg_url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}")
    settings = {**FAST_SETTINGS, "poll_interval": 2.0, "listen_database_url": via_proxy}
    app = Soniq(database_url=pg_url, **settings)
    latency = PickupTimer(app, "proxy.mark").latency

    try:
        async with running(make_worker(app), concurrency=2):
            await wait_until(lambda: "LISTEN/NOTIFY" in caplog.text, timeout=10)
            assert await latency(1) < 1.0  # woken by NOTIFY
            proxy.flowing.clear()  # the LISTEN connection goes silent, nothing is closed
            await wait_until(
                lambda: "LISTEN connection lost" in caplog.text, timeout=20,
                message="the listener's health check noticing",
            )  # fmt: skip
            assert await latency(2) < 2.0 + 1.5  # polling: within poll_interval
            proxy.flowing.set()
            await wait_until(
                lambda: "LISTEN connection re-established" in caplog.text, timeout=30,
                message="re-subscribed",
            )  # fmt: skip
            assert await latency(3) < 1.0  # NOTIFY again
    finally:
        await app.close()
        await proxy.close()


# --- bloat: a long transaction holds back vacuum while jobs churn ------------------------

SIZES = """
SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
WHERE c.relname LIKE 'soniq_jobs%' AND c.relkind IN ('r', 'i') ORDER BY 1
"""


async def drain_rate(app: Soniq, n: int) -> float:
    await app.enqueue_many("bloat.noop", [{"i": i} for i in range(n)])
    started = time.perf_counter()
    await app.run_worker(concurrency=16, run_once=True)
    return n / (time.perf_counter() - started)


async def test_bloat_long_transaction_keeps_throughput(pg_url: str) -> None:
    n = 20_000  # bench/chaos.py runs 100,000
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "log_level": "INFO"})

    @app.job(name="bloat.noop")
    async def noop(i: int) -> None:
        return None

    try:
        normal = await drain_rate(app, n)
        async with connect(pg_url) as conn:
            await conn.execute("VACUUM soniq_jobs")  # both runs start from a vacuumed table
            before = dict(tuple(r) for r in await conn.fetch(SIZES))
            async with connect(pg_url) as blocker:  # holds the xmin horizon back
                await blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                await blocker.fetchval("SELECT count(*) FROM soniq_jobs")
                held = await drain_rate(app, n)
                dead = await conn.fetchval(
                    "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'soniq_jobs'"
                )
                await blocker.execute("ROLLBACK")
            after = dict(tuple(r) for r in await conn.fetch(SIZES))
            assert (
                await conn.fetchval("SELECT count(*) FROM soniq_jobs WHERE status <> 'done'") == 0
            )
            assert await conn.fetchval("SELECT count(*) FROM soniq_jobs") == 2 * n  # none lost
    finally:
        await app.close()
    print(f"bloat: normal {normal:.0f}/s, held {held:.0f}/s ({held / normal:.0%}), dead {dead}")
    print("sizes kB before -> after:", {k: (before[k] // 1024, after[k] // 1024) for k in after})
    assert held >= 0.5 * normal, f"{held:.0f}/s with vacuum held back vs {normal:.0f}/s normal"


# --- a claim whose answer is lost on the way ---------------------------------------------


async def test_a_claim_whose_answer_was_lost_is_requeued(app: Soniq) -> None:
    """The claim committed but the connection died before its rows arrived: those jobs
    are 'processing' under a live worker that never runs them. The next claim gives
    them back (attempt unspent) and takes them properly."""
    producer = stub_producer(app.database_url)
    try:
        ids = await producer.enqueue_many("chaos.run", [{"n": i} for i in range(3)])
    finally:
        await producer.close()
    await app.ensure_initialized()
    backend: Any = app.backend.inner  # type: ignore[attr-defined]
    real = backend._pool

    class AnswerLost:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        async def fetch(self, *args: Any) -> Any:
            await real.fetch(*args)  # committed...
            raise asyncpg.ConnectionDoesNotExistError("connection was closed mid-operation")

    backend._pool = AnswerLost()
    worker = str(uuid.uuid4())
    try:
        with pytest.raises(asyncpg.ConnectionDoesNotExistError):
            await app.backend.claim(None, worker, 10)
    finally:
        backend._pool = real
    async with connect(app.database_url) as conn:
        stuck = await conn.fetchval("SELECT count(*) FROM soniq_jobs WHERE status = 'processing'")
    assert stuck == 3
    claimed = await app.backend.claim(None, worker, 10)
    assert sorted(j.id for j in claimed) == sorted(ids)
    assert [j.attempt for j in claimed] == [1, 1, 1]  # the lost claim did not spend one


# --- a partition: the worker is alive, its liveness connection is gone ---------------------


async def test_partitioned_worker_is_replaced_and_its_late_ack_ignored(pg_url: str) -> None:
    """A is partitioned from the database: all its connections go through a proxy that
    stalls (its heartbeats stop) and its liveness connection is terminated on the server,
    so B requeues A's job and runs it. A, still running, finishes once the network is back:
    its ack carries the old lease and changes nothing. Two runs, one outcome: B's. (A worker
    cut off from its lock connection alone still heartbeats, and keeps its jobs.)"""
    port = int(pg_url.split("@127.0.0.1:", 1)[1].split("/", 1)[0])
    proxy = StallingProxy(port)
    await proxy.start()
    via_proxy = pg_url.replace(f"127.0.0.1:{port}", f"127.0.0.1:{proxy.port}")
    release = asyncio.Event()
    runs: list[str] = []

    def make(url: str) -> Soniq:
        app = Soniq(database_url=url, **FAST_SETTINGS)

        @app.job(name="partition.work", retries=3)
        async def work(ctx: JobContext) -> str:
            assert ctx.worker_id is not None
            runs.append(ctx.worker_id)
            if len(runs) == 1:
                await release.wait()  # A: still running, cut off from its lock
            return ctx.worker_id

        return app

    a_app, b_app = make(via_proxy), make(pg_url)
    try:
        a = make_worker(a_app)
        async with running(a, concurrency=1):
            job_id = await a_app.enqueue("partition.work")
            await wait_until(lambda: runs, timeout=10, message="A running the job")
            proxy.flowing.clear()
            async with connect(pg_url) as conn:
                cut = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'soniq-worker-liveness' "
                    "AND datname = current_database()"
                )
            assert cut == 1
            b = make_worker(b_app)
            async with running(b, concurrency=1):
                await wait_until(
                    lambda: b_app.get_result(job_id), timeout=15, message="B ran the job"
                )
                proxy.flowing.set()  # the network is back ...
                release.set()  # ... and A finishes now, with its lost claim's lease
                await wait_until(lambda: a._unwritten == 0 and not a._running, timeout=10)
        job = await b_app.get_job(job_id)
        assert job is not None
        assert runs == [a.worker_id, b.worker_id]
        assert (job["status"], job["result"], job["attempts"]) == ("done", b.worker_id, 2)
    finally:
        await a_app.close()
        await b_app.close()
        await proxy.close()
