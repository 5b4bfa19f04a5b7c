"""Helpers for users' test suites: run jobs inline, drain queues, assert what was enqueued.

Everything here drives the real machinery (the worker's own attempt, retry and
dead-letter logic, the backend's statements), so a test that passes here passes
in production; only *when* jobs run changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from soniq.backends.checked import CheckedBackend
from soniq.events import META_KEY, Subscriber
from soniq.job import ClaimedJob, Done, Fail, NewJob, Outcome, Retry

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.events import Record


def make_app(**overrides: Any) -> Soniq:
    """A ``Soniq`` on the in-memory backend: ``Soniq(backend="memory", **overrides)``.

    Each call gets its own private store, so tests never see each other's jobs.
    """
    from soniq.app import Soniq

    overrides.setdefault("backend", "memory")
    return Soniq(**overrides)


async def wait_until(
    predicate: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 2.0,
    poll: float = 0.01,
    message: str | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy and return its value.

    A deadline instead of ``sleep`` and hope: fast when the condition comes true
    early, and a clear ``AssertionError`` when it never does.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout}s")
        await asyncio.sleep(poll)


@dataclass(frozen=True)
class JobOutcome:
    """What one attempt of one job came to, as ``drain`` and ``inline`` report it.

    ``status``: ``"done"``, ``"retry"`` (failed, will run again), ``"dead_letter"``
    (failed for the last time) or ``"requeued"`` (put back unspent).
    """

    job_id: str
    job_name: str
    queue: str
    attempt: int
    status: str
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "done"


def _outcome(job: ClaimedJob, outcome: Outcome) -> JobOutcome:
    def made(status: str, result: Any = None, error: str | None = None) -> JobOutcome:
        return JobOutcome(job.id, job.job_name, job.queue, job.attempt, status, result, error)

    if isinstance(outcome, Done):
        result = json.loads(outcome.result_json) if outcome.result_json is not None else None
        return made("done", result)
    if isinstance(outcome, Retry):
        return made("retry", error=outcome.error)
    if isinstance(outcome, Fail):
        return made("dead_letter", error=outcome.error)
    return made("requeued")


class _Collector(Subscriber):
    """Hears every finished attempt through the app's event seam."""

    def __init__(self) -> None:
        self.outcomes: list[JobOutcome] = []

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> None:
        self.outcomes.append(_outcome(job, outcome))


async def drain(app: Soniq, *, queues: Sequence[str] | None = None) -> list[JobOutcome]:
    """Run every job that is due now (in ``queues``, default all) and return the outcomes.

    One outcome per attempt, in completion order. A job that fails with
    ``retry_delay=0`` is due again at once, so its retries run here too; a later
    retry, or a job scheduled for later, stays queued.

    Example::

        await app.enqueue(send_welcome, to="a@example.com")
        [outcome] = await testing.drain(app)
        assert outcome.ok
    """
    collector = _Collector()
    app.events.subscribe(collector)
    try:
        await app.run_worker(run_once=True, queues=list(queues) if queues else None)
    finally:
        app.events.unsubscribe(collector)
    return collector.outcomes


@dataclass
class InlineRun:
    """What ran while ``inline`` was active: ``outcomes``, one per attempt."""

    outcomes: list[JobOutcome] = field(default_factory=list)


class _InlineBackend(CheckedBackend):
    """The app's backend, plus: after each enqueue, drain the queues just written to."""

    def __init__(self, inner: Any, app: Soniq, run: InlineRun) -> None:
        super().__init__(inner)
        self._app, self._run = app, run

    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        ids = await self.inner.enqueue(jobs, connection=connection)
        await self._run_now(jobs, connection)
        return ids

    async def enqueue_observed(
        self, jobs: Sequence[NewJob], records: Sequence[Record], *, connection: Any = None
    ) -> list[str]:
        ids = await self.inner.enqueue_observed(jobs, records, connection=connection)
        await self._run_now(jobs, connection)
        return ids

    async def _run_now(self, jobs: Sequence[NewJob], connection: Any) -> None:
        if connection is not None or not jobs:
            return  # not committed yet: no worker could see it (drain after the commit)
        queues = sorted({j.queue for j in jobs})
        outcomes = await drain(self._app, queues=queues)
        # A job run by a nested inline enqueue is also heard by the outer drain: once.
        seen = {(o.job_id, o.attempt) for o in self._run.outcomes}
        for o in outcomes:
            if (o.job_id, o.attempt) not in seen:
                self._run.outcomes.append(o)


@contextlib.contextmanager
def inline(app: Soniq) -> Iterator[InlineRun]:
    """Run jobs at enqueue time: each ``enqueue`` returns after its job ran.

    The job is stored and run by the real worker code (hooks, retries, results,
    dead letters all apply), and ``enqueue`` returns once it finished. Jobs that a
    job enqueues run inline too. A job scheduled for later, or enqueued with
    ``connection=`` (not visible until your commit), stays queued: ``drain`` it.

    Example::

        with testing.inline(app) as run:
            await client.post("/signup", json={"email": "a@example.com"})
        assert [o.status for o in run.outcomes] == ["done"]
    """
    run = InlineRun()
    original = app.backend
    app.backend = _InlineBackend(original, app, run)
    try:
        yield run
    finally:
        app.backend = original


async def assert_enqueued(app: Soniq, task: Any, /, **args: Any) -> dict[str, Any]:
    """Assert a queued job of ``task`` (the function, its name or a ``TaskRef``) exists
    whose arguments include ``args``; return that job's record.

    Example::

        await client.post("/signup", json={"email": "a@example.com"})
        await testing.assert_enqueued(app, send_welcome, to="a@example.com")
    """
    name = task_name(app, task)
    queued = await _queued(app)
    for job in queued:
        if job["job_name"] == name and _includes(app.events.open_args(job["args"]), args):
            return job
    seen = [(j["job_name"], _visible(j["args"])) for j in queued] or "none"
    raise AssertionError(f"no queued {name} job with arguments {args!r}; queued: {seen}")


async def assert_not_enqueued(app: Soniq, task: Any, /, **args: Any) -> None:
    """The opposite of ``assert_enqueued``."""
    name = task_name(app, task)
    for job in await _queued(app):
        if job["job_name"] == name and _includes(app.events.open_args(job["args"]), args):
            raise AssertionError(f"a {name} job with arguments {args!r} is queued: {job['id']}")


def task_name(app: Soniq, task: Any) -> str:
    """The task name a target enqueues under: a name, a ``TaskRef`` or a function."""
    if isinstance(task, str):
        return task
    name = getattr(task, "name", None)
    if isinstance(name, str) and not callable(task):  # a TaskRef
        return name
    definition = app._get_job_registry().for_function(task)
    if definition is None:
        raise AssertionError(
            f"{task!r} is not a job of this app; pass the @app.job() function or its name"
        )
    return definition.name


async def _queued(app: Soniq) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    page = 500
    while True:
        batch = await app.list_jobs(status="queued", limit=page, offset=len(out))
        out += batch
        if len(batch) < page:
            return out


def _includes(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    return all(k in actual and actual[k] == v for k, v in expected.items())


def _visible(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != META_KEY}
