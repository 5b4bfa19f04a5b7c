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
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from soniq.errors import JobNotFoundError
from soniq.events import emit_changes

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
    async def replay(self, job_id: str) -> str:
        """Queue a fresh copy of a dead letter; returns the new job's id.

        Raises ``JobNotFoundError`` when there is no dead letter with that id.
        """
        replayed = await self.replay_many([str(job_id)])
        if not replayed:
            raise JobNotFoundError(
                f"No dead-letter job with id {job_id!r}. "
                "List them with `soniq dead-letter list` or `await app.dead_letter.list_jobs()`."
            )
        return next(iter(replayed.values()))

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
        queue: str | None = None,
        task: str | None = None,
        ids: Sequence[str] | None = None,
        limit: int | None = None,
    ) -> builtins.list[str]:
        """Replay ``ids``, or every dead letter matching ``queue``/``task`` (up to ``limit``).

        Returns the new job ids. With no argument at all, every dead letter is replayed.
        """
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


__all__ = ["CHUNK_SIZE", "DeadLetterService", "chunks"]
