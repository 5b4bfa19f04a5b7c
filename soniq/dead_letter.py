"""The dead-letter queue: inspect, replay and purge jobs that exhausted their attempts.

Exposed lazily as ``app.dead_letter``. It talks to the storage protocol only,
so it behaves the same on PostgreSQL, SQLite and memory. Replaying a dead
letter creates a *new* queued job (a fresh id) and keeps the dead-letter row,
with ``resurrection_count`` incremented, as the record of what happened.

Example::

    dead = await app.dead_letter.list_jobs(queue="emails", limit=20)
    new_id = await app.dead_letter.replay(dead[0]["id"])
    purged = await app.dead_letter.purge(task="emails.send_welcome")
"""

from __future__ import annotations

import builtins
import csv
import enum
import io
import json
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from soniq.errors import JobNotFoundError
from soniq.events import emit_changes
from soniq.job import DeadLetterJob
from soniq.utils import to_utc, utc_now

if TYPE_CHECKING:
    from soniq.app import Soniq

CHUNK_SIZE = 500
"""Rows per backend call in bulk operations (keeps statements and transactions short)."""


class DeadLetterService:
    """Operations on ``soniq_dead_letter_jobs`` for one ``Soniq`` instance.

    Example::

        count = await app.dead_letter.count(queue="emails")
        new_ids = await app.dead_letter.bulk_replay(queue="emails")
    """

    def __init__(self, app: Soniq) -> None:
        self.app = app

    # --- reads -------------------------------------------------------------
    async def list_jobs(
        self,
        queue: str | None = None,
        task: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[dict[str, Any]]:
        """Dead letters, newest first, optionally filtered by queue and task name."""
        await self.app.ensure_initialized()
        rows = await self.app.backend.dead_letter_list(
            queue=queue, task=task, limit=limit, offset=offset
        )
        return [row.to_dict() for row in rows]

    list = list_jobs

    async def get(self, job_id: str) -> dict[str, Any] | None:
        """One dead letter (with its error and traceback), or ``None``."""
        await self.app.ensure_initialized()
        row = await self.app.backend.dead_letter_get(str(job_id))
        return row.to_dict() if row is not None else None

    async def count(self, queue: str | None = None, task: str | None = None) -> int:
        """How many dead letters match the filters."""
        await self.app.ensure_initialized()
        return await self.app.backend.dead_letter_count(queue=queue, task=task)

    async def ids(
        self, queue: str | None = None, task: str | None = None, limit: int | None = None
    ) -> builtins.list[str]:
        """The ids matching the filters, newest first: a snapshot for bulk operations."""
        await self.app.ensure_initialized()
        found: dict[str, None] = {}
        offset = 0
        while limit is None or len(found) < limit:
            page = CHUNK_SIZE if limit is None else min(CHUNK_SIZE, limit - len(found))
            rows = await self.app.backend.dead_letter_list(
                queue=queue, task=task, limit=page, offset=offset
            )
            found.update((row.id, None) for row in rows)
            if len(rows) < page:
                break
            offset += len(rows)
        return builtins.list(found)[:limit]

    # --- replay ------------------------------------------------------------
    async def replay(
        self,
        job_id: str,
        *,
        reset_attempts: bool = True,
        new_max_attempts: int | None = None,
        new_priority: int | None = None,
        new_queue: str | None = None,
    ) -> str:
        """Queue a fresh copy of a dead letter; returns the new job's id.

        The options (the published package's) change the copy: another queue or
        priority, more attempts, or ``reset_attempts=False`` to keep the attempts
        already spent. Raises ``JobNotFoundError`` when there is no dead letter with
        that id.
        """
        if reset_attempts and new_max_attempts is None and new_priority is None and not new_queue:
            replayed = await self.replay_many([str(job_id)])
            new_id = next(iter(replayed.values()), None)
        else:
            await self.app.ensure_initialized()
            new_id = await self.app.backend.dead_letter_replay_as(
                str(job_id), queue=new_queue, priority=new_priority,
                max_attempts=new_max_attempts, keep_attempts=not reset_attempts,
            )  # fmt: skip
            if new_id is not None:
                await emit_changes(self.app, "job.resurrected", {new_id: {"replayed_from": job_id}})
        if new_id is None:
            raise JobNotFoundError(
                f"No dead-letter job with id {job_id!r}. "
                "List them with `soniq dead-letter list` or `await app.dead_letter.list_jobs()`.",
                context={"job_id": str(job_id)},
            )
        return new_id

    async def replay_many(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Replay ``job_ids`` in chunks; returns ``{dead_id: new_job_id}`` (unknown ids absent)."""
        await self.app.ensure_initialized()
        replayed: dict[str, str] = {}
        for chunk in chunks(job_ids):
            replayed.update(await self.app.backend.dead_letter_replay(chunk))
        resurrected = {new: {"replayed_from": dead} for dead, new in replayed.items()}
        await emit_changes(self.app, "job.resurrected", resurrected)  # webhooks (soniq.events)
        return replayed

    async def bulk_replay(
        self,
        queue: str | DeadLetterFilter | None = None,
        task: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
        *,
        filter: DeadLetterFilter | None = None,
        reset_attempts: bool = True,
        new_max_attempts: int | None = None,
    ) -> builtins.list[str]:
        """Replay ``ids``, or every dead letter matching ``queue``/``task`` (up to ``limit``).

        Returns the new job ids. With no argument at all, every dead letter is replayed.
        A ``DeadLetterFilter`` (first argument or ``filter=``) selects as in the
        published package, with its ``reset_attempts``/``new_max_attempts`` options.
        """
        if isinstance(queue, DeadLetterFilter):
            queue, filter = None, queue
        if filter is not None or not reset_attempts or new_max_attempts is not None:
            chosen = filter or DeadLetterFilter(
                job_names=[task] if task else None, queues=[queue] if queue else None,
                limit=limit if limit is not None else 2**62,
            )  # fmt: skip
            targets = [d.id for d in await self.list_dead_letter_jobs(chosen)]
            if ids is not None:
                wanted = {str(i) for i in ids}
                targets = [t for t in targets if t in wanted]
            return [
                await self.replay(
                    t, reset_attempts=reset_attempts, new_max_attempts=new_max_attempts
                )
                for t in targets
            ]
        if ids is not None:
            targets = builtins.list(dict.fromkeys(str(i) for i in ids))[:limit]
        else:
            targets = await self.ids(queue=queue, task=task, limit=limit)
        replayed = await self.replay_many(targets)
        return builtins.list(replayed.values())

    # --- purge -------------------------------------------------------------
    async def purge(
        self,
        job_id: str | None = None,
        *,
        ids: Sequence[str] | None = None,
        queue: str | None = None,
        task: str | None = None,
        all: bool = False,
    ) -> int:
        """Delete dead letters for good; returns how many were deleted.

        Pass one ``job_id``, a list of ``ids``, a ``queue``/``task`` filter, or
        ``all=True``. Calling it with nothing raises ``ValueError`` rather than
        silently deleting everything.
        """
        await self.app.ensure_initialized()
        targets = _purge_targets(job_id, ids)
        if targets is not None:
            deleted = 0
            for chunk in chunks(targets):
                deleted += await self.app.backend.dead_letter_purge(
                    job_ids=chunk, queue=None, task=None
                )
            return deleted
        if queue is None and task is None and not all:
            raise ValueError(
                "purge() needs a job id, ids=[...], a queue=/task= filter, or all=True "
                "(to delete every dead letter)"
            )
        return await self.app.backend.dead_letter_purge(job_ids=None, queue=queue, task=task)

    # --- the published package's names (soniq.features.dead_letter) ----------------
    async def list_dead_letter_jobs(
        self,
        filter: DeadLetterFilter | None = None,
    ) -> builtins.list[DeadLetterJob]:
        """Dead letters matching ``filter`` (default: the newest 1000), newest first, as
        records with attribute access (``.last_error``, ``.attempts``, ``.args``)."""
        chosen = filter or DeadLetterFilter()
        found: builtins.list[DeadLetterJob] = []
        skipped = 0
        async for row in self._scan(chosen):
            if skipped < chosen.offset:
                skipped += 1
                continue
            found.append(row)
            if len(found) >= chosen.limit:
                break
        return found

    async def get_dead_letter_job(self, job_id: str) -> DeadLetterJob | None:
        """One dead letter as a record (attribute access), or ``None``."""
        await self.app.ensure_initialized()
        return await self.app.backend.dead_letter_get(str(job_id))

    async def delete_dead_letter_job(self, job_id: str) -> bool:
        """Delete one dead letter for good; ``False`` if there was none."""
        return await self.purge(str(job_id)) > 0

    async def bulk_delete(self, filter: DeadLetterFilter) -> int:
        """Delete every dead letter matching ``filter``; returns how many."""
        targets = [d.id for d in await self.list_dead_letter_jobs(filter)]
        return await self.purge(ids=targets) if targets else 0

    async def cleanup_old_dead_letter_jobs(self, days: int = 30) -> int:
        """Delete dead letters older than ``days`` days; returns how many."""
        cutoff = utc_now() - timedelta(days=days)
        return await self.bulk_delete(DeadLetterFilter(date_to=cutoff, limit=2**62))

    async def export_dead_letter_jobs(
        self,
        filter: DeadLetterFilter | None = None,
        format: str = "json",
        path: str | Path | None = None,
    ) -> str:
        """Write the matching dead letters to a ``json`` or ``csv`` file; returns its name.

        ``path`` defaults to ``dead_letters_<UTC time>.<format>`` in the current directory.
        """
        if format not in ("json", "csv"):
            raise ValueError(f"export format must be 'json' or 'csv', not {format!r}")
        rows = [_export_row(d) for d in await self.list_dead_letter_jobs(filter)]
        stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
        target = Path(path) if path is not None else Path(f"dead_letters_{stamp}.{format}")
        target.write_text(_render(rows, format), encoding="utf-8")
        return str(target)

    async def get_dead_letter_stats(self, hours: float | None = None) -> DeadLetterStats:
        """Counts by task, queue, reason and day (of the last ``hours``, or all)."""
        since = utc_now() - timedelta(hours=hours) if hours is not None else None
        rows = await self.list_dead_letter_jobs(DeadLetterFilter(date_from=since, limit=2**62))
        return DeadLetterStats.of(rows)

    async def _scan(self, chosen: DeadLetterFilter) -> AsyncIterator[DeadLetterJob]:
        """Every dead letter matching ``chosen``, newest first, read a page at a time.

        One name or queue narrows the read itself; the other criteria (several
        names, dates, reasons) are checked here, since no index serves them.
        """
        await self.app.ensure_initialized()
        queue = chosen.queues[0] if chosen.queues and len(chosen.queues) == 1 else None
        task = chosen.job_names[0] if chosen.job_names and len(chosen.job_names) == 1 else None
        offset = 0
        while True:
            rows = await self.app.backend.dead_letter_list(
                queue=queue, task=task, limit=CHUNK_SIZE, offset=offset
            )
            for row in rows:
                if chosen.matches(row):
                    yield row
            if len(rows) < CHUNK_SIZE:
                return
            offset += len(rows)


class DeadLetterReason(str, enum.Enum):
    """Why a job was dead-lettered (the published package's values)."""

    MAX_RETRIES_EXCEEDED = "max_retries_exceeded"
    PERMANENT_FAILURE = "permanent_failure"
    JOB_NOT_FOUND = "job_not_found"
    INVALID_ARGUMENTS = "invalid_arguments"
    TIMEOUT = "timeout"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    MANUAL_MOVE = "manual_move"


@dataclass
class DeadLetterFilter:
    """Which dead letters: every set field must match (``None`` = any).

    Example::

        failed = await app.dead_letter.list_dead_letter_jobs(
            DeadLetterFilter(job_names=["billing.send_invoice"], limit=20)
        )
    """

    job_names: builtins.list[str] | None = None
    queues: builtins.list[str] | None = None
    reasons: builtins.list[str] | None = None
    date_from: datetime | None = None
    date_to: datetime | None = None
    tags: builtins.list[str] | None = None
    has_been_resurrected: bool | None = None
    limit: int = 1000
    offset: int = 0

    def matches(self, row: DeadLetterJob) -> bool:
        when = row.dead_lettered_at
        checks = (
            self.job_names is None or row.job_name in self.job_names,
            self.queues is None or row.queue in self.queues,
            self.reasons is None or row.dead_letter_reason in [str(r) for r in self.reasons],
            self.date_from is None or (when is not None and when >= to_utc(self.date_from)),
            self.date_to is None or (when is not None and when < to_utc(self.date_to)),
            not self.tags,  # tags are never stored: a tag filter matches nothing
            self.has_been_resurrected is None
            or (row.resurrection_count > 0) == self.has_been_resurrected,
        )
        return all(checks)


@dataclass(frozen=True)
class DeadLetterStats:
    """Counts of dead letters, as the published ``get_dead_letter_stats`` returns them."""

    total_count: int = 0
    by_job_name: dict[str, int] = field(default_factory=dict)
    by_queue: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, int] = field(default_factory=dict)
    by_date: dict[str, int] = field(default_factory=dict)
    oldest_job_age_hours: float = 0.0
    resurrection_success_rate: float = 0.0

    @classmethod
    def of(cls, rows: Sequence[DeadLetterJob]) -> DeadLetterStats:
        now = utc_now()
        dates = [r.dead_lettered_at for r in rows if r.dead_lettered_at is not None]
        oldest = min(dates, default=None)
        return cls(
            total_count=len(rows),
            by_job_name=dict(Counter(r.job_name for r in rows)),
            by_queue=dict(Counter(r.queue for r in rows)),
            by_reason=dict(Counter(r.dead_letter_reason for r in rows)),
            by_date=dict(Counter(d.date().isoformat() for d in dates)),
            oldest_job_age_hours=(now - oldest).total_seconds() / 3600 if oldest else 0.0,
            resurrection_success_rate=(
                sum(1 for r in rows if r.resurrection_count > 0) / len(rows) if rows else 0.0
            ),
        )


EXPORT_FIELDS = (
    "id", "job_name", "queue", "priority", "attempts", "max_attempts", "dead_letter_reason",
    "last_error", "original_created_at", "moved_to_dead_letter_at", "resurrection_count",
    "args",
)  # fmt: skip


def _export_row(row: DeadLetterJob) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in EXPORT_FIELDS:
        value = getattr(row, name)
        out[name] = value.isoformat() if isinstance(value, datetime) else value
    return out


def _render(rows: builtins.list[dict[str, Any]], format: str) -> str:
    if format == "json":
        return json.dumps(rows, indent=2, default=str)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=EXPORT_FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "args": json.dumps(row["args"], sort_keys=True)})
    return buffer.getvalue()


def _purge_targets(job_id: str | None, ids: Sequence[str] | None) -> builtins.list[str] | None:
    if job_id is None and ids is None:
        return None
    targets = [str(job_id)] if job_id is not None else []
    targets.extend(str(i) for i in ids or ())
    return builtins.list(dict.fromkeys(targets))


def chunks(items: Sequence[str], size: int | None = None) -> builtins.list[builtins.list[str]]:
    """``items`` cut into lists of at most ``size`` (default ``CHUNK_SIZE``)."""
    size = size or CHUNK_SIZE
    values = builtins.list(items)
    return [values[i : i + size] for i in range(0, len(values), size)]


__all__ = [
    "CHUNK_SIZE",
    "DeadLetterFilter",
    "DeadLetterJob",
    "DeadLetterReason",
    "DeadLetterService",
    "DeadLetterStats",
    "chunks",
]
