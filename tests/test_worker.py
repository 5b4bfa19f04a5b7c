"""The worker against real PostgreSQL: entry points, claiming order, handlers, context,
timeouts, results and NOTIFY wake-up.

This module uses ``from __future__ import annotations`` on purpose: ``JobContext``
injection must resolve string annotations.
"""

from __future__ import annotations

import asyncio
import inspect
import math
import threading
import time
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest

from soniq import JobContext, Soniq
from soniq.errors import JobTimeoutError, SchemaMissingError, WorkerError
from soniq.events import Subscriber
from soniq.job import ClaimedJob, Outcome
from soniq.worker import Worker
from tests.helpers import FAST_SETTINGS, wait_until
from tests.worker_support import (
    connect,
    dead_row,
    job_row,
    make_worker,
    registered,
    running,
    status_of,
)

UTC = timezone.utc


# --- entry points ------------------------------------------------------------


def test_documented_signatures() -> None:
    run = inspect.signature(Worker.run)
    assert list(run.parameters)[1:] == ["concurrency", "run_once", "queues"]
    assert run.parameters["concurrency"].default == 4
    assert run.parameters["run_once"].default is False
    assert run.parameters["queues"].default is None
    once = inspect.signature(Worker.run_once)
    assert list(once.parameters)[1:] == ["queues", "max_jobs"]
    init = inspect.signature(Worker.__init__)
    assert list(init.parameters)[1:5] == ["backend", "registry", "settings", "hooks"]
    # Later additions (events, middleware, retry_policy) are optional: documented calls work.
    assert all(p.default is not p.empty for p in list(init.parameters.values())[5:])
    rw = inspect.signature(Soniq.run_worker)
    assert list(rw.parameters)[1:] == ["concurrency", "run_once", "queues"]


async def test_run_worker_run_once_returns_whether_jobs_ran(app: Soniq) -> None:
    seen: list[int] = []

    @app.job()
    async def note(n: int) -> int:
        seen.append(n)
        return n * 10

    assert await app.run_worker(run_once=True) is False  # nothing to do
    ids = [await app.enqueue(note, n=i) for i in range(5)]
    assert await app.run_worker(concurrency=2, run_once=True) is True
    assert sorted(seen) == [0, 1, 2, 3, 4]
    for i, job_id in enumerate(ids):
        assert await app.get_result(job_id) == i * 10
    assert await app.run_worker(run_once=True) is False
    async with connect(app.database_url) as conn:  # a run_once worker deregisters
        assert await conn.fetchval("SELECT count(*) FROM soniq_workers") == 0


async def test_worker_class_run_once_max_jobs_caps(app: Soniq) -> None:
    seen: list[int] = []

    @app.job()
    def note(n: int) -> None:
        seen.append(n)

    await app.enqueue_many(note, [{"n": i} for i in range(5)])
    await app.ensure_initialized()
    worker = make_worker(app)
    assert await worker.run_once(max_jobs=2) is True
    assert len(seen) == 2
    assert await worker.run_once(max_jobs=1) is True
    assert len(seen) == 3
    assert await worker.run(concurrency=2, run_once=True) is True
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert await worker.run_once() is False


async def test_worker_defaults_settings_and_hooks(app: Soniq) -> None:
    """``settings`` and ``hooks`` are optional."""

    @app.job()
    async def ping() -> str:
        return "pong"

    job_id = await app.enqueue(ping)
    await app.ensure_initialized()
    worker = Worker(backend=app.backend, registry=app._get_job_registry())
    assert await worker.run_once() is True
    assert await app.get_result(job_id) == "pong"


# --- what is claimed ------------------------------------------------------------


async def test_claim_order_priority_then_run_time(app: Soniq) -> None:
    order: list[str] = []

    @app.job()
    async def note(tag: str) -> None:
        order.append(tag)

    now = datetime.now(UTC)
    await app.enqueue(note, tag="p100-old", priority=100, scheduled_at=now - timedelta(seconds=30))
    await app.enqueue(note, tag="p100-new", priority=100, scheduled_at=now - timedelta(seconds=10))
    await app.enqueue(note, tag="p5-new", priority=5, scheduled_at=now - timedelta(seconds=5))
    await app.enqueue(note, tag="p5-old", priority=5, scheduled_at=now - timedelta(seconds=20))
    await app.enqueue(note, tag="p1000", priority=1000, scheduled_at=now - timedelta(seconds=60))
    await app.enqueue(note, tag="p1", priority=1, scheduled_at=now - timedelta(seconds=1))
    await app.ensure_initialized()
    worker = make_worker(app)
    while await worker.run_once(max_jobs=1):
        pass
    assert order == ["p1", "p5-old", "p5-new", "p100-old", "p100-new", "p1000"]


