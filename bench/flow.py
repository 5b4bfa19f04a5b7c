"""What flow control costs an app that uses none of it: drain rate before/after, alternated.

Usage (two source trees, e.g. ``git archive <rev> soniq bench | tar -x -C DIR``):

    python bench/flow.py --before /tmp/bench_A --after /tmp/bench_B --rounds 6 \\
        --n 50000 --concurrency 64
    python bench/flow.py --before /tmp/bench_A --after /tmp/bench_B --hotpath

Drain mode runs each tree's own ``bench/drain.py`` (one in-process worker, an unlimited
queue, PostgreSQL at $BENCH_DATABASE_URL's server, one database per tree), alternating
before/after so that a noisy machine hurts both alike, and prints the median and best
steady rates, their after/before ratios, and the CPU seconds of each run.

Hotpath mode drains 200,000 jobs through the worker with a backend that costs nothing (it
claims from a counter and discards acks), so the worker's own Python per job is all that
is measured (CPU microseconds per job).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys

HOTPATH = r"""
import asyncio, time, uuid
from soniq import Soniq
from soniq.job import ClaimedJob

N = 200_000


class Free:
    name = "free"
    supports_transactions = False

    def __init__(self):
        self.left, self.lease = N, str(uuid.uuid4())

    async def claim(self, queues, worker_id, limit):
        n = min(limit, self.left)
        self.left -= n
        return [ClaimedJob(str(i), "n", {"i": i}, "default", 1, 4, self.lease) for i in range(n)]

    async def heartbeat(self, worker_id):
        return True

    async def queue_limits(self):
        return []

    async def webhook_list(self):
        return []

    def __getattr__(self, name):  # every other verb: instant, returns nothing
        async def nothing(*args, **kwargs):
            return None

        return nothing


async def main():
    app = Soniq(backend=Free(), job_logs=False, log_level="WARNING")

    @app.job(name="n")
    async def noop(i: int):
        pass

    t0 = time.process_time()
    await app._make_worker().run(concurrency=64, run_once=True)
    print(f"{(time.process_time() - t0) / N * 1e6:.2f}")


asyncio.run(main())
"""


def drain(tree: str, n: int, concurrency: int, db: str) -> tuple[float, float]:
    """(steady jobs/s, CPU seconds) of one run of ``tree``'s bench/drain.py."""
    base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/x")
    url = f"{base.rsplit('/', 1)[0]}/{db}"
    env = {**os.environ, "PYTHONPATH": tree, "BENCH_DATABASE_URL": url}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    command = [f"{tree}/bench/drain.py", "--n", str(n), "--concurrency", str(concurrency)]
    out = subprocess.run(
        [sys.executable, *command], env=env, capture_output=True, text=True, check=True
    ).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    steady = re.search(r"([\d,]+) jobs/s after the first 10%", out)
    assert steady is not None, out
    return float(steady.group(1).replace(",", "")), cpu


def hotpath(tree: str) -> float:
    env = {**os.environ, "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", HOTPATH], env=env, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True)
    parser.add_argument("--after", required=True)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--hotpath", action="store_true")
    args = parser.parse_args()
    trees = {"before": args.before, "after": args.after}
    rates: dict[str, list[float]] = {k: [] for k in trees}
    cpus: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(args.rounds):
        for name, tree in trees.items():
            if args.hotpath:
                rates[name].append(hotpath(tree))
                print(f"round {i + 1} {name:6s} {rates[name][-1]:.2f} us CPU per job", flush=True)
                continue
            rate, cpu = drain(tree, args.n, args.concurrency, f"soniq_bench_flow_{name}")
            rates[name].append(rate)
            cpus[name].append(cpu)
            print(f"round {i + 1} {name:6s} {rate:9,.0f} jobs/s  cpu {cpu:.2f}s", flush=True)
    b, a = rates["before"], rates["after"]
    if args.hotpath:
        print(f"median: before {statistics.median(b):.2f}, after {statistics.median(a):.2f} us "
              f"CPU per job (+{statistics.median(a) - statistics.median(b):.2f})")  # fmt: skip
        return
    print(
        f"median: before {statistics.median(b):,.0f}, after {statistics.median(a):,.0f} jobs/s "
        f"(ratio {statistics.median(a) / statistics.median(b):.2f}); best: {max(b):,.0f} vs "
        f"{max(a):,.0f} ({max(a) / max(b):.2f}); CPU per run: {statistics.mean(cpus['before']):.2f}"
        f" vs {statistics.mean(cpus['after']):.2f} s"
    )


if __name__ == "__main__":
    main()
