"""The input rules of the storage protocol, written once, above every backend.

``make_backend`` wraps each backend in :class:`CheckedBackend`, so the app,
the worker, the scheduler, the CLI and the dashboard all reach storage through
it. It checks and normalises what callers pass (times to UTC, ids to their
canonical form, empty batches, option ranges, schedule statuses) and then
delegates. Backends may therefore assume clean input: a rule changed here
changes for PostgreSQL, SQLite and memory at once, and the conformance suite
pins it on all three.

Verbs with nothing to check are not repeated here: ``__getattr__`` hands them
(and backend-specific attributes such as a PostgreSQL pool) to the backend.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from soniq.backends import StorageBackend
from soniq.errors import JobValidationError
from soniq.flow import LimitedClaim, QueueLimit, TaskLimit, check_queue_limit
from soniq.integrations.connections import executor
from soniq.job import Ack, ClaimedJob, DeadLetterJob, Job, NewJob, Schedule, check_fraction
from soniq.utils import UTC, canonical_id, canonical_ids, maybe_utc, to_utc

if TYPE_CHECKING:
    from soniq.events import Record

SCHEDULE_STATUSES = ("active", "paused")


def check_schedule_status(status: str) -> None:
    """Reject a status the schema's CHECK constraint would refuse, before writing anything."""
    if status not in SCHEDULE_STATUSES:
        raise ValueError(
            f"schedule status must be 'active' or 'paused', not {status!r}; "
            "use app.scheduler.pause(name) / resume(name)"
        )


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(
            f"limit and offset must be 0 or more (got limit={limit}, offset={offset}); "
            "pass a non-negative page size and start"
        )


def check_positive(name: str, seconds: float) -> None:
    if not seconds > 0:
        raise ValueError(f"{name} must be a positive number of seconds, not {seconds!r}")


# Names travel in NOTIFY payloads (8,000 bytes at most) and btree index entries (about
# 2,700 bytes): 255 characters stay within both even at 4 bytes per character, and no
# queue or task name needs more. Dedup keys have an index of their own, hence 512.
MAX_NAME_LENGTH = 255
MAX_KEY_LENGTH = 512


def check_text(what: str, value: Any, limit: int) -> None:
    """A name or key PostgreSQL, SQLite and NOTIFY all store as given, else JobValidationError."""
    if not isinstance(value, str) or not value:
        raise JobValidationError(f"{what} must be a non-empty string, not {value!r}; pass a name")
    if len(value) > limit:
        raise JobValidationError(
            f"{what} is {len(value):,} characters long ({value[:40]!r}...); the limit is "
            f"{limit}. Use a shorter {what}."
        )
    if "\x00" in value:
        raise JobValidationError(
            f"{what} {value[:40]!r} contains a NUL character (\\x00), which PostgreSQL cannot "
            f"store; remove it from the {what}."
        )
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise JobValidationError(
                f"{what} {value[:40]!r} contains a lone surrogate, which is not valid Unicode "
                f"text; decode the bytes it came from properly (errors='replace')."
            ) from None


def check_new_jobs(jobs: Sequence[NewJob]) -> None:
    """Every name and key of a batch, each distinct value once (a batch repeats them).

    The distinct values are gathered first (a batch of one task and queue has one of
    each); only when one of them is refused, or is no string at all, are the jobs walked
    in order, so the error is the one the first bad job gets.
    """
    try:
        names = {job.job_name for job in jobs}
        queues = {job.queue for job in jobs}
        keys = {job.dedup_key for job in jobs}
        keys.discard(None)
        for what, values, limit in (
            ("task name", names, MAX_NAME_LENGTH),
            ("queue name", queues, MAX_NAME_LENGTH),
            ("dedup_key", keys, MAX_KEY_LENGTH),
        ):
            for value in values:
                check_text(what, value, limit)
        return
    except (JobValidationError, TypeError):  # TypeError: an unhashable value
        pass
    _check_in_order(jobs)


def _check_in_order(jobs: Sequence[NewJob]) -> None:
    seen: set[tuple[str, str | None]] = set()
    for job in jobs:
        for what, value, limit in (
            ("task name", job.job_name, MAX_NAME_LENGTH),
            ("queue name", job.queue, MAX_NAME_LENGTH),
            ("dedup_key", job.dedup_key, MAX_KEY_LENGTH),
        ):
            if (what, value) in seen or (value is None and what == "dedup_key"):
                continue
            check_text(what, value, limit)
            seen.add((what, value))


