"""Reliability figures: the kill matrix's headline numbers, the soak, the fault drills.

Runs everything on a throwaway PostgreSQL it starts itself (never the machine's
cluster, which it may restart), with real worker processes at Soniq's default
settings (heartbeat_interval 5 s, heartbeat_timeout 300 s, poll_interval 5 s,
error_retry_delay 5 s), and prints one table:

    jobs lost, duplicate runs (and whether each is explained by a kill), recovery
    seconds (SIGKILL -> jobs requeued; PostgreSQL back -> first job done), and
    throughput ratios (long transaction held / normal).

Usage (from the repository root):

    .venv/bin/python bench/chaos.py            # everything, ~5 minutes on 2 cores
    .venv/bin/python bench/chaos.py --only soak,bloat --bloat-jobs 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg

from soniq import Soniq
from soniq.backends.migrations_pg import apply_migrations
from soniq.errors import DatabaseUnavailableError
from tests.chaos_support import (
    RUNS_TABLE,
    PgServer,
    PickupTimer,
    StallingProxy,
    WorkerProcs,
    pg_server,
    run_counts,
    settled,
    unexplained_duplicates,
)

DEFAULTS = {"CHAOS_HEARTBEAT": "5", "CHAOS_POLL": "5", "CHAOS_RETRY_DELAY": "5"}


@dataclass
class Row:
    scenario: str
    jobs: int
    lost: int | str = "-"
    duplicates: str = "-"
    seconds: str = "-"
    ratio: str = "-"
    note: str = ""


async def until(check: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Bench:
    def __init__(self, server: PgServer, root: Path) -> None:
        self.server = server
        self.root = root

    async def database(self) -> str:
        name = f"chaos_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(self.server.admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = self.server.url(name)
        await apply_migrations(url)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(RUNS_TABLE)
        finally:
            await conn.close()
        return url

    @contextlib.asynccontextmanager
    async def workers(self, url: str, **env: str) -> AsyncIterator[tuple[WorkerProcs, Soniq]]:
        root = Path(tempfile.mkdtemp(dir=self.root))
        procs = WorkerProcs(url, root, **{**DEFAULTS, **env})
        producer = Soniq(database_url=url, enqueue_validation="none", pool_min_size=1)
        try:
            yield procs, producer
        finally:
            procs.kill_all()
            with contextlib.suppress(Exception):
                await producer.close()


async def value(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def running_in(url: str, pid: int) -> int:
    return int(
        await value(
            url,
            "SELECT count(*) FROM soniq_jobs j JOIN soniq_workers w ON w.id = j.worker_id "
            "WHERE j.status = 'processing' AND w.pid = $1",
            pid,
        )
    )


async def settle(url: str, ids: list[str], timeout: float) -> tuple[int, int]:
    async def no_open() -> tuple[int, int, int] | None:
        state = await settled(url, ids)
        return state if state[2] == 0 else None

    done, dead, _ = await until(no_open, timeout, "every job settled")
    return done, dead


async def finish(
    url: str, ids: list[str], timeout: float, killed: set[int], started: float
) -> tuple[int, str, float]:
    """Once every job has settled: jobs lost, duplicate runs, and seconds since ``started``."""
    done, dead = await settle(url, ids, timeout)
    elapsed = time.monotonic() - started
    return len(ids) - done - dead, await duplicates(url, ids, killed), elapsed


async def drain_with_two_workers(procs: WorkerProcs, producer: Soniq) -> list[str]:
    """Enqueue 1,500 jobs of 50 ms and start two workers of concurrency 8 on them."""
    ids = await producer.enqueue_many("chaos.run", [{"n": i, "sleep": 0.05} for i in range(1500)])
    for _ in range(2):
        procs.start(CHAOS_CONCURRENCY="8")
    return ids


async def duplicates(url: str, ids: list[str], killed: set[int]) -> str:
    """Handler re-runs; with kills, how many are not explained by one (should be 0)."""
    counts = await run_counts(url, ids)
    reruns = sum(n - 1 for n, _ in counts.values())
    if not killed:
        return str(reruns)
    return f"{reruns}, {len(unexplained_duplicates(counts, killed))} not after a kill"


# --- scenarios -----------------------------------------------------------------------


async def sigkill(b: Bench, reps: int) -> Row:
    results = [await one_sigkill(b) for _ in range(reps)]
    times = [t for t, _ in results]
    return Row(
        "SIGKILL mid-job -> requeued (heartbeat_timeout 300 s)", 4 * reps,
        sum(lost for _, lost in results), "-",
        f"{statistics.median(times):.1f} (min {min(times):.1f}, max {max(times):.1f})",
        note=f"{reps} kills, 4 running jobs each",
    )  # fmt: skip


async def one_sigkill(b: Bench) -> tuple[float, int]:
    """Seconds from SIGKILL to the worker's jobs being requeued, and jobs lost."""
    url = await b.database()
    async with b.workers(url) as (procs, producer):
        ids = await producer.enqueue_many(
            "chaos.run", [{"n": i, "sleep": 60, "first_only": True} for i in range(4)]
        )
        a = procs.start(CHAOS_CONCURRENCY="4")
        await until(lambda: _at_least(running_in(url, a.pid), 4), 60, "A busy")
        survivor = procs.start(CHAOS_CONCURRENCY="4")
        await until(lambda: _registered(url, survivor.pid), 60, "B registered")
        a_id = await value(url, "SELECT id FROM soniq_workers WHERE pid = $1", a.pid)
        a.kill()
        killed = time.monotonic()
        await until(
            lambda: value(
                url,
                "SELECT count(*) = 0 FROM soniq_jobs WHERE worker_id = $1 "
                "AND status = 'processing'",
                a_id,
            ),
            60,
            "requeued",
        )
        seconds = time.monotonic() - killed
        done, dead = await settle(url, ids, 60)
    return seconds, len(ids) - done - dead


