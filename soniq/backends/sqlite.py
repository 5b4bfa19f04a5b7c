"""SQLite backend on aiosqlite: the embedded backend for development and small deployments.

One connection per backend object, used by one coroutine at a time (an
``asyncio.Lock``): a SQLite connection cannot interleave transactions. Across
processes, every write runs in ``BEGIN IMMEDIATE``, which takes the database's
single write lock before reading anything; two workers therefore never see the
same queued row as claimable, and a transaction never fails half-way on a lock
upgrade. A ``BEGIN`` that finds the lock taken waits (``busy_timeout``) and is
retried until a deadline.

Timestamps are stored as INTEGER microseconds since the epoch (UTC): exact,
sortable, and compared for equality by ``schedule_fire``. All SQL lives in
:mod:`soniq.sql.sqlite_queries` and ``soniq/sql/migrations/sqlite``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import operator
import os
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import aiosqlite

from soniq.backends import (
    JobQuery,
    Listener,
    MigrationInfo,
    MigrationReport,
    QueueCounts,
    ThroughputBucket,
)
from soniq.backends._common import (
    LOST_WORKER_ERROR,
    InProcessListeners,
    build_queue_stats,
    decode_args,
    no_connections,
    normalize_id,
    paced_batches,
    read_args,
)
from soniq.backends._dashboard import bucket, like_pattern, search_terms
from soniq.errors import DatabaseUnavailableError, MigrationError
from soniq.events import (
    DeliveryResult,
    JobLogEntry,
    OutboxEvent,
    PendingDelivery,
    Record,
    Webhook,
    WebhookDelivery,
    like_contains,
    needs_lease_check,
    split_records,
)
from soniq.flow import (
    CANCEL_NOTICE,
    WAITING_AT,
    BudgetRow,
    Budgets,
    Candidate,
    LimitedClaim,
    QueueLimit,
    TaskLimit,
    admit_rounds,
    flow_fields,
    needs_settling,
    rate_windows,
    task_params,
)
from soniq.job import (
    Ack,
    Cancelled,
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
    Snoozed,
    WorkerInfo,
)
from soniq.sql import migration_files as packaged_migrations
from soniq.sql import sqlite_queries as q
from soniq.utils import UTC, to_utc, utc_now

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings

log = logging.getLogger("soniq.sqlite")

DEFAULT_PATH = "soniq.db"
# How long a write keeps retrying BEGIN IMMEDIATE (each try already waits
# busy_timeout) before reporting the database as unavailable.
BUSY_RETRY_SECONDS = 30.0
# Rows deleted per prune transaction (other writers get the lock in between; a backend's
# ``prune_batch`` overrides it). After each, the prune pauses PRUNE_PAUSE times as long as
# the chunk took, so a big prune leaves most of the write lock to claims and acks.
PRUNE_CHUNK = 2000
PRUNE_PAUSE = 1.0
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

Params = dict[str, Any]
T = TypeVar("T")


def _us(value: datetime) -> int:
    """A datetime as integer microseconds since the epoch (naive taken as UTC)."""
    return (to_utc(value) - _EPOCH) // _MICROSECOND


def _dt(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + timedelta(microseconds=value)


def _loads(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


class SQLiteBackend:
    """``StorageBackend`` on one SQLite file (WAL mode), safe for several worker processes.

    Example::

        app = Soniq(database_url="jobs.db")          # or backend=SQLiteBackend("jobs.db", s)
    """

    name = "sqlite"
    supports_transactions = False
    claim_ahead = False  # one connection, one thread: a claim ahead waits behind the acks
    prune_batch: int | None = None  # rows per prune transaction; None: PRUNE_CHUNK

    def __init__(self, path: str = DEFAULT_PATH, settings: SoniqSettings | None = None) -> None:
        self.path = path or DEFAULT_PATH
        self.settings = settings
        self._conn: aiosqlite.Connection | None = None
        self._migrated = False
        self._lock = asyncio.Lock()
        self._open_lock = asyncio.Lock()
        self._locks_loop: asyncio.AbstractEventLoop | None = None
        self._listeners = InProcessListeners()
        self._rng = random.Random()

    # --- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        """Connect, and create or upgrade the schema if migrations are pending.

        SQLite needs no server and no ``soniq setup``: the file is created on
        first use.
        """
        if (
            self._migrated
            and self._conn is not None
            and self._locks_loop is asyncio.get_running_loop()
        ):
            return
        conn = await self._connection()
        async with self._open_lock:
            if not self._migrated:
                await self._apply_migrations(conn)
                self._migrated = True

    async def close(self) -> None:
        self._bind_locks()
        conn, self._conn = self._conn, None
        self._migrated = False
        if conn is not None:
            async with self._lock:  # let an in-flight transaction finish first
                await conn.close()

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        return no_connections(self.name)

    def reserve_capacity(self, concurrency: int) -> None:
        """One connection serves any concurrency: nothing to size."""

    async def migrate(self, extra: Sequence[tuple[str, str]] = ()) -> MigrationReport:
        report = await self._apply_migrations(await self._connection(), extra)
        self._migrated = True
        return report

    async def migration_status(self) -> list[MigrationInfo]:
        conn = await self._connection()
        async with self._lock:
            present = await _fetchall(conn, q.MIGRATIONS_TABLE_PRESENT, {})
            rows = await _fetchall(conn, q.MIGRATIONS_APPLIED, {}) if present else []
        applied = {r["name"]: _dt(r["applied_at"]) for r in rows}
        return [
            MigrationInfo(name=name, applied=name in applied, applied_at=applied.get(name))
            for name, _ in migration_files()
        ]

    def _bind_locks(self) -> None:
        """Fresh locks for a new event loop (an app used across ``asyncio.run`` calls, one
        test after another): an ``asyncio.Lock`` that waited on one loop refuses the next.
        The connection itself is not tied to a loop (aiosqlite runs it on its own thread)."""
        loop = asyncio.get_running_loop()
        if self._locks_loop is not loop:
            self._lock, self._open_lock, self._locks_loop = asyncio.Lock(), asyncio.Lock(), loop

    async def _connection(self) -> aiosqlite.Connection:
        """The open connection, connecting (without migrating) on first use."""
        self._bind_locks()
        if self._conn is not None:
            return self._conn
        async with self._open_lock:
            if self._conn is None:
                self._conn = await self._connect()
            return self._conn

    def _check_folder(self) -> None:
        """Fail early on a missing directory: a failed ``aiosqlite.connect`` leaves
        its thread to finish on its own, possibly after the caller's loop closed."""
        if self.path == ":memory:" or self.path.startswith("file:"):
            return
        folder = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(folder):
            raise self._unavailable(FileNotFoundError(f"directory {folder} does not exist"))

    async def _connect(self) -> aiosqlite.Connection:
        self._check_folder()
        try:
            conn = await aiosqlite.connect(
                self.path, isolation_level=None, uri=self.path.startswith("file:")
            )
        except sqlite3.Error as exc:
            raise self._unavailable(exc) from None
        conn.row_factory = sqlite3.Row
        try:
            for pragma in q.CONNECTION_PRAGMAS:
                # Switching a new file to WAL can report "locked" at once, without
                # waiting busy_timeout, while another process does the same.
                await self._retry_busy(functools.partial(_run, conn, pragma, {}))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._unavailable(exc) from None
            raise
        return conn

    def _unavailable(self, exc: BaseException) -> DatabaseUnavailableError:
        return DatabaseUnavailableError(
            f"Cannot use the SQLite database {self.path!r}: {exc}. Check that its directory "
            "exists and is writable and that the file is a SQLite database, or point "
            "SONIQ_DATABASE_URL at another path."
        )

    async def _apply_migrations(
        self, conn: aiosqlite.Connection, extra: Sequence[tuple[str, str]] = ()
    ) -> MigrationReport:
        """Apply pending files, each in its own write transaction with its record.

        The applied set is re-read inside each transaction, so processes that
        migrate at once apply every file exactly once.
        """
        applied: list[str] = []
        already: list[str] = []
        for name, sql in [*migration_files(), *extra]:
            async with self._transaction(conn):
                await conn.execute(q.MIGRATIONS_TABLE)
                done = {r["name"] for r in await conn.execute_fetchall(q.MIGRATIONS_APPLIED)}
                if name in done:
                    already.append(name)
                    continue
                await self._run_migration(conn, name, sql)
                applied.append(name)
        return MigrationReport(applied=applied, already_applied=already)

    @staticmethod
    async def _run_migration(conn: aiosqlite.Connection, name: str, sql: str) -> None:
        try:
            for statement in split_statements(sql):
                await conn.execute(statement)
            await conn.execute(q.MIGRATION_RECORD, {"name": name, "now": _us(utc_now())})
        except sqlite3.Error as exc:
            raise MigrationError(
                name,
                f"{exc}. It was rolled back and nothing of {name} was applied; check the file "
                "is a Soniq database (or use a new path) and try again",
            ) from None

    # --- transactions ------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _transaction(self, conn: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
        """A ``BEGIN IMMEDIATE`` transaction: commit on success, roll back on any exception.

        A cancelled statement keeps running on aiosqlite's thread; the ROLLBACK
        is queued behind it on that same thread, so nothing is left half done.
        That holds for the BEGIN too: a cancelled BEGIN still opens the transaction
        (and takes the write lock), so it must be inside the ``try``.
        """
        async with self._lock:
            try:
                await self._begin(conn)
                yield conn
                await conn.execute(q.COMMIT)
            except BaseException:
                await _rollback(conn)
                raise

    async def _begin(self, conn: aiosqlite.Connection) -> None:
        await self._retry_busy(functools.partial(_run, conn, q.BEGIN_WRITE, {}))

    async def _retry_busy(self, attempt: Callable[[], Awaitable[T]]) -> T:
        """Run ``attempt`` again while SQLite reports the database busy, up to a deadline.

        Only for statements that are safe to repeat: BEGIN, PRAGMAs and reads.
        """
        deadline = time.monotonic() + BUSY_RETRY_SECONDS
        delay = 0.002
        while True:
            try:
                return await attempt()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() > deadline:
                    raise self._unavailable(exc) from None
            # Jitter, so that processes that collided do not collide again in step.
            await asyncio.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, 0.1)

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[aiosqlite.Connection]:
        await self.open()
        async with self._transaction(await self._connection()) as conn:
            yield conn

    async def _fetch(self, sql: str, params: Params) -> list[sqlite3.Row]:
        """A read outside any transaction (autocommit: one consistent snapshot)."""
        await self.open()
        conn = await self._connection()
        async with self._lock:
            return await self._retry_busy(functools.partial(_fetchall, conn, sql, params))

    async def _fetch_one(self, sql: str, params: Params) -> sqlite3.Row | None:
        rows = await self._fetch(sql, params)
        return rows[0] if rows else None

    async def _change(self, sql: str, params: Params) -> int:
        """Run one write statement in its own transaction; returns the affected row count."""
        async with self._write() as conn:
            return await _changes(conn, sql, params)

    async def _transact(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` in one ``BEGIN IMMEDIATE`` transaction, run whole on aiosqlite's thread.

        The hot paths (enqueue, claim, ack) use this instead of ``_write``: one hop to
        the connection's thread and back per transaction, where awaiting each statement
        costs a hop each (BEGIN, the statements, COMMIT), and the thread hops were most
        of a job's cost. Same rules as ``_transaction``: a busy BEGIN opened nothing and
        is retried; any error rolls back. A caller cancelled before its transaction
        reaches COMMIT has it rolled back, whether the work was still queued or running
        (the thread sees the cancelled future at once); once COMMIT has begun it commits,
        as a cancel that landed during an awaited COMMIT did.
        """
        await self.open()
        conn = await self._connection()

        async def attempt() -> T:
            outcome = await _on_thread(conn, _transact_on_thread, conn, work)
            if isinstance(outcome, _Busy):
                raise outcome.error
            return cast(T, outcome)

        async with self._lock:
            return await self._retry_busy(attempt)

    # --- producing ---------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        ids = await self._transact(lambda db: _inserted(db, jobs, _us(utc_now())))
        self._listeners.notify(j.queue for j, i in zip(jobs, ids, strict=True) if i == j.id)
        return ids

    async def enqueue_chunks(
        self, chunks: Iterator[Sequence[NewJob]], records: Sequence[Record] | None = None
    ) -> list[str]:
        """All the parts, then one ``enqueue``: one transaction on one thread gains
        nothing from building while writing."""
        jobs = [job for part in chunks for job in part]
        if not jobs:
            return []
        return await (self.enqueue_observed(jobs, records) if records else self.enqueue(jobs))

    # --- working -----------------------------------------------------------
    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        lease = str(uuid.uuid4())

        def work(db: sqlite3.Connection) -> list[ClaimedJob]:
            # "now" after BEGIN IMMEDIATE: a claim that waited for the lock counts from here.
            params = {"worker_id": worker_id, "lease": lease, "now": _us(utc_now()), "limit": limit}
            jobs, undecodable = _decode_claimed(_claim_rows(db, queues, params), lease)
            if undecodable:  # dead-lettered in the same transaction as the claim
                _apply_acks(db, _ack_batches(undecodable, utc_now(), 0))
            return jobs

        return await self._transact(work)

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        batches = _ack_batches(acks, utc_now(), result_ttl)
        await self._transact(functools.partial(_apply_acks, batches=batches))
        self._listeners.notify(a.job.queue for a in acks if isinstance(a.outcome, (Retry, Requeue)))

    async def register_worker(self, info: WorkerInfo) -> None:
        await self._change(
            q.WORKER_REGISTER,
            {
                "id": info.id, "hostname": info.hostname, "pid": info.pid,
                "queues": json.dumps(list(info.queues)) if info.queues else None,
                "concurrency": info.concurrency, "now": _us(utc_now()),
            },
        )  # fmt: skip

    async def heartbeat(self, worker_id: str) -> bool:
        params = {"id": worker_id, "now": _us(utc_now())}
        return await self._change(q.WORKER_HEARTBEAT, params) > 0

    async def deregister_worker(self, worker_id: str) -> None:
        await self._change(q.WORKER_DEREGISTER, {"id": worker_id})

    async def recover_stale(self, heartbeat_timeout: float) -> int:
        now = utc_now()
        cutoff = _us(now - timedelta(seconds=heartbeat_timeout))
        stamp = {"now": _us(now), "lost_error": LOST_WORKER_ERROR}
        async with self._write() as conn:
            await conn.execute(q.WORKER_DELETE_STALE, {"cutoff": cutoff})
            requeued = list(await conn.execute_fetchall(q.JOB_RECOVER_REQUEUE, stamp))
            await conn.execute(q.JOB_RECOVER_DEAD_COPY, stamp)
            buried = await _changes(conn, q.JOB_RECOVER_DEAD_DELETE, {})
        self._listeners.notify(r["queue"] for r in requeued)
        return len(requeued) + buried

    async def prune(self) -> int:
        now = _us(utc_now())
        total = await self._prune_chunks(q.JOB_PRUNE, {"now": now})
        await self._prune_chunks(q.THROUGHPUT_PRUNE, {"now": now})
        return total

    @property
    def _prune_size(self) -> int:
        return self.prune_batch or PRUNE_CHUNK

    async def _prune_chunks(self, sql: str, params: Params) -> int:
        """Run a ``DELETE ... LIMIT :limit`` until it deletes less than a chunk; the total."""
        limit = self._prune_size

        async def step() -> tuple[int, bool]:
            removed = await self._change(sql, {**params, "limit": limit})
            return removed, removed >= limit

        return await paced_batches(step, PRUNE_PAUSE)

    async def try_lead(self, role: str, owner: str, ttl: float) -> bool:
        now = utc_now()
        params = {
            "role": role, "owner": owner, "now": _us(now),
            "expires_at": _us(now + timedelta(seconds=ttl)),
        }  # fmt: skip
        async with self._write() as conn:
            rows = list(await conn.execute_fetchall(q.LEASE_TAKE, params))
        return bool(rows)

    async def release_lead(self, role: str, owner: str) -> None:
        await self._change(q.LEASE_RELEASE, {"role": role, "owner": owner})

    async def listen(self, on_new_job: Callable[[str], None]) -> Listener | None:
        """Wakes on enqueues made through this backend object; other processes are polled."""
        return self._listeners.add(on_new_job)

    # --- reads and management ---------------------------------------------
    async def get_job(self, job_id: str) -> Job | None:
        row = await self._fetch_one(q.JOB_GET, {"id": job_id})
        return _job(row) if row is not None else None

    async def list_jobs(
        self, *, queue: str | None, status: str | None, limit: int, offset: int
    ) -> list[Job]:
        params = {"queue": queue, "status": status, "limit": limit, "offset": offset}
        return [_job(r) for r in await self._fetch(q.JOB_LIST, params)]

    async def queue_stats(self) -> list[QueueStats]:
        rows = await self._fetch(q.QUEUE_STATS, {})
        return build_queue_stats((r[0], r[1], r[2]) for r in rows)

    async def cancel_job(self, job_id: str) -> bool:
        params = {"id": job_id, "now": _us(utc_now())}
        async with self._write() as conn:
            if await _changes(conn, q.JOB_CANCEL, params) > 0:
                return True
            running = await _changes(conn, q.JOB_CANCEL_RUNNING, params) > 0
        if running:  # a worker of this backend object hears it at once; others at heartbeat
            self._listeners.notify([CANCEL_NOTICE + job_id])
        return running

    async def delete_job(self, job_id: str) -> bool:
        return await self._change(q.JOB_DELETE, {"id": job_id}) > 0

    async def reset(self) -> None:
        async with self._write() as conn:
            for statement in q.RESET_RUNTIME_STATE:
                await conn.execute(statement)

    async def list_workers(self) -> list[WorkerInfo]:
        return [_worker(r) for r in await self._fetch(q.WORKER_LIST, {})]

    # --- dead letters ------------------------------------------------------
    async def dead_letter_list(
        self, *, queue: str | None, task: str | None, limit: int, offset: int
    ) -> list[DeadLetterJob]:
        params = {"queue": queue, "task": task, "limit": limit, "offset": offset}
        return [_dead(r) for r in await self._fetch(q.DLQ_LIST, params)]

    async def dead_letter_get(self, job_id: str) -> DeadLetterJob | None:
        row = await self._fetch_one(q.DLQ_GET, {"id": job_id})
        return _dead(row) if row is not None else None

    async def dead_letter_count(self, *, queue: str | None, task: str | None) -> int:
        row = await self._fetch_one(q.DLQ_COUNT, {"queue": queue, "task": task})
        return int(row[0]) if row is not None else 0

    async def dead_letter_replay(self, job_ids: Sequence[str]) -> dict[str, str]:
        now = _us(utc_now())
        replayed: dict[str, str] = {}
        woke: set[str] = set()
        async with self._write() as conn:
            for dead_id in job_ids:
                new_id = str(uuid.uuid4())
                params = {"dead_id": dead_id, "new_id": new_id, "now": now}
                rows = list(await conn.execute_fetchall(q.DLQ_REPLAY_INSERT, params))
                if rows:
                    await conn.execute(q.DLQ_MARK_REPLAYED, params)
                    replayed[dead_id] = new_id
                    woke.add(rows[0]["queue"])
        self._listeners.notify(woke)
        return replayed

    async def dead_letter_replay_as(
        self, job_id: str, *, queue: str | None, priority: int | None,
        max_attempts: int | None, keep_attempts: bool,
    ) -> str | None:  # fmt: skip
        params = {
            "dead_id": job_id, "new_id": str(uuid.uuid4()), "now": _us(utc_now()),
            "queue": queue, "priority": priority, "max_attempts": max_attempts,
            "keep": int(keep_attempts),
        }  # fmt: skip
        async with self._write() as conn:
            rows = list(await conn.execute_fetchall(q.DLQ_REPLAY_AS_INSERT, params))
            if not rows:
                return None
            await conn.execute(q.DLQ_MARK_REPLAYED, params)
        self._listeners.notify({rows[0]["queue"]})
        return str(params["new_id"])

    async def dead_letter_purge(
        self, *, job_ids: Sequence[str] | None, queue: str | None, task: str | None
    ) -> int:
        if job_ids is not None:
            ids = json.dumps(list(job_ids))
            return await self._change(q.DLQ_PURGE_IDS, {"ids": ids})
        return await self._change(q.DLQ_PURGE_FILTER, {"queue": queue, "task": task})

    # --- schedules ---------------------------------------------------------
    async def schedule_upsert(self, schedule: Schedule) -> Schedule:
        s = schedule
        params = {
            "name": s.name, "job_name": s.job_name, "args": json.dumps(s.args),
            "queue": s.queue, "priority": s.priority, "cron": s.cron,
            "every_seconds": s.every_seconds, "timezone": s.timezone, "status": s.status,
            "next_run_at": _maybe_us(s.next_run_at), "now": _us(utc_now()),
        }  # fmt: skip
        async with self._write() as conn:
            rows = list(await conn.execute_fetchall(q.SCHEDULE_UPSERT, params))
        return _schedule(rows[0])

    async def schedule_get(self, name: str) -> Schedule | None:
        row = await self._fetch_one(q.SCHEDULE_GET, {"name": name})
        return _schedule(row) if row is not None else None

    async def schedule_list(self, status: str | None = None) -> list[Schedule]:
        return [_schedule(r) for r in await self._fetch(q.SCHEDULE_LIST, {"status": status})]

    async def schedule_set_status(
        self, name: str, status: str, next_run_at: datetime | None = None
    ) -> bool:
        """Pause/resume; ``next_run_at`` (when given) re-arms a resumed schedule."""
        params = {
            "name": name, "status": status, "now": _us(utc_now()),
            "next_run_at": _maybe_us(next_run_at),
        }  # fmt: skip
        return await self._change(q.SCHEDULE_SET_STATUS, params) > 0

    async def schedule_delete(self, name: str) -> bool:
        return await self._change(q.SCHEDULE_DELETE, {"name": name}) > 0

    async def schedule_fire(
        self, name: str, due: datetime, next_run_at: datetime | None, job: NewJob
    ) -> bool:
        now = _us(utc_now())
        params = {"name": name, "due": _us(due), "next_run_at": _maybe_us(next_run_at), "now": now}

        def work(db: sqlite3.Connection) -> list[str] | None:
            if db.execute(q.SCHEDULE_ADVANCE, params).rowcount == 0:
                return None
            return _inserted(db, [job], now)

        ids = await self._transact(work)
        if ids is None:
            return False
        if ids == [job.id]:
            self._listeners.notify([job.queue])
        return True

    # --- dashboard reads (soniq.dashboard) ----------------------------------
    async def job_page(self, query: JobQuery) -> list[Job]:
        sql, params = _job_page_statement(query)
        return [_job(r) for r in await self._fetch(sql, params)]

    async def job_task_names(self) -> list[str]:
        return [r[0] for r in await self._fetch(q.JOB_TASK_NAMES, {})]

    async def job_throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        params = {"since": _us(since), "bucket_us": int(bucket_seconds) * 1_000_000}
        rows = await self._fetch(q.JOB_THROUGHPUT_ROLLUP, params)
        return [bucket(r[0], bucket_seconds, r[1], r[2]) for r in rows]

    async def throughput_add(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """All of a worker's tally in one write transaction (one lock, not one per row)."""
        rows = [
            {"bucket_start": _us(minute), "queue": queue, "completed": n}
            for (minute, queue), n in sorted(counts.items())
        ]
        if rows:
            async with self._write() as conn:
                await conn.executemany(q.THROUGHPUT_ADD, rows)

    async def queue_counts(self, *, exact_below: int) -> QueueCounts:
        """Always exact: an embedded database small enough for SQLite counts quickly."""
        return QueueCounts(stats=await self.queue_stats(), estimated=False)

    # === observability (soniq/events.py): webhooks outbox, job logs, gauges ==========
    async def enqueue_observed(
        self, jobs: Sequence[NewJob], records: Sequence[Record], *, connection: Any = None
    ) -> list[str]:

        def work(db: sqlite3.Connection) -> list[str]:
            now = _us(utc_now())
            ids = _inserted(db, jobs, now)
            inserted = {j.id for j, i in zip(jobs, ids, strict=True) if i == j.id}
            _write_records(db, *split_records(records, inserted=inserted), now=now)
            return ids

        ids = await self._transact(work)
        self._listeners.notify(j.queue for j, i in zip(jobs, ids, strict=True) if i == j.id)
        return ids

    async def ack_observed(
        self, acks: Sequence[Ack], records: Sequence[Record], *, result_ttl: float
    ) -> None:
        now = utc_now()
        batches = _ack_batches(acks, now, result_ttl) if acks else []

        def work(db: sqlite3.Connection) -> None:
            held = _held(db, acks) if acks and needs_lease_check(records) else None
            _apply_acks(db, batches)
            _write_records(db, *split_records(records, held=held), now=_us(now))

        await self._transact(work)
        self._listeners.notify(a.job.queue for a in acks if isinstance(a.outcome, (Retry, Requeue)))

    async def observe_write(self, records: Sequence[Record]) -> None:
        await self._transact(
            lambda db: _write_records(db, *split_records(records), now=_us(utc_now()))
        )

    async def webhook_add(self, hook: Webhook) -> Webhook:
        params = {
            "id": hook.id, "url": hook.url, "secret": hook.secret,
            "events": json.dumps(hook.events) if hook.events is not None else None,
            "allow_private": int(hook.allow_private), "now": _us(utc_now()),
        }  # fmt: skip
        async with self._write() as conn:
            rows = list(await conn.execute_fetchall(q.WEBHOOK_INSERT, params))
        return _webhook(rows[0])

    async def webhook_list(self) -> list[Webhook]:
        return [_webhook(r) for r in await self._fetch(q.WEBHOOK_LIST, {})]

    async def webhook_remove(self, webhook_id: str) -> bool:
        async with self._write() as conn:
            await conn.execute(q.WEBHOOK_DELETE_DELIVERIES, {"id": webhook_id})
            return await _changes(conn, q.WEBHOOK_DELETE, {"id": webhook_id}) > 0

    async def webhook_deliveries(self, webhook_id: str | None, limit: int) -> list[WebhookDelivery]:
        params = {"webhook_id": webhook_id, "limit": limit}
        return [_delivery(r) for r in await self._fetch(q.WEBHOOK_DELIVERIES, params)]

    async def webhook_claim(self, limit: int, lock_seconds: float) -> list[PendingDelivery]:
        now = utc_now()
        params = {
            "now": _us(now), "limit": limit,
            "lock_until": _us(now + timedelta(seconds=lock_seconds)),
        }  # fmt: skip
        async with self._write() as conn:
            ids = [r[0] for r in await conn.execute_fetchall(q.WEBHOOK_CLAIM, params)]
            if not ids:
                return []
            rows = await conn.execute_fetchall(q.WEBHOOK_CLAIMED, {"ids": json.dumps(ids)})
        return [_pending(r) for r in rows]

    async def webhook_settle(self, results: Sequence[DeliveryResult]) -> None:
        if not results:
            return
        now = _us(utc_now())
        rows = [
            {"id": r.id, "status": r.status, "code": r.response_code, "error": r.error,
             "retry_at": _maybe_us(r.retry_at), "now": now}
            for r in results
        ]  # fmt: skip
        async with self._write() as conn:
            await conn.executemany(q.WEBHOOK_SETTLE, rows)

    async def webhook_delivery_counts(self, since: datetime) -> dict[str, int]:
        rows = await self._fetch(q.WEBHOOK_DELIVERY_COUNTS, {"since": _us(since)})
        return {r[0]: int(r[1]) for r in rows}

    async def job_logs(self, job_id: str) -> list[JobLogEntry]:
        return [_log_entry(r) for r in await self._fetch(q.JOB_LOGS_FOR_JOB, {"job_id": job_id})]

    async def search_logs(
        self, text: str, *, job_id: str | None, min_level: int, since: datetime, limit: int
    ) -> list[JobLogEntry]:
        params = {
            "since": _us(since), "job_id": job_id, "level": min_level,
            "pattern": like_contains(text), "limit": limit,
        }  # fmt: skip
        return [_log_entry(r) for r in await self._fetch(q.JOB_LOGS_SEARCH, params)]

    async def observability_prune(self) -> int:
        cutoff = _us(utc_now() - timedelta(days=7))
        window: Params = {"after": 0, "limit": self._prune_size}

        async def orphans() -> tuple[int, bool]:  # orphaned logs: the table by id windows
            async with self._write() as conn:
                async with conn.execute(q.JOB_LOGS_WINDOW_END, window) as cursor:
                    end = (await cursor.fetchone() or [None])[0]
                removed = await _changes(conn, q.JOB_LOGS_PRUNE, window)
            window["after"] = end
            return removed, end is not None

        removed = await paced_batches(orphans, PRUNE_PAUSE)
        return removed + await self._prune_chunks(q.WEBHOOK_DELIVERIES_PRUNE, {"cutoff": cutoff})

    async def queue_oldest(self) -> dict[str, float]:
        now = utc_now()
        rows = await self._fetch(q.QUEUE_OLDEST, {"now": _us(now)})
        return {r[0]: (now - (_dt(r[1]) or now)).total_seconds() for r in rows}

    # === flow control (soniq/flow.py): limits, cancel running jobs, progress =========
    async def claim_limited(
        self, queues: Sequence[str] | None, worker_id: str, limit: int,
        tasks: Sequence[TaskLimit],
    ) -> LimitedClaim:  # fmt: skip
        """BEGIN IMMEDIATE already makes this the only claim running anywhere."""
        lease = str(uuid.uuid4())
        names = json.dumps(list(queues)) if queues else None
        scopes, counts, windows, keyed = task_params(tasks)
        async with self._write() as conn:
            now = utc_now()  # after the write lock: a claim that waited counts from here
            stamp = _us(now)
            params: Params = {
                "now": stamp, "queues": names, "keyed": json.dumps(keyed),
                "rates": json.dumps([list(r) for r in zip(scopes, counts, windows, strict=True)]),
            }  # fmt: skip
            budget_rows = await conn.execute_fetchall(q.FLOW_BUDGETS, params)
            budgets = Budgets.build(now, (_budget(r) for r in budget_rows), tasks)

            async def fetch(
                queues: list[str], tasks: list[str], keys: list[str], exclude: list[str], n: int
            ) -> list[Candidate]:
                rows = await conn.execute_fetchall(q.FLOW_CANDIDATES, {
                    "now": stamp, "queues": names, "limit": n,
                    "blocked_queues": json.dumps(queues), "blocked_tasks": json.dumps(tasks),
                    "blocked_keys": json.dumps(keys), "exclude": json.dumps(exclude),
                })  # fmt: skip
                return [Candidate(*c) for c in rows]

            ids, starts = await admit_rounds(fetch, limit, budgets)
            rows: list[sqlite3.Row] = []
            if ids:
                claim = {"worker_id": worker_id, "lease": lease, "now": stamp}
                rows = list(await conn.execute_fetchall(
                    q.JOB_CLAIM_IDS, {**claim, "ids": json.dumps(ids)}
                ))  # fmt: skip
                scopes_windows = [list(w) for w in zip(*rate_windows(budgets), strict=True)]
                await conn.execute(q.FLOW_START_LOG, {"now": stamp, "scopes": json.dumps(starts)})
                await conn.execute(
                    q.FLOW_START_PRUNE, {"now": stamp, "windows": json.dumps(scopes_windows)}
                )
        jobs, undecodable = _decode_claimed(rows, lease)
        if undecodable:
            await self.ack(undecodable, result_ttl=0)
        return LimitedClaim(jobs, budgets.retry_in())

    async def queue_limit_set(self, limit: QueueLimit) -> QueueLimit | None:
        if limit.max_concurrency is None and limit.rate_count is None:
            await self._change(q.QUEUE_LIMIT_DELETE, {"queue": limit.queue})
            return None
        params = {
            "queue": limit.queue, "max_concurrency": limit.max_concurrency,
            "rate_count": limit.rate_count, "rate_seconds": limit.rate_seconds,
            "now": _us(utc_now()),
        }  # fmt: skip
        async with self._write() as conn:
            rows = list(await conn.execute_fetchall(q.QUEUE_LIMIT_UPSERT, params))
        return QueueLimit(*rows[0])

    async def queue_limits(self) -> list[QueueLimit]:
        return [QueueLimit(*r) for r in await self._fetch(q.QUEUE_LIMITS, {})]

    async def cancel_requests(self, worker_id: str) -> list[str]:
        rows = await self._fetch(q.JOB_CANCEL_REQUESTS, {"worker_id": worker_id})
        return [r[0] for r in rows]

    async def job_progress(
        self, job_id: str, lease: str, fraction: float, message: str | None
    ) -> bool:
        params = {"id": job_id, "lease": lease, "progress": fraction, "message": message}
        return await self._change(q.JOB_PROGRESS, params) > 0

    async def job_checkpoint(self, job_id: str, lease: str, data_json: str) -> bool:
        params = {"id": job_id, "lease": lease, "data": data_json}
        return await self._change(q.JOB_CHECKPOINT, params) > 0


# --- statements on an open transaction ------------------------------------------


async def _rollback(conn: aiosqlite.Connection) -> None:
    """Roll back if a transaction is open (a failed BEGIN or COMMIT may have left none)."""
    with contextlib.suppress(sqlite3.Error):
        await conn.execute(q.ROLLBACK)


async def _run(conn: aiosqlite.Connection, sql: str, params: Params) -> None:
    async with conn.execute(sql, params):
        pass


async def _fetchall(conn: aiosqlite.Connection, sql: str, params: Params) -> list[sqlite3.Row]:
    return list(await conn.execute_fetchall(sql, params))


async def _changes(conn: aiosqlite.Connection, sql: str, params: Params) -> int:
    async with conn.execute(sql, params) as cursor:
        return int(cursor.rowcount)


class _Busy:
    """``BEGIN IMMEDIATE`` found the write lock taken: nothing was opened; try again."""

    __slots__ = ("error",)

    def __init__(self, error: sqlite3.OperationalError) -> None:
        self.error = error


class _Abandoned(Exception):
    """The caller was cancelled before COMMIT: the transaction was rolled back."""


def _on_thread(
    conn: aiosqlite.Connection, fn: Callable[..., Any], *args: Any
) -> asyncio.Future[Any]:
    """Queue ``fn(caller, *args)`` on aiosqlite's thread; ``caller`` is the future it
    resolves. aiosqlite's ``_execute`` does the same but keeps its future to itself, and
    the thread must see a caller's cancel at once: ``task.cancel()`` cancels the future
    the task awaits there and then, before the task itself runs again. aiosqlite has no
    public "run this on the connection's thread"; its ``_tx`` queue, ``_running`` and
    ``_conn`` are used here and in ``_transact_on_thread`` only."""
    if not conn._running or conn._connection is None:
        raise ValueError("Connection closed")
    caller: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    conn._tx.put_nowait((caller, functools.partial(fn, caller, *args)))
    return caller


def _transact_on_thread(
    caller: asyncio.Future[Any],
    conn: aiosqlite.Connection,
    work: Callable[[sqlite3.Connection], T],
) -> T | _Busy:
    """``SQLiteBackend._transact``'s body, on aiosqlite's thread (the only one that may
    use the ``sqlite3`` connection). Reading ``caller.cancelled()`` from this thread is
    a read of one field the loop sets; nothing here changes the future."""
    db: sqlite3.Connection = conn._conn
    if caller.cancelled():
        raise _Abandoned  # cancelled while queued: nothing to open
    try:
        db.execute(q.BEGIN_WRITE)
    except sqlite3.OperationalError as exc:
        if _is_busy(exc) and not db.in_transaction:
            return _Busy(exc)
        raise
    try:
        result = work(db)
        if caller.cancelled():
            raise _Abandoned
        db.execute(q.COMMIT)
    except BaseException:
        if db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                db.execute(q.ROLLBACK)
        raise
    return result


def _apply_acks(db: sqlite3.Connection, batches: list[tuple[str, list[Params]]]) -> None:
    for sql, rows in batches:
        db.executemany(sql, rows)


def _insert(db: sqlite3.Connection, jobs: Sequence[NewJob], now: int) -> list[str]:
    """Insert ``jobs``; a duplicate's slot gets the id of the live job holding its key."""
    db.executemany(q.JOB_INSERT, [_job_params(j, now) for j in jobs])
    keys = sorted({j.dedup_key for j in jobs if j.dedup_key is not None})
    if not keys:
        return [j.id for j in jobs]
    rows = db.execute(q.JOB_LIVE_BY_DEDUP, {"keys": json.dumps(keys)}).fetchall()
    live = {r["dedup_key"]: r["id"] for r in rows}
    return [live.get(j.dedup_key, j.id) if j.dedup_key is not None else j.id for j in jobs]


def _inserted(db: sqlite3.Connection, jobs: Sequence[NewJob], now: int) -> list[str]:
    """``_insert``, then what flow control adds (dependencies, concurrency keys)."""
    ids = _insert(db, jobs, now)
    if needs_settling(jobs):
        _settle_flow(db, jobs, ids, now)
    return ids


def _claim_rows(
    db: sqlite3.Connection, queues: Sequence[str] | None, params: Params
) -> list[sqlite3.Row]:
    if not queues:
        return db.execute(q.JOB_CLAIM_ALL, params).fetchall()
    names = list(dict.fromkeys(queues))
    if len(names) == 1:
        return db.execute(q.JOB_CLAIM_QUEUE, {**params, "queue": names[0]}).fetchall()
    candidates: list[sqlite3.Row] = []
    for queue in names:
        candidates += db.execute(q.JOB_DUE_IN_QUEUE, {**params, "queue": queue}).fetchall()
    candidates.sort(key=_due_order)
    ids = [r["id"] for r in candidates[: params["limit"]]]
    if not ids:
        return []
    return db.execute(q.JOB_CLAIM_IDS, {**params, "ids": json.dumps(ids)}).fetchall()


def _due_order(r: sqlite3.Row) -> tuple[int, int, int, int]:
    return r["priority"], r["scheduled_at"], r["created_at"], r["seq"]


# A claimed row's columns (``_CLAIM_RETURNING``), read by position: id, job_name, args,
# queue, attempts, max_attempts, scheduled_at, created_at, priority, seq.
_claim_order = operator.itemgetter(8, 6, 7, 9)


def _decode_claimed(rows: list[sqlite3.Row], lease: str) -> tuple[list[ClaimedJob], list[Ack]]:
    """Claimed rows as jobs in claim order (RETURNING has none), and a Fail ack for each
    row whose arguments cannot be decoded: dead-lettered with the reason rather than
    stalling the worker."""
    rows.sort(key=_claim_order)
    jobs: list[ClaimedJob] = []
    undecodable: list[Ack] = []
    for r in rows:
        args, error = decode_args(r[2])
        job = ClaimedJob(
            id=r[0], job_name=r[1], args=args, queue=r[3], attempt=r[4], max_attempts=r[5],
            lease=lease, scheduled_at=_dt(r[6]), created_at=_dt(r[7]), priority=r[8],
        )  # fmt: skip
        if error is None:
            jobs.append(job)
        else:
            undecodable.append(Ack(job, Fail(error, None)))
    return jobs, undecodable


def _ack_batches(
    acks: Sequence[Ack], now: datetime, result_ttl: float
) -> list[tuple[str, list[Params]]]:
    """Group acks by outcome into (statement, parameter rows) for ``executemany``."""
    stamp = _us(now)
    done: list[Params] = []
    retry: list[Params] = []
    requeue: list[Params] = []
    fail: list[Params] = []
    snooze: list[Params] = []
    cancel: list[Params] = []
    for a in acks:
        held: Params = {"id": a.job.id, "lease": a.job.lease, "now": stamp}
        o = a.outcome
        if isinstance(o, Done):
            done.append({**held, "result": o.result_json})
        elif isinstance(o, Retry):
            retry.append({**held, "run_at": _us(o.run_at), "error": o.error})
        elif isinstance(o, Requeue):
            requeue.append({**held, "run_at": _us(o.run_at or now)})
        elif isinstance(o, Fail):
            fail.append({**held, "error": o.error, "traceback": o.traceback})
        elif isinstance(o, Snoozed):
            snooze.append({**held, "run_at": _us(o.run_at)})
        elif isinstance(o, Cancelled):
            cancel.append({**held, "error": o.error})
    if result_ttl > 0:
        expires = _us(now + timedelta(seconds=result_ttl))
        done_batch = (q.JOB_ACK_DONE, [{**d, "expires_at": expires} for d in done])
    else:
        done_batch = (q.JOB_ACK_DONE_DELETE, done)
    batches = [
        done_batch, (q.JOB_ACK_RETRY, retry), (q.JOB_ACK_REQUEUE, requeue),
        (q.JOB_ACK_FAIL_COPY, fail), (q.JOB_ACK_FAIL_DELETE, fail),
        (q.JOB_ACK_SNOOZE, snooze), (q.JOB_ACK_CANCELLED, cancel),
    ]  # fmt: skip
    return [(sql, rows) for sql, rows in batches if rows]


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc).lower()
    return "locked" in message or "busy" in message


# --- migrations ---------------------------------------------------------------


def migration_files() -> list[tuple[str, str]]:
    return packaged_migrations("sqlite")


def split_statements(script: str) -> list[str]:
    """Split a migration file into statements (``sqlite3.complete_statement`` decides).

    ``executescript`` would commit the surrounding transaction, and a file must
    apply together with its record in ``soniq_migrations`` or not at all.
    """
    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer += piece + ";"
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    return statements


# --- rows -> frozen dataclasses -------------------------------------------------


def _maybe_us(value: datetime | None) -> int | None:
    return _us(value) if value is not None else None


def _job_params(j: NewJob, now: int) -> Params:
    return {
        "id": j.id, "job_name": j.job_name, "args": j.args_json, "queue": j.queue,
        "priority": j.priority, "max_attempts": j.max_attempts,
        "scheduled_at": _us(j.scheduled_at) if j.scheduled_at is not None else now,
        "now": now, "dedup_key": j.dedup_key,
    }  # fmt: skip


def _job(r: sqlite3.Row) -> Job:
    return Job(
        id=r["id"], job_name=r["job_name"], args=read_args(r["args"]), queue=r["queue"],
        priority=r["priority"], status=r["status"], attempts=r["attempts"],
        max_attempts=r["max_attempts"], scheduled_at=_dt(r["scheduled_at"]),
        created_at=_dt(r["created_at"]), updated_at=_dt(r["updated_at"]),
        started_at=_dt(r["started_at"]), completed_at=_dt(r["completed_at"]),
        result=_loads(r["result"]), last_error=r["last_error"], worker_id=r["worker_id"],
        dedup_key=r["dedup_key"], **flow_fields(r, json.loads(r["waiting_for"] or "[]")),
    )  # fmt: skip


def _dead(r: sqlite3.Row) -> DeadLetterJob:
    return DeadLetterJob(
        id=r["id"], job_name=r["job_name"], args=read_args(r["args"]), queue=r["queue"],
        priority=r["priority"], attempts=r["attempts"], max_attempts=r["max_attempts"],
        last_error=r["last_error"], traceback=r["traceback"], created_at=_dt(r["created_at"]),
        dead_lettered_at=_dt(r["dead_lettered_at"]),
        resurrection_count=r["resurrection_count"],
        last_replayed_at=_dt(r["last_replayed_at"]),
    )  # fmt: skip


def _worker(r: sqlite3.Row) -> WorkerInfo:
    return WorkerInfo(
        id=r["id"], hostname=r["hostname"], pid=r["pid"], queues=_loads(r["queues"]),
        concurrency=r["concurrency"], started_at=_dt(r["started_at"]),
        last_heartbeat=_dt(r["last_heartbeat"]),
    )  # fmt: skip


def _schedule(r: sqlite3.Row) -> Schedule:
    return Schedule(
        name=r["name"], job_name=r["job_name"], args=json.loads(r["args"]), queue=r["queue"],
        priority=r["priority"], cron=r["cron"], every_seconds=r["every_seconds"],
        timezone=r["timezone"], status=r["status"], next_run_at=_dt(r["next_run_at"]),
        last_run_at=_dt(r["last_run_at"]), created_at=_dt(r["created_at"]),
        updated_at=_dt(r["updated_at"]),
    )  # fmt: skip


# --- dashboard reads ------------------------------------------------------------


def _job_page_statement(query: JobQuery) -> tuple[str, Params]:
    """(statement, named parameters) for one page of ``job_page``."""
    by_id, text = search_terms(query.search)
    after = query.after
    sql = q.job_page_sql(
        queue=query.queue is not None, status=query.status is not None,
        task=query.task is not None, by_id=by_id is not None, text=text is not None,
        after=after is not None,
    )  # fmt: skip
    params: Params = {
        "limit": query.limit, "queue": query.queue, "status": query.status, "task": query.task,
        "id": by_id, "text": like_pattern(text, ascii_json=True),
    }  # fmt: skip
    if after is not None:
        params["after_created"] = _us(after.created_at)
        params["after_id"] = normalize_id(after.id)
    return sql, params


# === observability rows ---------------------------------------------------------------


def _held(db: sqlite3.Connection, acks: Sequence[Ack]) -> set[str]:
    """Job ids whose claim (same lease, still processing) the acks still hold."""
    leases = {a.job.id: a.job.lease for a in acks}
    rows = db.execute(q.ACK_HELD, {"ids": json.dumps(list(leases))}).fetchall()
    return {r["id"] for r in rows if leases.get(r["id"]) == r["lease"]}


def _write_records(
    db: sqlite3.Connection, logs: list[JobLogEntry], outbox: list[OutboxEvent], *, now: int
) -> None:
    """Logs, then one delivery per (event, webhook that wants it), in the open transaction."""
    if logs:
        db.executemany(q.JOB_LOGS_INSERT, [
            {"job_id": r.job_id, "logged_at": _us(r.logged_at), "level": r.level,
             "logger": r.logger, "message": r.message}
            for r in logs
        ])  # fmt: skip
    if not outbox:
        return
    hooks = db.execute(q.WEBHOOK_TARGETS).fetchall()
    targets = [(r["id"], _loads(r["events"])) for r in hooks]
    rows = [
        {"id": str(uuid.uuid4()), "webhook_id": hook_id, "event": e.event, "job_id": e.job_id,
         "payload": e.payload_json, "now": now}
        for e in outbox
        for hook_id, events in targets
        if events is None or e.event in events
    ]  # fmt: skip
    if rows:
        db.executemany(q.OUTBOX_INSERT, rows)


def _webhook(r: sqlite3.Row) -> Webhook:
    return Webhook(
        id=r["id"], url=r["url"], events=_loads(r["events"]), secret=r["secret"],
        allow_private=bool(r["allow_private"]), created_at=_dt(r["created_at"]),
    )  # fmt: skip


def _delivery(r: sqlite3.Row) -> WebhookDelivery:
    return WebhookDelivery(
        id=r["id"], webhook_id=r["webhook_id"], event=r["event"], job_id=r["job_id"],
        status=r["status"], attempts=r["attempts"], response_code=r["response_code"],
        error=r["error"], created_at=_dt(r["created_at"]), delivered_at=_dt(r["delivered_at"]),
    )  # fmt: skip


def _pending(r: sqlite3.Row) -> PendingDelivery:
    return PendingDelivery(
        id=r["id"], webhook_id=r["webhook_id"], event=r["event"], payload_json=r["payload"],
        created_at=_dt(r["created_at"]) or utc_now(), attempts=r["attempts"], url=r["url"],
        secret=r["secret"], allow_private=bool(r["allow_private"]),
    )  # fmt: skip


def _log_entry(r: sqlite3.Row) -> JobLogEntry:
    return JobLogEntry(
        job_id=r["job_id"], logged_at=_dt(r["logged_at"]) or utc_now(), level=r["level"],
        logger=r["logger"], message=r["message"],
    )  # fmt: skip


# === flow control ----------------------------------------------------------------------


def _budget(r: sqlite3.Row) -> BudgetRow:
    oldest, window = r["oldest"], r["secs"]
    free_at = None
    if oldest is not None:
        free_at = _EPOCH + timedelta(microseconds=oldest, seconds=window)
    return BudgetRow(r["kind"], r["name"], r["key"], r["cap"], int(r["used"]), free_at, window)


def _settle_flow(
    db: sqlite3.Connection, jobs: Sequence[NewJob], ids: Sequence[str], now: int
) -> None:
    """In the enqueue's transaction: concurrency keys, then each new job's dependencies
    (flag the live ones; wait on them, or inherit a failure). Same rule as PostgreSQL's
    FLOW_DEPS_SETTLE; the write lock makes every state read here final."""
    fresh = [j for j, i in zip(jobs, ids, strict=True) if i == j.id]  # not a duplicate's
    keyed = [{"id": j.id, "key": j.concurrency_key} for j in fresh if j.concurrency_key is not None]
    if keyed:
        db.executemany(q.FLOW_SET_KEY, keyed)
    for job in fresh:
        if not job.depends_on:
            continue
        deps = json.dumps(list(job.depends_on))
        live = [r[0] for r in db.execute(q.FLOW_DEPS_MARK, {"ids": deps}).fetchall()]
        failed = db.execute(q.FLOW_DEPS_FAILED, {"ids": deps}).fetchall()
        if failed:
            error = f"dependency {failed[0][0]} was {failed[0][1]}"
            db.execute(q.FLOW_DEPS_CANCEL, {"id": job.id, "now": now, "error": error})
        elif live:
            run_at = _us(job.scheduled_at) if job.scheduled_at is not None else None
            db.execute(q.FLOW_DEPS_WAIT, {"id": job.id, "waiting_at": _us(WAITING_AT)})
            db.execute(q.FLOW_DEPS_LINK, {"id": job.id, "run_at": run_at, "ids": json.dumps(live)})