async def test_batched_claim_starts_jobs_in_priority_order(app: Soniq) -> None:
    order: list[int] = []

    @app.job()
    async def note(p: int) -> None:
        order.append(p)

    for p in (50, 10, 900, 1, 300):
        await app.enqueue(note, p=p, priority=p)
    assert await app.run_worker(concurrency=8, run_once=True)
    assert order == [1, 10, 50, 300, 900]


async def test_only_requested_queues(app: Soniq) -> None:
    seen: list[str] = []

    @app.job()
    async def note(q: str) -> None:
        seen.append(q)

    ids = {q: await app.enqueue(note, q=q, queue=q) for q in ("emails", "billing", "reports")}
    assert await app.run_worker(run_once=True, queues=["emails"]) is True
    assert seen == ["emails"]
    assert await app.run_worker(run_once=True, queues=["nothing-here"]) is False
    assert await app.run_worker(run_once=True, queues=["billing", "reports"]) is True
    assert sorted(seen) == ["billing", "emails", "reports"]
    for job_id in ids.values():
        assert await status_of(app, job_id) == "done"


async def test_continuous_worker_ignores_other_queues(app: Soniq) -> None:
    @app.job()
    async def noop() -> None:
        return None

    worker = make_worker(app)
    async with running(worker, queues=["mine"]):
        other = await app.enqueue(noop, queue="other")
        mine = await app.enqueue(noop, queue="mine")
        await wait_until(lambda: _is(app, mine, "done"), timeout=5, message="own queue job")
        assert await status_of(app, other) == "queued"
    async with connect(app.database_url) as conn:
        row = await conn.fetchrow("SELECT count(*) FROM soniq_workers")
        assert row[0] == 0


async def test_future_job_not_run_until_due(app: Soniq) -> None:
    ran_at: list[datetime] = []

    @app.job()
    async def later() -> None:
        ran_at.append(datetime.now(UTC))

    due = datetime.now(UTC) + timedelta(seconds=1.0)
    job_id = await app.schedule(later, run_at=due)
    assert await app.run_worker(run_once=True) is False
    assert await status_of(app, job_id) == "queued"
    worker = make_worker(app)
    async with running(worker, concurrency=2):
        await wait_until(lambda: _is(app, job_id, "done"), timeout=5, message="due job done")
    assert ran_at and ran_at[0] >= due


# --- handlers ---------------------------------------------------------------------


async def test_sync_handlers_run_at_once_on_their_own_threads(app: Soniq) -> None:
    # Every handler waits at the barrier until all four are running: handlers run one
    # after another (or on the event loop's thread) would break it after 10 s and fail.
    barrier = threading.Barrier(4, timeout=10)
    threads: list[threading.Thread] = []

    @app.job(retries=0)
    def blocking(n: int) -> int:
        threads.append(threading.current_thread())
        barrier.wait()
        return n + 1

    ids = [await app.enqueue(blocking, n=i) for i in range(4)]
    assert await app.run_worker(concurrency=4, run_once=True)
    assert [await app.get_result(i) for i in ids] == [1, 2, 3, 4]
    assert len(set(threads)) == 4 and threading.main_thread() not in threads


