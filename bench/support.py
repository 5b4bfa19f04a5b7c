"""What the bench scripts share. They run as ``python bench/<script>.py``, which puts
this directory on ``sys.path``: ``from support import ...``."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Coroutine
from typing import Any

from soniq import Soniq


async def fresh_pg(url: str) -> None:
    """Drop the database of ``url`` (``Soniq.setup()`` creates it again)."""
    import asyncpg

    admin, name = url.rsplit("/", 1)[0] + "/postgres", url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(admin)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


def run_on(loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on asyncio's own event loop or on uvloop (``--loop``)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def server_cpu_seconds() -> float:
    """CPU time (user + system) of every ``postgres`` process on this machine so far.

    The difference across a run is the server's CPU for it, its backends and background
    processes (WAL writer, autovacuum) together, when the server runs here and nothing
    else uses it. On two cores shared with the client, that is half of what bounds a
    drain: the client's own CPU (``time.process_time``) is the other half.
    """
    ticks = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read()
        except OSError:  # gone since listdir
            continue
        name, _, rest = fields.partition(" (")[2].rpartition(") ")
        if name == "postgres":
            utime, stime = rest.split()[11:13]
            ticks += int(utime) + int(stime)
    return ticks / os.sysconf("SC_CLK_TCK")


async def drain_rate(
    url: str, n: int, *, concurrency: int = 64, name: str = "bench_noop", **settings: Any
) -> float:
    """Enqueue ``n`` no-op jobs, then drain them with one in-process worker: jobs/s from
    the worker's start to the last handler's."""
    app = Soniq(database_url=url, log_level="WARNING", pool_max_size=concurrency + 8, **settings)
    seen = 0
    done = asyncio.Event()

    @app.job(name=name)
    async def noop(i: int) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            done.set()

    for start in range(0, n, 5000):
        await app.enqueue_many(noop, [{"i": i} for i in range(start, min(n, start + 5000))])
    started = time.perf_counter()
    worker = asyncio.create_task(app.run_worker(concurrency=concurrency))
    await done.wait()
    rate = n / (time.perf_counter() - started)
    worker.cancel()
    try:
        await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), 30)
    except asyncio.TimeoutError:
        print("(a worker took over 30 s to stop; left behind)", flush=True)
    await app.close()
    return rate
