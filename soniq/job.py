"""The data every layer shares: job rows, new jobs, contexts and outcomes.

Frozen dataclasses cross the backend boundary so that the app, the worker, the
CLI and the dashboard never depend on a driver's row type.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Container
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


class JobStatus(str, enum.Enum):
    """Lifecycle states of a ``soniq_jobs`` row.

    ``DEAD_LETTER`` is never stored in ``soniq_jobs``: it is what
    ``get_job_status`` reports for a job that moved to the dead-letter table.
    """

    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    CANCELLED = "cancelled"
    DEAD_LETTER = "dead_letter"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class JobContext:
    """Runtime metadata injected into a handler that declares a ``JobContext`` parameter.

    Example::

        @app.job()
        async def process_order(order_id: int, ctx: JobContext):
            print(f"attempt {ctx.attempt} of {ctx.max_attempts}")
    """

    job_id: str
    job_name: str
    attempt: int
    max_attempts: int
    queue: str
    worker_id: str | None = None
    scheduled_at: datetime | None = None
    created_at: datetime | None = None

    # Flow control. Outside a worker (a context built by hand, in a test) nothing is
    # running: never cancelled, no checkpoint, and progress/checkpoint write nothing.
    @property
    def cancelled(self) -> CancelSignal:
        """Set once ``app.cancel_job(id)`` asked this running job to stop.

        An async handler is also cancelled (``asyncio.CancelledError``); a sync handler
        must look: ``if ctx.cancelled.is_set(): return``, or ``ctx.cancelled.wait(1)``.
        """
        return _NEVER_CANCELLED

    @property
    def last_checkpoint(self) -> Any:
        """What an earlier attempt (or run before a snooze) stored with ``checkpoint``."""
        return None

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the job is, 0.0 to 1.0; shown by ``get_job`` and the dashboard.

        Example::

            for i, row in enumerate(rows):
                await ctx.progress(i / len(rows), f"row {i}")

        Writes are throttled (one per second per job, the latest value always lands).
        """
        check_fraction(fraction)

    async def checkpoint(self, data: Any) -> None:
        """Store JSON ``data`` that the next attempt reads as ``ctx.last_checkpoint``.

        Example::

            start = (ctx.last_checkpoint or {}).get("offset", 0)
            for offset in range(start, total, 100):
                process(offset)
                await ctx.checkpoint({"offset": offset + 100})
        """
        checkpoint_json(data)


class CancelSignal:
    """``ctx.cancelled``: a read-only, ``threading.Event``-like flag (``is_set``, ``wait``).

    It reads the worker's set of cancel requests instead of owning an Event, so a
    job that is never cancelled costs one small object and no lock.
    """

    __slots__ = ("_job_id", "_requested")

    def __init__(self, job_id: str | None, requested: Container[str]) -> None:
        self._job_id = job_id
        self._requested = requested

    def is_set(self) -> bool:
        return self._job_id is not None and self._job_id in self._requested

    def __bool__(self) -> bool:
        return self.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block (a sync handler's thread) until set or ``timeout`` seconds; returns is_set()."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.is_set():
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(0.05, left))
        return True

    def __repr__(self) -> str:
        return f"<CancelSignal {'set' if self.is_set() else 'unset'}>"


_NEVER_CANCELLED = CancelSignal(None, frozenset())


class RunningContext(JobContext):
    """The ``JobContext`` a worker hands to a running job: the same fields, plus what
    ``cancelled``, ``last_checkpoint``, ``progress`` and ``checkpoint`` need.

    A subclass rather than more fields, so ``JobContext``'s documented fields (and
    ``dataclasses.fields``/``asdict`` of it) stay exactly as published. One extra slot,
    set in the same ``__init__``: a context is built for every job, so this is the
    worker's hot path (a cancel signal is made only when a handler asks for one).

    ``run`` is ``(cancel requests, progress/checkpoint writer, lease, last checkpoint)``.
    """

    __slots__ = ("_run",)
    _run: tuple[Container[str], Any, str, Any]

    def __init__(
        self, job_id: str, job_name: str, attempt: int, max_attempts: int, queue: str,
        worker_id: str | None, scheduled_at: datetime | None, created_at: datetime | None,
        run: tuple[Container[str], Any, str, Any],
    ) -> None:  # fmt: skip
        put = object.__setattr__  # frozen: what the dataclass's own __init__ does
        put(self, "job_id", job_id)
        put(self, "job_name", job_name)
        put(self, "attempt", attempt)
        put(self, "max_attempts", max_attempts)
        put(self, "queue", queue)
        put(self, "worker_id", worker_id)
        put(self, "scheduled_at", scheduled_at)
        put(self, "created_at", created_at)
        put(self, "_run", run)

    @property
    def cancelled(self) -> CancelSignal:
        return CancelSignal(self.job_id, self._run[0])

    @property
    def last_checkpoint(self) -> Any:
        return self._run[3]

    async def progress(self, fraction: float, message: str | None = None) -> None:
        check_fraction(fraction)
        _, control, lease, _ = self._run
        text = None if message is None else str(message)
        await control.progress(self.job_id, lease, float(fraction), text)

    async def checkpoint(self, data: Any) -> None:
        data_json = checkpoint_json(data)
        _, control, lease, _ = self._run
        await control.checkpoint(self.job_id, lease, data_json)