async def test_job_context_has_every_field_and_the_real_worker_id(app: Soniq) -> None:
    contexts: list[JobContext] = []
    registered_ids: list[list[str]] = []

    @app.job(retries=2, queue="ctxq")
    async def inspect_ctx(x: int, ctx: JobContext) -> int:
        contexts.append(ctx)
        async with app.backend.acquire() as conn:
            rows = await conn.fetch("SELECT id::text FROM soniq_workers")
        registered_ids.append([r[0] for r in rows])
        return x

    due = datetime.now(UTC) - timedelta(seconds=3)
    job_id = await app.enqueue(inspect_ctx, x=7, scheduled_at=due)
    row = await job_row(app.database_url, job_id)
    worker = make_worker(app)
    async with running(worker, concurrency=1, queues=["ctxq"]):
        await wait_until(lambda: _is(app, job_id, "done"), timeout=5, message="ctx job done")
    [ctx] = contexts
    assert isinstance(ctx, JobContext)
    assert ctx.job_id == job_id
    test_name = "test_job_context_has_every_field_and_the_real_worker_id"
    assert ctx.job_name == f"{__name__}.{test_name}.<locals>.inspect_ctx"
    assert (ctx.attempt, ctx.max_attempts) == (1, 3)
    assert ctx.queue == "ctxq"
    assert ctx.worker_id == worker.worker_id
    assert registered_ids == [[worker.worker_id]]
    assert ctx.scheduled_at == row["scheduled_at"]
    assert abs((ctx.scheduled_at - due).total_seconds()) < 0.001
    assert ctx.created_at == row["created_at"]
    with pytest.raises(AttributeError):
        ctx.attempt = 5  # type: ignore[misc]  # frozen


async def test_job_context_attempt_counts_up_and_run_once_worker_id(app: Soniq) -> None:
    contexts: list[JobContext] = []

    @app.job(retries=2)
    def flaky(ctx: JobContext) -> str:  # sync handlers get the context too
        contexts.append(ctx)
        if ctx.attempt < 3:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return "third time lucky"

    job_id = await app.enqueue(flaky)
    await app.ensure_initialized()
    worker = make_worker(app)
    await wait_until(
        lambda: _drain_until(worker, app, job_id, "done"), timeout=10, message="flaky done"
    )
    assert [c.attempt for c in contexts] == [1, 2, 3]
    assert {c.max_attempts for c in contexts} == {3}
    assert {c.worker_id for c in contexts} == {worker.worker_id}
    assert await app.get_result(job_id) == "third time lucky"


# --- timeouts -------------------------------------------------------------------------


async def test_per_job_timeout_fails_the_attempt(app: Soniq) -> None:
    errors: list[BaseException] = []

    @app.job(timeout=0.2, retries=0)
    async def slow() -> None:
        await asyncio.sleep(10)

    @app.on_error
    def keep(ctx: JobContext, exc: BaseException) -> None:
        errors.append(exc)

    job_id = await app.enqueue(slow)
    started = time.perf_counter()
    assert await app.run_worker(run_once=True)
    assert time.perf_counter() - started < 3
    dead = await dead_row(app.database_url, job_id)
    assert dead is not None and dead["attempts"] == 1
    assert dead["last_error"].startswith("TimeoutError")
    assert "0.2s timeout" in dead["last_error"]
    assert dead["last_error"].endswith("SONIQ_JOB_TIMEOUT (0 disables the limit)")
    assert await status_of(app, job_id) == "dead_letter"
    [error] = errors
    assert isinstance(error, JobTimeoutError) and isinstance(error, TimeoutError)


async def test_many_attempts_sharing_deadline_slots_end_only_the_slow_ones(app: Soniq) -> None:
    """Attempts whose deadlines fall in one slot share its timer (soniq/deadlines.py):
    each slow one times out, each quick one is left to finish."""

    @app.job(timeout=0.3, retries=0)
    async def sleeps(seconds: float) -> None:
        await asyncio.sleep(seconds)

    slow = await app.enqueue_many(sleeps, [{"seconds": 30}] * 10)
    quick = await app.enqueue_many(sleeps, [{"seconds": 0.01}] * 10)
    assert await app.run_worker(concurrency=20, run_once=True)
    for job_id in slow:
        dead = await dead_row(app.database_url, job_id)
        assert dead is not None and "0.3s timeout" in dead["last_error"]
    assert [await status_of(app, job_id) for job_id in quick] == ["done"] * 10


async def test_a_sync_handler_past_its_timeout_fails_the_attempt(app: Soniq) -> None:
    """A thread cannot be interrupted: the attempt fails at its deadline, and the thread
    is left to end on its own."""
    release = threading.Event()

    @app.job(timeout=0.2, retries=0)
    def blocks() -> None:
        release.wait(30)

    job_id = await app.enqueue(blocks)
    started = time.perf_counter()
    try:
        assert await app.run_worker(run_once=True)
        assert time.perf_counter() - started < 20  # not the thread's 30 s
    finally:
        release.set()
    dead = await dead_row(app.database_url, job_id)
    assert dead is not None and "0.2s timeout" in dead["last_error"]


