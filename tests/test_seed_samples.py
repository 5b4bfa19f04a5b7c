# ruff: noqa: SIM117 - the samples nest `async with` exactly as the seed pages do
"""The seed pages' code samples, run as written (database URL adapted, undefined helpers stubbed).

Pages: API Jobs, Soniq class, Common patterns, Transactional enqueue. The FastAPI routes of the
Transactional-enqueue and FastAPI guides run as ASGI apps in ``test_transactional.py``; the
dedup samples also run in ``test_dedup.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest
from pydantic import BaseModel

from soniq import Soniq
from tests.helpers import FAST_SETTINGS
from tests.test_hooks import final_failure_alerts


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def job_rows(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return list(await db.fetch("SELECT * FROM soniq_jobs ORDER BY created_at, id"))


# --- API: Jobs -----------------------------------------------------------------------------------


async def test_jobs_decorator_samples(pg_url: str) -> None:
    app = Soniq(database_url=pg_url)

    @app.job()
    async def send_email(to: str, subject: str, body: str): ...

    @app.job(retries=5, queue="urgent")
    async def send_password_reset(to: str, token: str): ...

    @app.job(
        retries=5,
        priority=10,
        queue="urgent",
        retry_delay=[1, 5, 30, 60],
        timeout=120,
    )
    async def process_payment(order_id: int, amount: float): ...

    registry = app._get_job_registry()
    prefix = "tests.test_seed_samples.test_jobs_decorator_samples.<locals>."
    assert registry.names() == sorted(
        prefix + n for n in ("send_email", "send_password_reset", "process_payment")
    )
    reset = registry.get_job(prefix + "send_password_reset")
    assert reset is not None and (reset["max_retries"], reset["queue"]) == (5, "urgent")
    payment = registry.get_job(prefix + "process_payment")
    assert payment is not None
    assert (payment["priority"], payment["retry_delay"], payment["timeout"]) == (
        10,
        [1, 5, 30, 60],
        120,
    )
    await app.close()


async def test_jobs_enqueue_three_shapes(pg_url: str, db: asyncpg.Connection) -> None:
    from soniq import task_ref

    app = Soniq(database_url=pg_url)
    sent: list[dict[str, str]] = []

    @app.job(name="users.send_email")
    async def send_email(to: str, subject: str, body: str):
        sent.append({"to": to, "subject": subject, "body": body})

    class SendEmailArgs(BaseModel):
        to: str
        subject: str
        body: str

    send_email_ref = task_ref("users.send_email", SendEmailArgs)

    # 1. Callable (single-repo)
    job_id = await app.enqueue(send_email, to="a@b.com", subject="Hi", body="Hello")

    # 2. String task name (cross-service / by-name)
    job_id2 = await app.enqueue(
        "users.send_email",
        args={"to": "a@b.com", "subject": "Hi", "body": "Hello"},
    )

    # 3. TaskRef (typed cross-repo stub)
    job_id3 = await app.enqueue(
        send_email_ref, args={"to": "a@b.com", "subject": "Hi", "body": "Hello"}
    )

    assert len({job_id, job_id2, job_id3}) == 3
    assert [r["job_name"] for r in await job_rows(db)] == ["users.send_email"] * 3
    await app.run_worker(run_once=True)
    assert sent == [{"to": "a@b.com", "subject": "Hi", "body": "Hello"}] * 3
    await app.close()


async def test_jobs_transactional_sample(pg_url: str, db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE orders (id integer PRIMARY KEY)")
    app = Soniq(database_url=pg_url)

    @app.job()
    async def fulfill_order(order_id: int): ...

    order_id = 17
    await app.ensure_initialized()
    async with app.backend.acquire() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (id) VALUES ($1)", order_id)
            await app.enqueue(fulfill_order, connection=conn, order_id=order_id)

    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    (row,) = await job_rows(db)
    assert row["job_name"].endswith("fulfill_order")
    await app.close()


async def test_jobs_schedule_sample(pg_url: str, db: asyncpg.Connection) -> None:
    app = Soniq(database_url=pg_url)
    reports: list[int] = []

    @app.job()
    async def send_report(user_id: int):
        reports.append(user_id)

    # Absolute UTC datetime
    await app.schedule(
        send_report,
        run_at=datetime(2025, 1, 1, 9, 0, tzinfo=timezone.utc),
        user_id=42,
    )
    # Seconds from now
    await app.schedule(send_report, 3600, user_id=7)
    rows = await job_rows(db)
    assert rows[0]["scheduled_at"] == datetime(2025, 1, 1, 9, 0, tzinfo=timezone.utc)
    assert rows[1]["scheduled_at"] > datetime.now(timezone.utc) + timedelta(minutes=59)
    await app.run_worker(run_once=True)
    assert reports == [42]  # the past-due one ran, the future one waits
    await app.close()


def test_jobs_periodic_samples() -> None:
    from soniq import daily, every
    from soniq.errors import ConfigurationError

    app = Soniq(database_url="postgresql://localhost/myapp")

    @app.periodic(cron=daily().at("09:00"), name="reports.daily")
    async def daily_report(): ...

    @app.periodic(cron=every(10).minutes(), queue="maintenance", name="cleanup")
    async def cleanup_old_sessions(): ...

    @app.periodic(every=timedelta(seconds=30), name="metrics.flush")
    async def flush_metrics(): ...

    registry = app._get_job_registry()
    assert registry.names() == ["cleanup", "metrics.flush", "reports.daily"]
    daily_def = registry.get("reports.daily")
    assert daily_def is not None and daily_def.periodic is not None
    assert (daily_def.periodic["cron"], daily_def.periodic["every"]) == ("0 9 * * *", None)
    cleanup = registry.get("cleanup")
    assert cleanup is not None and cleanup.queue == "maintenance"
    assert cleanup.periodic is not None
    assert (cleanup.periodic["cron"], cleanup.periodic["every"]) == ("*/10 * * * *", None)
    flush_def = registry.get("metrics.flush")
    assert flush_def is not None and flush_def.periodic is not None
    assert (flush_def.periodic["cron"], flush_def.periodic["every"]) == (None, 30.0)
    with pytest.raises(ConfigurationError, match="exactly one"):
        app.periodic(cron="* * * * *", every=5)
    with pytest.raises(ConfigurationError, match="exactly one"):
        app.periodic()


async def test_jobs_job_context_sample(app: Soniq, capsys: pytest.CaptureFixture[str]) -> None:
    from soniq import JobContext

    @app.job()
    async def process_order(order_id: int, ctx: JobContext):
        print(f"Job {ctx.job_id}, attempt {ctx.attempt} of {ctx.max_attempts}")

    job_id = await app.enqueue(process_order, order_id=1)
    await app.run_worker(run_once=True)
    assert f"Job {job_id}, attempt 1 of 4" in capsys.readouterr().out


def test_jobs_job_status_sample() -> None:
    from soniq import JobStatus

    states = (JobStatus.QUEUED, JobStatus.PROCESSING, JobStatus.DONE, JobStatus.CANCELLED)
    assert [s.value for s in states] == ["queued", "processing", "done", "cancelled"]


async def test_jobs_imperative_scheduler_sample(app: Soniq) -> None:
    @app.job(name="reports.daily")
    async def cleanup(region: str): ...

    await app.scheduler.add(
        target=cleanup,
        cron="0 9 * * *",
        args={"region": "US"},
        queue="reports",
        priority=10,
    )
    await app.scheduler.pause("reports.daily")
    assert [s.name for s in await app.scheduler.list(status="paused")] == ["reports.daily"]
    await app.scheduler.resume("reports.daily")
    schedules = await app.scheduler.list(status="active")
    sched = await app.scheduler.get("reports.daily")
    assert [s.name for s in schedules] == ["reports.daily"]
    assert sched is not None
    assert (sched.cron, sched.args, sched.queue, sched.priority) == (
        "0 9 * * *",
        {"region": "US"},
        "reports",
        10,
    )
    # Re-adding the same name updates in place.
    await app.scheduler.add(target=cleanup, cron="0 10 * * *", args={"region": "EU"})
    assert len(await app.scheduler.list()) == 1
    assert (await app.scheduler.get("reports.daily")).cron == "0 10 * * *"  # type: ignore[union-attr]
    await app.scheduler.remove("reports.daily")
    assert await app.scheduler.get("reports.daily") is None


# --- API: Soniq class ----------------------------------------------------------------------------


async def test_soniq_class_constructor_and_context_manager(pg_url: str) -> None:
    app = Soniq(
        database_url=pg_url,
        backend=None,
        **{"concurrency": 4},  # type: ignore[arg-type]  # the page's sample, as written
    )
    assert app.backend.name == "postgres"
    await app.close()

    async with Soniq(database_url=pg_url) as app:

        @app.job()
        async def my_job(message: str): ...

        job_id = await app.enqueue(my_job, message="hello")
        assert (await app.get_job(job_id))["args"] == {"message": "hello"}  # type: ignore[index]
    assert app.backend._pool is None  # type: ignore[attr-defined]


async def test_soniq_class_acquire_sample(pg_url: str, db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE orders (id integer)")
    app = Soniq(database_url=pg_url)

    @app.job()
    async def send_receipt(order_id: int): ...

    await app.ensure_initialized()
    async with app.backend.acquire() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders VALUES (42)")
            await app.enqueue(send_receipt, connection=conn, order_id=42)
    assert (await job_rows(db))[0]["job_name"].endswith("send_receipt")
    await app.close()


async def test_soniq_class_management_methods(app: Soniq) -> None:
    @app.job(queue="default")
    async def work(n: int) -> int:
        return n * 2

    assert await app.get_queue_stats() == []
    done_id = await app.enqueue(work, n=21)
    await app.run_worker(run_once=True)
    cancel_id = await app.enqueue(work, n=1)
    delete_id = await app.enqueue(work, n=2)
    assert isinstance(await app.get_job(done_id), dict)
    assert await app.get_result(done_id) == 42
    assert await app.cancel_job(cancel_id) is True
    assert await app.delete_job(delete_id) is True
    jobs = await app.list_jobs(queue="default", status="done", limit=100, offset=0)
    assert [j["id"] for j in jobs] == [done_id]
    assert await app.get_queue_stats() == [
        {"queue": "default", "total": 2, "queued": 0, "processing": 0, "done": 1,
         "dead_letter": 0, "cancelled": 1},
    ]  # fmt: skip


async def test_soniq_class_optional_features_wired_lazily(app: Soniq) -> None:
    @app.job(name="reports.daily")
    async def daily() -> None: ...

    assert await app.dead_letter.list_jobs() == []
    await app.scheduler.add(name="reports.daily", cron="0 9 * * *")
    assert (await app.scheduler.get("reports.daily")).job_name == "reports.daily"  # type: ignore[union-attr]


def test_soniq_class_dotenv_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SONIQ_"):
            monkeypatch.delenv(key)
    (tmp_path / ".env").write_text(
        "SONIQ_DATABASE_URL=postgresql://localhost/myapp\n"
        "SONIQ_CONCURRENCY=8\n"
        "SONIQ_LOG_LEVEL=DEBUG\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    app = Soniq()
    assert app.database_url == "postgresql://localhost/myapp"
    assert (app.settings.concurrency, app.settings.log_level) == (8, "DEBUG")


# --- Common patterns -----------------------------------------------------------------------------


async def test_common_patterns_hooks(pg_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    eq = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @eq.before_job
    async def log_start(ctx):
        print(f"Starting {ctx.job_name} (attempt {ctx.attempt})")

    @eq.after_job
    async def log_complete(ctx):
        print(f"Completed {ctx.job_name}")

    @eq.on_error
    async def log_failure(ctx, error):
        print(f"Failed {ctx.job_name}: {error}")

    @eq.job(name="demo.ok")
    async def ok(): ...

    @eq.job(name="demo.bad", retries=0)
    async def bad():
        raise ValueError("broken")

    await eq.enqueue(ok)
    await eq.enqueue(bad)
    await eq.run_worker(run_once=True)
    out = capsys.readouterr().out
    assert "Starting demo.ok (attempt 1)" in out
    assert "Completed demo.ok" in out
    assert "Starting demo.bad (attempt 1)" in out
    assert "Failed demo.bad: broken" in out
    assert "Completed demo.bad" not in out
    await eq.close()


async def test_common_patterns_job_context(app: Soniq, capsys: pytest.CaptureFixture[str]) -> None:
    from soniq.job import JobContext

    eq = app

    @eq.job(queue="default")
    async def process_order(order_id: int, ctx: JobContext):
        print(f"Job {ctx.job_id}, attempt {ctx.attempt} of {ctx.max_attempts}")
        print(f"Queue: {ctx.queue}, Worker: {ctx.worker_id}")

    job_id = await eq.enqueue(process_order, order_id=5)
    await eq.run_worker(run_once=True)
    out = capsys.readouterr().out
    assert f"Job {job_id}, attempt 1 of 4" in out
    assert "Queue: default, Worker: " in out
    assert "Worker: None" not in out


async def test_common_patterns_dedup(app: Soniq, db: asyncpg.Connection) -> None:
    eq = app

    @eq.job(unique=True)
    async def sync_user(user_id: int): ...

    # First call creates the job
    await eq.enqueue(sync_user, user_id=42)
    # Second call with same args is silently deduplicated
    await eq.enqueue(sync_user, user_id=42)
    # Different args creates a new job
    await eq.enqueue(sync_user, user_id=99)
    assert len(await job_rows(db)) == 2

    await eq.enqueue(
        sync_user,
        user_id=42,
        dedup_key="sync-user-42",
    )
    await eq.enqueue(sync_user, user_id=43, dedup_key="sync-user-42")
    assert len(await job_rows(db)) == 3


async def test_common_patterns_results(app: Soniq) -> None:
    eq = app

    @eq.job()
    async def add(a: int, b: int):
        return a + b

    job_id = await eq.enqueue(add, a=2, b=3)
    assert await eq.get_result(job_id) is None  # not processed yet

    # ... after the worker processes it ...
    await eq.run_worker(run_once=True)

    result = await eq.get_result(job_id)
    assert result == 5
    status = await eq.get_job_status(job_id)
    assert status is not None
    assert {"status": status["status"], "result": status["result"]} == {
        "status": "done",
        "result": 5,
    }
    assert status["job_name"].endswith(".add")


async def test_common_patterns_async_context_manager(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Soniq(database_url=pg_url) as eq:

        @eq.job()
        async def my_task(value: str):
            print(value)

        await eq.enqueue(my_task, value="hello")
        await eq.run_worker(run_once=True)
    assert capsys.readouterr().out.splitlines().count("hello") == 1
    assert eq.backend._pool is None  # type: ignore[attr-defined]


# --- Hooks page: the alerting example that reads the registry ------------------------------------


async def test_hooks_alert_on_final_failure(app: Soniq) -> None:
    alerts = final_failure_alerts(app)

    @app.job(name="billing.charge", retries=1)
    async def charge():
        raise RuntimeError("card declined")

    job_id = await app.enqueue(charge)
    for _ in range(5):
        await app.run_worker(run_once=True)
        if (await app.get_job_status(job_id))["status"] == "dead_letter":  # type: ignore[index]
            break
    assert len(alerts) == 1
    assert alerts[0].startswith(f"Job billing.charge ({job_id}) moved to dead-letter queue: ")
    assert "card declined" in alerts[0]


# --- Transactional enqueue -----------------------------------------------------------------------


async def test_transactional_pattern1(pg_url: str, db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE orders (id integer PRIMARY KEY, total numeric)")
    eq = Soniq(database_url=pg_url)

    @eq.job()
    async def send_invoice(order_id: int): ...

    order_id, total = 1, 19.99
    await eq.ensure_initialized()
    async with eq.backend.acquire() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", order_id, total)
            await eq.enqueue(send_invoice, connection=conn, order_id=order_id)
    assert await db.fetchval("SELECT count(*) FROM orders") == 1
    assert len(await job_rows(db)) == 1

    # "If the INSERT fails ... both the order row and the job are rolled back."
    with pytest.raises(asyncpg.UniqueViolationError):
        async with eq.backend.acquire() as conn:
            async with conn.transaction():
                await eq.enqueue(send_invoice, connection=conn, order_id=order_id)
                await conn.execute(
                    "INSERT INTO orders (id, total) VALUES ($1, $2)", order_id, total
                )
    assert len(await job_rows(db)) == 1
    await eq.close()


async def test_transactional_cancel_after_commit(pg_url: str) -> None:
    """ "Once committed, the job is in the queue. You can cancel it with eq.cancel_job(job_id)"."""
    eq = Soniq(database_url=pg_url)

    @eq.job()
    async def send_invoice(order_id: int): ...

    await eq.ensure_initialized()
    async with eq.backend.acquire() as conn:
        async with conn.transaction():
            job_id = await eq.enqueue(send_invoice, connection=conn, order_id=1)
    assert await eq.cancel_job(job_id) is True
    assert (await eq.get_job(job_id))["status"] == "cancelled"  # type: ignore[index]
    await eq.close()


async def test_transactional_requires_postgres() -> None:
    eq = Soniq(backend="memory")

    @eq.job()
    async def send_invoice(order_id: int): ...

    with pytest.raises(ValueError):
        await eq.enqueue(send_invoice, connection=object(), order_id=1)


async def test_quickstart_jobs_module_sample(
    pg_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = Soniq(database_url=pg_url)

    @app.job()
    async def send_welcome(to: str):
        print(f"Sending welcome email to {to}")

    await app.enqueue(send_welcome, to="dev@example.com")
    await asyncio.wait_for(app.run_worker(run_once=True), 10)
    assert "Sending welcome email to dev@example.com" in capsys.readouterr().out
    await app.close()
