"""Dashboard page times with 1,000,000 rows in soniq_jobs (mostly done) on PostgreSQL.

Usage:
    python bench/dashboard.py [--rows 1000000] [--repeat 5]
    python bench/dashboard.py --drain 50000 [--repeat 3]   # claim+ack cost of the indexes

Uses $BENCH_DATABASE_URL or postgresql://postgres@127.0.0.1:5432/soniq_bench_dashboard
(dropped and recreated). Rows are written by one INSERT ... SELECT generate_series:
95% done (completed over the last 24 h), 4% queued, 1% cancelled, over 4 queues and
8 tasks, plus 2,000 dead letters. Times are server time: requests go through the
ASGI app in-process (httpx.ASGITransport), median of --repeat runs after one warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import asyncpg
import httpx
from support import drain_rate, fresh_pg

from soniq import Soniq
from soniq.dashboard import create_dashboard_app

FILL = """
INSERT INTO soniq_jobs (id, job_name, args, queue, priority, status, attempts, max_attempts,
                        scheduled_at, created_at, updated_at, started_at, completed_at,
                        expires_at, result)
SELECT gen_random_uuid(), 'tasks.t' || (i % 8), jsonb_build_object('n', i, 'to', 'user' || i),
       'q' || (i % 4), 100,
       CASE WHEN i % 100 < 95 THEN 'done' WHEN i % 100 < 99 THEN 'queued' ELSE 'cancelled' END,
       1, 4, t, t, t, t,
       CASE WHEN i % 100 < 95 THEN t + interval '50 ms' END,
       CASE WHEN i % 100 < 95 THEN now() + interval '7 days' END,
       CASE WHEN i % 100 < 95 THEN '1'::jsonb END
FROM (SELECT i, now() - (interval '24 hours' * ($1::int - i) / $1::int) AS t
      FROM generate_series(1, $1::int) AS i) s
"""
DEAD = """
INSERT INTO soniq_dead_letter_jobs (id, job_name, args, queue, priority, attempts,
    max_attempts, last_error, dead_lettered_at)
SELECT gen_random_uuid(), 'tasks.t' || (i % 8), '{}'::jsonb, 'q' || (i % 4), 100, 4, 4,
       'RuntimeError: boom', now() - interval '1 minute' * i
FROM generate_series(1, 2000) AS i
"""


async def fresh(url: str, rows: int) -> None:
    await fresh_pg(url)
    app = Soniq(database_url=url, log_level="WARNING")
    await app.setup()
    await app.close()
    conn = await asyncpg.connect(url)
    started = time.perf_counter()
    if rows == 0:
        await conn.close()
        return
    await conn.execute(FILL, rows)
    await conn.execute(DEAD)
    await conn.execute("VACUUM ANALYZE soniq_jobs")
    await conn.execute("VACUUM ANALYZE soniq_dead_letter_jobs")
    print(f"filled {rows:,} rows in {time.perf_counter() - started:.1f}s")
    await conn.close()


async def deep_cursor(url: str, depth: int) -> str:
    """The cursor of page ``depth / 50``: the row at that position, newest first."""
    from soniq.dashboard.params import encode_cursor

    conn = await asyncpg.connect(url)
    row = await conn.fetchrow(
        "SELECT created_at, id FROM soniq_jobs ORDER BY created_at DESC, id DESC OFFSET $1 LIMIT 1",
        depth,
    )
    await conn.close()
    return encode_cursor(row["created_at"], str(row["id"]))


async def main(rows: int, repeat: int) -> None:
    url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_dashboard"
    )
    await fresh(url, rows)
    cursor = await deep_cursor(url, 25_000)
    app = Soniq(database_url=url, log_level="WARNING")
    asgi = create_dashboard_app(app)
    paths = {
        "overview /": "/",
        "jobs page 1": "/jobs",
        "jobs page 500 (cursor)": f"/jobs?cursor={cursor}",
        "jobs status=queued": "/jobs?status=queued",
        "jobs status=done": "/jobs?status=done",
        "jobs task=tasks.t3": "/jobs?task=tasks.t3",
        "jobs queue=q2": "/jobs?queue=q2",
        "jobs search 'user4242'": "/jobs?q=user4242",
        "jobs search by id": None,
        "dead letters": "/dead-letter",
        "workers": "/workers",
        "api stats": "/api/stats",
        "api timeline 24h": "/api/jobs/timeline?hours=24",
    }
    transport = httpx.ASGITransport(app=asgi, client=("127.0.0.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as http:
        some = (await http.get("/api/jobs?limit=1")).json()["jobs"][0]["id"]
        paths["jobs search by id"] = f"/jobs?q={some}"
        print("| page | median ms | max ms |\n|---|---:|---:|")
        for label, path in paths.items():
            times = []
            for i in range(repeat + 1):
                t0 = time.perf_counter()
                r = await http.get(path or "/")
                elapsed = (time.perf_counter() - t0) * 1000
                assert r.status_code == 200, (path, r.status_code, r.text[:200])
                if i:
                    times.append(elapsed)
            print(f"| {label} | {statistics.median(times):.0f} | {max(times):.0f} |")
    await app.close()


DASHBOARD_INDEXES = (
    "soniq_jobs_recent_idx", "soniq_jobs_live_recent_idx", "soniq_jobs_task_recent_idx",
    "soniq_jobs_completed_idx",
)  # fmt: skip


async def drain_once(url: str, n: int, with_indexes: bool) -> float:
    """Enqueue ``n`` no-op jobs, then drain them with one worker (concurrency 64): jobs/s."""
    await fresh(url, 0)
    if not with_indexes:
        conn = await asyncpg.connect(url)
        for name in DASHBOARD_INDEXES:
            await conn.execute(f"DROP INDEX {name}")
        await conn.close()
    return await drain_rate(url, n)


async def drain(n: int, repeat: int) -> None:
    """Alternate runs with and without the dashboard's indexes (the machine is shared)."""
    url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/soniq_bench_dashboard"
    )
    rates: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for with_indexes in (False, True):
            rates[with_indexes].append(await drain_once(url, n, with_indexes))
    for with_indexes, values in rates.items():
        label = "with 0004 indexes" if with_indexes else "without them    "
        runs = ", ".join(f"{v:,.0f}" for v in values)
        print(f"{label}: median {statistics.median(values):,.0f} jobs/s  ({runs})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--drain", type=int, default=0, help="jobs per drain run")
    args = parser.parse_args()
    if args.drain:
        asyncio.run(drain(args.drain, args.repeat))
    else:
        asyncio.run(main(args.rows, args.repeat))