def check_fraction(fraction: Any) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"progress takes a number from 0.0 to 1.0, not {fraction!r}")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(
            f"progress {fraction!r} is out of range; pass the fraction done, 0.0 to 1.0 "
            "(e.g. done / total)"
        )


def checkpoint_json(data: Any) -> str:
    from soniq.errors import SerializationError
    from soniq.serialization import dumps_strict

    try:
        return dumps_strict(data)
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"checkpoint data is not JSON-serialisable ({exc}); store plain data (dict, "
            "list, str, numbers), e.g. the offset to resume from"
        ) from None


class Snooze(Exception):
    """Run this job again in ``seconds`` without spending an attempt.

    Raise it or return it from a handler::

        @app.job()
        async def poll_export(export_id: str):
            if not await export_ready(export_id):
                raise Snooze(30, reason="export not ready")

    A job may snooze ``max_snoozes`` times (``@app.job(max_snoozes=...)``, default 100);
    the next snooze is a failed attempt.
    """

    def __init__(self, seconds: float, reason: str | None = None) -> None:
        if (
            isinstance(seconds, bool)
            or not isinstance(seconds, (int, float))
            or not (0 <= seconds < math.inf)
        ):
            raise ValueError(f"Snooze takes seconds >= 0, got {seconds!r}; e.g. Snooze(30)")
        super().__init__(seconds, reason)
        self.seconds = float(seconds)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Snooze({self.seconds:g}, reason={self.reason!r})"

    def __str__(self) -> str:
        return f"snoozed for {self.seconds:g}s" + (f": {self.reason}" if self.reason else "")


@dataclass(frozen=True, slots=True)
class NewJob:
    """A job about to be inserted: validated, serialised, ready for one INSERT."""

    id: str
    job_name: str
    args: dict[str, Any]
    args_json: str
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: datetime | None
    dedup_key: str | None
    concurrency_key: str | None = None  # @app.job(concurrency_key=...), computed at enqueue
    depends_on: tuple[str, ...] = ()  # runs once every one of these jobs is done


# The key under which Soniq keeps its own metadata inside a job's stored arguments.
META_KEY = "__soniq__"


def _public(record: dict[str, Any]) -> dict[str, Any]:
    args = record.get("args")
    if isinstance(args, dict) and META_KEY in args:
        record["args"] = {k: v for k, v in args.items() if k != META_KEY}
    return record


@dataclass(frozen=True, slots=True)
class Job:
    """A row of ``soniq_jobs`` (or, with status ``dead_letter``, of the dead-letter table)."""

    id: str
    job_name: str
    args: dict[str, Any]
    queue: str
    priority: int
    status: str
    attempts: int
    max_attempts: int
    scheduled_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    result: Any = None
    last_error: str | None = None
    worker_id: str | None = None
    dedup_key: str | None = None
    # Flow control (migration 0006): reported progress, snoozes so far, the jobs it
    # still waits for (depends_on), and whether a cancel was asked while it ran.
    progress: float | None = None
    progress_message: str | None = None
    snoozes: int = 0
    waiting_for: list[str] = field(default_factory=list)
    cancel_requested: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record users see (``get_job``, ``list_jobs``, the dashboard): the handler's
        arguments only; Soniq's own metadata (trace context, snooze count, checkpoint,
        sealed arguments) is shown through its own fields."""
        return _public(asdict(self))


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job a worker holds. ``lease`` guards against a late ack after the job was recovered."""

    id: str
    job_name: str
    args: dict[str, Any]
    queue: str
    attempt: int
    max_attempts: int
    lease: str
    scheduled_at: datetime | None = None
    created_at: datetime | None = None
    priority: int = 100


@dataclass(frozen=True, slots=True)
class DeadLetterJob:
    """A row of ``soniq_dead_letter_jobs``: a job that exhausted its attempts."""

    id: str
    job_name: str
    args: dict[str, Any]
    queue: str
    priority: int
    attempts: int
    max_attempts: int
    last_error: str | None
    traceback: str | None
    created_at: datetime | None = None
    dead_lettered_at: datetime | None = None
    resurrection_count: int = 0
    last_replayed_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return _public(asdict(self))

    def as_job_dict(self) -> dict[str, Any]:
        """The shape ``get_job`` returns for a dead-lettered id (status ``dead_letter``)."""
        d = self.to_dict()
        d["status"] = JobStatus.DEAD_LETTER.value
        # Same keys as a live job's record, so callers can read e.g. ["result"] blindly.
        for key in ("scheduled_at", "updated_at", "started_at", "completed_at", "result",
                    "worker_id", "dedup_key", "progress", "progress_message"):  # fmt: skip
            d.setdefault(key, None)
        d.update(snoozes=0, waiting_for=[], cancel_requested=False)
        d["updated_at"] = self.dead_lettered_at
        return d

    # The published package's names for these fields (soniq.features.dead_letter).
    @property
    def dead_letter_reason(self) -> str:
        """Why it was dead-lettered, read from its error (``max_retries_exceeded``, ...)."""
        return dead_letter_reason(self.last_error)

    @property
    def original_created_at(self) -> datetime | None:
        return self.created_at

    @property
    def moved_to_dead_letter_at(self) -> datetime | None:
        return self.dead_lettered_at

    @property
    def last_resurrection_at(self) -> datetime | None:
        return self.last_replayed_at

    @property
    def tags(self) -> list[str]:
        """Always empty: tags were never stored (the published ``add_tags_to_job`` is not kept)."""
        return []


def dead_letter_reason(last_error: str | None) -> str:
    """The published ``DeadLetterReason`` of a dead letter, from its recorded error.

    Derived rather than stored: the error already says it, and every dead letter
    (old ones, those of other workers) gets a reason without a schema change.
    """
    text = last_error or ""
    if text.startswith("Job ") and text.endswith(" not registered."):
        return "job_not_found"
    if text.startswith(("TimeoutError", "JobTimeoutError")):
        return "timeout"
    if text.startswith(("JobValidationError", "ValidationError", "Invalid arguments")):
        return "invalid_arguments"
    return "max_retries_exceeded"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A row of ``soniq_workers``."""

    id: str
    hostname: str
    pid: int
    queues: list[str] | None
    concurrency: int
    started_at: datetime | None = None
    last_heartbeat: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class Schedule:
    """A recurring schedule row. Exactly one of ``cron`` / ``every_seconds`` is set."""

    name: str
    job_name: str
    args: dict[str, Any] = field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    cron: str | None = None
    every_seconds: float | None = None
    timezone: str = "UTC"
    status: str = "active"
    next_run_at: datetime | None = None
    last_run_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # Read as a dict too, with our field names and the published package's keys
    # (``schedule["next_run"]``, ``["schedule_type"]``...), which its users index.
    def __getitem__(self, key: str) -> Any:
        if key in _SCHEDULE_FIELDS:
            return getattr(self, key)
        if key in _PUBLISHED_SCHEDULE_KEYS:
            return _PUBLISHED_SCHEDULE_KEYS[key](self)
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def keys(self) -> list[str]:
        return [*_SCHEDULE_FIELDS, *_PUBLISHED_SCHEDULE_KEYS]


_SCHEDULE_FIELDS = (
    "name", "job_name", "args", "queue", "priority", "cron", "every_seconds", "timezone",
    "status", "next_run_at", "last_run_at", "created_at", "updated_at",
)  # fmt: skip
_PUBLISHED_SCHEDULE_KEYS: dict[str, Any] = {
    "id": lambda s: s.name,
    "schedule_type": lambda s: "cron" if s.cron is not None else "interval",
    "schedule_value": lambda s: s.cron if s.cron is not None else f"{s.every_seconds:g}",
    "max_attempts": lambda s: None,
    "last_run": lambda s: s.last_run_at,
    "next_run": lambda s: s.next_run_at,
    "run_count": lambda s: None,
    "last_job_id": lambda s: None,
}


# --- Outcomes: what executing one attempt decided. One ack per outcome kind. ---


@dataclass(frozen=True, slots=True)
class Done:
    result_json: str | None


@dataclass(frozen=True, slots=True)
class Retry:
    run_at: datetime
    error: str


@dataclass(frozen=True, slots=True)
class Fail:
    """Attempts exhausted: the job moves to the dead-letter table."""

    error: str
    traceback: str | None


@dataclass(frozen=True, slots=True)
class Requeue:
    """Put back without spending the attempt (shutdown)."""

    run_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Snoozed:
    """The handler raised or returned ``Snooze``: back to the queue at ``run_at``, the
    attempt not spent, the job's snooze count + 1."""

    run_at: datetime
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Cancelled:
    """``cancel_job`` stopped the running job: it ends ``cancelled``, never retried."""

    error: str


Outcome = Done | Retry | Fail | Requeue | Snoozed | Cancelled


@dataclass(frozen=True, slots=True)
class Ack:
    job: ClaimedJob
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    total: int
    queued: int
    processing: int
    done: int
    dead_letter: int
    cancelled: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
