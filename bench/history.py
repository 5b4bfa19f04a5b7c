"""Soniq with a big history on PostgreSQL: 1,000,000 done rows and 100,000 dead letters.

Usage:
    python bench/history.py [--done 1000000] [--dead 100000] [--drain 20000] [--repeat 3]
                            [--expire 500000] [--latency-jobs 300] [--skip-legacy]

Two databases, both dropped and recreated: $BENCH_DATABASE_URL (default
postgresql://postgres@127.0.0.1:5432/soniq_bench_history) gets the history, written with
COPY (asyncpg copy_records_to_table) and then VACUUM ANALYZEd; "<name>_empty" stays empty.
Printed, in this order:

1. Drain rate (claim + Done ack, result_ttl 300) of --drain fresh no-op jobs with one
   in-process worker (concurrency 64), runs interleaved: empty table, empty table
   without soniq_jobs_expires_idx (the ack-path cost of 0008's index), history. After
   each run the drained rows are deleted and the table vacuumed, so every run starts
   from the same table.
2. get_queue_stats() and list_jobs pages (the filters the API offers) with the history:
   median and max of --repeat * 3 calls after one warm-up.
3. Latency enqueue -> handler start of --latency-jobs jobs enqueued 10 ms apart to an
   idle worker: normally, then while PostgresBackend.prune() deletes --expire expired
   done rows (batched), then (unless --skip-legacy) while the old single
   ``DELETE ... WHERE status = 'done' AND expires_at <= now()`` deletes as many.
   The prune's duration, rows and batches are printed with each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
from support import drain_rate, fresh_pg

from soniq import Soniq
from soniq.backends import postgres as pg_backend
from soniq.job import Ack, Done

UTC = timezone.utc

QUEUES = ("default", "emails", "reports", "billing")
TASKS = tuple(f"tasks.t{i}" for i in range(8))
COLUMNS = (
    "id", "job_name", "args", "queue", "priority", "status", "attempts", "max_attempts",
    "scheduled_at", "created_at", "updated_at", "started_at", "completed_at", "expires_at",
    "result",
)  # fmt: skip
DEAD_COLUMNS = (
    "id", "job_name", "args", "queue", "priority", "attempts", "max_attempts", "last_error",
    "created_at", "dead_lettered_at",
)  # fmt: skip
LEGACY_PRUNE = "DELETE FROM soniq_jobs WHERE status = 'done' AND expires_at <= now()"


async def fresh(url: str) -> None:
    await fresh_pg(url)
    app = Soniq(database_url=url, log_level="WARNING")
    await app.setup()
    await app.close()


async def build_history(url: str, done: int, dead: int) -> None:
    """``done`` rows completed over the last 30 days (kept 7 days more), ``dead`` letters."""
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    now = datetime.now(UTC)
    span = timedelta(days=30)
    step = 100_000
    for start in range(0, done, step):
        records = []
        for i in range(start, min(done, start + step)):
            t = now - span * (done - i) / done
            records.append((
                uuid.uuid4(), TASKS[i % 8], f'{{"n": {i}, "to": "user{i}"}}', QUEUES[i % 4],
                100, "done", 1, 4, t, t, t, t, t + timedelta(milliseconds=50),
                now + timedelta(days=7), "1",
            ))  # fmt: skip
        await conn.copy_records_to_table("soniq_jobs", records=records, columns=COLUMNS)
    for start in range(0, dead, step):
        records = []
        for i in range(start, min(dead, start + step)):
            t = now - span * (dead - i) / dead
            records.append((
                uuid.uuid4(), TASKS[i % 8], f'{{"n": {i}}}', QUEUES[i % 4], 100, 4, 4,
                "RuntimeError: boom", t, t,
            ))  # fmt: skip
        await conn.copy_records_to_table(
            "soniq_dead_letter_jobs", records=records, columns=DEAD_COLUMNS
        )
    filled = time.perf_counter() - started
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.execute("VACUUM ANALYZE soniq_dead_letter_jobs")
    print(
        f"history: {done:,} done + {dead:,} dead letters by COPY in {filled:.1f}s, "
        f"vacuum analyze {time.perf_counter() - started - filled:.1f}s"
    )
    await conn.close()


async def stop(worker: asyncio.Task[Any]) -> None:
    worker.cancel()
    try:
        await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), 30)
    except asyncio.TimeoutError:
        print("(a worker took over 30 s to stop; left behind)", flush=True)


# --- 1. drain rate --------------------------------------------------------------------


async def drain_once(url: str, n: int) -> float:
    """Enqueue ``n`` no-op jobs, drain them with one worker (concurrency 64): jobs/s."""
    rate = await drain_rate(url, n, name="bench.noop", cleanup_interval=3600)
    conn = await asyncpg.connect(url)
    await conn.execute("DELETE FROM soniq_jobs WHERE job_name = 'bench.noop'")
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.close()
    return rate


HISTORY_INDEXES = {
    "soniq_jobs_expires_idx": "ON soniq_jobs (expires_at) WHERE status = 'done'",
    "soniq_jobs_done_queue_idx": "ON soniq_jobs (queue) WHERE status = 'done'",
}


async def set_history_indexes(url: str, present: bool) -> None:
    """Create or drop 0008's two soniq_jobs indexes (the ones a Done ack writes)."""
    conn = await asyncpg.connect(url)
    for name, definition in HISTORY_INDEXES.items():
        if present:
            await conn.execute(f"CREATE INDEX IF NOT EXISTS {name} {definition}")
        else:
            await conn.execute(f"DROP INDEX IF EXISTS {name}")
    await conn.close()


