"""Flow control: limits enforced in the claim, progress and checkpoints, cancel notices.

What lives here is shared by the app, the worker and both SQL backends, so that
each rule is written once:

* **Limits** (``app.queue_limits``, ``@app.job(rate_limit=..., concurrency_key=...,
  max_concurrency_per_key=...)``) are enforced by the claim itself, inside one
  serialised transaction per claim, so they hold across every worker process and
  host. The backends read the current budgets and the candidate rows; :func:`admit`
  decides which candidates fit, identically for PostgreSQL and SQLite.
* A worker whose app configures no limit never takes that path: :class:`FlowLimits`
  tells it, re-read once per ``poll_interval``.
* :class:`JobControl` is what a running job's ``ctx.progress`` / ``ctx.checkpoint``
  write through (progress writes are throttled).

Rates are ``"N/unit"`` strings (``"10/s"``, ``"100/m"``, ``"5/h"``, ``"1000/d"``, also
``"5/10s"``): at most N starts in any sliding window of that length.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError, JobRegistrationError

if TYPE_CHECKING:
    from soniq.backends import StorageBackend
    from soniq.core.registry import JobRegistry

log = logging.getLogger("soniq.flow")

CANCEL_NOTICE = "\x1fcancel:"
"""Prefix of a new-job notification payload that is really "cancel this running job".

``cancel_job`` on a running job notifies on the channel workers already LISTEN on
(no second connection per worker); queue names never start with a control
character, so the worker tells the two apart with one ``startswith``.
"""

WAITING_AT = datetime(9999, 12, 31, tzinfo=timezone.utc)
"""``scheduled_at`` of a job whose dependencies are not all done: never due, so the
claim (which only takes due rows) skips it with no extra predicate. The database
moves it to "now" when the last dependency finishes (migration 0006)."""

PROGRESS_INTERVAL = 1.0
"""Seconds between two progress writes of one job; the latest value is written last."""

DEFAULT_MAX_SNOOZES = 100
KEY_SEPARATOR = "\x1f"  # joins task name and concurrency key in the blocked-key list

_UNITS = {
    "s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0,
    "m": 60.0, "min": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}  # fmt: skip
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)\s*$")


# --- rates and limits -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` starts in any sliding window of ``seconds``."""

    count: int
    seconds: float

    def __str__(self) -> str:
        return format_rate(self.count, self.seconds)


def parse_rate(text: str | Rate) -> Rate:
    """``"100/m"`` → ``Rate(100, 60.0)``. Raises ``ConfigurationError`` with the fix."""
    if isinstance(text, Rate):
        return text
    match = _RATE.match(str(text).lower()) if isinstance(text, str) else None
    unit = _UNITS.get(match.group(3)) if match else None
    if match is None or unit is None or int(match.group(1)) < 1:
        raise ConfigurationError(
            f"rate {text!r} is not a rate; write it as 'N/unit' with N >= 1 and unit s, m, "
            "h or d (e.g. '10/s', '100/m', '5/10s')"
        )
    seconds = float(match.group(2) or 1) * unit
    if seconds <= 0:
        raise ConfigurationError(f"rate {text!r} has an empty window; use e.g. '10/s'")
    return Rate(int(match.group(1)), seconds)


