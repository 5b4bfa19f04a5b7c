"""Job logs: records a handler logs are stored with its job and found again (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from soniq import JobContext, Soniq
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import SoniqProcess

KEYS = {"job_id", "timestamp", "level", "logger", "message"}


async def test_async_and_sync_handlers_logs_are_stored_per_job(app: Soniq) -> None:
    user = logging.getLogger("tests.logs.user")
    gate = asyncio.Event()

    @app.job(name="logs.async")
    async def chatty(n: int, ctx: JobContext) -> None:
        user.debug("too fine to keep")
        user.info("start %s of %s", n, ctx.job_id)
        await gate.wait()  # both jobs log while the other runs: records must not mix
        logging.getLogger("other.lib").warning("warned %s", n)

    @app.job(name="logs.sync")
    def blocking(n: int) -> None:
        user.error("from a thread %s", n)

    ids = [await app.enqueue(chatty, n=i) for i in (1, 2)]
    sync_id = await app.enqueue(blocking, n=3)
    worker = asyncio.create_task(app.run_worker(concurrency=4))
    try:
        await wait_until(lambda: _job_count(app, "logs.sync", "done"), message="sync done")
        gate.set()
        await wait_until(lambda: _job_count(app, "logs.async", "done", 2), message="async done")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)

    for n, job_id in zip((1, 2), ids, strict=True):
        records = await app.logs.job_logs(job_id)
        assert [r["message"] for r in records] == [f"start {n} of {job_id}", f"warned {n}"]
        assert [r["level"] for r in records] == ["INFO", "WARNING"]
        assert [r["logger"] for r in records] == ["tests.logs.user", "other.lib"]
        assert all(set(r) == KEYS and r["job_id"] == job_id for r in records)
        assert records[0]["timestamp"] <= records[1]["timestamp"]
    [from_thread] = await app.logs.job_logs(sync_id)
    assert from_thread["message"] == "from a thread 3" and from_thread["level"] == "ERROR"


async def _job_count(app: Soniq, task: str, status: str, n: int = 1) -> bool:
    jobs = await app.list_jobs(status=status)
    return sum(1 for j in jobs if j["job_name"] == task) >= n


async def test_search_logs_filters_and_orders_newest_first(app: Soniq) -> None:
    log = logging.getLogger("tests.logs.search")

    @app.job(name="logs.search", retries=0)
    async def work(n: int) -> None:
        log.info("payment %s accepted", n)
        if n == 2:
            try:
                raise ValueError("card declined 100%_sure")
            except ValueError:
                log.exception("Payment %s FAILED", n)
            raise RuntimeError("failed")

    first = await app.enqueue(work, n=1)
    await app.run_worker(run_once=True)
    second = await app.enqueue(work, n=2)
    await app.run_worker(run_once=True)

    hits = await app.logs.search_logs("payment")
    assert [h["job_id"] for h in hits] == [second, second, first]  # newest first
    failed = await app.logs.search_logs("payment", level="ERROR")
    assert len(failed) == 1 and "ValueError: card declined" in failed[0]["message"]
    assert failed[0]["level"] == "ERROR"
    assert await app.logs.search_logs("100%_sure") == failed  # wildcards are literal
    assert await app.logs.search_logs("100%%") == []
    assert len(await app.logs.search_logs("ACCEPTED", job_id=first)) == 1  # case-insensitive
    assert len(await app.logs.search_logs("payment", limit=1)) == 1
    assert await app.logs.search_logs("payment", hours=0) == []
    assert await app.logs.search_logs("payment", job_id="nope") == []
    summary = await app.logs.get_error_summary(hours=1)
    assert summary["total"] == 1 and summary["by_logger"] == {"tests.logs.search": 1}
    assert summary["top_messages"] == [{"message": "Payment 2 FAILED", "count": 1}]
    # A dead-lettered job keeps its logs.
    dead = await app.get_job(second)
    assert dead is not None and dead["status"] == "dead_letter"
    assert len(await app.logs.job_logs(second)) == 2


def test_two_captures_restore_the_root_level_once_both_stop() -> None:
    from soniq.logs import JobLogCapture

    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        a, b = JobLogCapture(logging.INFO), JobLogCapture(logging.INFO)
        a.install()
        b.install()
        assert root.level == logging.INFO
        a.uninstall()  # b still runs: its jobs' INFO records must still be captured
        assert root.level == logging.INFO
        b.uninstall()
        assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


async def test_logs_outside_jobs_are_not_captured_and_quiet_jobs_write_nothing(app: Soniq) -> None:
    @app.job(name="logs.quiet")
    async def quiet() -> None: ...

    logging.getLogger("tests.logs").warning("outside any job")
    job_id = await app.enqueue(quiet)
    await app.run_worker(run_once=True)
    assert await app.logs.job_logs(job_id) == []
    assert await app.logs.search_logs("outside any job") == []


async def test_records_are_capped_per_job(app: Soniq) -> None:
    log = logging.getLogger("tests.logs.flood")

    @app.job(name="logs.flood")
    async def flood() -> None:
        for i in range(1500):
            log.info("line %d", i)

    @app.job(name="logs.big")
    async def big() -> None:
        for _ in range(10):
            log.info("x" * 50_000)

    flood_id = await app.enqueue(flood)
    big_id = await app.enqueue(big)
    await app.run_worker(run_once=True)
    records = await app.logs.job_logs(flood_id)
    assert len(records) == 1001
    assert records[999]["message"] == "line 999"
    assert records[1000]["message"].startswith("truncated")
    sized = await app.logs.job_logs(big_id)
    assert len(sized) == 6 and sized[-1]["message"].startswith("truncated")  # 5 x 50 KB < 256 KiB


async def test_job_log_level_and_switch(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, job_log_level="WARNING", **FAST_SETTINGS)
    off = Soniq(database_url=pg_url, job_logs=False, **FAST_SETTINGS)
    log = logging.getLogger("tests.logs.level")
    try:
        for instance in (app, off):

            @instance.job(name="logs.level")
            async def job() -> None:
                log.info("info")
                log.warning("warning")

        first = await app.enqueue("logs.level")
        await app.run_worker(run_once=True)
        second = await off.enqueue("logs.level")
        await off.run_worker(run_once=True)
        assert [r["message"] for r in await app.logs.job_logs(first)] == ["warning"]
        assert await off.logs.job_logs(second) == []
    finally:
        await app.close()
        await off.close()


async def test_logs_are_pruned_with_their_job(app: Soniq) -> None:
    @app.job(name="logs.pruned")
    async def job() -> None:
        logging.getLogger("tests.logs").info("soon gone")

    job_id = await app.enqueue(job)
    await app.run_worker(run_once=True)
    assert len(await app.logs.job_logs(job_id)) == 1
    await app.delete_job(job_id)
    assert await app.backend.observability_prune() >= 1
    assert await app.logs.job_logs(job_id) == []


async def test_orphaned_logs_are_pruned_by_one_running_worker_at_a_time(app: Soniq) -> None:
    """Running workers sweep orphaned logs every cleanup_interval under a lease: one of
    them walks the table per sweep, not each of them."""
    from soniq.logs import LOG_PRUNE_ROLE

    @app.job(name="logs.orphan")
    async def job() -> None:
        logging.getLogger("tests.logs").info("orphan soon")

    job_id = await app.enqueue(job)
    await app.run_worker(run_once=True)
    await app.delete_job(job_id)
    assert len(await app.logs.job_logs(job_id)) == 1  # deleted job, its logs still there
    workers = [asyncio.create_task(app.run_worker(concurrency=1)) for _ in range(2)]
    try:
        await wait_until(
            lambda: _logs_gone(app, job_id), message="orphaned logs pruned by a worker"
        )
        # Someone holds the lease: a newcomer is refused it until it lapses.
        assert await app.backend.try_lead(LOG_PRUNE_ROLE, "newcomer", 60) is False
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def _logs_gone(app: Soniq, job_id: str) -> bool:
    return await app.logs.job_logs(job_id) == []


JOBS = """
import logging
from soniq import Soniq