async def test_global_job_timeout_applies_when_job_has_none(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "job_timeout": 0.2})
    try:

        @app.job(retries=1)
        async def slow() -> None:
            await asyncio.sleep(10)

        @app.job(timeout=3, retries=0)
        async def allowed_longer() -> str:
            await asyncio.sleep(0.4)
            return "ok"

        slow_id = await app.enqueue(slow)
        ok_id = await app.enqueue(allowed_longer)
        assert await app.run_worker(concurrency=2, run_once=True)
        assert await app.get_result(ok_id) == "ok"
        row = await job_row(pg_url, slow_id)  # first attempt failed → retry queued
        if row is not None:
            assert row["status"] == "queued" and row["attempts"] == 1
            assert row["last_error"].startswith("TimeoutError")
        await app.run_worker(run_once=True)
        dead = await dead_row(pg_url, slow_id)
        assert dead is not None and dead["attempts"] == 2
        assert dead["last_error"].startswith("TimeoutError")
    finally:
        await app.close()


@pytest.mark.parametrize("job_timeout", [0, None])
async def test_job_timeout_zero_or_none_disables(pg_url: str, job_timeout: Any) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "job_timeout": job_timeout})
    try:

        @app.job(retries=0)
        async def slowish() -> str:
            await asyncio.sleep(0.5)
            return "finished"

        job_id = await app.enqueue(slowish)
        assert await app.run_worker(run_once=True)
        assert await app.get_result(job_id) == "finished"
    finally:
        await app.close()


async def test_per_job_timeout_zero_disables_even_with_short_global(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "job_timeout": 0.1})
    try:

        @app.job(timeout=0, retries=0)
        def no_limit() -> str:
            time.sleep(0.4)
            return "finished"

        job_id = await app.enqueue(no_limit)
        assert await app.run_worker(run_once=True)
        assert await app.get_result(job_id) == "finished"
    finally:
        await app.close()


async def test_timeout_error_raised_by_handler_is_its_own_error(app: Soniq) -> None:
    """A handler's own TimeoutError is not mistaken for the job's timeout."""

    @app.job(timeout=30, retries=0)
    async def calls_slow_api() -> None:
        raise TimeoutError("upstream API did not answer")

    job_id = await app.enqueue(calls_slow_api)
    assert await app.run_worker(run_once=True)
    dead = await dead_row(app.database_url, job_id)
    assert dead["last_error"] == "TimeoutError: upstream API did not answer"
    assert "calls_slow_api" in dead["traceback"]


# --- results ----------------------------------------------------------------------------


async def test_return_values_are_stored_as_results(app: Soniq) -> None:
    @app.job()
    async def give(value: Any) -> Any:
        return value

    values: list[Any] = [5, "text", 2.5, True, [1, "a", None], {"nested": {"k": [1, 2]}}]
    ids = [await app.enqueue(give, value=v) for v in values]
    none_id = await app.enqueue(give, value=None)
    assert await app.run_worker(concurrency=4, run_once=True)
    assert [await app.get_result(i) for i in ids] == values
    status = await app.get_job_status(none_id)
    assert status is not None and status["status"] == "done" and status["result"] is None


async def test_non_json_result_fails_the_attempt_clearly(app: Soniq) -> None:
    @app.job(retries=0)
    async def bad_result() -> Any:
        return object()

    @app.job(retries=0)
    async def nan_result() -> float:
        return math.nan

    @app.job(retries=0)
    async def nul_result() -> str:
        return "a\x00b"

    @app.job(retries=0)
    async def surrogate_result() -> str:
        return "\ud800"

    @app.job()
    async def good() -> int:
        return 1

    bad = await app.enqueue(bad_result)
    nan = await app.enqueue(nan_result)
    nul = await app.enqueue(nul_result)
    lone = await app.enqueue(surrogate_result)
    ok = await app.enqueue(good)
    assert await app.run_worker(concurrency=4, run_once=True)
    for job_id in (bad, nan, nul, lone):
        dead = await dead_row(app.database_url, job_id)
        assert dead is not None, job_id
        assert "not JSON-serialisable" in dead["last_error"], dead["last_error"]
    assert "object" in (await dead_row(app.database_url, bad))["last_error"]
    assert await app.get_result(ok) == 1  # the other outcomes in the batch were written