async def _at_least(aw: Awaitable[int], n: int) -> bool:
    return await aw >= n


async def _registered(url: str, pid: int) -> bool:
    return bool(await value(url, "SELECT count(*) FROM soniq_workers WHERE pid = $1", pid))


async def soak(b: Bench) -> Row:
    url = await b.database()
    rng = random.Random(7)
    killed: set[int] = set()
    async with b.workers(url) as (procs, producer):
        ids = await producer.enqueue_many(
            "chaos.run",
            [{"n": i, "sleep": rng.choice([0.0, 0.02, 0.05, 0.2])} for i in range(2000)],
        )
        for _ in range(4):
            procs.start(CHAOS_CONCURRENCY="4")
        started = time.monotonic()
        for _ in range(20):

            async def busy() -> Any:
                alive = [p for p in procs.alive() if await running_in(url, p.pid)]
                return rng.choice(alive) if alive else None

            victim = await until(busy, 120, "a busy worker")
            killed.add(victim.pid)
            victim.kill()
            victim.wait(timeout=10)
            procs.start(CHAOS_CONCURRENCY="4")
        lost, dups, elapsed = await finish(url, ids, 600, killed, started)
    return Row(
        "soak: 4 workers, 20 random SIGKILLs", 2000, lost, dups,
        f"{elapsed:.0f} total", note="a killed worker is replaced at once",
    )  # fmt: skip


async def nodup(b: Bench) -> Row:
    url = await b.database()
    async with b.workers(url) as (procs, producer):
        for _ in range(4):
            procs.start(CHAOS_CONCURRENCY="8")
        await until(lambda: value(url, "SELECT count(*) = 4 FROM soniq_workers"), 60, "4 up")
        started = time.monotonic()
        ids: list[str] = []
        for start in range(0, 20_000, 5000):
            ids += await producer.enqueue_many(
                "chaos.run", [{"n": i} for i in range(start, start + 5000)]
            )
        done, dead = await settle(url, ids, 900)
        elapsed = time.monotonic() - started
        runs = await value(url, "SELECT count(*) FROM chaos_runs")
    return Row(
        "no crashes: 4 workers x 5,000 jobs", 20_000, 20_000 - done - dead,
        str(runs - 20_000), f"{elapsed:.0f} total", note=f"{20_000 / elapsed:.0f} jobs/s",
    )  # fmt: skip


async def restart(b: Bench) -> Row:
    url = await b.database()
    async with b.workers(url) as (procs, producer):
        ids = await drain_with_two_workers(procs, producer)
        await until(lambda: _done_at_least(url, ids, 300), 120, "300 done")
        await asyncio.to_thread(b.server.stop, "fast")
        error = "none (!)"
        try:
            await producer.enqueue("chaos.run", args={"n": -1})
        except DatabaseUnavailableError as exc:
            error = type(exc).__name__
        await asyncio.sleep(3)  # a 3-second outage
        await asyncio.to_thread(b.server.start)
        back = time.monotonic()
        before = (await settled(url, ids))[0]
        await until(lambda: _done_at_least(url, ids, before + 1), 120, "a job after restart")
        resume = time.monotonic() - back
        lost, dups, _ = await finish(url, ids, 300, set(), back)
    return Row(
        "PostgreSQL stopped 3 s mid-drain, then started", 1500, lost, dups,
        f"{resume:.1f} to first job done", note=f"enqueue during the outage: {error}",
    )  # fmt: skip


async def _done_at_least(url: str, ids: list[str], n: int) -> bool:
    return (await settled(url, ids))[0] >= n


