"""Drain rate with the observability features on, as a ratio to all of them off.

Usage:
    python bench/observability.py --n 30000 --concurrency 64 --rounds 3

Each round drains N pre-enqueued jobs twice on a fresh PostgreSQL database
($BENCH_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/soniq_bench_obs):
"off" (job logs disabled, no metrics, no webhook) and "on" (job logs on,
app.metrics wired, one webhook registered for job.completed to a receiver on
127.0.0.1 that answers 200; --features picks a subset). Every job logs one
INFO line in both runs: the job code is the same, only the features differ. The webhook
deliveries run in the same process, as in a real worker.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from support import fresh_pg

from soniq import Soniq

HOOK_EVENTS = ["job.completed"]
PENDING = "SELECT count(*) FROM soniq_webhook_deliveries WHERE status = 'pending'"

# The receiver runs in its own process, as it would in production: in the worker's
# process its threads would compete with the worker for the GIL.
RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real receivers do

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

ThreadingHTTPServer.request_queue_size = 128  # the default backlog of 5 drops connections
server = ThreadingHTTPServer(("127.0.0.1", 0), Ok)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


async def drain(
    url: str, n: int, concurrency: int, on: set[str], hook_url: str
) -> tuple[float, float]:
    """(jobs/s, this process's CPU µs per job): CPU time is what the features add, and it
    is far less disturbed than wall time by other load on a shared machine."""
    await fresh_pg(url)
    settings: dict[str, Any] = {"log_level": "WARNING", "pool_max_size": concurrency + 4}
    app = Soniq(database_url=url, job_logs="logs" in on, **settings)
    await app.setup()
    seen = 0
    done = asyncio.Event()
    log = logging.getLogger("bench.job")

    @app.job(name="bench_noop")
    async def noop(i: int) -> None:
        nonlocal seen
        log.info("job %d ran", i)  # the same job code either way: only the features differ
        seen += 1
        if seen == n:
            done.set()

    if "metrics" in on:
        app.metrics  # noqa: B018 - wiring the feature is accessing it
    if "webhook" in on:
        await app.webhooks.register(hook_url, events=HOOK_EVENTS, allow_private=True)
    for start in range(0, n, 5000):
        await app.enqueue_many(noop, [{"i": i} for i in range(start, min(n, start + 5000))])
    t0, cpu0 = time.perf_counter(), time.process_time()
    worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
    await done.wait()
    if "webhook" in on:  # the deliveries' CPU counts too: wait until they are all sent
        async with app.backend.acquire() as conn:
            while await conn.fetchval(PENDING):
                await asyncio.sleep(0.05)
    rate = n / (time.perf_counter() - t0)
    cpu_us = (time.process_time() - cpu0) / n * 1e6
    worker.cancel()
    await asyncio.gather(worker, return_exceptions=True)
    await app.close()
    return rate, cpu_us


async def run(n: int, concurrency: int, rounds: int, features: set[str]) -> None:
    url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_obs"
    )
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert receiver.stdout is not None
    hook_url = f"http://127.0.0.1:{receiver.stdout.readline().strip()}/hook"
    rates: dict[bool, list[float]] = {False: [], True: []}
    cpus: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(rounds):
        for on in (False, True):  # interleaved, so machine noise hits both alike
            chosen = features if on else set()
            rate, cpu = await drain(url, n, concurrency, chosen, hook_url)
            rates[on].append(rate)
            cpus[on].append(cpu)
    receiver.terminate()
    receiver.wait(10)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"n={n} c={concurrency} rounds={rounds}")
    print(f"  all off: median {off:,.0f} jobs/s  {[round(r) for r in rates[False]]}")
    label = "+".join(sorted(features))
    print(f"  {label} on: median {on:,.0f} jobs/s  {[round(r) for r in rates[True]]}")
    print(f"  ratio on/off: {on / off:.0%}")
    cpu_off, cpu_on = statistics.median(cpus[False]), statistics.median(cpus[True])
    print(f"  worker CPU per job: off {cpu_off:.0f} µs, on {cpu_on:.0f} µs")
    print(f"  CPU-bound ratio (off/on CPU per job): {cpu_off / cpu_on:.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=30000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--features", default="logs,metrics,webhook", help="comma-separated")
    parser.add_argument(
        "--hook-events", default="job.completed", help="the webhook's events (comma-separated)"
    )
    args = parser.parse_args()
    HOOK_EVENTS[:] = args.hook_events.split(",")
    features = {f.strip() for f in args.features.split(",") if f.strip()}
    asyncio.run(run(args.n, args.concurrency, args.rounds, features))


if __name__ == "__main__":
    main()