# --- NOTIFY ---------------------------------------------------------------------------------


async def test_idle_worker_wakes_on_notify(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "poll_interval": 30})
    try:

        @app.job()
        async def quick() -> str:
            return "woke"

        worker = make_worker(app)
        async with running(worker, concurrency=2):
            await _idle(worker)
            for _ in range(3):  # every time, not just the first
                started = time.monotonic()
                job_id = await app.enqueue(quick)
                await wait_until(partial(_is, app, job_id, "done"), timeout=5, message="woken")
                assert time.monotonic() - started < 5
                await _idle(worker)
    finally:
        await app.close()


async def test_notify_for_another_queue_does_not_matter_and_own_queue_wakes(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "poll_interval": 30})
    try:

        @app.job()
        async def quick() -> None:
            return None

        worker = make_worker(app)
        async with running(worker, queues=["a"]):
            await _idle(worker)
            other = await app.enqueue(quick, queue="b")
            mine = await app.enqueue(quick, queue="a")
            await wait_until(lambda: _is(app, mine, "done"), timeout=5, message="queue a job")
            assert await status_of(app, other) == "queued"
    finally:
        await app.close()


async def test_worker_relistens_after_its_connections_are_killed(pg_url: str) -> None:
    """After the database drops every connection, NOTIFY wake-up comes back (not just polling)."""
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "poll_interval": 30})
    try:

        @app.job(name="relisten.quick")
        async def quick() -> None:
            return None

        worker = make_worker(app)
        async with running(worker):
            await _idle(worker)
            async with connect(pg_url) as conn:
                killed = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            assert killed >= 1
            producer = Soniq(database_url=pg_url, enqueue_validation="none", **FAST_SETTINGS)
            try:
                deadline = time.monotonic() + 8
                job_id = await producer.enqueue("relisten.quick", args={})
                await wait_until(
                    lambda: _is(producer, job_id, "done"), timeout=8, message="job after kill"
                )
                assert time.monotonic() < deadline
            finally:
                await producer.close()
    finally:
        await app.close()


# --- two workers in one process -------------------------------------------------------------


async def test_two_soniq_instances_in_one_process_keep_their_registrations(pg_url: str) -> None:
    a = Soniq(database_url=pg_url, **FAST_SETTINGS)
    b = Soniq(database_url=pg_url, **FAST_SETTINGS)
    ran: dict[str, list[str]] = {"a": [], "b": []}
    try:

        @a.job(name="two.job", queue="qa")
        async def on_a(ctx: JobContext) -> None:
            ran["a"].append(ctx.worker_id or "")

        @b.job(name="two.job_b", queue="qb")
        async def on_b(ctx: JobContext) -> None:
            ran["b"].append(ctx.worker_id or "")

        wa, wb = make_worker(a), make_worker(b)
        assert wa.worker_id != wb.worker_id
        async with running(wa, queues=["qa"]):
            async with running(wb, queues=["qb"]):
                assert await registered(wa) and await registered(wb)
                ja = await a.enqueue(on_a)
                jb = await b.enqueue(on_b)
                await wait_until(lambda: _is(a, ja, "done"), timeout=5, message="a's job")
                await wait_until(lambda: _is(b, jb, "done"), timeout=5, message="b's job")
                await _heartbeat_advances(a, wa)
                await _heartbeat_advances(b, wb)
            # b stopped: a is still registered, still heartbeating, still working
            assert not await registered(wb)
            assert await registered(wa)
            await _heartbeat_advances(a, wa)
            ja2 = await a.enqueue(on_a)
            await wait_until(lambda: _is(a, ja2, "done"), timeout=5, message="a after b stopped")
        assert ran["a"] == [wa.worker_id, wa.worker_id]
        assert ran["b"] == [wb.worker_id]
    finally:
        await a.close()
        await b.close()


async def test_two_worker_objects_on_one_app(app: Soniq) -> None:
    seen: list[str] = []

    @app.job()
    async def note(ctx: JobContext) -> None:
        seen.append(ctx.worker_id or "")
        await asyncio.sleep(0.01)

    w1, w2 = make_worker(app), make_worker(app)
    async with running(w1, concurrency=2):
        async with running(w2, concurrency=2):
            await app.enqueue_many(note, [{} for _ in range(40)])
            await wait_until(lambda: len(seen) == 40, timeout=10, message="40 jobs")
            assert await registered(w1) and await registered(w2)
        assert await registered(w1) and not await registered(w2)
        await _heartbeat_advances(app, w1)
    assert set(seen) <= {w1.worker_id, w2.worker_id}


