"""In-memory backend: process-local storage for tests and local development.

Every verb runs to completion without awaiting, so each is atomic on the event
loop; a ``threading.Lock`` additionally keeps it whole if a worker runs its own
loop in another thread. Rows hold JSON text, as the databases do, so a value
round-trips here exactly as it would through PostgreSQL.

Claiming never scans the table: due queued jobs sit in one heap per queue keyed
by ``(priority, scheduled_at, created_at, token)``, future ones in a single
heap keyed by run time from which they are promoted when due. Heap entries are
invalidated lazily: an entry counts only while its row is still ``queued`` with
the same ``token`` it was pushed with.
"""

from __future__ import annotations

import heapq
import itertools
import json
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.backends import Listener, MigrationInfo, MigrationReport
from soniq.backends._common import (
    LIVE_STATUSES,
    UTC,
    InProcessListeners,
    build_queue_stats,
    check_schedule_status,
    lost_worker_error,
    maybe_utc,
    no_connections,
    normalize_id,
    reject_connection,
    to_utc,
    utc_now,
)
from soniq.job import (
    Ack,
    ClaimedJob,
    DeadLetterJob,
    Done,
    Fail,
    Job,
    NewJob,
    QueueStats,
    Requeue,
    Retry,
    Schedule,
    WorkerInfo,
)

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ReadyEntry = tuple[int, datetime, datetime, int, str]
_DelayedEntry = tuple[datetime, int, str]


@dataclass(slots=True)
class _Row:
    """A mutable ``soniq_jobs`` row; ``token`` identifies its current heap entry."""

    id: str
    job_name: str
    args_json: str
    queue: str
    priority: int
    max_attempts: int
    scheduled_at: datetime
    created_at: datetime
    updated_at: datetime
    dedup_key: str | None
    status: str = "queued"
    attempts: int = 0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    expires_at: datetime | None = None
    result_json: str | None = None
    last_error: str | None = None
    worker_id: str | None = None
    lease: str | None = None
    token: int = 0

    def to_job(self) -> Job:
        return Job(
            id=self.id, job_name=self.job_name, args=json.loads(self.args_json),
            queue=self.queue, priority=self.priority, status=self.status,
            attempts=self.attempts, max_attempts=self.max_attempts,
            scheduled_at=self.scheduled_at, created_at=self.created_at,
            updated_at=self.updated_at, started_at=self.started_at,
            completed_at=self.completed_at, result=_loads(self.result_json),
            last_error=self.last_error, worker_id=self.worker_id, dedup_key=self.dedup_key,
        )  # fmt: skip

    def to_claimed(self) -> ClaimedJob:
        return ClaimedJob(
            id=self.id, job_name=self.job_name, args=json.loads(self.args_json),
            queue=self.queue, attempt=self.attempts, max_attempts=self.max_attempts,
            lease=self.lease or "", scheduled_at=self.scheduled_at,
            created_at=self.created_at, priority=self.priority,
        )  # fmt: skip


