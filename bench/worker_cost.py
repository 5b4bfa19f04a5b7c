"""The worker's own CPU per job: claims and acks answered in Python, no storage behind them.

Usage:
    python bench/worker_cost.py --n 100000 --concurrency 64 --reps 5
    python bench/worker_cost.py --loop uvloop
    python bench/worker_cost.py --settings '{"job_logs": false}'   # what a feature costs

A drain's CPU is the worker's and the database's, and on this machine both move by ±15%
from one run to the next (bench/RESULTS.md). Here ``claim`` hands out ``ClaimedJob`` rows
built as the PostgreSQL backend builds them (decoded arguments, a lease per claim) and
``ack`` counts them, each after one pass through the event loop, as a round trip would
yield; every other verb is the memory backend's. So the figure is what ``Worker`` costs
per job, through ``app.run_worker`` exactly as an app runs it, and a change to the
worker's hot path can be compared on it in a few seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from support import run_on

from soniq import Soniq
from soniq.backends._common import decode_args
from soniq.backends.memory import MemoryBackend
from soniq.job import Ack, ClaimedJob
from soniq.settings import SoniqSettings

NAME = "bench_noop"
SETTINGS: dict[str, Any] = {}  # Soniq keyword settings for every run (--settings)


class InstantBackend(MemoryBackend):
    """``n`` jobs to claim; claims and acks cost one event-loop pass and no storage."""

    claim_ahead = True  # as PostgreSQL: the worker's claim-ahead path is the one measured

    def __init__(self, n: int, settings: SoniqSettings | None = None) -> None:
        super().__init__(settings)
        self.left = n
        self.ids = [str(uuid.UUID(int=i)) for i in range(n)]  # made before the clock starts
        self.acked = 0
        self.all_acked = asyncio.Event()
        self._total = n

    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        await asyncio.sleep(0)
        take = min(limit, self.left)
        self.left -= take
        lease, now = str(uuid.uuid4()), datetime.now(timezone.utc)
        jobs = []
        for i in range(take):
            args, _ = decode_args(f'{{"i": {i}}}')
            job = ClaimedJob(
                id=self.ids[self.left + i], job_name=NAME, args=args, queue="default",
                attempt=1, max_attempts=3, lease=lease, scheduled_at=now,
                created_at=now, priority=100,
            )  # fmt: skip
            jobs.append(job)
        return jobs

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        await asyncio.sleep(0)
        self.acked += len(acks)
        if self.acked >= self._total:
            self.all_acked.set()


async def one_run(n: int, concurrency: int) -> tuple[float, float]:
    """(jobs/s, CPU us/job) from the worker's start to the last ack."""
    backend = InstantBackend(n)
    app = Soniq(backend=backend, log_level="WARNING", **SETTINGS)
    await app.setup()

    @app.job(name=NAME)
    async def noop(i: int) -> None:
        return None

    t0, cpu0 = time.perf_counter(), time.process_time()
    worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
    await backend.all_acked.wait()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await app.close()
    return n / elapsed, cpu / n * 1e6


async def run(n: int, concurrency: int, reps: int) -> None:
    results = [await one_run(n, concurrency) for _ in range(reps)]
    cpus = [cpu for _, cpu in results]
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"worker n={n} c={concurrency} loop={loop}: CPU median {statistics.median(cpus):.2f} "
        f"us/job [{min(cpus):.2f}-{max(cpus):.2f}], "
        f"{statistics.median(rate for rate, _ in results):,.0f} jobs/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=100000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument(
        "--settings", default="{}", help="Soniq settings as JSON, e.g. '{\"job_timeout\": 0}'"
    )
    args = parser.parse_args()
    SETTINGS.update(json.loads(args.settings))
    run_on(args.loop, run(args.n, args.concurrency, args.reps))


if __name__ == "__main__":
    main()
