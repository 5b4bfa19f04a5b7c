"""Drain N pre-enqueued no-op jobs with one in-process worker; report rate, CPU and RSS growth.

Usage:
    python bench/drain.py --backend postgres --n 100000 --concurrency 64
    python bench/drain.py --backend sqlite --n 20000 --concurrency 16 --loop uvloop

PostgreSQL: uses $BENCH_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/soniq_bench_drain
(dropped and recreated). RSS is read from /proc/self/status after 10% of the jobs
and at the end, so start-up allocations are not counted as growth. CPU is this process's
(all threads: the event loop, aiosqlite's thread) over the drain, per job; on PostgreSQL
"server" is the CPU of every local postgres process over the same span, per job
(``support.server_cpu_seconds``: meaningful when the server runs on this machine).
``--tracemalloc N`` prints the N allocation sites that grew most between those two points
(slow: for finding a leak, not for rates).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time
from typing import Any

from support import fresh_pg, run_on, server_cpu_seconds

from soniq import Soniq


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def run(backend: str, n: int, concurrency: int, trace: int) -> None:
    if backend == "postgres":
        url = os.environ.get(
            "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_drain"
        )
        await fresh_pg(url)
    else:
        url = os.path.join(tempfile.mkdtemp(prefix="soniq-drain-"), "bench.db")
    app = Soniq(database_url=url, log_level="WARNING", pool_max_size=max(20, concurrency + 4))
    await app.setup()
    seen = 0
    marks: dict[str, Any] = {}
    done = asyncio.Event()

    @app.job(name="bench_noop")
    async def noop(i: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n // 10:
            marks["rss10"] = rss_kib()
            marks["t10"] = time.perf_counter()
            if trace:
                import tracemalloc

                marks["snap10"] = tracemalloc.take_snapshot()
        if seen == n:
            done.set()

    for start in range(0, n, 5000):
        await app.enqueue_many(noop, [{"i": i} for i in range(start, min(n, start + 5000))])
    t0, cpu0, server0 = time.perf_counter(), time.process_time(), server_cpu_seconds()
    worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
    await done.wait()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    server = server_cpu_seconds() - server0
    steady = (n - n // 10) / (time.perf_counter() - marks["t10"])
    rss_end = rss_kib()
    if trace:
        import tracemalloc

        growth_sites = tracemalloc.take_snapshot().compare_to(marks["snap10"], "lineno")
        for stat in growth_sites[:trace]:
            print(stat)
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await app.close()
    if backend == "sqlite":
        shutil.rmtree(os.path.dirname(url), ignore_errors=True)  # 1M jobs: about a GiB
    growth = (rss_end - marks["rss10"]) / marks["rss10"] * 100
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"{backend} n={n} c={concurrency} loop={loop}: {n / elapsed:,.0f} jobs/s overall, "
        f"{steady:,.0f} jobs/s after the first 10%; CPU {cpu / n * 1e6:.1f} us/job"
        + (f" (server {server / n * 1e6:.1f})" if backend == "postgres" else "")
        + "; "
        f"RSS {marks['rss10'] / 1024:.1f} MiB -> {rss_end / 1024:.1f} MiB ({growth:+.1f}%)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--tracemalloc", type=int, default=0, metavar="N")
    args = parser.parse_args()
    if args.tracemalloc:
        import tracemalloc

        tracemalloc.start()
    run_on(args.loop, run(args.backend, args.n, args.concurrency, args.tracemalloc))


if __name__ == "__main__":
    main()