def format_rate(count: int, seconds: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds == size:
            return f"{count}/{unit}"
    return f"{count}/{seconds:g}s"


@dataclass(frozen=True, slots=True)
class QueueLimit:
    """The limits of one queue, stored in the database (``app.queue_limits``)."""

    queue: str
    max_concurrency: int | None = None
    rate_count: int | None = None
    rate_seconds: float | None = None

    @property
    def rate(self) -> str | None:
        if self.rate_count is None or self.rate_seconds is None:
            return None
        return format_rate(self.rate_count, self.rate_seconds)

    def to_dict(self) -> dict[str, Any]:
        return {"queue": self.queue, "max_concurrency": self.max_concurrency, "rate": self.rate}


@dataclass(frozen=True, slots=True)
class TaskLimit:
    """A task's limits from its ``@app.job`` options (code, so every worker passes them)."""

    task: str
    rate: Rate | None = None
    max_per_key: int | None = None


@dataclass(frozen=True, slots=True)
class LimitedClaim:
    """What a limited claim took, and in how many seconds a rate-blocked slot reopens."""

    jobs: list[Any]
    retry_in: float | None = None


def job_flow_options(
    *,
    rate_limit: str | Rate | None,
    concurrency_key: Callable[[dict[str, Any]], Any] | None,
    max_concurrency_per_key: int | None,
    max_snoozes: int,
) -> dict[str, Any]:
    """Validate the flow options of ``@app.job`` (failing where the decorator is written)."""
    rate: Rate | None = None
    if rate_limit is not None:
        try:
            rate = parse_rate(rate_limit)
        except ConfigurationError as exc:
            raise JobRegistrationError(f"rate_limit: {exc}") from None
    if (concurrency_key is None) != (max_concurrency_per_key is None):
        raise JobRegistrationError(
            "concurrency_key= and max_concurrency_per_key= go together; pass both, e.g. "
            "concurrency_key=lambda args: args['tenant'], max_concurrency_per_key=2"
        )
    if concurrency_key is not None and not callable(concurrency_key):
        raise JobRegistrationError(
            f"concurrency_key must be a function of the job's arguments, got {concurrency_key!r}"
        )
    if max_concurrency_per_key is not None and not _positive_int(max_concurrency_per_key):
        raise JobRegistrationError(
            f"max_concurrency_per_key must be an int >= 1, got {max_concurrency_per_key!r}"
        )
    if isinstance(max_snoozes, bool) or not isinstance(max_snoozes, int) or max_snoozes < 0:
        raise JobRegistrationError(f"max_snoozes must be an int >= 0, got {max_snoozes!r}")
    return {
        "rate_limit": rate, "concurrency_key": concurrency_key,
        "max_concurrency_per_key": max_concurrency_per_key, "max_snoozes": max_snoozes,
    }  # fmt: skip


def check_queue_limit(limit: QueueLimit) -> None:
    """The input rule of ``queue_limit_set`` (CheckedBackend): values the schema accepts."""
    if not isinstance(limit.queue, str) or not limit.queue:
        raise ConfigurationError("queue must be a non-empty string; pass the queue's name")
    if limit.max_concurrency is not None and not _positive_int(limit.max_concurrency):
        raise ConfigurationError(
            f"max_concurrency must be an int >= 1, got {limit.max_concurrency!r}; "
            "pass None to lift the limit"
        )
    if (limit.rate_count is None) != (limit.rate_seconds is None):
        raise ConfigurationError("a rate needs both a count and a window; pass rate='N/unit'")
    if limit.rate_count is not None and not _positive_int(limit.rate_count):
        raise ConfigurationError(f"rate count must be >= 1, got {limit.rate_count!r}")
    if limit.rate_seconds is not None and not limit.rate_seconds > 0:
        raise ConfigurationError(f"rate window must be > 0 s, got {limit.rate_seconds!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def task_limits(registry: JobRegistry) -> tuple[TaskLimit, ...]:
    """The limits the registry's ``@app.job`` options declare (read once per worker run)."""
    return tuple(
        TaskLimit(d.name, d.rate_limit, d.max_concurrency_per_key)
        for d in registry.definitions()
        if d.rate_limit is not None or d.max_concurrency_per_key is not None
    )


def concurrency_key_of(
    task: str, key_fn: Callable[[dict[str, Any]], Any], args: dict[str, Any]
) -> str:
    """The job's key for ``max_concurrency_per_key``, computed once, at enqueue."""
    from soniq.errors import JobValidationError

    try:
        key = key_fn(args)
    except Exception as exc:  # noqa: BLE001 - any error of the user's function
        raise JobValidationError(
            f"concurrency_key of {task} failed for these arguments ({type(exc).__name__}: "
            f"{exc}); make it return a value for every argument set it is enqueued with"
        ) from None
    if key is None:
        raise JobValidationError(
            f"concurrency_key of {task} returned None; return a string or number to group by"
        )
    return str(key)


# --- the worker's view: are there limits at all? ----------------------------------


class FlowLimits:
    """Whether this worker must claim through the limited path, re-read every ``every`` s.

    Task limits are code (fixed for the worker's life); queue limits live in the
    database, so a worker learns of ``app.queue_limits`` within one poll interval.
    With neither, ``tasks`` is ``None`` and the plain claim runs untouched.
    """

    __slots__ = ("_every", "_next", "_queues", "_static", "tasks")

    def __init__(self, registry: JobRegistry, queues: Sequence[str] | None, every: float) -> None:
        self._static = task_limits(registry)
        self._queues = set(queues) if queues else None
        self._every = max(every, 0.05)
        self._next = 0.0
        self.tasks: tuple[TaskLimit, ...] | None = self._static or None

    def due(self) -> bool:
        return time.monotonic() >= self._next

    async def refresh(self, backend: StorageBackend) -> None:
        self._next = time.monotonic() + self._every
        read = getattr(backend, "queue_limits", None)  # a backend written before 0006: none
        limits = await read() if read is not None else []
        served = [lim for lim in limits if self._queues is None or lim.queue in self._queues]
        self.tasks = self._static if (served or self._static) else None


# --- admission: one rule for both dialects ---------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    """A due queued row the limited claim may take (locked by the caller's transaction)."""

    id: str
    job_name: str
    queue: str
    concurrency_key: str | None


@dataclass(frozen=True, slots=True)
class BudgetRow:
    """One fact the budget query reports.

    ``kind`` is ``queue`` (``name`` = queue, ``cap`` = max_concurrency, ``used`` =
    running), ``rate`` (``name`` = scope, ``cap`` = N, ``used`` = starts in the window,
    ``free_at`` = when the oldest of them leaves it), or ``key`` (``name`` = task,
    ``key``, ``used`` = running).
    """

    kind: str
    name: str
    key: str | None = None
    cap: int | None = None
    used: int = 0
    free_at: datetime | None = None
    window: float | None = None


@dataclass
class Budgets:
    """Slots left, per limit, while one claim admits candidates (mutated by :func:`admit`)."""

    now: datetime
    queue_slots: dict[str, int] = field(default_factory=dict)
    rate_slots: dict[str, int] = field(default_factory=dict)
    rate_free_at: dict[str, datetime | None] = field(default_factory=dict)
    rate_window: dict[str, float] = field(default_factory=dict)
    key_used: dict[tuple[str, str], int] = field(default_factory=dict)
    key_max: dict[str, int] = field(default_factory=dict)
    task_rated: set[str] = field(default_factory=set)

    @classmethod
    def build(cls, now: datetime, rows: Iterable[BudgetRow], tasks: Sequence[TaskLimit]) -> Budgets:
        b = cls(now)
        for r in rows:
            if r.kind == "queue" and r.cap is not None:
                b.queue_slots[r.name] = r.cap - r.used
            elif r.kind == "rate" and r.cap is not None:
                b.rate_slots[r.name] = r.cap - r.used
                b.rate_free_at[r.name] = r.free_at
                b.rate_window[r.name] = r.window or 0.0
            elif r.kind == "key" and r.key is not None:
                b.key_used[(r.name, r.key)] = r.used
        for t in tasks:
            if t.max_per_key is not None:
                b.key_max[t.task] = t.max_per_key
            if t.rate is not None:
                b.task_rated.add(t.task)
        return b

    def blocked(self) -> tuple[list[str], list[str], list[str]]:
        """(queues, tasks, task+key) with no slot left: the candidate read skips them, so
        a limit that is reached never hides the jobs behind it."""
        queues = {q for q, n in self.queue_slots.items() if n <= 0}
        queues |= {s[6:] for s, n in self.rate_slots.items() if n <= 0 and s.startswith("queue:")}
        tasks = [s[5:] for s, n in self.rate_slots.items() if n <= 0 and s.startswith("task:")]
        keys = [
            f"{task}{KEY_SEPARATOR}{key}"
            for (task, key), used in self.key_used.items()
            if used >= self.key_max.get(task, used + 1)
        ]
        return sorted(queues), sorted(tasks), sorted(keys)

    def retry_in(self) -> float | None:
        """Seconds until the first exhausted rate window lets one more start in."""
        waits = []
        for scope, left in self.rate_slots.items():
            if left > 0:
                continue
            free_at = self.rate_free_at.get(scope)
            if free_at is None:  # every start in the window was this claim's
                free_at = self.now + timedelta(seconds=self.rate_window.get(scope, 0.0))
            waits.append((free_at - self.now).total_seconds())
        return max(min(waits), 0.001) if waits else None


def admit(
    candidates: Sequence[Candidate], limit: int, budgets: Budgets
) -> tuple[list[str], list[str]]:
    """Take candidates in claim order while every limit they fall under has a slot.

    Returns the admitted ids and the rate scopes to log one start in, per admitted
    job. A candidate that does not fit is skipped, not a stop: the next one may
    belong to another queue, task or key.
    """
    ids: list[str] = []
    starts: list[str] = []
    b = budgets
    for c in candidates:
        if len(ids) >= limit:
            break
        queue_rate = f"queue:{c.queue}"
        task_rate = f"task:{c.job_name}" if c.job_name in b.task_rated else None
        key = (c.job_name, c.concurrency_key) if c.concurrency_key is not None else None
        key_max = b.key_max.get(c.job_name) if key is not None else None
        if b.queue_slots.get(c.queue, 1) <= 0 or b.rate_slots.get(queue_rate, 1) <= 0:
            continue
        if task_rate is not None and b.rate_slots.get(task_rate, 1) <= 0:
            continue
        if key is not None and key_max is not None and b.key_used.get(key, 0) >= key_max:
            continue
        ids.append(c.id)
        if c.queue in b.queue_slots:
            b.queue_slots[c.queue] -= 1
        for scope in (queue_rate, task_rate):
            if scope is not None and scope in b.rate_slots:
                b.rate_slots[scope] -= 1
                starts.append(scope)
        if key is not None and key_max is not None:
            b.key_used[key] = b.key_used.get(key, 0) + 1
    return ids, starts


Fetch = Callable[[list[str], list[str], list[str], list[str], int], Awaitable[list[Candidate]]]


async def admit_rounds(fetch: Fetch, limit: int, budgets: Budgets) -> tuple[list[str], list[str]]:
    """:func:`admit` over candidate reads, until ``limit`` jobs or no more candidates.

    ``fetch(blocked_queues, blocked_tasks, blocked_keys, exclude_ids, n)`` reads up to
    ``n`` due rows in claim order. A read returns twice what is still wanted; when
    a limit runs out on the way (six jobs of a queue allowed one), the next read
    skips that queue too, so one claim still fills every free slot it can.
    """
    ids: list[str] = []
    starts: list[str] = []
    for _ in range(4):
        wanted = limit - len(ids)
        n = wanted * 2
        candidates = await fetch(*budgets.blocked(), ids, n)
        more, logged = admit(candidates, wanted, budgets)
        ids += more
        starts += logged
        if len(ids) >= limit or len(candidates) < n:
            break
    return ids, starts


def rate_windows(budgets: Budgets) -> tuple[list[str], list[float]]:
    """(scopes, window seconds) whose start log the claim prunes as it goes."""
    scopes = sorted(budgets.rate_window)
    return scopes, [budgets.rate_window[s] for s in scopes]


def task_params(tasks: Sequence[TaskLimit]) -> tuple[list[str], list[int], list[float], list[str]]:
    """Rated tasks as parallel lists (name, N, window), and the tasks with per-key limits."""
    rated = [t for t in tasks if t.rate is not None]
    return (
        [f"task:{t.task}" for t in rated],
        [t.rate.count for t in rated if t.rate is not None],
        [t.rate.seconds for t in rated if t.rate is not None],
        [t.task for t in tasks if t.max_per_key is not None],
    )


# --- progress and checkpoints of running jobs --------------------------------------


class JobControl:
    """What ``ctx.progress`` and ``ctx.checkpoint`` write through, one per worker.

    Writes are guarded by the claim's lease (a job that was recovered elsewhere is
    not overwritten). Progress is throttled to one write per job per
    ``PROGRESS_INTERVAL``; the latest value of a throttled burst is written when
    the interval ends, so the stored value always catches up.
    """

    def __init__(self, backend: StorageBackend) -> None:
        self.backend = backend
        self._written: dict[str, float] = {}
        self._pending: dict[str, tuple[str, float, str | None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def progress(self, job_id: str, lease: str, fraction: float, message: str | None) -> None:
        now = time.monotonic()
        last = self._written.get(job_id)
        if last is None or now - last >= PROGRESS_INTERVAL or fraction >= 1.0:
            self._written[job_id] = now
            self._pending.pop(job_id, None)
            self._forget_old(now)
            await self.backend.job_progress(job_id, lease, fraction, message)
            return
        if job_id not in self._pending:
            delay = last + PROGRESS_INTERVAL - now
            asyncio.get_running_loop().call_later(delay, self._flush_later, job_id)
        self._pending[job_id] = (lease, fraction, message)

    def _flush_later(self, job_id: str) -> None:
        pending = self._pending.pop(job_id, None)
        if pending is None:
            return
        self._written[job_id] = time.monotonic()
        task = asyncio.get_running_loop().create_task(self._write(job_id, *pending))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, job_id: str, lease: str, fraction: float, message: str | None) -> None:
        with contextlib.suppress(Exception):  # the job may have ended: the lease guard says so
            await self.backend.job_progress(job_id, lease, fraction, message)

    def _forget_old(self, now: float) -> None:
        if len(self._written) > 256:
            for job_id, at in list(self._written.items()):
                if now - at > PROGRESS_INTERVAL and job_id not in self._pending:
                    del self._written[job_id]

    async def checkpoint(self, job_id: str, lease: str, data_json: str) -> None:
        await self.backend.job_checkpoint(job_id, lease, data_json)


# --- rows ---------------------------------------------------------------------------


def needs_settling(jobs: Sequence[Any]) -> bool:
    """Whether an enqueue writes more than the rows: dependencies or concurrency keys."""
    return any(j.depends_on or j.concurrency_key is not None for j in jobs)


def flow_fields(r: Any, waiting_for: list[str]) -> dict[str, Any]:
    """The flow-control fields of a ``Job`` from a row of ``_JOB_COLUMNS`` (both dialects)."""
    return {
        "progress": r["progress"], "progress_message": r["progress_message"],
        "snoozes": int(r["snoozes"] or 0), "waiting_for": waiting_for,
        "cancel_requested": bool(r["cancel_requested"]),
    }  # fmt: skip