def _loads(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


def _copy_json(value: dict[str, Any]) -> dict[str, Any]:
    """A detached copy, as a database would store it (callers may mutate theirs)."""
    copied: dict[str, Any] = json.loads(json.dumps(value))
    return copied


class MemoryBackend:
    """``StorageBackend`` kept in this process's memory; gone when the process exits."""

    name = "memory"
    supports_transactions = False
    supports_notify = True

    def __init__(self, settings: SoniqSettings | None = None) -> None:
        self.settings = settings
        self._mutex = threading.Lock()
        self._tokens = itertools.count(1)
        self._jobs: dict[str, _Row] = {}
        self._ready: dict[str, list[_ReadyEntry]] = {}
        self._delayed: list[_DelayedEntry] = []
        self._live_dedup: dict[str, str] = {}
        self._dead: dict[str, DeadLetterJob] = {}
        self._workers: dict[str, WorkerInfo] = {}
        self._leases: dict[str, tuple[str, datetime]] = {}
        self._schedules: dict[str, Schedule] = {}
        self._listeners = InProcessListeners()

    # --- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Keeps the data: closing and reopening an app must not lose queued jobs."""

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        return no_connections(self.name)

    async def migrate(self) -> MigrationReport:
        return MigrationReport()

    async def migration_status(self) -> list[MigrationInfo]:
        return []

    # --- heap bookkeeping (callers hold the mutex) ------------------------------
    def _push(self, row: _Row, now: datetime) -> None:
        """(Re)index a queued row; any older heap entry of it becomes stale."""
        row.token = next(self._tokens)
        if row.scheduled_at <= now:
            entry = (row.priority, row.scheduled_at, row.created_at, row.token, row.id)
            heapq.heappush(self._ready.setdefault(row.queue, []), entry)
        else:
            heapq.heappush(self._delayed, (row.scheduled_at, row.token, row.id))

    def _current_row(self, job_id: str, token: int) -> _Row | None:
        row = self._jobs.get(job_id)
        if row is None or row.status != "queued" or row.token != token:
            return None
        return row

    def _promote(self, now: datetime) -> None:
        """Move delayed jobs that became due into their queue's ready heap."""
        delayed = self._delayed
        while delayed and delayed[0][0] <= now:
            _, token, job_id = heapq.heappop(delayed)
            row = self._current_row(job_id, token)
            if row is not None:
                entry = (row.priority, row.scheduled_at, row.created_at, token, job_id)
                heapq.heappush(self._ready.setdefault(row.queue, []), entry)

    def _ready_top(self, queue: str) -> _ReadyEntry | None:
        """The best live entry of ``queue``, dropping stale ones on the way."""
        heap = self._ready.get(queue)
        while heap:
            if self._current_row(heap[0][4], heap[0][3]) is not None:
                return heap[0]
            heapq.heappop(heap)
        return None

    def _next_ready(self, queues: Sequence[str]) -> str | None:
        """Pop the best due job across ``queues`` (priority, then run time, then age)."""
        best_queue: str | None = None
        best: _ReadyEntry | None = None
        for queue in queues:
            top = self._ready_top(queue)
            if top is not None and (best is None or top < best):
                best, best_queue = top, queue
        if best is None or best_queue is None:
            return None
        heapq.heappop(self._ready[best_queue])
        return best[4]

    # --- producing ---------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        reject_connection(connection, self.name)
        with self._mutex:
            ids, woke = self._insert(jobs, utc_now())
        self._listeners.notify(woke)
        return ids

    def _insert(self, jobs: Sequence[NewJob], now: datetime) -> tuple[list[str], set[str]]:
        """Insert all of ``jobs`` or none (an id collision raises before any write)."""
        fresh = [j.id for j in jobs]
        if len(set(fresh)) != len(fresh) or any(i in self._jobs for i in fresh):
            raise ValueError("enqueue: a job id is already in use; ids must be unique")
        ids: list[str] = []
        woke: set[str] = set()
        for j in jobs:
            existing = self._live_id(j.dedup_key)
            if existing is not None:
                ids.append(existing)
                continue
            self._add_row(j, now)
            ids.append(j.id)
            woke.add(j.queue)
        return ids, woke

    def _add_row(self, j: NewJob, now: datetime) -> None:
        scheduled = to_utc(j.scheduled_at) if j.scheduled_at is not None else now
        row = _Row(
            id=j.id, job_name=j.job_name, args_json=j.args_json, queue=j.queue,
            priority=j.priority, max_attempts=j.max_attempts, scheduled_at=scheduled,
            created_at=now, updated_at=now, dedup_key=j.dedup_key,
        )  # fmt: skip
        self._jobs[row.id] = row
        if j.dedup_key is not None:
            self._live_dedup[j.dedup_key] = row.id
        self._push(row, now)

    def _live_id(self, dedup_key: str | None) -> str | None:
        """The id of the queued/processing job holding ``dedup_key`` (index checked lazily)."""
        if dedup_key is None:
            return None
        job_id = self._live_dedup.get(dedup_key)
        row = self._jobs.get(job_id) if job_id is not None else None
        if row is not None and row.status in LIVE_STATUSES and row.dedup_key == dedup_key:
            return row.id
        self._live_dedup.pop(dedup_key, None)
        return None

    # --- working -----------------------------------------------------------
    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        now = utc_now()
        lease = str(uuid.uuid4())
        claimed: list[ClaimedJob] = []
        with self._mutex:
            self._promote(now)
            names = list(queues) if queues else list(self._ready)
            while len(claimed) < limit:
                job_id = self._next_ready(names)
                if job_id is None:
                    break
                row = self._jobs[job_id]
                row.status, row.attempts = "processing", row.attempts + 1
                row.worker_id, row.lease = worker_id, lease
                row.started_at = row.updated_at = now
                claimed.append(row.to_claimed())
        return claimed

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        now = utc_now()
        woke: set[str] = set()
        with self._mutex:
            for a in acks:
                row = self._jobs.get(a.job.id)
                if row is None or row.status != "processing" or row.lease != a.job.lease:
                    continue
                if self._apply(row, a, now, result_ttl):
                    woke.add(row.queue)
        self._listeners.notify(woke)

    def _apply(self, row: _Row, ack: Ack, now: datetime, result_ttl: float) -> bool:
        """Apply one outcome to a held row; True when the job is queued again."""
        outcome = ack.outcome
        if isinstance(outcome, Done):
            self._finish(row, outcome.result_json, now, result_ttl)
            return False
        if isinstance(outcome, Fail):
            self._bury(row, outcome.error, outcome.traceback, now)
            return False
        if isinstance(outcome, Retry):
            row.last_error = outcome.error
            self._requeue(row, to_utc(outcome.run_at), now)
            return True
        if isinstance(outcome, Requeue):
            row.attempts = max(row.attempts - 1, 0)
            self._requeue(row, maybe_utc(outcome.run_at) or now, now)
            return True
        raise TypeError(f"unknown outcome {outcome!r}")  # pragma: no cover

    def _finish(self, row: _Row, result_json: str | None, now: datetime, ttl: float) -> None:
        if ttl <= 0:
            del self._jobs[row.id]
            return
        row.status, row.result_json, row.lease = "done", result_json, None
        row.completed_at = row.updated_at = now
        row.expires_at = now + timedelta(seconds=ttl)

    def _requeue(self, row: _Row, run_at: datetime, now: datetime) -> None:
        row.status, row.scheduled_at, row.updated_at = "queued", run_at, now
        row.worker_id = row.lease = None
        self._push(row, now)

    def _bury(self, row: _Row, error: str, traceback: str | None, now: datetime) -> None:
        """Move a row to the dead-letter table under the same id (in one step)."""
        del self._jobs[row.id]
        previous = self._dead.get(row.id)
        if previous is not None:
            self._dead[row.id] = replace(
                previous, last_error=error, traceback=traceback, attempts=row.attempts,
                dead_lettered_at=now,
            )  # fmt: skip
            return
        self._dead[row.id] = DeadLetterJob(
            id=row.id, job_name=row.job_name, args=json.loads(row.args_json), queue=row.queue,
            priority=row.priority, attempts=row.attempts, max_attempts=row.max_attempts,
            last_error=error, traceback=traceback, created_at=row.created_at,
            dead_lettered_at=now, resurrection_count=0,
        )  # fmt: skip

    async def register_worker(self, info: WorkerInfo) -> None:
        now = utc_now()
        with self._mutex:
            existing = self._workers.get(info.id)
            if existing is not None:
                self._workers[info.id] = replace(existing, last_heartbeat=now)
                return
            queues = list(info.queues) if info.queues else None
            self._workers[info.id] = replace(
                info, queues=queues, started_at=now, last_heartbeat=now
            )

    async def heartbeat(self, worker_id: str) -> bool:
        with self._mutex:
            existing = self._workers.get(worker_id)
            if existing is None:
                return False
            self._workers[worker_id] = replace(existing, last_heartbeat=utc_now())
            return True

    async def deregister_worker(self, worker_id: str) -> None:
        with self._mutex:
            self._workers.pop(worker_id, None)

    async def recover_stale(self, heartbeat_timeout: float) -> int:
        now = utc_now()
        cutoff = now - timedelta(seconds=heartbeat_timeout)
        woke: set[str] = set()
        with self._mutex:
            for worker_id in [w.id for w in self._workers.values() if _older(w, cutoff)]:
                del self._workers[worker_id]
            orphans = [
                r for r in self._jobs.values()
                if r.status == "processing" and r.worker_id not in self._workers
            ]  # fmt: skip
            for row in orphans:
                error = lost_worker_error(row.worker_id, row.attempts)
                if row.attempts >= row.max_attempts:
                    self._bury(row, error, None, now)
                else:
                    row.last_error = error
                    self._requeue(row, now, now)
                    woke.add(row.queue)
        self._listeners.notify(woke)
        return len(orphans)

    async def prune(self) -> int:
        now = utc_now()
        with self._mutex:
            expired = [
                r.id for r in self._jobs.values()
                if r.status == "done" and r.expires_at is not None and r.expires_at <= now
            ]  # fmt: skip
            for job_id in expired:
                del self._jobs[job_id]
        return len(expired)

    async def try_lead(self, role: str, owner: str, ttl: float) -> bool:
        now = utc_now()
        with self._mutex:
            held = self._leases.get(role)
            if held is None or held[0] == owner or held[1] < now:
                self._leases[role] = (owner, now + timedelta(seconds=ttl))
                return True
            return False

    async def release_lead(self, role: str, owner: str) -> None:
        with self._mutex:
            held = self._leases.get(role)
            if held is not None and held[0] == owner:
                del self._leases[role]

    async def listen(self, on_new_job: Callable[[str], None]) -> Listener | None:
        return self._listeners.add(on_new_job)

    # --- reads and management ---------------------------------------------
    async def get_job(self, job_id: str) -> Job | None:
        with self._mutex:
            row = self._jobs.get(normalize_id(job_id))
            return row.to_job() if row is not None else None

    async def list_jobs(
        self, *, queue: str | None, status: str | None, limit: int, offset: int
    ) -> list[Job]:
        with self._mutex:
            rows = [
                r for r in self._jobs.values()
                if (queue is None or r.queue == queue) and (status is None or r.status == status)
            ]  # fmt: skip
            page = _newest_first(rows, lambda r: r.created_at)[offset : offset + limit]
            return [r.to_job() for r in page]

    async def queue_stats(self) -> list[QueueStats]:
        with self._mutex:
            triples = [(r.queue, r.status, 1) for r in self._jobs.values()]
            triples += [(d.queue, "dead_letter", 1) for d in self._dead.values()]
        return build_queue_stats(triples)

    async def cancel_job(self, job_id: str) -> bool:
        now = utc_now()
        with self._mutex:
            row = self._jobs.get(normalize_id(job_id))
            if row is None or row.status != "queued":
                return False
            row.status, row.updated_at, row.completed_at = "cancelled", now, now
            return True

    async def delete_job(self, job_id: str) -> bool:
        with self._mutex:
            return self._jobs.pop(normalize_id(job_id), None) is not None

    async def list_workers(self) -> list[WorkerInfo]:
        with self._mutex:
            return sorted(self._workers.values(), key=lambda w: w.started_at or _EPOCH)

    # --- dead letters ------------------------------------------------------
    def _dead_matching(self, queue: str | None, task: str | None) -> list[DeadLetterJob]:
        return [
            d for d in self._dead.values()
            if (queue is None or d.queue == queue) and (task is None or d.job_name == task)
        ]  # fmt: skip

    async def dead_letter_list(
        self, *, queue: str | None, task: str | None, limit: int, offset: int
    ) -> list[DeadLetterJob]:
        with self._mutex:
            rows = _newest_first(self._dead_matching(queue, task), lambda d: d.dead_lettered_at)
        return [_detached(d) for d in rows[offset : offset + limit]]

    async def dead_letter_get(self, job_id: str) -> DeadLetterJob | None:
        with self._mutex:
            found = self._dead.get(normalize_id(job_id))
        return _detached(found) if found is not None else None

    async def dead_letter_count(self, *, queue: str | None, task: str | None) -> int:
        with self._mutex:
            return len(self._dead_matching(queue, task))

    async def dead_letter_replay(self, job_ids: Sequence[str]) -> dict[str, str]:
        now = utc_now()
        replayed: dict[str, str] = {}
        with self._mutex:
            for dead_id in dict.fromkeys(normalize_id(i) for i in job_ids):
                dead = self._dead.get(dead_id)
                if dead is not None:
                    replayed[dead_id] = self._resurrect(dead, now)
            woke = {self._jobs[new_id].queue for new_id in replayed.values()}
        self._listeners.notify(woke)
        return replayed

    def _resurrect(self, dead: DeadLetterJob, now: datetime) -> str:
        """A fresh queued copy of a dead job; the dead-letter row records the replay."""
        new = NewJob(
            id=str(uuid.uuid4()), job_name=dead.job_name, args=dead.args,
            args_json=json.dumps(dead.args), queue=dead.queue, priority=dead.priority,
            max_attempts=dead.max_attempts, scheduled_at=now, dedup_key=None,
        )  # fmt: skip
        self._add_row(new, now)
        self._dead[dead.id] = replace(
            dead, resurrection_count=dead.resurrection_count + 1, last_replayed_at=now
        )
        return new.id

    async def dead_letter_purge(
        self, *, job_ids: Sequence[str] | None, queue: str | None, task: str | None
    ) -> int:
        with self._mutex:
            if job_ids is not None:
                doomed: Iterable[str] = {normalize_id(i) for i in job_ids} & self._dead.keys()
            else:
                doomed = [d.id for d in self._dead_matching(queue, task)]
            removed = 0
            for dead_id in list(doomed):
                del self._dead[dead_id]
                removed += 1
            return removed

    # --- schedules ---------------------------------------------------------
    async def schedule_upsert(self, schedule: Schedule) -> Schedule:
        now = utc_now()
        s = schedule
        fields: dict[str, Any] = dict(
            job_name=s.job_name, args=_copy_json(s.args), queue=s.queue, priority=s.priority,
            cron=s.cron, every_seconds=s.every_seconds, timezone=s.timezone,
            next_run_at=maybe_utc(s.next_run_at), updated_at=now,
        )  # fmt: skip
        check_schedule_status(s.status)
        with self._mutex:
            existing = self._schedules.get(s.name)
            if existing is not None:
                if _same_timing(existing, s):  # keep a due time a leader just advanced
                    fields["next_run_at"] = existing.next_run_at
                stored = replace(existing, **fields)
            else:
                stored = replace(s, **fields, last_run_at=None, created_at=now)
            self._schedules[s.name] = stored
        return _detached_schedule(stored)

    async def schedule_get(self, name: str) -> Schedule | None:
        with self._mutex:
            found = self._schedules.get(name)
        return _detached_schedule(found) if found is not None else None

    async def schedule_list(self, status: str | None = None) -> list[Schedule]:
        with self._mutex:
            rows = [s for s in self._schedules.values() if status is None or s.status == status]
        return [_detached_schedule(s) for s in sorted(rows, key=lambda s: s.name)]

    async def schedule_set_status(
        self, name: str, status: str, next_run_at: datetime | None = None
    ) -> bool:
        """Pause/resume; ``next_run_at`` (when given) re-arms a resumed schedule."""
        check_schedule_status(status)
        with self._mutex:
            existing = self._schedules.get(name)
            if existing is None:
                return False
            self._schedules[name] = replace(
                existing, status=status, updated_at=utc_now(),
                next_run_at=maybe_utc(next_run_at) or existing.next_run_at,
            )  # fmt: skip
            return True

    async def schedule_delete(self, name: str) -> bool:
        with self._mutex:
            return self._schedules.pop(name, None) is not None

    async def schedule_fire(
        self, name: str, due: datetime, next_run_at: datetime | None, job: NewJob
    ) -> bool:
        now, due = utc_now(), to_utc(due)
        with self._mutex:
            existing = self._schedules.get(name)
            if existing is None or existing.status != "active" or existing.next_run_at != due:
                return False
            _, woke = self._insert([job], now)  # raises before any write, so insert first
            self._schedules[name] = replace(
                existing, last_run_at=due, next_run_at=maybe_utc(next_run_at), updated_at=now
            )
        self._listeners.notify(woke)
        return True


def _older(worker: WorkerInfo, cutoff: datetime) -> bool:
    return worker.last_heartbeat is None or worker.last_heartbeat < cutoff


def _newest_first(rows: list[Any], stamp: Callable[[Any], datetime | None]) -> list[Any]:
    """Sort by ``stamp`` descending, ties by id ascending (the SQL backends' ORDER BY).

    Two stable sorts: ``reverse=True`` keeps equal stamps in id order.
    """
    rows = sorted(rows, key=lambda r: r.id)
    return sorted(rows, key=lambda r: stamp(r) or _EPOCH, reverse=True)


def _detached(dead: DeadLetterJob) -> DeadLetterJob:
    return replace(dead, args=_copy_json(dead.args))


def _detached_schedule(schedule: Schedule) -> Schedule:
    return replace(schedule, args=_copy_json(schedule.args))


def _same_timing(a: Schedule, b: Schedule) -> bool:
    return (a.cron, a.every_seconds, a.timezone) == (b.cron, b.every_seconds, b.timezone)
