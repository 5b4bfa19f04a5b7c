"""Lifecycle hooks in both documented styles, run by a real worker on PostgreSQL."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from soniq import JobContext, Soniq
from soniq.errors import JobRegistrationError
from soniq.worker import Worker
from tests.helpers import wait_until
from tests.worker_support import dead_row, job_row, make_worker, running, status_of


async def test_positional_style_sync_and_async(app: Soniq) -> None:
    calls: list[tuple[Any, ...]] = []

    @app.before_job
    async def before_async(job_name: str, job_id: str, attempt: int) -> None:
        calls.append(("before_async", job_name, job_id, attempt))

    @app.before_job
    def before_sync(name, ident, n):  # any parameter names
        calls.append(("before_sync", name, ident, n))

    @app.after_job
    def after_sync(job_name: str, job_id: str, duration_ms: float) -> None:
        calls.append(("after_sync", job_name, job_id, duration_ms))

    @app.after_job
    async def after_async(job_name: str, job_id: str, duration_ms: float) -> None:
        calls.append(("after_async", job_name, job_id, duration_ms))

    @app.on_error
    async def error_async(job_name: str, job_id: str, error: str, attempt: int) -> None:
        calls.append(("error_async", job_name, job_id, error, attempt))

    @app.on_error
    def error_sync(job_name: str, job_id: str, error: str, attempt: int) -> None:
        calls.append(("error_sync", job_name, job_id, error, attempt))

    @app.job(name="hooks.ok")
    async def ok() -> int:
        return 1

    @app.job(name="hooks.bad", retries=0)
    async def bad() -> None:
        raise ValueError("broken")

    ok_id = await app.enqueue(ok)
    assert await app.run_worker(run_once=True)
    assert [c[0] for c in calls] == ["before_async", "before_sync", "after_sync", "after_async"]
    assert calls[0][1:] == ("hooks.ok", ok_id, 1) and calls[1][1:] == ("hooks.ok", ok_id, 1)
    for c in calls[2:]:
        assert c[1:3] == ("hooks.ok", ok_id)
        assert isinstance(c[3], float) and c[3] >= 0

    calls.clear()
    bad_id = await app.enqueue(bad)
    assert await app.run_worker(run_once=True)
    assert [c[0] for c in calls] == ["before_async", "before_sync", "error_async", "error_sync"]
    for c in calls[2:]:
        assert c[1:] == ("hooks.bad", bad_id, "broken", 1)  # str(exception) in this style


async def test_context_style_sync_and_async(app: Soniq) -> None:
    calls: list[tuple[Any, ...]] = []

    @app.before_job
    async def log_start(ctx: JobContext) -> None:
        calls.append(("before", ctx))

    @app.after_job
    def log_complete(ctx):
        calls.append(("after", ctx))

    @app.on_error
    async def log_failure(ctx: JobContext, error: BaseException) -> None:
        calls.append(("error", ctx, error))

    @app.job(name="ctx.ok", queue="q1")
    def ok() -> None:
        return None

    @app.job(name="ctx.bad", retries=1)
    async def bad() -> None:
        raise LookupError("gone")

    ok_id = await app.enqueue(ok, queue="q1")
    bad_id = await app.enqueue(bad)
    assert await app.run_worker(run_once=True, queues=["q1"])
    (b, ctx1), (a, ctx2) = calls
    assert (b, a) == ("before", "after")
    assert ctx1 is ctx2 and isinstance(ctx1, JobContext)
    assert (ctx1.job_id, ctx1.job_name, ctx1.queue, ctx1.attempt) == (ok_id, "ctx.ok", "q1", 1)
    assert ctx1.worker_id is not None

    calls.clear()
    worker = make_worker(app)
    async with running(worker):
        await wait_until(lambda: _dead(app, bad_id), timeout=10, message="bad dead-lettered")
    kinds = [c[0] for c in calls]
    assert kinds == ["before", "error", "before", "error"]
    errors = [c for c in calls if c[0] == "error"]
    assert [c[1].attempt for c in errors] == [1, 2]
    assert all(isinstance(c[2], LookupError) and str(c[2]) == "gone" for c in errors)
    assert {c[1].worker_id for c in calls} == {worker.worker_id}


async def test_hooks_run_in_registration_order_across_styles(app: Soniq) -> None:
    order: list[str] = []

    def make(tag: str, style: str) -> Any:
        if style == "ctx":

            async def hook(ctx: JobContext) -> None:
                order.append(tag)

        else:

            def hook(job_name: str, job_id: str, attempt: int) -> None:  # type: ignore[misc]
                order.append(tag)

        return hook

    for i, style in enumerate(["pos", "ctx", "ctx", "pos", "ctx"]):
        app.before_job(make(f"h{i}", style))

    @app.job()
    async def noop() -> None:
        order.append("job")

    await app.enqueue(noop)
    assert await app.run_worker(run_once=True)
    assert order == ["h0", "h1", "h2", "h3", "h4", "job"]


async def test_on_error_runs_before_the_retry_or_dead_letter_decision(app: Soniq) -> None:
    seen: list[tuple[int, str | None, int | None, bool]] = []

    @app.on_error
    async def look(job_name: str, job_id: str, error: str, attempt: int) -> None:
        row = await job_row(app.database_url, job_id)
        in_dlq = await dead_row(app.database_url, job_id) is not None
        seen.append((attempt, row and row["status"], row and row["attempts"], in_dlq))

    @app.job(retries=1)
    async def failing() -> None:
        raise RuntimeError("x")

    job_id = await app.enqueue(failing)
    worker = make_worker(app)
    async with running(worker):
        await wait_until(lambda: _dead(app, job_id), timeout=10, message="dead letter")
    # each time, the row was still 'processing' with that attempt: nothing decided yet
    assert seen == [(1, "processing", 1, False), (2, "processing", 2, False)]


async def test_raising_hooks_log_a_warning_and_change_nothing(
    app: Soniq, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @app.before_job
    def broken_before(job_name: str, job_id: str, attempt: int) -> None:
        raise ConnectionError("metrics down")

    @app.before_job
    async def still_runs(ctx: JobContext) -> None:
        ran.append("second before hook")

    @app.after_job
    async def broken_after(ctx: JobContext) -> None:
        raise RuntimeError("after broke")

    @app.on_error
    def broken_on_error(ctx: JobContext, exc: BaseException) -> None:
        raise RuntimeError("on_error broke")

    @app.job()
    async def good() -> str:
        ran.append("job")
        return "result"

    @app.job(retries=1)
    async def failing() -> None:
        raise ValueError("real failure")

    caplog.set_level(logging.WARNING, logger="soniq.hooks")
    good_id = await app.enqueue(good)
    assert await app.run_worker(run_once=True)
    assert ran == ["second before hook", "job"]
    assert await app.get_result(good_id) == "result"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(m.startswith("Hook before_job failed") and "metrics down" in m for m in messages)
    assert any(m.startswith("Hook after_job failed") and "after broke" in m for m in messages)

    caplog.clear()
    bad_id = await app.enqueue(failing)
    await make_worker(app).run_once(max_jobs=1)
    row = await job_row(app.database_url, bad_id)
    assert row["status"] == "queued" and row["attempts"] == 1  # retry decided as usual
    assert row["last_error"] == "ValueError: real failure"
    assert any(r.getMessage().startswith("Hook on_error failed") for r in caplog.records), (
        caplog.text
    )


async def test_hook_fitting_neither_style_is_rejected_at_registration(app: Soniq) -> None:
    def two(a: Any, b: Any) -> None: ...

    def none() -> None: ...

    def three(a: Any, b: Any, c: Any) -> None: ...

    def five(a: Any, b: Any, c: Any, d: Any, e: Any) -> None: ...

    with pytest.raises(JobRegistrationError, match="before_job"):
        app.before_job(two)
    with pytest.raises(JobRegistrationError):
        app.before_job(none)
    with pytest.raises(JobRegistrationError):
        app.after_job(two)
    with pytest.raises(JobRegistrationError, match="on_error"):
        app.on_error(five)
    with pytest.raises(JobRegistrationError):
        app.on_error(none)
    with pytest.raises(JobRegistrationError):
        app.before_job("not callable")  # type: ignore[type-var]
    assert app.hooks == {"before_job": [], "after_job": [], "on_error": []}
    # the Worker rejects the same hooks handed over as a dict
    with pytest.raises(JobRegistrationError):
        Worker(backend=app.backend, registry=app._get_job_registry(), hooks={"on_error": [five]})

    # defaults and *args fit
    def flexible(a: Any, b: Any = None, c: Any = None) -> None: ...

    def star(*args: Any) -> None: ...

    app.before_job(flexible)
    app.on_error(star)


async def test_after_job_and_on_error_are_mutually_exclusive(app: Soniq) -> None:
    events: list[str] = []
    app.before_job(lambda ctx: events.append("before"))
    app.after_job(lambda ctx: events.append("after"))
    app.on_error(lambda ctx, exc: events.append("error"))

    @app.job(retries=0)
    async def fails() -> None:
        raise ValueError("no")

    @app.job(retries=0)
    async def unserialisable() -> Any:
        return {1, 2}  # the attempt fails when its result cannot be stored

    await app.enqueue(fails)
    assert await app.run_worker(run_once=True)
    assert events == ["before", "error"]
    events.clear()
    await app.enqueue(unserialisable)
    assert await app.run_worker(run_once=True)
    assert events == ["before", "error"]


async def test_worker_hooks_dict_with_plain_functions(app: Soniq) -> None:
    calls: list[str] = []

    @app.job(name="dict.hooks")
    async def noop() -> None:
        return None

    await app.ensure_initialized()
    worker = Worker(
        backend=app.backend,
        registry=app._get_job_registry(),
        settings=app.settings,
        hooks={
            "before_job": [lambda name, job_id, attempt: calls.append(f"before {name} {attempt}")],
            "after_job": [lambda ctx: calls.append(f"after {ctx.job_name}")],
            "on_error": [],
        },
    )
    await app.enqueue(noop)
    assert await worker.run_once()
    assert calls == ["before dict.hooks 1", "after dict.hooks"]


def final_failure_alerts(app: Soniq) -> list[str]:
    """Adds the Hooks page's alerting example (it reads the registry) to ``app``, verbatim
    apart from the Slack call; returns the list the Slack messages go to."""
    sent: list[str] = []

    async def send_slack_message(text: str) -> None:
        sent.append(text)

    @app.on_error
    async def alert_on_final_failure(job_name, job_id, error, attempt):
        # Look up the job's max_attempts from the registry
        job_meta = app._get_job_registry().get_job(job_name)
        if job_meta and attempt >= job_meta["max_retries"] + 1:
            await send_slack_message(
                f"Job {job_name} ({job_id}) moved to dead-letter queue: {error}"
            )

    return sent


async def test_slack_alert_on_final_failure_example(app: Soniq) -> None:
    """The Hooks page's example, verbatim apart from the Slack call."""
    sent = final_failure_alerts(app)

    @app.job(name="reports.fragile", retries=2)
    async def fragile() -> None:
        raise RuntimeError("disk full")

    job_id = await app.enqueue(fragile)
    worker = make_worker(app)
    async with running(worker):
        await wait_until(lambda: _dead(app, job_id), timeout=10, message="dead letter")
    assert sent == [f"Job reports.fragile ({job_id}) moved to dead-letter queue: disk full"]


async def _dead(app: Soniq, job_id: str) -> bool:
    return await status_of(app, job_id) == "dead_letter"
