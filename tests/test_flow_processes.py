"""Flow control across REAL worker processes on PostgreSQL (soniq/flow.py).

Limits are enforced in the claim, so they must hold however many processes claim:
three worker processes share a queue limited to 2 running jobs, and a queue limited
to 10 starts per second. Handlers record when they start and end in a table of the
same database (the host's clock, read where the handler starts and ends), and the
tests check the record. A last test cancels a running sync and a running async job in a
worker process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import ScriptProcesses
from tests.worker_support import connect

WORKER_SCRIPT = """
import asyncio, logging, os, sys
from datetime import datetime, timezone

import asyncpg

from soniq import JobContext, Soniq

URL = os.environ["FLOW_DB_URL"]
logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                    format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s")
app = Soniq(database_url=URL, heartbeat_interval=0.2, poll_interval=0.2, pool_min_size=1,
            error_retry_delay=0.2, shutdown_timeout=5)

SPAN = "INSERT INTO spans (job_id, kind, pid, at) VALUES ($1, $2, $3, $4)"


async def mark(job_id, kind):
    at = datetime.now(timezone.utc)  # when the handler got here, not when the row is written
    async with app.backend.acquire() as conn:
        await conn.execute(SPAN, job_id, kind, os.getpid(), at)


@app.job(name="flow.narrow", queue="narrow")
async def narrow(n: int, ctx: JobContext):
    await mark(ctx.job_id, "start")
    await asyncio.sleep(0.15)
    await mark(ctx.job_id, "end")


@app.job(name="flow.rated", queue="rated")
async def rated(n: int, ctx: JobContext):
    await mark(ctx.job_id, "start")


@app.job(name="flow.async_block", queue="block")
async def async_block(ctx: JobContext):
    await mark(ctx.job_id, "start")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        await asyncio.shield(mark(ctx.job_id, "cancelled"))
        raise


@app.job(name="flow.sync_block", queue="block")
def sync_block(ctx: JobContext):
    async def record(kind):
        at = datetime.now(timezone.utc)
        conn = await asyncpg.connect(URL)
        try:
            await conn.execute(SPAN, ctx.job_id, kind, os.getpid(), at)
        finally:
            await conn.close()

    asyncio.run(record("start"))
    if ctx.cancelled.wait(30):  # a sync handler polls or waits on ctx.cancelled
        asyncio.run(record("saw-cancel"))


async def main():
    await app.run_worker(concurrency=int(os.environ.get("FLOW_CONCURRENCY", "4")))
    await app.close()


asyncio.run(main())
"""

SPANS_TABLE = """
CREATE TABLE spans (job_id uuid NOT NULL, kind text NOT NULL, pid int NOT NULL,
                    at timestamptz NOT NULL)
"""


class Workers(ScriptProcesses):
    """Worker processes of the script above; all are stopped (SIGTERM, then SIGKILL after 10 s)
    at the end of the test."""

    end_signal = signal.SIGTERM

    def __init__(self, url: str, tmp_path: Path) -> None:
        super().__init__(tmp_path, "flow_worker.py", WORKER_SCRIPT, FLOW_DB_URL=url)

    def start(self, n: int, concurrency: int = 4) -> None:
        for _ in range(n):
            self.spawn(FLOW_CONCURRENCY=str(concurrency))

    def all_logs(self) -> str:
        return "\n".join(self.log(proc) for proc in self.procs)


@pytest.fixture
def workers(pg_url: str, tmp_path: Path) -> Iterator[Workers]:
    with Workers(pg_url, tmp_path) as w:
        yield w


@pytest.fixture
async def app(pg_url: str) -> Any:
    async with connect(pg_url) as conn:
        await conn.execute(SPANS_TABLE)
    instance = Soniq(database_url=pg_url, enqueue_validation="none", **FAST_SETTINGS)
    await instance.ensure_initialized()
    yield instance
    await instance.close()


async def spans(url: str, kind: str) -> list[Any]:
    async with connect(url) as conn:
        return list(await conn.fetch("SELECT * FROM spans WHERE kind = $1 ORDER BY at", kind))


async def all_done(app: Soniq, queue: str, n: int) -> bool:
    return len(await app.list_jobs(queue=queue, status="done", limit=n + 1)) == n


def most_in_window(times: list[datetime], window: timedelta) -> int:
    """The most times that fall in any half-open window [t, t + window)."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


