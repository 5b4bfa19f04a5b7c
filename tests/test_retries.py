"""Failures: retry delays (pure and against PostgreSQL), dead-lettering, unknown task names."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from soniq import Soniq
from soniq.retry import retry_delay_seconds
from tests.helpers import FAST_SETTINGS, wait_until
from tests.worker_support import connect, dead_row, job_row, make_worker, running, status_of

UTC = timezone.utc

# --- retry_delay_seconds: the pure rule ---------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "delay", "backoff", "cap", "expected"),
    [
        (1, 0, False, None, 0.0),
        # backoff from nothing starts at 1 s (published tutorial: 1, 2, 4, 8 ...)
        (3, 0, True, None, 4.0),
        (1, 0, True, None, 1.0),
        (3, 0, False, None, 0.0),
        (1, 7, False, None, 7.0),
        (5, 7, False, None, 7.0),
        (1, 2.5, False, None, 2.5),
        # backoff doubles per attempt: delay * 2 ** (attempt - 1)
        (1, 2, True, None, 2.0),
        (2, 2, True, None, 4.0),
        (3, 2, True, None, 8.0),
        (6, 2, True, None, 64.0),
        # the cap applies last
        (6, 2, True, 30, 30.0),
        (1, 100, False, 30, 30.0),
        (1, 10, False, 0, 0.0),
        # a list gives the delay per attempt; its last entry repeats
        (1, [1, 5, 30], False, None, 1.0),
        (2, [1, 5, 30], False, None, 5.0),
        (3, [1, 5, 30], False, None, 30.0),
        (4, [1, 5, 30], False, None, 30.0),
        (9, [1, 5, 30], False, None, 30.0),
        (3, [1, 5, 30], False, 10, 10.0),
        (2, [3], True, None, 6.0),
        (3, [1, 1, 1], True, None, 4.0),
        (2, [], False, None, 0.0),
        (0, 5, True, None, 5.0),  # attempt numbers start at 1; 0 is treated as 1
    ],
)
def test_retry_delay_seconds(
    attempt: int, delay: float | list[float], backoff: bool, cap: float | None, expected: float
) -> None:
    assert retry_delay_seconds(attempt, delay, backoff, cap) == pytest.approx(expected)


# --- against PostgreSQL ------------------------------------------------------------------


async def _delay_after_failure(app: Soniq, job_id: str) -> float:
    """Run the job once (it fails); return scheduled_at - failure time of the requeued row."""
    before = datetime.now(UTC)
    await make_worker(app).run_once(max_jobs=1)
    after = datetime.now(UTC)
    row = await job_row(app.database_url, job_id)
    assert row is not None and row["status"] == "queued", row
    assert row["worker_id"] is None and row["lease"] is None
    assert row["last_error"] == "ValueError: nope"
    # scheduled_at = (moment of failure) + delay, with failure in [before, after]
    low = (row["scheduled_at"] - after).total_seconds()
    high = (row["scheduled_at"] - before).total_seconds()
    return float((low + high) / 2)


async def _make_due(app: Soniq, job_id: str) -> None:
    async with connect(app.database_url) as conn:
        await conn.execute("UPDATE soniq_jobs SET scheduled_at = now() WHERE id = $1", job_id)


async def test_retry_delay_number_sets_scheduled_at(app: Soniq) -> None:
    @app.job(retries=2, retry_delay=40)
    async def failing() -> None:
        raise ValueError("nope")

    job_id = await app.enqueue(failing)
    assert await _delay_after_failure(app, job_id) == pytest.approx(40, abs=1)
    row = await job_row(app.database_url, job_id)
    assert row["attempts"] == 1
    # not due yet: a worker does not pick it up
    assert await make_worker(app).run_once() is False


async def test_retry_delay_list_backoff_and_cap_per_attempt(app: Soniq) -> None:
    @app.job(retries=4, retry_delay=[10, 20], retry_backoff=True, retry_max_delay=60)
    async def failing() -> None:
        raise ValueError("nope")

    job_id = await app.enqueue(failing)
    observed = []
    for _ in range(4):
        observed.append(await _delay_after_failure(app, job_id))
        await _make_due(app, job_id)
    # attempt 1: 10 * 1; 2: 20 * 2; 3: 20 * 4 = 80 → capped 60; 4: 20 * 8 → 60
    assert observed == [
        pytest.approx(10, abs=1),
        pytest.approx(40, abs=1),
        pytest.approx(60, abs=1),
        pytest.approx(60, abs=1),
    ]
    row = await job_row(app.database_url, job_id)
    assert row["attempts"] == 4 and row["max_attempts"] == 5


async def test_retry_backoff_with_number(app: Soniq) -> None:
    @app.job(retries=3, retry_delay=5, retry_backoff=True)
    async def failing() -> None:
        raise ValueError("nope")

    job_id = await app.enqueue(failing)
    observed = []
    for _ in range(3):
        observed.append(await _delay_after_failure(app, job_id))
        await _make_due(app, job_id)
    assert observed == [pytest.approx(d, abs=1) for d in (5, 10, 20)]


async def test_exhausted_job_moves_to_dead_letter_table(app: Soniq) -> None:
    attempts: list[int] = []

    @app.job(retries=2, queue="payments", priority=7)
    async def charge(order_id: int, amount: float) -> None:
        attempts.append(order_id)
        raise ValueError(f"card declined for order {order_id}")

    job_id = await app.enqueue(charge, order_id=42, amount=9.5)
    created = (await job_row(app.database_url, job_id))["created_at"]
    worker = make_worker(app)
    async with running(worker, concurrency=2, queues=["payments"]):
        await wait_until(
            lambda: dead_row(app.database_url, job_id), timeout=10, message="dead letter"
        )
    assert len(attempts) == 3  # retries + 1
    assert await job_row(app.database_url, job_id) is None  # left soniq_jobs
    dead = await dead_row(app.database_url, job_id)
    assert dead["job_name"].endswith("charge")
    assert dead["queue"] == "payments" and dead["priority"] == 7
    assert dead["attempts"] == 3 and dead["max_attempts"] == 3
    assert dead["last_error"] == "ValueError: card declined for order 42"
    assert "Traceback (most recent call last)" in dead["traceback"]
    assert "card declined" in dead["traceback"] and "in charge" in dead["traceback"]
    assert dead["created_at"] == created and dead["resurrection_count"] == 0
    status = await app.get_job_status(job_id)
    assert status is not None and status["status"] == "dead_letter"
    assert status["args"] == {"order_id": 42, "amount": 9.5}
    assert status["last_error"] == "ValueError: card declined for order 42"
    assert await app.get_result(job_id) is None
    [listed] = await app.list_jobs(status="dead_letter")
    assert listed["id"] == job_id
    stats = {s["queue"]: s for s in await app.get_queue_stats()}
    assert stats["payments"]["dead_letter"] == 1 and stats["payments"]["queued"] == 0


async def test_retries_zero_dead_letters_on_first_failure(app: Soniq) -> None:
    @app.job(retries=0)
    def once() -> None:
        raise KeyError("missing")

    job_id = await app.enqueue(once)
    assert await app.run_worker(run_once=True)
    dead = await dead_row(app.database_url, job_id)
    assert dead["attempts"] == 1 and dead["max_attempts"] == 1
    assert dead["last_error"] == "KeyError: 'missing'"
    assert await status_of(app, job_id) == "dead_letter"


async def test_unknown_task_on_the_worker_is_recorded_and_dead_lettered(pg_url: str) -> None:
    """A job row whose task name this worker never registered is never silently dropped."""
    producer = Soniq(database_url=pg_url, **FAST_SETTINGS)
    consumer = Soniq(database_url=pg_url, **FAST_SETTINGS)
    try:

        @producer.job(name="billing.only_on_producer", retries=1)
        async def only_on_producer(x: int) -> None:
            return None

        @consumer.job(name="something.else")
        async def something_else() -> None:
            return None

        job_id = await producer.enqueue(only_on_producer, x=1)
        assert await consumer.run_worker(run_once=True)
        # Dead-lettered on the first claim: another attempt here would fail the same way.
        dead = await dead_row(pg_url, job_id)
        assert dead["attempts"] == 1
        assert dead["last_error"] == "Job billing.only_on_producer not registered."
        assert await job_row(pg_url, job_id) is None
        assert await status_of(consumer, job_id) == "dead_letter"
    finally:
        await producer.close()
        await consumer.close()


async def test_unknown_task_enqueued_by_name_without_validation(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, enqueue_validation="none", **FAST_SETTINGS)
    try:
        job_id = await app.enqueue("nobody.registered.this", args={"a": 1})
        worker = make_worker(app)
        async with running(worker):
            await wait_until(lambda: dead_row(pg_url, job_id), timeout=10, message="dead letter")
        dead = await dead_row(pg_url, job_id)
        assert dead["attempts"] == 1
        assert dead["last_error"] == "Job nobody.registered.this not registered."
    finally:
        await app.close()


async def test_retry_then_success_keeps_last_error_and_stores_result(app: Soniq) -> None:
    calls: list[int] = []

    @app.job(retries=3)
    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionError("try again")
        return "ok"

    job_id = await app.enqueue(flaky)
    worker = make_worker(app)
    async with running(worker):
        await wait_until(lambda: app.get_result(job_id), timeout=10, message="result")
    row = await job_row(app.database_url, job_id)
    assert row["status"] == "done" and row["attempts"] == 2
    assert await dead_row(app.database_url, job_id) is None
    status = await app.get_job_status(job_id)
    assert status is not None and status["result"] == "ok"


async def test_retry_rows_are_not_claimed_before_due(app: Soniq) -> None:
    @app.job(retries=1, retry_delay=30)
    async def failing() -> None:
        raise ValueError("nope")

    job_id = await app.enqueue(failing)
    assert await _delay_after_failure(app, job_id) == pytest.approx(30, abs=1)
    worker = make_worker(app)
    async with running(worker):
        # the worker is idle with the retry pending in the future
        await wait_until(lambda: not worker._running, timeout=5, message="idle")
        row = await job_row(app.database_url, job_id)
        assert row["status"] == "queued" and row["attempts"] == 1
        assert row["scheduled_at"] > datetime.now(UTC) + timedelta(seconds=20)