# --- helpers ------------------------------------------------------------------------------------


async def _is(app: Soniq, job_id: str, status: str) -> bool:
    return await status_of(app, job_id) == status


async def _drain_until(worker: Worker, app: Soniq, job_id: str, status: str) -> bool:
    await worker.run_once()
    return await _is(app, job_id, status)


async def _idle(worker: Worker) -> None:
    """Wait until the worker has nothing running and is parked waiting for work."""
    await wait_until(lambda: not worker._running, timeout=5, message="worker idle")
    await asyncio.sleep(0)  # let the loop reach its wait


async def _heartbeat_advances(app: Soniq, worker: Worker) -> None:
    async def beat() -> datetime | None:
        for w in await app.backend.list_workers():
            if w.id == worker.worker_id:
                return w.last_heartbeat
        return None

    first = await beat()
    assert first is not None
    await wait_until(
        lambda: _later(beat, first), timeout=5, message=f"heartbeat of {worker.worker_id}"
    )


async def _later(beat: Any, first: datetime) -> bool:
    now = await beat()
    return now is not None and now > first


# --- maintenance: expired results are pruned ------------------------------------------


async def test_expired_results_are_pruned(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "result_ttl": 1})
    try:

        @app.job()
        async def answer() -> int:
            return 42

        job_id = await app.enqueue(answer)
        worker = make_worker(app)
        async with running(worker):
            await wait_until(lambda: app.get_result(job_id), timeout=5, message="done")
            row = await job_row(pg_url, job_id)
            assert row["status"] == "done" and row["expires_at"] is not None
            ttl = (row["expires_at"] - row["completed_at"]).total_seconds()
            assert ttl == pytest.approx(1, abs=0.01)
            await wait_until(
                lambda: _gone(pg_url, job_id), timeout=5, message="pruned after result_ttl"
            )
        assert await app.get_job_status(job_id) is None
    finally:
        await app.close()


# --- a pool too small for the concurrency is refused at start ----------------------------


async def test_pool_too_small_for_concurrency_is_a_worker_error(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **{**FAST_SETTINGS, "pool_max_size": 20})
    try:
        with pytest.raises(WorkerError, match="SONIQ_POOL_MAX_SIZE") as info:
            await app.run_worker(concurrency=50)
        assert "50" in str(info.value) and "20" in str(info.value)
        async with connect(pg_url) as conn:
            assert await conn.fetchval("SELECT count(*) FROM soniq_workers") == 0
        with pytest.raises(WorkerError, match="SONIQ_POOL_MAX_SIZE"):
            await app.run_worker(concurrency=50, run_once=True)
        with pytest.raises(WorkerError, match="concurrency"):
            await app.run_worker(concurrency=0)
    finally:
        await app.close()


async def _gone(url: str, job_id: str) -> bool:
    return await job_row(url, job_id) is None


# --- claiming ahead (soniq/claiming.py): fast jobs, the next claim leaves while they run --


async def _held_ahead(app: Soniq) -> tuple[list[int], asyncio.Event, str]:
    """Thirty fast jobs (they teach the pacer that a job runs quicker than a claim), one
    that blocks until released, and one more after it: with concurrency 1, that last one
    is claimed while the blocker runs and waits, claimed but not started."""
    ran: list[int] = []
    release = asyncio.Event()

    @app.job()
    async def quick(i: int) -> None:
        ran.append(i)

    @app.job()
    async def blocker() -> None:
        await release.wait()

    await app.enqueue_many(quick, [{"i": i} for i in range(30)])
    await app.enqueue(blocker)
    after = await app.enqueue(quick, i=99)
    return ran, release, after