async def ack_time(url: str, n: int) -> tuple[float, float]:
    """Microseconds per job of a Done ack, claiming and acking ``n`` jobs 64 at a time (a
    worker's batches at concurrency 64). Batches alternate: ``backend.ack`` timed by the
    client (round trip included), and JOB_ACK_DONE under EXPLAIN ANALYZE (the executor's
    own time, index inserts included; the transaction commits as usual)."""
    app = Soniq(database_url=url, log_level="WARNING")

    @app.job(name="bench.ack")
    async def never_run(i: int) -> None: ...

    await app.ensure_initialized()
    backend = app.backend
    for start in range(0, n, 5000):
        await app.enqueue_many("bench.ack", [{"i": i} for i in range(start, min(n, start + 5000))])
    worker = str(uuid.uuid4())
    wall = server = 0.0
    jobs = [0, 0]
    conn = await asyncpg.connect(url)
    while claimed := await backend.claim(None, worker, 64):
        if jobs[0] > jobs[1]:
            plan = await conn.fetchval(
                f"EXPLAIN (ANALYZE, FORMAT JSON) {pg_backend.q.JOB_ACK_DONE}",
                [uuid.UUID(j.id) for j in claimed], [uuid.UUID(j.lease) for j in claimed],
                ["1"] * len(claimed), 300.0,
            )  # fmt: skip
            server += json.loads(plan)[0]["Execution Time"] / 1000
            jobs[1] += len(claimed)
            continue
        t0 = time.perf_counter()
        await backend.ack([Ack(job, Done("1")) for job in claimed], result_ttl=300)
        wall += time.perf_counter() - t0
        jobs[0] += len(claimed)
    await conn.close()
    await app.close()
    conn = await asyncpg.connect(url)
    await conn.execute("DELETE FROM soniq_jobs WHERE job_name = 'bench.ack'")
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.close()
    return wall / jobs[0] * 1e6, server / jobs[1] * 1e6


async def ack_cost(empty: str, n: int, repeat: int) -> None:
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(repeat):
        for present in (False, True):
            await set_history_indexes(empty, present)
            times[present].append(await ack_time(empty, n))
    await set_history_indexes(empty, True)
    print(f"\n## Done ack, {n:,} jobs in batches of 64, runs interleaved\n")
    print(
        "| soniq_jobs | backend.ack median us/job | executor median us/job | runs (ack/executor) |"
        "\n|---|---:|---:|---|"
    )
    for present, values in times.items():
        label = "with 0008 indexes" if present else "without them"
        runs = ", ".join(f"{w:.1f}/{e:.1f}" for w, e in values)
        wall = statistics.median(w for w, _ in values)
        server = statistics.median(e for _, e in values)
        print(f"| {label} | {wall:.1f} | {server:.1f} | {runs} |")


