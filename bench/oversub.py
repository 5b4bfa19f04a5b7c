"""Worker processes sharing one backlog: rate, and how many claims it took.

Usage:
    python bench/oversub.py --procs 1,2,4 --n 20000 --concurrency 64 [--sleep-ms 0]

Each process runs one worker (``app.run_worker``) on the same PostgreSQL queue until
every job has run; the claim verb is counted in each process, so the output shows
what oversubscription (more worker processes than cores) does to the number and size
of claims, not only to the rate. PostgreSQL: $BENCH_DATABASE_URL or
postgresql://postgres@127.0.0.1:5432/soniq_bench_oversub (dropped and recreated).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import time
from typing import Any

from support import fresh_pg

from soniq import Soniq

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/soniq_bench_oversub"


def make_app(url: str, concurrency: int, sleep_ms: float) -> Soniq:
    app = Soniq(database_url=url, log_level="WARNING", pool_max_size=concurrency + 4)

    @app.job(name="bench_noop")
    async def noop(i: int) -> None:
        if sleep_ms:
            await asyncio.sleep(sleep_ms / 1000)

    return app


def child(url: str, concurrency: int, sleep_ms: float, go: Any, out: Any) -> None:
    from soniq.backends.postgres import PostgresBackend

    counts = {"claims": 0, "empty": 0, "jobs": 0}
    claim = PostgresBackend.claim

    async def counted(self: PostgresBackend, *args: Any, **kwargs: Any) -> Any:
        jobs = await claim(self, *args, **kwargs)
        counts["claims"] += 1
        counts["jobs"] += len(jobs)
        counts["empty"] += not jobs
        return jobs

    PostgresBackend.claim = counted  # type: ignore[method-assign]

    async def run() -> None:
        app = make_app(url, concurrency, sleep_ms)
        await app.ensure_initialized()
        go.wait()
        worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
        while True:  # until the queue is empty and nothing runs
            await asyncio.sleep(0.02)
            stats = await app.get_queue_stats()
            if not any(s["queued"] or s["processing"] for s in stats):
                break
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await app.close()

    asyncio.run(run())
    out.put(counts)


async def prefill(url: str, n: int) -> None:
    import asyncpg

    await fresh_pg(url)
    app = make_app(url, 1, 0)
    await app.setup()
    for start in range(0, n, 5000):
        await app.enqueue_many("bench_noop", [{"i": i} for i in range(start, min(n, start + 5000))])
    await app.close()
    conn = await asyncpg.connect(url)
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.close()


def one(url: str, procs: int, n: int, concurrency: int, sleep_ms: float) -> dict[str, float]:
    asyncio.run(prefill(url, n))
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    children = [
        ctx.Process(target=child, args=(url, concurrency, sleep_ms, go, out)) for _ in range(procs)
    ]
    for p in children:
        p.start()
    time.sleep(2.0)  # every child connected and waiting
    t0 = time.perf_counter()
    go.set()
    counts = [out.get(timeout=600) for _ in children]
    elapsed = time.perf_counter() - t0 - 0.02  # the children's last poll
    for p in children:
        p.join()
    claims = sum(c["claims"] for c in counts)
    jobs = sum(c["jobs"] for c in counts)
    return {
        "rate": n / elapsed,
        "claims": claims,
        "empty": sum(c["empty"] for c in counts),
        "batch": jobs / max(1, claims - sum(c["empty"] for c in counts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--procs", default="1,2,4")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sleep-ms", type=float, default=0.0, help="handler duration")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    print(f"n={args.n} concurrency={args.concurrency} handler={args.sleep_ms} ms, "
          f"median of {args.reps}")  # fmt: skip
    for procs in (int(p) for p in args.procs.split(",")):
        runs = [one(url, procs, args.n, args.concurrency, args.sleep_ms) for _ in range(args.reps)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        rates = " · ".join(f"{r['rate']:,.0f}" for r in runs)
        print(
            f"{procs} process(es): {med['rate']:,.0f} jobs/s ({rates}); "
            f"{med['claims']:,.0f} claims, {med['empty']:,.0f} empty, "
            f"{med['batch']:.1f} jobs per non-empty claim"
        )


if __name__ == "__main__":
    main()
