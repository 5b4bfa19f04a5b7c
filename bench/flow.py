"""What flow control costs an app that uses none of it: drain rate before/after, alternated.

Usage (two source trees, e.g. ``git archive <rev> soniq bench | tar -x -C DIR``):

    python bench/flow.py --before /tmp/bench_A --after /tmp/bench_B --rounds 6 \\
        --n 50000 --concurrency 64
    python bench/flow.py --before /tmp/bench_A --after /tmp/bench_B --hotpath
    python bench/flow.py --before /tmp/bench_A --after /tmp/bench_B --triggers

Drain mode runs each tree's own ``bench/drain.py`` (one in-process worker, an unlimited
queue, PostgreSQL at $BENCH_DATABASE_URL's server, one database per tree), alternating
before/after so that a noisy machine hurts both alike, and prints the median and best
steady rates, their after/before ratios, and the CPU seconds of each run.

Triggers mode times the status UPDATEs a drain makes (claim, then done) on 30,000 rows of a
fresh database migrated by the after tree, with its triggers enabled vs disabled, alternated.

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


TRIGGERS = r"""
import asyncio, statistics, sys, time
import asyncpg
from soniq.backends.migrations_pg import apply_migrations

URL, ROUNDS, N = sys.argv[1], int(sys.argv[2]), 30000
CLAIM = ("UPDATE soniq_jobs SET status = 'processing', attempts = attempts + 1, "
         "lease = gen_random_uuid(), started_at = now(), updated_at = now() "
         "WHERE status = 'queued'")
DONE = ("UPDATE soniq_jobs SET status = 'done', completed_at = now(), updated_at = now(), "
        "expires_at = now(), lease = NULL WHERE status = 'processing'")


async def once(conn):
    await conn.execute("TRUNCATE soniq_jobs")
    await conn.execute("INSERT INTO soniq_jobs (id, job_name) "
                       f"SELECT gen_random_uuid(), 'x' FROM generate_series(1, {N})")
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    t0 = time.perf_counter()
    await conn.execute(CLAIM)
    await conn.execute(DONE)
    return (time.perf_counter() - t0) / N * 1e6


async def main():
    admin = await asyncpg.connect(URL.rsplit("/", 1)[0] + "/postgres")
    name = URL.rsplit("/", 1)[1]
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()
    await apply_migrations(URL)
    conn = await asyncpg.connect(URL)
    runs = {"on": [], "off": []}
    for _ in range(ROUNDS):
        for state in runs:
            verb = "ENABLE" if state == "on" else "DISABLE"
            await conn.execute(f"ALTER TABLE soniq_jobs {verb} TRIGGER USER")
            runs[state].append(await once(conn))
    await conn.execute("ALTER TABLE soniq_jobs ENABLE TRIGGER USER")
    for state, r in runs.items():
        print(f"triggers {state:3s}: min {min(r):.2f}, median {statistics.median(r):.2f} "
              "us per row (claim + done UPDATE)")


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
    parser.add_argument(
        "--triggers", action="store_true",
        help="the after tree's triggers on vs off, on status UPDATEs of 30,000 rows",
    )  # fmt: skip
    args = parser.parse_args()
    if args.triggers:
        base = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/x")
        url = f"{base.rsplit('/', 1)[0]}/soniq_bench_flow_triggers"
        env = {**os.environ, "PYTHONPATH": args.after}
        subprocess.run([sys.executable, "-c", TRIGGERS, url, str(args.rounds)], env=env, check=True)
        return
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
    paired = statistics.median(x / y for x, y in zip(a, b, strict=True))
    print(f"median of the rounds' after/before ratios (each pair run back to back): {paired:.2f}")
    print(
        f"median: before {statistics.median(b):,.0f}, after {statistics.median(a):,.0f} jobs/s "
        f"(ratio {statistics.median(a) / statistics.median(b):.2f}); best: {max(b):,.0f} vs "
        f"{max(a):,.0f} ({max(a) / max(b):.2f}); CPU per run: {statistics.mean(cpus['before']):.2f}"
        f" vs {statistics.mean(cpus['after']):.2f} s"
    )


if __name__ == "__main__":
    main()