def _utc_job(job: NewJob) -> NewJob:
    at = job.scheduled_at
    if at is None or at.tzinfo is UTC:
        return job
    return dataclasses.replace(job, scheduled_at=to_utc(at))


def _utc_schedule(s: Schedule) -> Schedule:
    return dataclasses.replace(
        s, next_run_at=maybe_utc(s.next_run_at), last_run_at=maybe_utc(s.last_run_at)
    )


def _checked(jobs: Sequence[NewJob]) -> list[NewJob]:
    check_new_jobs(jobs)
    return [_utc_job(j) for j in jobs]


class CheckedBackend:
    """A ``StorageBackend`` that enforces the protocol's input rules, then delegates."""

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def __repr__(self) -> str:
        return f"CheckedBackend({self.inner!r})"

    # --- producing -------------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        return await self._write_jobs(jobs, None, connection)

    async def enqueue_chunks(
        self, chunks: Iterator[Sequence[NewJob]], records: Sequence[Record] | None = None
    ) -> list[str]:
        """Same rules as ``enqueue``, checked part by part as the parts are built."""
        return await self.inner.enqueue_chunks(map(_checked, chunks), records)

    async def enqueue_observed(
        self, jobs: Sequence[NewJob], records: Sequence[Record], *, connection: Any = None
    ) -> list[str]:
        """Same rules as ``enqueue``; the records ride in the same transaction."""
        return await self._write_jobs(jobs, records, connection)

    async def _write_jobs(
        self, jobs: Sequence[NewJob], records: Sequence[Record] | None, connection: Any
    ) -> list[str]:
        self._check_connection(connection)
        if not jobs:
            return []
        ready = _checked(jobs)
        if connection is None:
            return await self._insert(ready, records, None)
        # The caller's transaction, whatever holds it: asyncpg, psycopg, SQLAlchemy, Tortoise...
        async with executor(connection) as conn:
            return await self._insert(ready, records, conn)

    async def _insert(
        self, jobs: list[NewJob], records: Sequence[Record] | None, connection: Any
    ) -> list[str]:
        if records is None:
            return await self.inner.enqueue(jobs, connection=connection)
        return await self.inner.enqueue_observed(jobs, records, connection=connection)

    def _check_connection(self, connection: Any) -> None:
        if connection is not None and not self.inner.supports_transactions:
            raise ValueError(
                "Transactional enqueue (connection=...) requires the PostgreSQL backend; "
                f"the {self.inner.name} backend cannot join your transaction. Enqueue without "
                "connection=, or use a postgresql:// database_url."
            )

    # --- working ---------------------------------------------------------------
    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        """An empty queue list means every queue, as ``None`` does."""
        if limit <= 0:
            return []
        names = list(dict.fromkeys(queues)) if queues else None
        return await self.inner.claim(names, worker_id, limit)

    # --- flow control (soniq/flow.py) ---------------------------------------------
    async def claim_limited(
        self, queues: Sequence[str] | None, worker_id: str, limit: int,
        tasks: Sequence[TaskLimit],
    ) -> LimitedClaim:  # fmt: skip
        """The rules of ``claim``; ``tasks`` are the worker's own ``@app.job`` limits."""
        if limit <= 0:
            return LimitedClaim([])
        names = list(dict.fromkeys(queues)) if queues else None
        return await self.inner.claim_limited(names, worker_id, limit, tasks)

    async def queue_limit_set(self, limit: QueueLimit) -> QueueLimit | None:
        check_queue_limit(limit)
        return await self.inner.queue_limit_set(limit)

    async def job_progress(
        self, job_id: str, lease: str, fraction: float, message: str | None
    ) -> bool:
        check_fraction(fraction)
        return await self.inner.job_progress(job_id, lease, float(fraction), message)

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        if acks:
            await self.inner.ack(acks, result_ttl=max(result_ttl, 0.0))

    async def recover_stale(self, heartbeat_timeout: float) -> int:
        check_positive("heartbeat_timeout", heartbeat_timeout)
        return await self.inner.recover_stale(heartbeat_timeout)

    async def try_lead(self, role: str, owner: str, ttl: float) -> bool:
        check_positive("ttl", ttl)
        return await self.inner.try_lead(role, owner, ttl)

    # --- reads and management ----------------------------------------------------
    async def get_job(self, job_id: str) -> Job | None:
        canonical = canonical_id(job_id)
        return await self.inner.get_job(canonical) if canonical else None

    async def list_jobs(
        self, *, queue: str | None, status: str | None, limit: int, offset: int
    ) -> list[Job]:
        check_page(limit, offset)
        return await self.inner.list_jobs(queue=queue, status=status, limit=limit, offset=offset)

    async def cancel_job(self, job_id: str) -> bool:
        canonical = canonical_id(job_id)
        return await self.inner.cancel_job(canonical) if canonical else False

    async def delete_job(self, job_id: str) -> bool:
        canonical = canonical_id(job_id)
        return await self.inner.delete_job(canonical) if canonical else False

    # --- dead letters ------------------------------------------------------------
    async def dead_letter_list(
        self, *, queue: str | None, task: str | None, limit: int, offset: int
    ) -> list[DeadLetterJob]:
        check_page(limit, offset)
        return await self.inner.dead_letter_list(queue=queue, task=task, limit=limit, offset=offset)

    async def dead_letter_get(self, job_id: str) -> DeadLetterJob | None:
        canonical = canonical_id(job_id)
        return await self.inner.dead_letter_get(canonical) if canonical else None

    async def dead_letter_replay(self, job_ids: Sequence[str]) -> dict[str, str]:
        ids = canonical_ids(job_ids)
        return await self.inner.dead_letter_replay(ids) if ids else {}

    async def dead_letter_purge(
        self, *, job_ids: Sequence[str] | None, queue: str | None, task: str | None
    ) -> int:
        if job_ids is None:
            return await self.inner.dead_letter_purge(job_ids=None, queue=queue, task=task)
        ids = canonical_ids(job_ids)
        if not ids:
            return 0
        return await self.inner.dead_letter_purge(job_ids=ids, queue=None, task=None)

    async def dead_letter_replay_as(
        self, job_id: str, *, queue: str | None, priority: int | None,
        max_attempts: int | None, keep_attempts: bool,
    ) -> str | None:  # fmt: skip
        canonical = canonical_id(job_id)
        if canonical is None:
            return None
        if queue is not None:
            check_text("queue name", queue, MAX_NAME_LENGTH)
        if priority is not None:
            from soniq.enqueue import check_priority

            check_priority(priority)
        if max_attempts is not None and (
            isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
        ):
            raise JobValidationError(f"max_attempts must be an int >= 1, got {max_attempts!r}")
        return await self.inner.dead_letter_replay_as(
            canonical, queue=queue, priority=priority, max_attempts=max_attempts,
            keep_attempts=bool(keep_attempts),
        )  # fmt: skip

    # --- schedules ---------------------------------------------------------------
    async def schedule_upsert(self, schedule: Schedule) -> Schedule:
        check_schedule_status(schedule.status)
        check_text("schedule name", schedule.name, MAX_NAME_LENGTH)
        check_text("task name", schedule.job_name, MAX_NAME_LENGTH)
        if schedule.queue is not None:
            check_text("queue name", schedule.queue, MAX_NAME_LENGTH)
        return await self.inner.schedule_upsert(_utc_schedule(schedule))

    async def schedule_set_status(
        self, name: str, status: str, next_run_at: datetime | None = None
    ) -> bool:
        check_schedule_status(status)
        return await self.inner.schedule_set_status(name, status, maybe_utc(next_run_at))

    async def schedule_fire(
        self, name: str, due: datetime, next_run_at: datetime | None, job: NewJob
    ) -> bool:
        check_new_jobs([job])
        return await self.inner.schedule_fire(
            name, to_utc(due), maybe_utc(next_run_at), _utc_job(job)
        )


def checked(backend: StorageBackend) -> StorageBackend:
    """``backend`` behind the protocol's input rules (idempotent)."""
    return backend if isinstance(backend, CheckedBackend) else CheckedBackend(backend)
