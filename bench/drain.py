"""Drain N pre-enqueued no-op jobs with one in-process worker; report rate and RSS growth.

Usage:
    python bench/drain.py --backend postgres --n 100000 --concurrency 64
    python bench/drain.py --backend sqlite --n 20000 --concurrency 16

PostgreSQL: uses $BENCH_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/soniq_bench_drain
(dropped and recreated). RSS is read from /proc/self/status after 10% of the jobs
and at the end, so start-up allocations are not counted as growth.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time

from soniq import Soniq


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def fresh_pg(url: str) -> None:
    import asyncpg

    admin = url.rsplit("/", 1)[0] + "/postgres"
    name = url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def run(backend: str, n: int, concurrency: int) -> None:
    if backend == "postgres":
        url = os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_drain"
        )
        await fresh_pg(url)
    else:
        url = os.path.join(tempfile.mkdtemp(), "bench.db")
    app = Soniq(database_url=url, log_level="WARNING", pool_max_size=max(20, concurrency + 4))
    await app.setup()
    seen = 0
    marks: dict[str, float] = {}
    done = asyncio.Event()

    @app.job(name="bench_noop")
    async def noop(i: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n // 10:
            marks["rss10"] = rss_kib()
            marks["t10"] = time.perf_counter()
        if seen == n:
            done.set()

    for start in range(0, n, 5000):
        await app.enqueue_many(noop, [{"i": i} for i in range(start, min(n, start + 5000))])
    t0 = time.perf_counter()
    worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
    await done.wait()
    elapsed = time.perf_counter() - t0
    steady = (n - n // 10) / (time.perf_counter() - marks["t10"])
    rss_end = rss_kib()
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await app.close()
    growth = (rss_end - marks["rss10"]) / marks["rss10"] * 100
    print(
        f"{backend} n={n} c={concurrency}: {n / elapsed:,.0f} jobs/s overall, "
        f"{steady:,.0f} jobs/s after the first 10%; RSS {marks['rss10'] / 1024:.1f} MiB -> "
        f"{rss_end / 1024:.1f} MiB ({growth:+.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    asyncio.run(run(args.backend, args.n, args.concurrency))


if __name__ == "__main__":
    main()
