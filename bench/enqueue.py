"""Enqueue N jobs through ``enqueue_many`` in chunks; report jobs/s and Python CPU per job.

Usage:
    python bench/enqueue.py --n 50000 --chunk 1000 --reps 3
    python bench/enqueue.py --dedup            # every row has its own dedup key (unique=True)
    python bench/enqueue.py --chunk 5 --n 5000 # small batches

Uses $BENCH_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/soniq_bench_enqueue
(dropped and recreated). ``soniq_jobs`` is emptied before each repetition, so every
repetition inserts into the same, empty table (as the shared harness's fresh database
does). "CPU" is this process's CPU time (``time.process_time``) over the enqueue loop:
building, validating and encoding the jobs; the server's share is the rest of the
wall time. ``build`` is the CPU of building the same jobs without writing them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

from support import fresh_pg

from soniq import Soniq
from soniq.app import STREAM_CHUNK
from soniq.enqueue import EnqueueOptions, job_chunks


async def run(n: int, chunk: int, reps: int, dedup: bool) -> None:
    url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_enqueue"
    )
    await fresh_pg(url)
    app = Soniq(database_url=url, log_level="WARNING")
    await app.setup()

    @app.job(name="bench_noop", unique=dedup)
    async def noop(i: int) -> None:
        return None

    await app.ensure_initialized()
    pool = app.backend.pool
    batches = [
        [{"i": i} for i in range(start, min(n, start + chunk))] for start in range(0, n, chunk)
    ]
    rates, cpus, builds = [], [], []
    for rep in range(reps):
        await pool.execute("TRUNCATE soniq_jobs")
        t0, c0 = time.perf_counter(), time.process_time()
        for batch in batches:
            await app.enqueue_many(noop, batch)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        count = await pool.fetchval("SELECT count(*) FROM soniq_jobs")
        assert count == n, (count, n)
        c0 = time.process_time()
        options = EnqueueOptions()
        registry, settings = app.registry, app.settings
        for batch in batches:  # built as enqueue_many builds it, nothing written
            for _ in job_chunks(registry, settings, noop, batch, options, None, STREAM_CHUNK):
                pass
        build = time.process_time() - c0
        rates.append(n / wall)
        cpus.append(cpu / n * 1e6)
        builds.append(build / n * 1e6)
        print(
            f"rep {rep + 1}: {n / wall:,.0f} jobs/s, CPU {cpu / n * 1e6:.2f} us/job "
            f"(build {build / n * 1e6:.2f} us/job)"
        )
    await app.close()
    print(
        f"n={n} chunk={chunk} dedup={dedup}: median {statistics.median(rates):,.0f} jobs/s, "
        f"CPU {statistics.median(cpus):.2f} us/job, build {statistics.median(builds):.2f} us/job"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--chunk", type=int, default=1_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--dedup", action="store_true", help="give every row a dedup key")
    args = parser.parse_args()
    asyncio.run(run(args.n, args.chunk, args.reps, args.dedup))


if __name__ == "__main__":
    main()