class _Heard(Subscriber):
    """What observers (metrics, webhooks, tracing) hear, in order."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, str]] = []

    def on_started(self, job: ClaimedJob) -> None:
        self.heard.append(("started", job.id))

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> None:
        self.heard.append(("finished", job.id))

    def on_changed(self, event: str, job: dict[str, Any]) -> None:
        self.heard.append((event, job["id"]))

    def about(self, job_id: str) -> list[str]:
        return [event for event, heard_id in self.heard if heard_id == job_id]


def _observed_worker(app: Soniq) -> tuple[Worker, _Heard]:
    heard = app.events.subscribe(_Heard())
    worker = Worker(app.backend, app.registry, app.settings, app.hooks, events=app.events)
    return worker, heard


async def _claimed(pg_url: str, job_id: str) -> bool:
    row = await job_row(pg_url, job_id)
    return row is not None and row["status"] == "processing"


async def test_a_job_claimed_ahead_goes_back_unspent_at_shutdown(app: Soniq, pg_url: str) -> None:
    ran, release, after = await _held_ahead(app)
    worker, heard = _observed_worker(app)
    async with running(worker, concurrency=1):
        await wait_until(partial(_claimed, pg_url, after), timeout=10, message="claimed ahead")
        assert 99 not in ran  # concurrency 1: claimed while the blocker runs, not started
        worker.stop()
        release.set()
    row = await job_row(pg_url, after)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 0, None)
    assert sorted(ran) == list(range(30))
    assert heard.about(after) == []  # observers never heard it start, nor end
    assert await app.run_worker(run_once=True)  # and it runs, once, later
    assert ran.count(99) == 1


async def test_cancelling_a_job_claimed_ahead_ends_it_without_running(
    app: Soniq, pg_url: str
) -> None:
    ran, release, after = await _held_ahead(app)
    worker, heard = _observed_worker(app)
    async with running(worker, concurrency=1):
        await wait_until(partial(_claimed, pg_url, after), timeout=10, message="claimed ahead")
        assert await app.cancel_job(after)
        await wait_until(
            lambda: _is(app, after, "cancelled"), timeout=10, message="cancelled at once"
        )
        release.set()
    assert 99 not in ran
    assert await status_of(app, after) == "cancelled"
    assert heard.about(after) == ["job.cancelled"]  # as for a queued job: no attempt
    assert "before it started" in (await job_row(pg_url, after))["last_error"]


async def test_claim_ahead_off_claims_only_for_free_slots(pg_url: str) -> None:
    """SONIQ_CLAIM_AHEAD=false: the same jobs, but while the blocker holds the only slot
    the worker sends no claim, and the last job stays queued until the slot frees."""
    app = Soniq(database_url=pg_url, claim_ahead=False, **FAST_SETTINGS)
    try:
        ran, release, after = await _held_ahead(app)
        worker, _ = _observed_worker(app)
        async with running(worker, concurrency=1):
            await wait_until(lambda: len(ran) == 30, timeout=10, message="quick jobs ran")

            def blocked_and_idle() -> bool:  # the blocker runs; no claim is out
                return bool(worker._running) and not worker._pacer.in_flight

            await wait_until(blocked_and_idle, timeout=10, message="blocker running")
            assert await status_of(app, after) == "queued"
            assert not worker._ready
            release.set()
            await wait_until(lambda: 99 in ran, timeout=10, message="the last job ran")
    finally:
        await app.close()


async def test_a_registration_the_database_dropped_is_retried(
    app: Soniq, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a pooled connection the server terminated raises (asyncpg's
    InternalClientError, seen under pg_terminate_backend; a reset) is retried at start
    rather than ending the worker; a missing schema is not."""
    import asyncpg

    real = app.backend.register_worker
    failures: list[Exception] = [
        asyncpg.exceptions.InternalClientError("cannot switch to state 11"),
        ConnectionResetError("reset by peer"),
    ]

    async def flaky(info: Any) -> None:
        if failures:
            raise failures.pop(0)
        await real(info)

    monkeypatch.setattr(app.backend, "register_worker", flaky)
    worker = Worker(app.backend, app.registry, app.settings, app.hooks, events=app.events)
    async with running(worker, concurrency=1):
        assert await registered(worker)
    assert caplog.text.count("Registering worker") == 2

    async def no_schema(info: Any) -> None:
        raise SchemaMissingError("no schema; run `soniq setup`")

    monkeypatch.setattr(app.backend, "register_worker", no_schema)
    with pytest.raises(SchemaMissingError):
        await Worker(app.backend, app.registry, app.settings, app.hooks).run(concurrency=1)
    assert caplog.text.count("Registering worker") == 2