async def storm(b: Bench) -> Row:
    url = await b.database()
    async with b.workers(url) as (procs, producer):
        ids = await drain_with_two_workers(procs, producer)
        started = time.monotonic()
        for round_ in range(10):
            await until(lambda r=round_: _done_at_least(url, ids, 100 * (r + 1)), 120, "progress")
            await value(
                url,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
        await producer.close()
        lost, dups, elapsed = await finish(url, ids, 300, set(), started)
    return Row(
        "pg_terminate_backend of every connection, 10 rounds", 1500, lost, dups,
        f"{elapsed:.0f} total", note="live workers' locks freed too: re-runs are lease-safe",
    )  # fmt: skip


async def half_open(b: Bench) -> Row:
    url = await b.database()
    proxy = StallingProxy(b.server.port)
    await proxy.start()
    via = url.replace(f":{b.server.port}/", f":{proxy.port}/")
    app = Soniq(database_url=url, listen_database_url=via, pool_min_size=1)
    timer = PickupTimer(app, "bench.mark")

    noticed = asyncio.Event()

    class Notice(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "LISTEN connection lost" in record.getMessage():
                noticed.set()

    handler = Notice()
    logging.getLogger("soniq").addHandler(handler)
    worker = asyncio.create_task(app.run_worker(concurrency=2))
    try:
        await asyncio.sleep(1)
        before = await timer.latency(1, timeout=60)
        proxy.flowing.clear()
        stalled = time.monotonic()
        await asyncio.wait_for(noticed.wait(), 60)
        detect = time.monotonic() - stalled
        polled = await timer.latency(2, timeout=60)
        proxy.flowing.set()
    finally:
        worker.cancel()
        with contextlib.suppress(BaseException):
            await worker
        logging.getLogger("soniq").removeHandler(handler)
        await app.close()
        await proxy.close()
    return Row(
        "LISTEN link silently stalls (TCP proxy)", 2, 0, "0", f"{detect:.1f} to notice",
        note=f"pickup {before * 1000:.0f} ms with NOTIFY, {polled:.1f} s while polling "
        "(poll_interval 5)",
    )  # fmt: skip


SIZES = """
SELECT c.relname, pg_relation_size(c.oid) FROM pg_class c
WHERE c.relname LIKE 'soniq_jobs%' AND c.relkind IN ('r', 'i') ORDER BY 1
"""


async def bloat(b: Bench, n: int) -> tuple[Row, str]:
    url = await b.database()
    app = Soniq(database_url=url, pool_min_size=1)

    @app.job(name="bench.noop")
    async def noop(i: int) -> None:
        return None

    async def drain() -> float:
        for start in range(0, n, 10_000):
            await app.enqueue_many(noop, [{"i": i} for i in range(start, min(n, start + 10_000))])
        began = time.perf_counter()
        await app.run_worker(concurrency=16, run_once=True)
        return n / (time.perf_counter() - began)

    conn = await asyncpg.connect(url)
    try:
        normal = await drain()
        await conn.execute("VACUUM soniq_jobs")
        before = {r[0]: r[1] for r in await conn.fetch(SIZES)}
        blocker = await asyncpg.connect(url)
        await blocker.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        await blocker.fetchval("SELECT count(*) FROM soniq_jobs")
        held = await drain()
        await blocker.close()
        after = {r[0]: r[1] for r in await conn.fetch(SIZES)}
        lost = 2 * n - int(
            await conn.fetchval("SELECT count(*) FROM soniq_jobs WHERE status = 'done'")
        )
    finally:
        await conn.close()
        await app.close()
    sizes = "\n".join(
        f"| `{name}` | {before[name] // 1024:,} | {after[name] // 1024:,} |" for name in after
    )
    row = Row(
        "long transaction holds vacuum back while jobs churn", n, lost, "0", "-",
        f"{held / normal:.0%} ({held:,.0f} vs {normal:,.0f} jobs/s)", note="concurrency 16",
    )  # fmt: skip
    return row, sizes


# --- main -------------------------------------------------------------------------------


async def main(args: argparse.Namespace) -> None:
    wanted = set(args.only.split(",")) if args.only else None

    def on(name: str) -> bool:
        return wanted is None or name in wanted

    rows: list[Row] = []
    sizes = ""
    root = Path(tempfile.mkdtemp(prefix="soniq-chaos-bench-"))
    with pg_server() as server:
        b = Bench(server, root)
        if on("sigkill"):
            rows.append(await sigkill(b, args.kills))
        if on("soak"):
            rows.append(await soak(b))
        if on("nodup"):
            rows.append(await nodup(b))
        if on("restart"):
            rows.append(await restart(b))
        if on("storm"):
            rows.append(await storm(b))
        if on("halfopen"):
            rows.append(await half_open(b))
        if on("bloat"):
            row, sizes = await bloat(b, args.bloat_jobs)
            rows.append(row)
    print("| scenario | jobs | lost | duplicate runs | seconds | throughput ratio | note |")
    print("|---|---:|---:|---|---|---|---|")
    for r in rows:
        print(
            f"| {r.scenario} | {r.jobs:,} | {r.lost} | {r.duplicates} | {r.seconds} | "
            f"{r.ratio} | {r.note} |"
        )
    if sizes:
        print("\n| relation (bloat drill) | kB before | kB after |\n|---|---:|---:|")
        print(sizes)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", help="comma-separated: sigkill,soak,nodup,restart,storm,halfopen,bloat"
    )
    parser.add_argument("--kills", type=int, default=3, help="SIGKILL recovery repetitions")
    parser.add_argument("--bloat-jobs", type=int, default=100_000)
    asyncio.run(main(parser.parse_args()))