async def drain_rates(url: str, empty: str, n: int, repeat: int) -> None:
    variants = {
        "empty table": empty,
        "empty, no 0008 indexes": empty,
        "1M done + 100k dead": url,
    }
    rates: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(repeat):
        for label, target in variants.items():
            if target == empty:
                await set_history_indexes(empty, label == "empty table")
            rates[label].append(await drain_once(target, n))
    await set_history_indexes(empty, True)
    base = statistics.median(rates["empty table"])
    print(f"\n## drain {n:,} jobs, concurrency 64, runs interleaved\n")
    print("| table | median jobs/s | vs empty | runs |\n|---|---:|---:|---|")
    for label, values in rates.items():
        med = statistics.median(values)
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"| {label} | {med:,.0f} | {100 * (med / base - 1):+.1f}% | {runs} |")


# --- 2. reads -----------------------------------------------------------------------


async def timed(call: Any, times: int) -> tuple[float, float, int]:
    await call()
    samples = []
    n = 0
    for _ in range(times):
        t0 = time.perf_counter()
        out = await call()
        samples.append((time.perf_counter() - t0) * 1000)
        n = len(out)
    return statistics.median(samples), max(samples), n


async def reads(url: str, repeat: int) -> None:
    app = Soniq(database_url=url, log_level="WARNING")
    await app.ensure_initialized()
    calls: dict[str, Any] = {
        "get_queue_stats()": lambda: app.get_queue_stats(),
        "list_jobs()": lambda: app.list_jobs(),
        "list_jobs(queue='emails')": lambda: app.list_jobs(queue="emails"),
        "list_jobs(status='done')": lambda: app.list_jobs(status="done"),
        "list_jobs(status='queued')": lambda: app.list_jobs(status="queued"),
        "list_jobs(status='processing')": lambda: app.list_jobs(status="processing"),
        "list_jobs(queue='emails', status='done')": lambda: app.list_jobs(
            queue="emails", status="done"
        ),
        "list_jobs(queue='emails', status='cancelled')": lambda: app.list_jobs(
            queue="emails", status="cancelled"
        ),
        "list_jobs(offset=1000)": lambda: app.list_jobs(offset=1000),
        "list_jobs(status='dead_letter')": lambda: app.list_jobs(status="dead_letter"),
        "dead_letter.list_jobs(queue='emails')": lambda: app.dead_letter.list_jobs(queue="emails"),
    }
    print(f"\n## reads with the history, {repeat * 3} calls each after a warm-up\n")
    print("| call | median ms | max ms | rows |\n|---|---:|---:|---:|")
    for label, call in calls.items():
        med, worst, rows = await timed(call, repeat * 3)
        print(f"| {label} | {med:.1f} | {worst:.1f} | {rows} |")
    await app.close()


# --- 3. latency during a prune ---------------------------------------------------------


