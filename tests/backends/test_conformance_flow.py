"""Flow control on PostgreSQL, SQLite and memory (soniq/flow.py, migration 0006).

Snooze, cancelling running jobs, progress and checkpoints, limits enforced in the
claim (queue concurrency and rate, task rate, per-key concurrency) and dependencies.
Each test runs on all three backends through ``soniq_app``; the multi-process proof
that limits hold across processes is tests/test_flow_processes.py.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from soniq import JobContext, Snooze, Soniq
from soniq.errors import (
    ConfigurationError,
    JobCancelledError,
    JobRegistrationError,
    JobValidationError,
    SerializationError,
)
from soniq.flow import TaskLimit, parse_rate
from soniq.job import Ack, ClaimedJob, Done, Fail, Outcome, Requeue, Retry
from tests.helpers import wait_until

UTC = timezone.utc


def wid() -> str:
    return str(uuid.uuid4())


async def row(app: Soniq, job_id: str) -> dict[str, Any]:
    found = await app.get_job(job_id)
    assert found is not None, job_id
    return found


@asynccontextmanager
async def worker(app: Soniq, concurrency: int = 4) -> AsyncIterator[None]:
    task = asyncio.create_task(app.run_worker(concurrency=concurrency))
    try:
        await wait_until(app.backend.list_workers, timeout=5, message="worker registered")
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def status_is(app: Soniq, job_id: str, status: str) -> bool:
    return bool((await row(app, job_id))["status"] == status)


# --- snooze ------------------------------------------------------------------------


async def test_snooze_raised_or_returned_reruns_without_spending_an_attempt(
    soniq_app: Soniq,
) -> None:
    app = soniq_app
    runs: list[tuple[str, int]] = []

    @app.job(name="flow.snooze", retries=0)
    async def snoozer(how: str, ctx: JobContext) -> str:
        runs.append((how, ctx.attempt))
        if sum(1 for h, _ in runs if h == how) < 3:
            if how == "raise":
                raise Snooze(0, reason="not yet")
            return Snooze(0)  # type: ignore[return-value]
        return how

    raised = await app.enqueue(snoozer, how="raise")
    returned = await app.enqueue(snoozer, how="return")
    assert await app.run_worker(run_once=True) is True
    for job_id, how in ((raised, "raise"), (returned, "return")):
        found = await row(app, job_id)
        # retries=0: a spent attempt would have dead-lettered it at the first snooze
        assert (found["status"], found["result"], found["attempts"]) == ("done", how, 1)
        assert found["snoozes"] == 2
    assert sorted(runs) == [("raise", 1)] * 3 + [("return", 1)] * 3


async def test_snooze_waits_its_seconds(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="flow.later")
    async def later() -> None:
        raise Snooze(3600)

    jid = await app.enqueue(later)
    await app.run_worker(run_once=True)
    found = await row(app, jid)
    assert (found["status"], found["attempts"], found["snoozes"]) == ("queued", 0, 1)
    assert found["scheduled_at"] > datetime.now(UTC) + timedelta(minutes=59)
    assert await app.run_worker(run_once=True) is False  # not due


async def test_one_snooze_more_than_max_snoozes_is_a_failure(soniq_app: Soniq) -> None:
    app = soniq_app
    errors: list[BaseException] = []

    @app.job(name="flow.forever", retries=0, max_snoozes=2)
    async def forever() -> None:
        raise Snooze(0)

    @app.on_error
    def seen(ctx: JobContext, exc: BaseException) -> None:
        errors.append(exc)

    jid = await app.enqueue(forever)
    await app.run_worker(run_once=True)
    found = await row(app, jid)
    assert found["status"] == "dead_letter"
    assert found["last_error"].startswith("SnoozeLimitError: ")
    assert "max_snoozes=2" in found["last_error"]
    assert "@app.job(max_snoozes=...)" in found["last_error"]
    assert [type(e).__name__ for e in errors] == ["SnoozeLimitError"]


async def test_a_replayed_dead_letter_keeps_its_checkpoint_not_its_snoozes(
    soniq_app: Soniq,
) -> None:
    app = soniq_app
    seen: list[tuple[Any, int]] = []

    @app.job(name="flow.replayed", retries=0, max_snoozes=1)
    async def job_(ctx: JobContext) -> None:
        seen.append((ctx.last_checkpoint, (await row(app, ctx.job_id))["snoozes"]))
        await ctx.checkpoint({"runs": len(seen)})
        raise Snooze(0)

    first = await app.enqueue(job_)
    await app.run_worker(run_once=True)  # snoozes once, then one too many: dead letter
    assert (await row(app, first))["status"] == "dead_letter"
    [again] = (await app.backend.dead_letter_replay([first])).values()
    await app.run_worker(run_once=True)
    # The replay resumes from the checkpoint, with no snoozes; then snoozes once more.
    assert seen[2:] == [({"runs": 2}, 0), ({"runs": 3}, 1)]
    assert (await row(app, again))["status"] == "dead_letter"


async def test_snooze_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="Snooze takes seconds >= 0"):
        Snooze(-1)
    assert (Snooze(2.5, reason="x").seconds, Snooze(2.5, reason="x").reason) == (2.5, "x")
    assert isinstance(Snooze(1), Exception)
    from soniq.job import Snooze as FromJob

    assert FromJob is Snooze


# --- cancelling ------------------------------------------------------------------------


async def test_cancel_job_queued_running_and_finished(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="flow.noop")
    async def noop() -> None:
        return None

    queued = await app.enqueue(noop)
    assert await app.cancel_job(queued) is True
    assert (await row(app, queued))["status"] == "cancelled"
    assert await app.cancel_job(queued) is False  # already finished

    done = await app.enqueue(noop)
    await app.run_worker(run_once=True)
    assert await app.cancel_job(done) is False
    assert await app.cancel_job(str(uuid.uuid4())) is False
    assert await app.cancel_job("not-an-id") is False

    running = await app.enqueue(noop)
    [claimed] = await app.backend.claim(None, wid(), 1)
    assert await app.cancel_job(running) is True  # asked; its worker stops it
    assert (await row(app, running))["cancel_requested"] is True
    assert await app.backend.cancel_requests(claimed.lease) == []  # by worker id only


async def test_cancel_requests_name_the_workers_running_jobs(soniq_app: Soniq) -> None:
    app = soniq_app
    app.settings.enqueue_validation = "none"
    ids = [await app.enqueue("flow.any", args={"n": n}) for n in range(3)]
    me, other = wid(), wid()
    mine = await app.backend.claim(None, me, 2)
    theirs = await app.backend.claim(None, other, 1)
    for c in (*mine, *theirs):
        assert await app.cancel_job(c.id) is True
    assert sorted(await app.backend.cancel_requests(me)) == sorted(c.id for c in mine)
    assert await app.backend.cancel_requests(other) == [theirs[0].id]
    assert set(ids) == {c.id for c in (*mine, *theirs)}


async def test_a_job_asked_to_cancel_never_returns_to_the_queue(soniq_app: Soniq) -> None:
    """Whatever would requeue it (shutdown, a retry, a snooze) cancels it instead."""
    app = soniq_app
    app.settings.enqueue_validation = "none"
    later = datetime.now(UTC) + timedelta(seconds=60)
    outcomes: list[Outcome] = [Requeue(), Retry(later, "boom"), Requeue(later)]
    ids = [await app.enqueue("flow.any", args={"n": n}) for n in range(len(outcomes))]
    claimed = {c.id: c for c in await app.backend.claim(None, wid(), len(ids))}
    for job_id in ids:
        await app.cancel_job(job_id)
    await app.backend.ack(
        [Ack(claimed[i], o) for i, o in zip(ids, outcomes, strict=True)], result_ttl=60
    )
    for job_id in ids:
        found = await row(app, job_id)
        assert found["status"] == "cancelled", found
        assert found["last_error"].startswith("JobCancelledError:")
    assert await app.backend.claim(None, wid(), 5) == []


async def test_cancel_a_running_async_job(soniq_app: Soniq) -> None:
    app = soniq_app
    started = asyncio.Event()
    stopped: list[str] = []
    hooked: list[BaseException] = []

    @app.job(name="flow.sleeper", retries=3)
    async def sleeper() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.append("cancelled")
            raise

    @app.on_error
    def on_error(ctx: JobContext, exc: BaseException) -> None:
        hooked.append(exc)

    async with worker(app):
        jid = await app.enqueue(sleeper)
        await asyncio.wait_for(started.wait(), 10)
        assert await app.cancel_job(jid) is True
        await wait_until(lambda: status_is(app, jid, "cancelled"), timeout=10, message="cancel")
    found = await row(app, jid)
    assert found["attempts"] == 1  # not retried
    assert found["last_error"].startswith("JobCancelledError: ")
    assert stopped == ["cancelled"]
    assert [type(e) for e in hooked] == [JobCancelledError]


async def test_cancel_a_running_sync_job(soniq_app: Soniq) -> None:
    app = soniq_app
    started = threading.Event()
    saw: list[bool] = []

    @app.job(name="flow.sync_loop")
    def sync_loop(ctx: JobContext) -> str:
        started.set()
        saw.append(ctx.cancelled.wait(30))  # a sync handler polls, or waits on it
        return "stopped early"

    async with worker(app):
        jid = await app.enqueue(sync_loop)
        await asyncio.to_thread(started.wait, 10)
        assert await app.cancel_job(jid) is True
        await wait_until(lambda: status_is(app, jid, "cancelled"), timeout=10, message="cancel")
    assert saw == [True]
    assert (await row(app, jid))["result"] is None


# --- progress and checkpoints ---------------------------------------------------------


async def test_progress_is_shown_by_get_job(soniq_app: Soniq) -> None:
    app = soniq_app
    seen: dict[str, Any] = {}

    @app.job(name="flow.progress")
    async def report(ctx: JobContext) -> None:
        await ctx.progress(0.25, "a quarter")
        seen["mid"] = await app.get_job(ctx.job_id)
        await ctx.progress(0.5)  # throttled: written when the interval ends
        await ctx.progress(1.0, "all")  # the end is never held back

    jid = await app.enqueue(report)
    fresh = await row(app, jid)
    assert (fresh["progress"], fresh["progress_message"]) == (None, None)
    await app.run_worker(run_once=True)
    assert (seen["mid"]["progress"], seen["mid"]["progress_message"]) == (0.25, "a quarter")
    assert seen["mid"]["status"] == "processing"
    done = await row(app, jid)
    assert (done["progress"], done["progress_message"]) == (1.0, "all")


async def test_throttled_progress_catches_up(soniq_app: Soniq) -> None:
    app = soniq_app
    release = asyncio.Event()

    @app.job(name="flow.slow_progress")
    async def slow(ctx: JobContext) -> None:
        for i in range(1, 6):
            await ctx.progress(i / 10, f"step {i}")
        await release.wait()

    async with worker(app):
        jid = await app.enqueue(slow)

        async def latest() -> bool:
            return bool((await row(app, jid))["progress_message"] == "step 5")

        await wait_until(latest, timeout=5, message="the last throttled progress")
        assert (await row(app, jid))["progress"] == pytest.approx(0.5)
        release.set()
        await wait_until(lambda: status_is(app, jid, "done"), timeout=5, message="done")


async def test_progress_and_checkpoint_arguments(soniq_app: Soniq) -> None:
    ctx = JobContext("i", "t", 1, 1, "q")
    assert ctx.last_checkpoint is None and not ctx.cancelled.is_set()
    await ctx.progress(0.5)  # outside a worker: accepted, writes nothing
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"0\.0 to 1\.0"):
            await ctx.progress(bad)
    with pytest.raises(TypeError):
        await ctx.progress("half")  # type: ignore[arg-type]
    with pytest.raises(SerializationError, match="not JSON-serialisable"):
        await ctx.checkpoint({"at": object()})


async def test_checkpoint_is_read_by_the_next_attempt(soniq_app: Soniq) -> None:
    app = soniq_app
    seen: list[Any] = []

    @app.job(name="flow.resume", retries=2)
    async def resume(ctx: JobContext) -> int:
        seen.append(ctx.last_checkpoint)
        start = (ctx.last_checkpoint or {}).get("offset", 0)
        await ctx.checkpoint({"offset": start + 10})
        if ctx.attempt < 3:
            raise RuntimeError("crash after the checkpoint")
        return int(start)

    jid = await app.enqueue(resume)
    await app.run_worker(run_once=True)
    assert seen == [None, {"offset": 10}, {"offset": 20}]
    assert await app.get_result(jid) == 20


async def test_progress_and_checkpoint_need_the_claims_lease(soniq_app: Soniq) -> None:
    app = soniq_app
    app.settings.enqueue_validation = "none"
    jid = await app.enqueue("flow.any", args={})
    [claimed] = await app.backend.claim(None, wid(), 1)
    assert await app.backend.job_progress(jid, claimed.lease, 0.3, "x") is True
    assert await app.backend.job_progress(jid, str(uuid.uuid4()), 0.9, "late") is False
    assert await app.backend.job_checkpoint(jid, claimed.lease, '{"k": 1}') is True
    assert await app.backend.job_checkpoint(jid, str(uuid.uuid4()), '{"k": 2}') is False
    await app.backend.ack([Ack(claimed, Retry(datetime.now(UTC), "x"))], result_ttl=60)
    [again] = await app.backend.claim(None, wid(), 1)
    assert again.args["__soniq__"]["checkpoint"] == {"k": 1}
    assert (await row(app, jid))["progress"] == pytest.approx(0.3)


# --- limits: the claim ----------------------------------------------------------------


async def enqueue_many(app: Soniq, n: int, queue: str = "default", **args: Any) -> list[str]:
    app.settings.enqueue_validation = "none"
    return [await app.enqueue("flow.any", args={"n": i, **args}, queue=queue) for i in range(n)]


async def claim_limited(
    app: Soniq, limit: int, queues: list[str] | None = None, tasks: tuple[TaskLimit, ...] = ()
) -> tuple[list[ClaimedJob], float | None]:
    got = await app.backend.claim_limited(queues, wid(), limit, tasks)
    return got.jobs, got.retry_in


async def test_queue_limits_are_stored(soniq_app: Soniq) -> None:
    app = soniq_app
    stored = await app.queue_limits("emails", max_concurrency=5, rate="100/m")
    assert stored is not None
    assert stored.to_dict() == {"queue": "emails", "max_concurrency": 5, "rate": "100/m"}
    await app.queue_limits("billing", rate="10/s")
    assert [q.queue for q in await app.backend.queue_limits()] == ["billing", "emails"]
    replaced = await app.queue_limits("emails", max_concurrency=2)
    assert replaced is not None and (replaced.max_concurrency, replaced.rate) == (2, None)
    assert await app.queue_limits("emails") is None  # neither: lifted
    assert [q.queue for q in await app.backend.queue_limits()] == ["billing"]
    with pytest.raises(ConfigurationError, match="'N/unit'"):
        await app.queue_limits("emails", rate="fast")
    with pytest.raises(ConfigurationError, match="max_concurrency must be an int >= 1"):
        await app.queue_limits("emails", max_concurrency=0)
    with pytest.raises(ConfigurationError, match="queue must be a non-empty string"):
        await app.queue_limits("", max_concurrency=1)


async def test_rates_parse() -> None:
    assert (parse_rate("10/s").count, parse_rate("10/s").seconds) == (10, 1.0)
    assert parse_rate("100/m").seconds == 60.0 and parse_rate("5/h").seconds == 3600.0
    assert parse_rate("2 / 10s").seconds == 10.0 and str(parse_rate("3/1d")) == "3/d"
    for bad in ("0/s", "10", "10/fortnight", "x/s", ""):
        with pytest.raises(ConfigurationError):
            parse_rate(bad)


async def test_queue_max_concurrency_holds_in_the_claim(soniq_app: Soniq) -> None:
    app = soniq_app
    await enqueue_many(app, 5, queue="emails")
    await app.queue_limits("emails", max_concurrency=2)
    first, _ = await claim_limited(app, 10)
    assert len(first) == 2
    assert (await claim_limited(app, 10))[0] == []  # at the limit, from any worker
    await app.backend.ack([Ack(first[0], Done(None))], result_ttl=60)
    more, _ = await claim_limited(app, 10)
    assert len(more) == 1


async def test_a_queue_at_its_limit_never_starves_the_others(soniq_app: Soniq) -> None:
    app = soniq_app
    await app.queue_limits("slow", max_concurrency=1)
    await app.queue_limits("fast", max_concurrency=3)
    app.settings.enqueue_validation = "none"
    for i in range(6):  # the limited queue's jobs come first in claim order
        await app.enqueue("flow.any", args={"n": i}, queue="slow", priority=1)
    fast = await enqueue_many(app, 3, queue="fast")
    got, _ = await claim_limited(app, 3)
    assert sorted(j.queue for j in got) == ["fast", "fast", "slow"]  # slow skipped, not a stop
    got2, _ = await claim_limited(app, 10)
    assert [j.id for j in got2] == [fast[2]]


async def test_queue_rate_is_a_sliding_window(soniq_app: Soniq) -> None:
    app = soniq_app
    await enqueue_many(app, 6, queue="api")
    await app.queue_limits("api", rate="3/s")
    got, _ = await claim_limited(app, 10)
    assert len(got) == 3
    none, retry_in = await claim_limited(app, 10)
    assert none == [] and retry_in is not None and 0 < retry_in <= 1.0
    await asyncio.sleep(retry_in)  # the window itself is what the test waits for
    later, _ = await claim_limited(app, 10)
    assert len(later) == 3


async def test_task_rate_limit(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="flow.rated", rate_limit="2/m")
    async def rated(n: int) -> None:
        return None

    @app.job(name="flow.free")
    async def free(n: int) -> None:
        return None

    for n in range(4):
        await app.enqueue(rated, n=n, priority=1)
        await app.enqueue(free, n=n, priority=2)
    tasks = (TaskLimit("flow.rated", parse_rate("2/m")),)
    got, _ = await claim_limited(app, 10, tasks=tasks)
    assert sorted(j.job_name for j in got) == ["flow.free"] * 4 + ["flow.rated"] * 2
    rest, retry_in = await claim_limited(app, 10, tasks=tasks)
    assert rest == [] and retry_in is not None and 55 < retry_in <= 60


async def test_max_concurrency_per_key(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(
        name="flow.tenant", concurrency_key=lambda args: args["tenant"], max_concurrency_per_key=1
    )
    async def per_tenant(tenant: str, n: int) -> None:
        return None

    await app.enqueue_many(
        per_tenant, [{"tenant": t, "n": n} for n, t in enumerate(["a", "a", "a", "b", "b"])]
    )
    tasks = (TaskLimit("flow.tenant", max_per_key=1),)
    got, _ = await claim_limited(app, 10, tasks=tasks)
    assert sorted(j.args["tenant"] for j in got) == ["a", "b"]
    assert (await claim_limited(app, 10, tasks=tasks))[0] == []
    await app.backend.ack([Ack(got[0], Done(None))], result_ttl=60)
    [next_one], _ = await claim_limited(app, 10, tasks=tasks)
    assert next_one.args["tenant"] == got[0].args["tenant"]


async def test_limits_bind_a_running_worker(soniq_app: Soniq) -> None:
    """The worker learns of app.queue_limits by itself, and never runs more at once."""
    app = soniq_app
    running: list[int] = []
    peak: list[int] = []
    gate = asyncio.Event()

    @app.job(name="flow.limited", queue="narrow")
    async def limited(n: int) -> None:
        running.append(n)
        peak.append(len(running))
        await gate.wait()
        running.remove(n)

    await app.queue_limits("narrow", max_concurrency=2)
    async with worker(app, concurrency=6):
        for n in range(5):
            await app.enqueue(limited, n=n)
        await wait_until(lambda: len(running) == 2, timeout=5, message="two running")
        await asyncio.sleep(3 * app.settings.poll_interval)  # a chance to take a third
        assert len(running) == 2
        gate.set()

        async def all_done() -> bool:
            jobs = await app.list_jobs(queue="narrow", status="done")
            return len(jobs) == 5

        await wait_until(all_done, timeout=10, message="all five done")
    assert max(peak) == 2


async def test_flow_options_are_checked_at_registration(soniq_app: Soniq) -> None:
    app = soniq_app
    with pytest.raises(JobRegistrationError, match="rate_limit"):
        app.job(name="x1", rate_limit="lots")
    with pytest.raises(JobRegistrationError, match="go together"):
        app.job(name="x2", max_concurrency_per_key=2)
    with pytest.raises(JobRegistrationError, match="max_concurrency_per_key"):
        app.job(name="x3", concurrency_key=lambda a: a, max_concurrency_per_key=0)
    with pytest.raises(JobRegistrationError, match="max_snoozes"):
        app.job(name="x4", max_snoozes=-1)

    @app.job(name="flow.keyed", concurrency_key=lambda a: a["missing"], max_concurrency_per_key=1)
    async def keyed(n: int) -> None:
        return None

    with pytest.raises(JobValidationError, match=r"concurrency_key of flow\.keyed failed"):
        await app.enqueue(keyed, n=1)


# --- dependencies -------------------------------------------------------------------


async def test_a_dependant_waits_until_every_dependency_is_done(soniq_app: Soniq) -> None:
    app = soniq_app
    order: list[str] = []

    @app.job(name="flow.step")
    async def step(name: str) -> None:
        order.append(name)

    a = await app.enqueue(step, name="a", priority=50)
    b = await app.enqueue(step, name="b", priority=60)
    c = await app.enqueue(step, name="c", depends_on=[a, b], priority=1)
    waiting = await row(app, c)
    assert waiting["status"] == "queued" and waiting["waiting_for"] == sorted([a, b])
    [first] = await app.backend.claim(None, wid(), 1)
    assert first.id == a  # c, although most urgent, is not due
    await app.backend.ack([Ack(first, Done(None))], result_ttl=60)
    assert (await row(app, c))["waiting_for"] == [b]
    await app.run_worker(run_once=True)
    assert order == ["b", "c"]
    assert (await row(app, c))["waiting_for"] == []


async def test_dependency_rule_for_failures(soniq_app: Soniq) -> None:
    """A dead-lettered or cancelled dependency cancels every job waiting on it, directly
    or through other waiting jobs, with an error naming it."""
    app = soniq_app

    @app.job(name="flow.fails", retries=0)
    async def fails() -> None:
        raise RuntimeError("no")

    @app.job(name="flow.ok")
    async def ok() -> None:
        return None

    dead = await app.enqueue(fails)
    child = await app.enqueue(ok, depends_on=[dead])
    grandchild = await app.enqueue(ok, depends_on=[child])
    queued = await app.enqueue(ok, scheduled_at=3600)
    waits_on_cancel = await app.enqueue(ok, depends_on=[queued])
    await app.run_worker(run_once=True)
    assert (await row(app, dead))["status"] == "dead_letter"
    for job_id in (child, grandchild):
        found = await row(app, job_id)
        assert (found["status"], found["last_error"]) == (
            "cancelled", f"dependency {dead} was dead-lettered",
        )  # fmt: skip
        assert found["waiting_for"] == []
    assert await app.cancel_job(queued) is True
    found = await row(app, waits_on_cancel)
    assert (found["status"], found["last_error"]) == (
        "cancelled", f"dependency {queued} was cancelled",
    )  # fmt: skip
    # Enqueued after the failure: cancelled at once, with the same rule.
    late = await app.enqueue(ok, depends_on=[dead])
    assert (await row(app, late))["last_error"] == f"dependency {dead} was dead-lettered"


async def test_dependencies_that_finished_or_are_gone(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="flow.ok2")
    async def ok() -> None:
        return None

    done = await app.enqueue(ok)
    await app.run_worker(run_once=True)
    gone = str(uuid.uuid4())  # e.g. finished and pruned after result_ttl
    ready = await app.enqueue(ok, depends_on=[done, gone])
    found = await row(app, ready)
    assert found["waiting_for"] == [] and found["scheduled_at"] < datetime.now(UTC)
    assert await app.run_worker(run_once=True) is True
    with pytest.raises(JobValidationError, match="not a job id"):
        await app.enqueue(ok, depends_on=["nope"])
    with pytest.raises(JobValidationError, match="list of job ids"):
        await app.enqueue(ok, depends_on=done)  # a str is an Iterable[str]: refused at runtime


async def test_a_dependant_keeps_its_own_run_time(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="flow.ok3")
    async def ok() -> None:
        return None

    first = await app.enqueue(ok)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=2)
    then = await app.enqueue(ok, depends_on=[first], scheduled_at=at)
    [claimed] = await app.backend.claim(None, wid(), 5)
    await app.backend.ack([Ack(claimed, Done(None))], result_ttl=0)  # row deleted: done
    found = await row(app, then)
    assert found["scheduled_at"] == at and found["waiting_for"] == []


async def test_a_dead_letter_of_a_running_dependency_cancels_the_dependants(
    soniq_app: Soniq,
) -> None:
    app = soniq_app
    app.settings.enqueue_validation = "none"
    dep = await app.enqueue("flow.any", args={})
    [claimed] = await app.backend.claim(None, wid(), 1)
    child = await app.enqueue("flow.any", args={"n": 1}, depends_on=[dep])  # while it runs
    await app.backend.ack([Ack(claimed, Fail("RuntimeError: x", None))], result_ttl=60)
    found = await row(app, child)
    assert (found["status"], found["last_error"]) == (
        "cancelled", f"dependency {dep} was dead-lettered",
    )  # fmt: skip


# --- the event seam: webhooks and metrics see the new outcomes ----------------------


async def test_webhooks_and_metrics_see_snoozed_and_cancelled_jobs(soniq_app: Soniq) -> None:
    app = soniq_app
    started = asyncio.Event()
    hook_id = await app.webhooks.register(
        "http://127.0.0.1:9/hook", events=["job.cancelled"], allow_private=True
    )
    metrics = app.metrics

    @app.job(name="flow.seam_snooze", max_snoozes=1, retries=0)
    async def snoozes_once(ctx: JobContext) -> None:
        if ctx.last_checkpoint is None:
            await ctx.checkpoint("again")
            raise Snooze(0)

    @app.job(name="flow.seam_block")
    async def block() -> None:
        started.set()
        await asyncio.sleep(60)

    await app.enqueue(snoozes_once)
    async with worker(app):
        jid = await app.enqueue(block)
        await asyncio.wait_for(started.wait(), 10)
        await app.cancel_job(jid)
        await wait_until(lambda: status_is(app, jid, "cancelled"), timeout=10, message="cancel")

        async def delivered() -> list[Any]:
            return [d for d in await app.webhooks.deliveries(hook_id) if d["job_id"] == jid]

        [delivery] = await wait_until(delivered, timeout=10, message="job.cancelled outbox row")
    assert delivery["event"] == "job.cancelled"
    labels = {"queue": "default", "task": "flow.seam_snooze"}
    assert metrics.get_sample_value("soniq_jobs_snoozed_total", labels) == 1.0
    labels = {"queue": "default", "task": "flow.seam_block"}
    assert metrics.get_sample_value("soniq_jobs_cancelled_total", labels) == 1.0


async def test_transactional_enqueue_with_dependencies(app: Soniq, pg_url: str) -> None:
    """depends_on inside the caller's transaction (PostgreSQL only: a documented
    difference, asserted in test_conformance), on asyncpg and psycopg."""
    import psycopg

    app.settings.enqueue_validation = "none"
    first = await app.enqueue("flow.any", args={})
    async with app.backend.acquire() as conn, conn.transaction():
        waiting = await app.enqueue("flow.any", args={"n": 1}, depends_on=[first], connection=conn)
    assert (await row(app, waiting))["waiting_for"] == [first]
    url = pg_url
    assert url is not None
    async with await psycopg.AsyncConnection.connect(url) as pconn, pconn.transaction():
        other = await app.enqueue("flow.any", args={"n": 2}, depends_on=[first], connection=pconn)
        assert await app.get_job(other) is None  # not committed yet
    assert (await row(app, other))["waiting_for"] == [first]


async def test_a_worker_at_a_rate_limit_sleeps_instead_of_polling(soniq_app: Soniq) -> None:
    app = soniq_app
    ran: list[int] = []

    @app.job(name="flow.slowly", queue="slowly")
    async def slowly(n: int) -> None:
        ran.append(n)

    await app.queue_limits("slowly", rate="1/m")
    backend = app.backend
    real = backend.claim_limited
    calls: list[float] = []

    async def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(asyncio.get_running_loop().time())
        return await real(*args, **kwargs)

    backend.claim_limited = counted  # type: ignore[method-assign]
    for n in range(3):
        await app.enqueue(slowly, n=n)
    async with worker(app, concurrency=4):
        await wait_until(lambda: ran == [0], timeout=5, message="the first job")
        before = len(calls)
        await asyncio.sleep(1.0)  # the span being measured: claims made while blocked
        during = len(calls) - before
    assert ran == [0]
    # At most one claim per poll_interval (0.2 s) while the queue waits a minute.
    assert during <= 1.0 / app.settings.poll_interval + 2, calls
