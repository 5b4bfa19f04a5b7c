"""What the dashboard shows and does, in plain dicts: one layer under both the pages and the API.

Every read and write goes through the ``Soniq`` facade and its ``StorageBackend``
verbs, so the dashboard works the same on PostgreSQL, SQLite and memory. The
pages render these dicts with Jinja; the API returns them as JSON.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from soniq.dashboard import params
from soniq.job import DeadLetterJob, Job, NewJob, QueueStats, WorkerInfo
from soniq.serialization import dumps_strict

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends import ThroughputBucket

UTC = timezone.utc
STATUS_KEYS = ("queued", "processing", "done", "cancelled", "dead_letter")


class NotFound(Exception):
    """No job, dead letter or schedule with that id/name (HTTP 404)."""


class Conflict(Exception):
    """The action does not apply to the row in its current state (HTTP 409)."""


@dataclass(frozen=True)
class Chart:
    """One throughput series: ``bucket_seconds`` wide buckets, oldest first, gaps filled."""

    title: str
    bucket_seconds: int
    buckets: list[dict[str, Any]]

    @property
    def peak(self) -> int:
        return max([1, *(int(b["completed"]) + int(b["failed"]) for b in self.buckets)])

    @property
    def completed(self) -> int:
        return sum(b["completed"] for b in self.buckets)

    @property
    def failed(self) -> int:
        return sum(b["failed"] for b in self.buckets)


def now() -> datetime:
    return datetime.now(UTC)


# --- reads -----------------------------------------------------------------------


EXACT_BELOW = 200_000
"""Above this many rows in soniq_jobs, ``done`` counts are estimated (see queue_counts)."""


async def queues(app: Soniq) -> list[dict[str, Any]]:
    """Per-queue counts; each row says whether its ``done`` count is an estimate."""
    await app.ensure_initialized()
    counts = await app.backend.queue_counts(exact_below=EXACT_BELOW)
    return [{**s.to_dict(), "estimated": counts.estimated} for s in counts.stats]


def totals(per_queue: list[dict[str, Any]]) -> dict[str, int]:
    """Counts by status over every queue, plus ``total``."""
    sums = {key: sum(int(q[key]) for q in per_queue) for key in STATUS_KEYS}
    return {**sums, "total": sum(sums.values())}


async def stats(app: Soniq) -> dict[str, Any]:
    per_queue = await queues(app)
    estimated = any(q["estimated"] for q in per_queue)
    return {**totals(per_queue), "queues": len(per_queue), "estimated": estimated}


async def timeline(app: Soniq, hours: int) -> Chart:
    """Completions and failures over the last ``hours``, in buckets sized for a chart."""
    await app.ensure_initialized()
    seconds = 60 if hours <= 1 else 300 if hours <= 6 else 3600
    count = hours * 3600 // seconds
    current = int(now().timestamp()) // seconds * seconds
    start = datetime.fromtimestamp(current - (count - 1) * seconds, UTC)
    rows = await app.backend.job_throughput(start, seconds)
    return Chart(f"last {hours} h", seconds, fill(rows, start, seconds, count))


def fill(
    rows: list[ThroughputBucket], start: datetime, seconds: int, count: int
) -> list[dict[str, Any]]:
    found = {int(r.start.timestamp()): r for r in rows}
    out = []
    for i in range(count):
        at = start + timedelta(seconds=i * seconds)
        row = found.get(int(at.timestamp()))
        out.append(
            {
                "start": at,
                "completed": row.completed if row else 0,
                "failed": row.failed if row else 0,
            }
        )
    return out


async def overview(app: Soniq) -> dict[str, Any]:
    """Everything the overview page shows, read concurrently."""
    per_queue, hour, day, workers_now = await asyncio.gather(
        queues(app), timeline(app, 1), timeline(app, 24), workers(app)
    )
    return {
        "queues": per_queue, "totals": totals(per_queue), "hour": hour, "day": day,
        "workers": workers_now, "estimated": any(q["estimated"] for q in per_queue),
    }  # fmt: skip


def job_dict(job: Job) -> dict[str, Any]:
    return job.to_dict()


def dead_dict(dead: DeadLetterJob) -> dict[str, Any]:
    return {**dead.as_job_dict(), "traceback": dead.traceback}


async def job_page(app: Soniq, p: params.JobListParams) -> dict[str, Any]:
    """One page of jobs and the token of the next (``None`` on the last page)."""
    await app.ensure_initialized()
    if p.status == "dead_letter":
        return await _dead_page(app, p)
    if p.offset is not None:
        return await _offset_page(app, p)
    rows = await app.backend.job_page(p.query())
    return {"jobs": [job_dict(j) for j in rows], "next_cursor": _next_cursor(rows, p.limit)}


def _next_cursor(rows: list[Job], limit: int) -> str | None:
    if len(rows) < limit or rows[-1].created_at is None:
        return None
    return params.encode_cursor(rows[-1].created_at, rows[-1].id)


async def _offset_page(app: Soniq, p: params.JobListParams) -> dict[str, Any]:
    """``offset=`` (the published API's paging): queue and status filters only."""
    if p.task or p.search or p.cursor:
        raise params.BadRequest("offset= works with queue= and status= only; page with cursor=")
    rows = await app.backend.list_jobs(
        queue=p.queue, status=p.status, limit=p.limit, offset=p.offset or 0
    )
    return {"jobs": [job_dict(j) for j in rows], "next_cursor": _next_cursor(rows, p.limit)}


async def _dead_page(app: Soniq, p: params.JobListParams) -> dict[str, Any]:
    """``status=dead_letter``: dead letters in the job list's shape, paged by offset."""
    if p.search:
        raise params.BadRequest("q= does not search dead letters; filter them by queue= and task=")
    offset = p.offset or 0
    rows = await app.backend.dead_letter_list(
        queue=p.queue, task=p.task, limit=p.limit, offset=offset
    )
    token = params.encode_offset(offset + p.limit) if len(rows) == p.limit else None
    return {"jobs": [dead_dict(d) for d in rows], "next_cursor": token}


async def job(app: Soniq, job_id: str) -> dict[str, Any]:
    """A job (or a dead letter, with status ``dead_letter`` and its traceback)."""
    await app.ensure_initialized()
    canonical = params.job_id(job_id)
    if canonical is None:
        raise NotFound(f"No job with id {job_id!r}: job ids are UUIDs.")
    found = await app.backend.get_job(canonical)
    if found is not None:
        return job_dict(found)
    dead = await app.backend.dead_letter_get(canonical)
    if dead is not None:
        return dead_dict(dead)
    raise NotFound(f"No job with id {canonical}; it may have been pruned after its result_ttl.")


async def job_logs(app: Soniq, job_id: str) -> list[dict[str, Any]]:
    """What the job logged while it ran (``app.logs``), oldest first; [] for an unknown id."""
    return await app.logs.job_logs(job_id)


async def task_names(app: Soniq) -> list[str]:
    await app.ensure_initialized()
    stored = await app.backend.job_task_names()
    return sorted(set(stored) | set(app._get_job_registry().names()))


async def dead_letters(
    app: Soniq, *, queue: str | None, task: str | None, limit: int, offset: int
) -> dict[str, Any]:
    await app.ensure_initialized()
    rows, total = await asyncio.gather(
        app.backend.dead_letter_list(queue=queue, task=task, limit=limit, offset=offset),
        app.backend.dead_letter_count(queue=queue, task=task),
    )
    return {"jobs": [dead_dict(d) for d in rows], "total": total}


async def workers(app: Soniq) -> list[dict[str, Any]]:
    """Workers with their heartbeat age; ``stale`` past ``heartbeat_timeout`` (soon recovered)."""
    await app.ensure_initialized()
    at = now()
    late_after = app.settings.heartbeat_interval * 3
    return [
        _worker(w, at, late_after, app.settings.heartbeat_timeout)
        for w in await app.backend.list_workers()
    ]


def _worker(w: WorkerInfo, at: datetime, late_after: float, stale_after: float) -> dict[str, Any]:
    age = (at - w.last_heartbeat).total_seconds() if w.last_heartbeat else None
    state = "active"
    if age is None or age > stale_after:
        state = "stale"
    elif age > late_after:
        state = "late"
    return {**w.to_dict(), "heartbeat_age_seconds": age, "state": state, "stale": state == "stale"}


def worker_stats(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {
        "total": len(rows),
        "active": sum(1 for w in rows if w["state"] == "active"),
        "late": sum(1 for w in rows if w["state"] == "late"),
        "stale": sum(1 for w in rows if w["state"] == "stale"),
        "concurrency": sum(int(w["concurrency"]) for w in rows if w["state"] != "stale"),
    }


async def schedules(app: Soniq) -> list[dict[str, Any]]:
    return [s.to_dict() for s in await app.scheduler.list()]


# --- writes ----------------------------------------------------------------------


async def retry_job(app: Soniq, job_id: str) -> str:
    """Run a finished job again: a dead letter is replayed, a done/cancelled job copied.

    Returns the new job's id. A queued or running job has nothing to retry (409).
    """
    current = await job(app, job_id)
    if current["status"] == "dead_letter":
        return await app.dead_letter.replay(current["id"])
    if current["status"] in ("queued", "processing"):
        raise Conflict(
            f"Job {current['id']} is {current['status']}; only finished jobs can be retried."
        )
    copy = NewJob(
        id=str(uuid.uuid4()), job_name=current["job_name"], args=current["args"],
        args_json=dumps_strict(current["args"]), queue=current["queue"],
        priority=current["priority"], max_attempts=current["max_attempts"], scheduled_at=None,
        dedup_key=None,
    )  # fmt: skip
    [new_id] = await app.backend.enqueue([copy])
    return new_id


async def cancel_job(app: Soniq, job_id: str) -> None:
    """Cancel a queued job, or ask a running one to stop (through the facade, so the
    ``job.cancelled`` event fires as for any other cancel)."""
    current = await job(app, job_id)
    if not await app.cancel_job(current["id"]):
        raise Conflict(
            f"Job {current['id']} is {current['status']}; only queued or running jobs can be "
            "cancelled."
        )


async def delete_job(app: Soniq, job_id: str) -> None:
    canonical = params.job_id(job_id)
    await app.ensure_initialized()
    if canonical is None or not await app.delete_job(canonical):
        raise NotFound(
            f"No job with id {job_id!r} in the jobs table "
            "(dead letters are deleted with DELETE /api/dead-letter/{id})."
        )


async def replay_dead(app: Soniq, job_id: str) -> str:
    canonical = params.job_id(job_id)
    if canonical is None:
        raise NotFound(f"No dead letter with id {job_id!r}: ids are UUIDs.")
    replayed = await app.dead_letter.replay_many([canonical])
    if not replayed:
        raise NotFound(f"No dead letter with id {canonical}.")
    return replayed[canonical]


async def replay_selection(app: Soniq, chosen: dict[str, Any]) -> list[str]:
    if "ids" in chosen:
        ids = [i for i in (params.job_id(x) for x in chosen["ids"]) if i is not None]
        return list((await app.dead_letter.replay_many(ids)).values())
    return await app.dead_letter.bulk_replay(queue=chosen["queue"], task=chosen["task"])


async def purge_dead(app: Soniq, job_id: str) -> None:
    canonical = params.job_id(job_id)
    if canonical is None or not await app.dead_letter.purge(ids=[canonical]):
        raise NotFound(f"No dead letter with id {job_id!r}.")


async def purge_selection(app: Soniq, chosen: dict[str, Any]) -> int:
    if "ids" in chosen:
        ids = [i for i in (params.job_id(x) for x in chosen["ids"]) if i is not None]
        return await app.dead_letter.purge(ids=ids) if ids else 0
    return await app.dead_letter.purge(
        queue=chosen["queue"], task=chosen["task"], all=chosen["all"]
    )


async def set_schedule(app: Soniq, name: str, *, paused: bool) -> None:
    changed = await (app.scheduler.pause(name) if paused else app.scheduler.resume(name))
    if not changed:
        raise NotFound(f"No schedule named {name!r}.")


async def health(app: Soniq) -> dict[str, Any]:
    """Reach the database once; raises when it cannot be reached."""
    await app.ensure_initialized()
    await app.backend.list_workers()  # one cheap read proves the schema is there
    return {"status": "ok", "backend": app.backend.name}


__all__ = ["Chart", "Conflict", "NotFound", "QueueStats"]