async def expire(url: str, rows: int) -> None:
    """Make the oldest ``rows`` kept done rows expired, then vacuum (a clean table)."""
    conn = await asyncpg.connect(url)
    await conn.execute(
        """UPDATE soniq_jobs SET expires_at = now() - interval '1 second'
           WHERE id IN (SELECT id FROM soniq_jobs WHERE status = 'done'
                        AND expires_at > now() ORDER BY created_at LIMIT $1)""",
        rows,
    )
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.close()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def latency(url: str, jobs: int, prune: str | None, expired: int, batch: int) -> str:
    """Latency enqueue -> handler start of jobs enqueued 10 ms apart to an idle worker.

    ``prune`` None: ``jobs`` jobs. Otherwise ``expired`` rows are expired (once the
    worker's own first maintenance sweep is over), the prune starts, and jobs are
    enqueued for as long as it runs: the figures are of those jobs only.
    """
    app = Soniq(database_url=url, log_level="WARNING", cleanup_interval=3600)
    waits: list[float] = []
    handled = asyncio.Event()
    wanted = [jobs if prune is None else 10**9]  # prune: set once it is over

    @app.job(name="bench.latency")
    async def probe(sent: float) -> None:
        waits.append((time.time() - sent) * 1000)
        if len(waits) >= wanted[0]:
            handled.set()

    worker = asyncio.create_task(app.run_worker(concurrency=64))
    await app.ensure_initialized()
    await asyncio.sleep(2.0)  # worker registered, listening, first maintenance sweep over
    pruner = Soniq(database_url=url, log_level="WARNING")
    await pruner.ensure_initialized()
    pruner.backend.prune_batch = batch  # type: ignore[attr-defined]
    note = ""
    if prune is None:
        for _ in range(jobs):
            await app.enqueue(probe, args={"sent": time.time()})
            await asyncio.sleep(0.01)
    else:
        await expire(url, expired)

        async def run_prune() -> int:
            if prune == "batched":
                return int(await pruner.backend.prune())
            conn = await asyncpg.connect(url)
            status = await conn.execute(LEGACY_PRUNE)
            await conn.close()
            return int(status.split()[-1])

        t0 = time.perf_counter()
        task = asyncio.create_task(run_prune())
        sent = 0
        while not task.done():
            await app.enqueue(probe, args={"sent": time.time()})
            sent += 1
            await asyncio.sleep(0.01)
        removed = await task
        took = time.perf_counter() - t0
        wanted[0] = sent
        if len(waits) >= sent:
            handled.set()
        batches = removed // batch + 1 if prune == "batched" else 1
        note = f"{removed:,} rows in {took:.2f}s, {batches} batch(es)"
    await asyncio.wait_for(handled.wait(), 120)
    await stop(worker)
    await pruner.close()
    await app.close()
    batched = f"batched prune ({batch}/batch, pause x{pg_backend.PRUNE_PAUSE:g})"
    label = {None: "idle", "batched": batched, "legacy": "legacy prune"}
    return (
        f"| {label[prune]} | {len(waits)} | {statistics.median(waits):.1f} "
        f"| {pct(waits, 99):.1f} | {max(waits):.1f} | {note} |"
    )


async def main(args: argparse.Namespace) -> None:
    url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_history"
    )
    empty = url + "_empty"
    await fresh(url)
    await fresh(empty)
    await build_history(url, args.done, args.dead)
    if args.ack_cost:
        await ack_cost(empty, args.ack_cost, args.repeat * 2)
    if args.drain:
        await drain_rates(url, empty, args.drain, args.repeat)
    if not args.skip_reads:
        await reads(url, args.repeat)
    if args.latency_jobs:
        print("\n## latency enqueue -> handler start, jobs 10 ms apart to an idle worker\n")
        print("| while | jobs | p50 ms | p99 ms | max ms | prune |\n|---|---:|---:|---:|---:|---|")
        for _ in range(args.prune_rounds):
            print(await latency(url, args.latency_jobs, None, 0, args.batch), flush=True)
            print(
                await latency(url, args.latency_jobs, "batched", args.expire, args.batch),
                flush=True,
            )
            if not args.skip_legacy:
                print(
                    await latency(url, args.latency_jobs, "legacy", args.expire, args.batch),
                    flush=True,
                )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--done", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--drain", type=int, default=20_000, help="jobs per drain run; 0: skip")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--expire", type=int, default=200_000, help="rows per prune run")
    parser.add_argument("--latency-jobs", type=int, default=300)
    parser.add_argument("--skip-legacy", action="store_true")
    parser.add_argument("--prune-rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=pg_backend.PRUNE_BATCH)
    parser.add_argument("--pause", type=float, default=pg_backend.PRUNE_PAUSE)
    parser.add_argument("--skip-reads", action="store_true")
    parser.add_argument("--ack-cost", type=int, default=20_000, help="jobs per run; 0: skip")
    args = parser.parse_args()
    pg_backend.PRUNE_PAUSE = args.pause
    asyncio.run(main(args))