async def test_queue_concurrency_limit_holds_across_processes(
    app: Soniq, workers: Workers, pg_url: str
) -> None:
    await app.queue_limits("narrow", max_concurrency=2)
    for n in range(12):
        await app.enqueue("flow.narrow", args={"n": n}, queue="narrow")
    # One slot each: three jobs could run at once, and two processes must share the two
    # allowed (a process that holds both would prove nothing across processes).
    workers.start(3, concurrency=1)
    await wait_until(lambda: all_done(app, "narrow", 12), timeout=60, message="12 jobs done")
    starts = {r["job_id"]: r["at"] for r in await spans(pg_url, "start")}
    ends = {r["job_id"]: r["at"] for r in await spans(pg_url, "end")}
    assert len(starts) == len(ends) == 12
    # Sweep the handlers' [start, end] intervals: the most running at any instant.
    events = sorted([(t, 1) for t in starts.values()] + [(t, -1) for t in ends.values()])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 2, workers.all_logs()  # never 3, and the limit was used
    pids = {r["pid"] for r in await spans(pg_url, "start")}
    assert len(pids) >= 2  # the processes really shared the queue


async def test_rate_limit_holds_across_processes(app: Soniq, workers: Workers, pg_url: str) -> None:
    await app.queue_limits("rated", rate="10/s")
    for n in range(30):
        await app.enqueue("flow.rated", args={"n": n}, queue="rated")
    workers.start(3, concurrency=4)
    await wait_until(lambda: all_done(app, "rated", 30), timeout=60, message="30 jobs done")
    jobs = await app.list_jobs(queue="rated", status="done", limit=100)
    claimed = [j["started_at"] for j in jobs]  # the claim's clock: what the limiter counts
    assert most_in_window(claimed, timedelta(seconds=1)) == 10, workers.all_logs()
    span = max(claimed) - min(claimed)
    assert timedelta(seconds=2) <= span < timedelta(seconds=5)  # limited, yet at the rate
    # The handlers start a few milliseconds after their claim; a window shorter by that
    # margin holds the same limit on their own clock readings.
    handler_starts = [r["at"] for r in await spans(pg_url, "start")]
    assert len(handler_starts) == 30
    assert most_in_window(handler_starts, timedelta(seconds=0.9)) <= 10
    assert len({r["pid"] for r in await spans(pg_url, "start")}) >= 2


async def test_cancel_running_sync_and_async_jobs_in_a_worker_process(
    app: Soniq, workers: Workers, pg_url: str
) -> None:
    workers.start(1, concurrency=4)
    sync_id = await app.enqueue("flow.sync_block", args={}, queue="block")
    async_id = await app.enqueue("flow.async_block", args={}, queue="block")

    async def both_started() -> bool:
        return {r["job_id"] for r in await spans(pg_url, "start")} == {
            _uuid(sync_id), _uuid(async_id),
        }  # fmt: skip

    await wait_until(both_started, timeout=30, message="both jobs running")
    assert await app.cancel_job(sync_id) is True
    assert await app.cancel_job(async_id) is True

    async def both_cancelled() -> bool:
        rows = [await app.get_job(i) for i in (sync_id, async_id)]
        return all(r is not None and r["status"] == "cancelled" for r in rows)

    await wait_until(both_cancelled, timeout=30, message="both jobs cancelled")
    assert [r["job_id"] for r in await spans(pg_url, "saw-cancel")] == [_uuid(sync_id)]
    assert [r["job_id"] for r in await spans(pg_url, "cancelled")] == [_uuid(async_id)]
    for job_id in (sync_id, async_id):
        found = await app.get_job(job_id)
        assert found is not None and found["attempts"] == 1  # not retried
        assert found["last_error"].startswith("JobCancelledError: ")


def _uuid(value: str) -> Any:
    import uuid

    return uuid.UUID(value)


async def test_soniq_inspect_shows_a_jobs_progress(app: Soniq, pg_url: str) -> None:
    import json
    import uuid

    job_id = await app.enqueue("flow.narrow", args={"n": 1}, queue="narrow")
    waiting = await app.enqueue("flow.narrow", args={"n": 2}, queue="narrow", depends_on=[job_id])
    [claimed] = await app.backend.claim(["narrow"], str(uuid.uuid4()), 1)
    assert await app.backend.job_progress(job_id, claimed.lease, 0.4, "4 of 10") is True
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}

    def inspect(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "soniq", "inspect", "--database-url", pg_url, *args],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return done.stdout

    data = json.loads(inspect("--job", job_id, "--json"))
    assert (data["job"]["progress"], data["job"]["progress_message"]) == (
        pytest.approx(0.4), "4 of 10",
    )  # fmt: skip
    text = inspect("--job", waiting)
    assert f"Waits for: {job_id}" in text and "Status:    queued" in text