app = Soniq()
log = logging.getLogger("billing")

@app.job(name="proc.invoice")
async def invoice(n: int) -> None:
    log.info("invoice %s rendered by pid-logged worker", n)
"""


async def test_logs_from_a_real_worker_process(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "log_jobs.py").write_text(JOBS)
    env = {
        **os.environ,
        "SONIQ_DATABASE_URL": pg_url,
        "SONIQ_JOBS_MODULES": "log_jobs",
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}",
        "SONIQ_POLL_INTERVAL": "0.2",
        "SONIQ_LOG_LEVEL": "WARNING",
    }  # the console drops INFO (SONIQ_LOG_LEVEL=WARNING); the job log keeps it
    producer = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @producer.job(name="proc.invoice")
    async def invoice(n: int) -> None: ...

    proc = SoniqProcess(["worker"], env=env, cwd=tmp_path)
    try:
        job_id = await producer.enqueue(invoice, n=7)
        hits = await wait_until(
            lambda: producer.logs.search_logs("invoice 7"), timeout=30, message="logged record"
        )
        assert hits[0]["job_id"] == job_id and hits[0]["logger"] == "billing"
        assert hits[0]["level"] == "INFO"
    finally:
        proc.stop()
        await producer.close()
    assert "invoice 7 rendered" not in proc.output  # the console kept its WARNING threshold
    shown = _inspect(env, "--job", job_id)
    assert "INFO" in shown and "billing: invoice 7 rendered by pid-logged worker" in shown
    data = json.loads(_inspect(env, "--job", job_id, "--json"))
    assert [r["message"] for r in data["logs"]] == ["invoice 7 rendered by pid-logged worker"]


def _inspect(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "soniq", "inspect", *args], env={**env, "COLUMNS": "200"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout
