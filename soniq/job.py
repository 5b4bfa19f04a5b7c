"""The data every layer shares: job rows, new jobs, contexts and outcomes.

Frozen dataclasses cross the backend boundary so that the app, the worker, the
CLI and the dashboard never depend on a driver's row type.
"""

from __future__ import annotations

import enum
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
        return asdict(self)

    def as_job_dict(self) -> dict[str, Any]:
        """The shape ``get_job`` returns for a dead-lettered id (status ``dead_letter``)."""
        d = self.to_dict()
        d["status"] = JobStatus.DEAD_LETTER.value
        # Same keys as a live job's record, so callers can read e.g. ["result"] blindly.
        for key in ("scheduled_at", "updated_at", "started_at", "completed_at", "result",
                    "worker_id", "dedup_key"):  # fmt: skip
            d.setdefault(key, None)
        d["updated_at"] = self.dead_lettered_at
        return d


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
    """Put back without spending the attempt (shutdown, snooze)."""

    run_at: datetime | None = None


Outcome = Done | Retry | Fail | Requeue


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
