"""PostgreSQL backend on asyncpg: the production backend.

The only module (with ``migrations_pg``) that imports asyncpg. All SQL lives in
:mod:`soniq.sql.postgres_queries` and the numbered migration files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, cast

import asyncpg

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
    build_queue_stats,
    decode_args,
    paced_batches,
    read_args,
)
from soniq.backends._dashboard import (
    SAMPLE_ROWS,
    bucket,
    estimate_done,
    like_pattern,
    search_terms,
)
from soniq.backends.migrations_pg import apply_migrations, migration_status, unavailable
from soniq.backends.pg_liveness import CONNECTION_ERRORS, Liveness, pool_is_direct
from soniq.errors import DatabaseUnavailableError, SchemaMissingError
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
from soniq.settings import SoniqSettings, worker_pool_size
from soniq.sql import postgres_queries as q
from soniq.utils import describe_target

log = logging.getLogger("soniq.postgres")
# Pruning deletes at most this many rows per transaction (a backend's ``prune_batch``
# overrides it, e.g. a test's batch of 2), then pauses for PRUNE_PAUSE times as long as
# the batch took: a big prune then leaves three quarters of the server to claims and
# acks (a million rows: ~20 s on an idle 2-core box, ~80 s on a busy one). bench/RESULTS.md,
# "Flat with history", has an idle worker's latency during a prune for other values.
PRUNE_BATCH = 500
PRUNE_PAUSE = 3.0
CLOSE_TIMEOUT = 10.0
# Enqueues PostgreSQL aborted as a deadlock victim are run again this many times in all.
DEADLOCK_RETRIES = 3
# A worker's claims start after its previous claim (see JOB_CLAIM_*_AFTER) for at most
# this long before a claim from the head of the index checks for anything that sorts
# before the cursor; that is also the longest such a job can be passed over.
CLAIM_CURSOR_TTL = 1.0
# An enqueue of at least this many jobs, none with a dedup key, on an asyncpg connection
# goes in by COPY and one NOTIFY statement; smaller batches take the single INSERT
# statement, whose one round trip beats COPY's two below this size. Batches with dedup
# keys always take the INSERT (its ON CONFLICT is their rule). bench/RESULTS.md, "Bulk
# enqueue (issue 15)", has the measurements.
COPY_MIN_JOBS = 48


class PostgresBackend:
    """``StorageBackend`` on a lazily created asyncpg pool."""

    name = "postgres"
    supports_transactions = True
    claim_ahead = True
    prune_batch: int | None = None  # rows per prune transaction; None: PRUNE_BATCH

    def __init__(
        self,
        database_url: str,
        settings: SoniqSettings | None = None,
        *,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
    ) -> None:
        """``settings`` come from the ``Soniq`` that builds this backend; built by hand
        (the published ``PostgresBackend(url, pool_min_size=5, pool_max_size=20)``)
        they are read from the environment with the given pool sizes."""
        if settings is None:
            sizes = {"pool_min_size": pool_min_size, "pool_max_size": pool_max_size}
            settings = SoniqSettings(
                database_url=database_url, **{k: v for k, v in sizes.items() if v is not None}
            )
        self.database_url = database_url
        self.settings = settings
        self._pool: Any = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None
        self._liveness: Liveness | None = None  # this process's direct connections
        self._cursors: dict[tuple[str, tuple[str, ...] | None], _Cursor] = {}
        self._unanswered: set[uuid.UUID] = set()  # leases of claims that raised

    # --- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            if self._pool_loop is asyncio.get_running_loop():
                return
            # The pool belongs to an event loop that has ended (a second asyncio.run(),
            # a new test loop): its connections cannot be used from here. Start afresh.
            self._pool, self._pool_loop, self._liveness = None, None, None
        pool = await self._create_pool(statement_cache=True)
        # Behind PgBouncer in transaction mode a connection is no session of its own:
        # no named prepared statements there, and LISTEN and the workers' liveness
        # locks need a direct connection (listen_database_url) or none at all.
        direct = await pool_is_direct(self.database_url, pool)
        if not direct:
            await pool.close()
            pool = await self._create_pool(statement_cache=False)
            log.info("database_url goes through a transaction-mode pooler: no prepared statements")
        direct_url = self.settings.listen_database_url or (self.database_url if direct else None)
        async with pool.acquire() as conn:
            present = await conn.fetchval(q.SCHEMA_PRESENT)
        if not present:
            await pool.close()
            raise SchemaMissingError.for_database(self.database_url)
        self._pool, self._pool_loop = pool, asyncio.get_running_loop()
        self._liveness = Liveness(pool, direct_url, self.settings)

    async def _create_pool(self, *, statement_cache: bool) -> Any:
        try:
            return await asyncpg.create_pool(
                self.database_url,
                min_size=min(self.settings.pool_min_size, self.settings.pool_max_size),
                max_size=self.settings.pool_max_size,
                reset=_keep_session,
                **({} if statement_cache else {"statement_cache_size": 0}),
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise unavailable(self.database_url, exc) from None

    @property
    def liveness(self) -> Liveness:
        if self._liveness is None:
            raise RuntimeError(
                "The PostgreSQL pool is not open; call `await app.ensure_initialized()` first"
            )
        return self._liveness

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        liveness, self._liveness = self._liveness, None
        self._cursors.clear()
        if pool is None or self._pool_loop is not asyncio.get_running_loop():
            return  # a pool of an ended event loop cannot be awaited: dropped
        if liveness is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await asyncio.wait_for(liveness.close(), CLOSE_TIMEOUT)
        try:
            # Graceful close waits for every borrowed connection; never wait forever.
            await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT)
        except (TimeoutError, asyncio.TimeoutError):
            log.warning("Connections still in use after %ss; closing them", CLOSE_TIMEOUT)
            pool.terminate()

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError(
                "The PostgreSQL pool is not open; call `await app.ensure_initialized()` first"
            )
        return self._pool

    def reserve_capacity(self, concurrency: int) -> None:
        """Grow the pool this backend will open to fit ``concurrency`` running jobs."""
        size = worker_pool_size(self.settings, concurrency)
        if size != self.settings.pool_max_size:
            # Read when the pool opens; a pool already open keeps its size.
            log.info("Connection pool sized to %d for concurrency %d", size, concurrency)
            self.settings.pool_max_size = size

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        """Lend a pooled asyncpg connection (for transactional enqueue)."""
        await self.open()
        async with self.pool.acquire() as conn:
            try:
                yield conn
            finally:
                await _full_reset(conn)

    async def migrate(self, extra: Sequence[tuple[str, str]] = ()) -> MigrationReport:
        return await apply_migrations(self.database_url, extra)

    async def migration_status(self) -> list[MigrationInfo]:
        return await migration_status(self.database_url)

    # --- producing ---------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        if connection is not None:
            return await self._enqueue_on(connection, jobs)
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                async with self._producing() as conn:
                    return await self._enqueue_on(conn, jobs)
            except asyncpg.DeadlockDetectedError:
                # Two batches sharing dedup keys in different orders: PostgreSQL rolled
                # this one back whole, so running it again is safe (FIFO order kept).
                if attempt == DEADLOCK_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def enqueue_chunks(
        self, chunks: Iterator[Sequence[NewJob]], records: Sequence[Record] | None = None
    ) -> list[str]:
        """One COPY that the parts stream into as they are built (``_copy_jobs``); with
        ``records``, the COPY and the records in one transaction.

        A batch with dedup keys or flow control needs what the INSERT path does for
        it, so it is built whole and enqueued as usual.
        """
        first = next(chunks, None)
        if not first:
            return []
        if not _copyable(first, first[0].scheduled_at is not None) or needs_settling(first):
            jobs = [*first, *itertools.chain.from_iterable(chunks)]
            if records:
                return await self.enqueue_observed(jobs, records)
            return await self.enqueue(jobs)
        ids: list[str] = []
        async with self._producing(transaction=records is not None) as conn:
            await _copy_jobs(conn, itertools.chain([first], chunks), ids)
            if records:  # every row was inserted: a COPY has no conflicts to skip
                await _write_records(conn, *split_records(records, inserted=set(ids)))
        return ids

    @asynccontextmanager
    async def _producing(self, *, transaction: bool = False) -> AsyncIterator[Any]:
        """A pooled connection for an enqueue; losing the database is a clear, retryable
        ``DatabaseUnavailableError`` that says whether anything may have been written."""
        try:
            holder = self.pool.acquire()
            conn = await holder.__aenter__()
        except CONNECTION_ERRORS as exc:
            raise _outage(self.database_url, exc, sent=False) from exc
        try:
            if transaction:
                async with conn.transaction():
                    yield conn
            else:
                yield conn
        except CONNECTION_ERRORS as exc:
            if not _lost(conn, exc):
                raise
            raise _outage(self.database_url, exc, sent=True) from exc
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await holder.__aexit__(None, None, None)

    async def _enqueue_on(
        self, conn: Any, jobs: Sequence[NewJob], *, settle: bool = True
    ) -> list[str]:
        if settle and needs_settling(jobs):  # depends_on / concurrency_key: flow control
            async with _transaction(conn):
                ids = await self._enqueue_on(conn, jobs, settle=False)
                await _settle_flow(conn, jobs, ids)
            return ids
        if len(jobs) >= COPY_MIN_JOBS and _copies(conn, jobs):
            copied: list[str] = []
            await _copy_jobs(conn, iter([jobs]), copied)
            return copied
        dedup = any(j.dedup_key is not None for j in jobs)
        if len(jobs) == 1:
            sql = q.JOB_INSERT if dedup else q.JOB_INSERT_PLAIN
            inserted = await conn.fetchval(sql, *_row(jobs[0]))
            new_ids = {jobs[0].id} if inserted is not None else set()
        else:
            sql = q.JOB_INSERT_MANY if dedup else q.JOB_INSERT_MANY_PLAIN
            rows = await conn.fetch(sql, *_columns(jobs))
            new_ids = {str(r["id"]) for r in rows}
        return [j.id if j.id in new_ids else await self._existing_id(conn, j) for j in jobs]

    async def _existing_id(self, conn: Any, job: NewJob) -> str:
        """The live job a duplicate enqueue collided with (re-inserting if it just finished)."""
        for _ in range(5):
            found = await conn.fetchval(q.JOB_FIND_LIVE_BY_DEDUP, job.dedup_key)
            if found is not None:
                return str(found)
            if await conn.fetchval(q.JOB_INSERT, *_row(job)) is not None:
                return job.id
        raise RuntimeError(f"could not settle dedup_key {job.dedup_key!r}")  # pragma: no cover

    # --- working -----------------------------------------------------------
    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        if self._unanswered:
            await self._requeue_unanswered()
        lease = uuid.uuid4()
        key = (worker_id, tuple(queues) if queues else None)
        cursor, now = self._cursors.get(key), time.monotonic()
        rows: list[Any] = []
        try:
            if cursor is not None and now - cursor.full_at < CLAIM_CURSOR_TTL:
                rows = await self.pool.fetch(*_claim_after(queues, worker_id, limit, lease, cursor))
            short = len(rows) < limit
            if short:  # from the head of the index: exact order, whatever the cursor skipped
                rows += await self.pool.fetch(
                    *_claim_head(queues, worker_id, limit - len(rows), lease)
                )
        except BaseException:
            # The claim may have committed with its answer lost on the way (the connection
            # died): those rows would stay 'processing' under a live worker that never runs
            # them. The next claim gives them back, attempt unspent.
            self._unanswered.add(lease)
            raise
        rows.sort(key=_claim_order)  # RETURNING keeps no order
        if len(rows) < limit:
            # The queue is (nearly) empty: the next claim starts at the head, in one
            # round trip. A cursor pays only with a backlog; without one the claim after
            # it comes back short and the head claim follows anyway (one job per NOTIFY
            # at idle took two round trips).
            self._cursors.pop(key, None)
        elif cursor is not None and not short:  # the claim after the cursor filled it
            self._cursors[key] = _Cursor(
                max(_claim_order(rows[-1]), cursor.position), cursor.full_at
            )
        else:  # a claim from the head ran
            self._cursors[key] = _Cursor(_claim_order(rows[-1]), now)
        return await self._decoded(rows, str(lease))

    async def _requeue_unanswered(self) -> None:
        leases = list(self._unanswered)
        found = await self.pool.fetchval(q.JOB_REQUEUE_UNANSWERED, leases)
        self._unanswered.difference_update(leases)
        if found:
            log.warning("Requeued %d jobs of claims whose answer was lost", found)

    async def _decoded(self, rows: list[Any], lease: str) -> list[ClaimedJob]:
        """The claimed rows as jobs; a row whose arguments cannot be decoded into keyword
        arguments (written by hand, or by another producer) is dead-lettered with the
        reason instead of failing the whole claim."""
        jobs: list[ClaimedJob] = []
        bad: list[Ack] = []
        for r in rows:
            args, error = decode_args(r[2])
            job = ClaimedJob(
                id=str(r[0]), job_name=r[1], args=args, queue=r[3], attempt=r[4],
                max_attempts=r[5], lease=lease, scheduled_at=r[6], created_at=r[7],
                priority=r[8],
            )  # fmt: skip
            if error is None:
                jobs.append(job)
            else:
                bad.append(Ack(job, Fail(error, None)))
        if bad:
            log.error("Dead-lettered %d jobs whose arguments cannot be decoded", len(bad))
            async with self.pool.acquire() as conn:
                await self._ack_other(conn, bad)
        return jobs

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        done = [a for a in acks if isinstance(a.outcome, Done)]
        other = [a for a in acks if not isinstance(a.outcome, Done)]
        async with self.pool.acquire() as conn:
            if done:
                await self._ack_done(conn, done, result_ttl)
            if other:
                await self._ack_other(conn, other)

    async def _ack_done(self, conn: Any, acks: Sequence[Ack], result_ttl: float) -> None:
        ids = [a.job.id for a in acks]
        leases = [a.job.lease for a in acks]
        if result_ttl <= 0:
            await conn.execute(q.JOB_ACK_DONE_DELETE, ids, leases)
            return
        results = [a.outcome.result_json if isinstance(a.outcome, Done) else None for a in acks]
        await conn.execute(q.JOB_ACK_DONE, ids, leases, results, float(result_ttl))

    async def _ack_other(self, conn: Any, acks: Sequence[Ack]) -> None:
        retries = [(a.job.id, a.job.lease, o.run_at, o.error) for a in acks
                   if isinstance(o := a.outcome, Retry)]  # fmt: skip
        fails = [(a.job.id, a.job.lease, o.error, o.traceback) for a in acks
                 if isinstance(o := a.outcome, Fail)]  # fmt: skip
        requeues = [(a.job.id, a.job.lease, o.run_at) for a in acks
                    if isinstance(o := a.outcome, Requeue)]  # fmt: skip
        snoozes = [(a.job.id, a.job.lease, o.run_at) for a in acks
                   if isinstance(o := a.outcome, Snoozed)]  # fmt: skip
        cancels = [(a.job.id, a.job.lease, o.error) for a in acks
                   if isinstance(o := a.outcome, Cancelled)]  # fmt: skip
        for sql, rows in ((q.JOB_ACK_RETRY, retries), (q.JOB_ACK_FAIL, fails),
                          (q.JOB_ACK_REQUEUE, requeues), (q.JOB_ACK_SNOOZE, snoozes),
                          (q.JOB_ACK_CANCELLED, cancels)):  # fmt: skip
            if rows:
                await conn.execute(sql, *(list(col) for col in zip(*rows, strict=True)))

    async def register_worker(self, info: WorkerInfo) -> None:
        """Register, holding the worker's liveness lock on a connection of its own first
        (soniq/backends/pg_liveness.py): its death frees the lock, and a sweep requeues
        its jobs seconds later."""
        key = await self.liveness.hold(info.id)
        await self.pool.execute(
            q.WORKER_REGISTER_LOCKED, info.id, info.hostname, info.pid, info.queues,
            info.concurrency, key,
        )  # fmt: skip

    async def heartbeat(self, worker_id: str) -> bool:
        status = await self.pool.execute(q.WORKER_HEARTBEAT, worker_id)
        return bool(status != "UPDATE 0")

    async def deregister_worker(self, worker_id: str) -> None:
        for key in [k for k in self._cursors if k[0] == worker_id]:
            del self._cursors[key]
        if self._unanswered:
            await self._requeue_unanswered()
        await self.pool.execute(q.WORKER_DEREGISTER, worker_id)
        await self.liveness.release(worker_id)  # after the row: no window where it looks lost

    async def recover_stale(self, heartbeat_timeout: float) -> int:
        async with self.pool.acquire() as conn:
            await conn.execute(q.WORKER_DELETE_STALE, float(heartbeat_timeout))
            row = await conn.fetchrow(q.JOB_RECOVER_ORPHANS, LOST_WORKER_ERROR)
        return int(row[0])

    async def prune(self) -> int:
        """Expired done rows, then rollup rows past 8 days: batches, one transaction each.

        Between batches the connection goes back to the pool and the task sleeps
        (PRUNE_PAUSE): no transaction spans batches, and claims and acks interleave.
        """
        batch = self._prune_size
        since = datetime.min.replace(tzinfo=timezone.utc)

        async def expired() -> tuple[int, bool]:  # keyset: after the last batch's expiry
            nonlocal since
            row = await self.pool.fetchrow(q.JOB_PRUNE, batch, since)
            removed, since = int(row[0]), row[1]
            return removed, removed >= batch

        total = await paced_batches(expired, PRUNE_PAUSE)
        await self._prune_batches(q.THROUGHPUT_PRUNE)
        return total

    @property
    def _prune_size(self) -> int:
        return self.prune_batch or PRUNE_BATCH

    async def _prune_batches(self, sql: str) -> int:
        """Run a ``DELETE ... LIMIT $1`` until it deletes less than a batch; the total."""
        batch = self._prune_size

        async def step() -> tuple[int, bool]:
            removed = int((await self.pool.execute(sql, batch)).split()[-1])
            return removed, removed >= batch

        return await paced_batches(step, PRUNE_PAUSE)

    async def try_lead(self, role: str, owner: str, ttl: float) -> bool:
        return await self.pool.fetchval(q.LEASE_TAKE, role, owner, float(ttl)) is not None

    async def release_lead(self, role: str, owner: str) -> None:
        await self.pool.execute(q.LEASE_RELEASE, role, owner)

    async def listen(self, on_new_job: Callable[[str], None]) -> Listener | None:
        """LISTEN on a direct connection (a registered worker's liveness connection when
        there is one), checked for health; None (poll) when there is none:
        ``database_url`` is a transaction-mode pooler and no ``listen_database_url`` is
        set, or the server cannot be reached."""
        try:
            listener: Listener | None = await self.liveness.listen(
                on_new_job, self.settings.heartbeat_interval
            )
        except CONNECTION_ERRORS as exc:
            log.warning("LISTEN %s unavailable (%s); polling instead", q.CHANNEL, exc)
            return None
        return listener

    # --- reads and management ---------------------------------------------
    async def get_job(self, job_id: str) -> Job | None:
        row = await self.pool.fetchrow(q.JOB_GET, job_id)
        return _job(row) if row is not None else None

    async def list_jobs(
        self, *, queue: str | None, status: str | None, limit: int, offset: int
    ) -> list[Job]:
        if status is not None and status not in _LISTED:
            return []  # no job has that status
        rows = await self.pool.fetch(q.job_list_sql(status), queue, status, limit, offset)
        return [_job(r) for r in rows]

    async def queue_stats(self) -> list[QueueStats]:
        rows = await self.pool.fetch(q.QUEUE_STATS)
        return build_queue_stats((r[0], r[1], r[2]) for r in rows)

    async def cancel_job(self, job_id: str) -> bool:
        if await self.pool.execute(q.JOB_CANCEL, job_id) == "UPDATE 1":
            return True
        asked = await self.pool.fetchval(q.JOB_CANCEL_RUNNING, job_id, CANCEL_NOTICE)
        return asked is not None

    async def delete_job(self, job_id: str) -> bool:
        return bool(await self.pool.execute(q.JOB_DELETE, job_id) == "DELETE 1")

    async def reset(self) -> None:
        await self.pool.execute(q.RESET_RUNTIME_STATE)

    async def list_workers(self) -> list[WorkerInfo]:
        rows = await self.pool.fetch(q.WORKER_LIST)
        return [
            WorkerInfo(
                id=str(r[0]), hostname=r[1], pid=r[2], queues=list(r[3]) if r[3] else None,
                concurrency=r[4], started_at=r[5], last_heartbeat=r[6],
            )
            for r in rows
        ]  # fmt: skip

    # --- dead letters ------------------------------------------------------
    async def dead_letter_list(
        self, *, queue: str | None, task: str | None, limit: int, offset: int
    ) -> list[DeadLetterJob]:
        rows = await self.pool.fetch(q.DLQ_LIST, queue, task, limit, offset)
        return [_dead(r) for r in rows]

    async def dead_letter_get(self, job_id: str) -> DeadLetterJob | None:
        row = await self.pool.fetchrow(q.DLQ_GET, job_id)
        return _dead(row) if row is not None else None

    async def dead_letter_count(self, *, queue: str | None, task: str | None) -> int:
        return int(await self.pool.fetchval(q.DLQ_COUNT, queue, task))

    async def dead_letter_replay(self, job_ids: Sequence[str]) -> dict[str, str]:
        dead = list(job_ids)
        new = [uuid.uuid4() for _ in dead]
        rows = await self.pool.fetch(q.DLQ_REPLAY, dead, new)
        return {str(r[0]): str(r[1]) for r in rows}

    async def dead_letter_purge(
        self, *, job_ids: Sequence[str] | None, queue: str | None, task: str | None
    ) -> int:
        if job_ids is not None:
            status = await self.pool.execute(q.DLQ_PURGE_IDS, list(job_ids))
        else:
            status = await self.pool.execute(q.DLQ_PURGE_FILTER, queue, task)
        return int(status.split()[-1])

    async def dead_letter_replay_as(
        self, job_id: str, *, queue: str | None, priority: int | None,
        max_attempts: int | None, keep_attempts: bool,
    ) -> str | None:  # fmt: skip
        row = await self.pool.fetchrow(
            q.DLQ_REPLAY_AS, job_id, uuid.uuid4(), queue, priority, max_attempts, keep_attempts
        )
        return None if row is None else str(row[0])

    # --- schedules ---------------------------------------------------------
    async def schedule_upsert(self, schedule: Schedule) -> Schedule:
        s = schedule
        row = await self.pool.fetchrow(
            q.SCHEDULE_UPSERT, s.name, s.job_name, json.dumps(s.args), s.queue, s.priority,
            s.cron, s.every_seconds, s.timezone, s.status, s.next_run_at,
        )  # fmt: skip
        return _schedule(row)

    async def schedule_get(self, name: str) -> Schedule | None:
        row = await self.pool.fetchrow(q.SCHEDULE_GET, name)
        return _schedule(row) if row is not None else None

    async def schedule_list(self, status: str | None = None) -> list[Schedule]:
        return [_schedule(r) for r in await self.pool.fetch(q.SCHEDULE_LIST, status)]

    async def schedule_set_status(
        self, name: str, status: str, next_run_at: datetime | None = None
    ) -> bool:
        result = await self.pool.execute(q.SCHEDULE_SET_STATUS, name, status, next_run_at)
        return bool(result == "UPDATE 1")

    async def schedule_delete(self, name: str) -> bool:
        return bool(await self.pool.execute(q.SCHEDULE_DELETE, name) == "DELETE 1")

    async def schedule_fire(
        self, name: str, due: datetime, next_run_at: datetime | None, job: NewJob
    ) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            advanced = await conn.execute(q.SCHEDULE_ADVANCE, name, due, next_run_at)
            if advanced != "UPDATE 1":
                return False
            await self._enqueue_on(conn, [job])
        return True

    # --- dashboard reads (soniq.dashboard) ----------------------------------
    async def job_page(self, query: JobQuery) -> list[Job]:
        sql, args = _job_page_statement(query)
        if sql is None:
            return []  # a search for an id that cannot exist
        return [_job(r) for r in await self.pool.fetch(sql, *args)]

    async def job_task_names(self) -> list[str]:
        return [r[0] for r in await self.pool.fetch(q.JOB_TASK_NAMES)]

    async def job_throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        rows = await self.pool.fetch(q.JOB_THROUGHPUT_ROLLUP, since, float(bucket_seconds))
        return [bucket(r[0], bucket_seconds, r[1], r[2]) for r in rows]

    async def throughput_add(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """One upsert, rows in key order so concurrent workers lock them in one order."""
        rows = sorted(counts.items())
        if rows:
            await self.pool.execute(
                q.THROUGHPUT_ADD, [k[0] for k, _ in rows], [k[1] for k, _ in rows],
                [n for _, n in rows],
            )  # fmt: skip

    async def queue_counts(self, *, exact_below: int) -> QueueCounts:
        rows = await self.pool.fetchval(q.JOB_ROWS_ESTIMATE)
        if rows is None or rows < exact_below:
            return QueueCounts(stats=await self.queue_stats(), estimated=False)
        live = [(r[0], r[1], int(r[2])) for r in await self.pool.fetch(q.QUEUE_STATS_LIVE)]
        percent = min(100.0, 100.0 * SAMPLE_ROWS / rows)
        sample = {r[0]: int(r[1]) for r in await self.pool.fetch(q.QUEUE_DONE_SAMPLE, percent)}
        not_done = sum(n for _, status, n in live if status != "dead_letter")
        done = estimate_done(sample, max(0, rows - not_done))
        stats = build_queue_stats([*live, *((k, "done", n) for k, n in done.items())])
        return QueueCounts(stats=stats, estimated=True)

    # === observability (soniq/events.py): webhooks outbox, job logs, gauges ==========
    async def enqueue_observed(
        self, jobs: Sequence[NewJob], records: Sequence[Record], *, connection: Any = None
    ) -> list[str]:
        if connection is not None:  # the caller's transaction, if they opened one
            return await self._enqueue_recorded(connection, jobs, records)
        for attempt in range(1, DEADLOCK_RETRIES + 1):
            try:
                async with self._producing(transaction=True) as conn:
                    return await self._enqueue_recorded(conn, jobs, records)
            except asyncpg.DeadlockDetectedError:  # rolled back whole: safe to run again
                if attempt == DEADLOCK_RETRIES:
                    raise
        raise AssertionError("unreachable")

    async def _enqueue_recorded(
        self, conn: Any, jobs: Sequence[NewJob], records: Sequence[Record]
    ) -> list[str]:
        ids = await self._enqueue_on(conn, jobs)
        inserted = {j.id for j, i in zip(jobs, ids, strict=True) if i == j.id}
        await _write_records(conn, *split_records(records, inserted=inserted))
        return ids

    async def ack_observed(
        self, acks: Sequence[Ack], records: Sequence[Record], *, result_ttl: float
    ) -> None:
        done = [a for a in acks if isinstance(a.outcome, Done)]
        other = [a for a in acks if not isinstance(a.outcome, Done)]
        async with self.pool.acquire() as conn, conn.transaction():
            held: set[str] | None = None
            if acks and needs_lease_check(records):
                rows = await conn.fetch(
                    q.ACK_HELD, [a.job.id for a in acks], [a.job.lease for a in acks]
                )
                held = {str(r[0]) for r in rows}
            if done:
                await self._ack_done(conn, done, result_ttl)
            if other:
                await self._ack_other(conn, other)
            await _write_records(conn, *split_records(records, held=held))

    async def observe_write(self, records: Sequence[Record]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await _write_records(conn, *split_records(records))

    async def webhook_add(self, hook: Webhook) -> Webhook:
        row = await self.pool.fetchrow(
            q.WEBHOOK_INSERT, hook.id, hook.url, hook.events, hook.secret, hook.allow_private
        )
        return _webhook(row)

    async def webhook_list(self) -> list[Webhook]:
        return [_webhook(r) for r in await self.pool.fetch(q.WEBHOOK_LIST)]

    async def webhook_remove(self, webhook_id: str) -> bool:
        return bool(await self.pool.execute(q.WEBHOOK_DELETE, webhook_id) == "DELETE 1")

    async def webhook_deliveries(self, webhook_id: str | None, limit: int) -> list[WebhookDelivery]:
        rows = await self.pool.fetch(q.WEBHOOK_DELIVERIES, webhook_id, limit)
        return [_delivery(r) for r in rows]

    async def webhook_claim(self, limit: int, lock_seconds: float) -> list[PendingDelivery]:
        rows = await self.pool.fetch(q.WEBHOOK_CLAIM, limit, float(lock_seconds))
        return [_pending(r) for r in rows]

    async def webhook_settle(self, results: Sequence[DeliveryResult]) -> None:
        if results:
            cols = [[getattr(r, f) for r in results]
                    for f in ("id", "status", "response_code", "error", "retry_at")]  # fmt: skip
            await self.pool.execute(q.WEBHOOK_SETTLE, *cols)

    async def webhook_delivery_counts(self, since: datetime) -> dict[str, int]:
        rows = await self.pool.fetch(q.WEBHOOK_DELIVERY_COUNTS, since)
        return {r[0]: int(r[1]) for r in rows}

    async def job_logs(self, job_id: str) -> list[JobLogEntry]:
        return [_log_entry(r) for r in await self.pool.fetch(q.JOB_LOGS_FOR_JOB, job_id)]

    async def search_logs(
        self, text: str, *, job_id: str | None, min_level: int, since: datetime, limit: int
    ) -> list[JobLogEntry]:
        rows = await self.pool.fetch(
            q.JOB_LOGS_SEARCH, since, job_id, min_level, like_contains(text), limit
        )
        return [_log_entry(r) for r in rows]

    async def observability_prune(self) -> int:
        batch = self._prune_size
        after = 0

        async def window() -> tuple[int, bool]:  # orphaned logs: the table by id windows
            nonlocal after
            row = await self.pool.fetchrow(q.JOB_LOGS_PRUNE, batch, after)
            if row[1] is not None:
                after = int(row[1])
            return int(row[0]), row[1] is not None

        removed = await paced_batches(window, PRUNE_PAUSE)
        return removed + await self._prune_batches(q.WEBHOOK_DELIVERIES_PRUNE)

    async def queue_oldest(self) -> dict[str, float]:
        return {r[0]: float(r[1]) for r in await self.pool.fetch(q.QUEUE_OLDEST)}

    # === flow control (soniq/flow.py): limits, cancel running jobs, progress =========
    async def claim_limited(
        self, queues: Sequence[str] | None, worker_id: str, limit: int,
        tasks: Sequence[TaskLimit],
    ) -> LimitedClaim:  # fmt: skip
        lease = uuid.uuid4()
        names = list(queues) if queues else None
        scopes, counts, windows, keyed = task_params(tasks)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q.FLOW_LOCK)
            rows = await conn.fetch(q.FLOW_BUDGETS, names, scopes, counts, windows, keyed)
            now = rows[-1]["now"]
            budgets = Budgets.build(now, (_budget(r) for r in rows), tasks)

            async def fetch(*blocked: Any) -> list[Candidate]:
                rows = await conn.fetch(q.FLOW_CANDIDATES, now, names, *blocked)
                return [Candidate(str(c[0]), c[1], c[2], c[3]) for c in rows]

            ids, starts = await admit_rounds(fetch, limit, budgets)
            claimed: list[Any] = []
            if ids:
                prune, prune_windows = rate_windows(budgets)
                claimed = await conn.fetch(
                    q.FLOW_CLAIM, worker_id, lease, now, ids, starts, prune, prune_windows
                )
        claimed.sort(key=_claim_order)
        return LimitedClaim(await self._decoded(claimed, str(lease)), budgets.retry_in())

    async def queue_limit_set(self, limit: QueueLimit) -> QueueLimit | None:
        if limit.max_concurrency is None and limit.rate_count is None:
            await self.pool.execute(q.QUEUE_LIMIT_DELETE, limit.queue)
            return None
        row = await self.pool.fetchrow(
            q.QUEUE_LIMIT_UPSERT, limit.queue, limit.max_concurrency, limit.rate_count,
            limit.rate_seconds,
        )  # fmt: skip
        return QueueLimit(*row)

    async def queue_limits(self) -> list[QueueLimit]:
        return [QueueLimit(*r) for r in await self.pool.fetch(q.QUEUE_LIMITS)]

    async def cancel_requests(self, worker_id: str) -> list[str]:
        return [str(r[0]) for r in await self.pool.fetch(q.JOB_CANCEL_REQUESTS, worker_id)]

    async def job_progress(
        self, job_id: str, lease: str, fraction: float, message: str | None
    ) -> bool:
        status = await self.pool.execute(q.JOB_PROGRESS, job_id, lease, fraction, message)
        return bool(status == "UPDATE 1")

    async def job_checkpoint(self, job_id: str, lease: str, data_json: str) -> bool:
        status = await self.pool.execute(q.JOB_CHECKPOINT, job_id, lease, data_json)
        return bool(status == "UPDATE 1")


async def _keep_session(conn: Any) -> None:
    """Pool reset hook: Soniq's own statements leave no session state behind.

    asyncpg's default reset costs one extra round trip on every release (about
    a fifth of an enqueue); the pool still rolls back an open transaction first.
    Connections lent to user code through ``acquire()`` get the full reset.
    """


async def _full_reset(conn: Any) -> None:
    try:
        await conn.reset()
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        conn.terminate()  # unusable: the pool replaces it


def _claim_order(r: Any) -> tuple[int, datetime, int]:
    return r[8], r[6], r[9]


class _Cursor:
    """Where a worker's last claim ended (priority, scheduled_at, seq), and when it last
    claimed from the head of the index."""

    __slots__ = ("full_at", "position")

    def __init__(self, position: tuple[int, datetime, int], full_at: float) -> None:
        self.position, self.full_at = position, full_at


def _claim_head(
    queues: Sequence[str] | None, worker_id: str, limit: int, lease: uuid.UUID
) -> tuple[Any, ...]:
    if not queues:
        return q.JOB_CLAIM_ALL, worker_id, limit, lease
    if len(queues) == 1:
        return q.JOB_CLAIM_ONE_QUEUE, worker_id, limit, lease, queues[0]
    return q.JOB_CLAIM_QUEUES, worker_id, limit, lease, list(queues)


def _claim_after(
    queues: Sequence[str] | None, worker_id: str, limit: int, lease: uuid.UUID, cursor: _Cursor
) -> tuple[Any, ...]:
    if not queues:
        return q.JOB_CLAIM_ALL_AFTER, worker_id, limit, lease, *cursor.position
    if len(queues) == 1:
        return q.JOB_CLAIM_ONE_QUEUE_AFTER, worker_id, limit, lease, queues[0], *cursor.position
    return q.JOB_CLAIM_QUEUES_AFTER, worker_id, limit, lease, list(queues), *cursor.position


def _lost(conn: Any, exc: BaseException) -> bool:
    """Did ``exc`` come from losing the connection (rather than from the statement)?"""
    if isinstance(exc, asyncpg.PostgresError):
        return isinstance(
            exc, (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError)
        ) and not isinstance(exc, asyncpg.QueryCanceledError)
    return isinstance(exc, (OSError, asyncio.TimeoutError)) or bool(conn.is_closed())


def _outage(url: str, exc: BaseException, *, sent: bool) -> DatabaseUnavailableError:
    where = describe_target(url)
    if not sent:
        return DatabaseUnavailableError(
            f"PostgreSQL ({where}) cannot be reached ({type(exc).__name__}: {exc}); nothing "
            "was enqueued. This is retryable: enqueue again once the database is back."
        )
    return DatabaseUnavailableError(
        f"The connection to PostgreSQL ({where}) was lost during the enqueue "
        f"({type(exc).__name__}: {exc}), so the job may or may not have been written. This "
        "is retryable: enqueue again with a dedup_key (or unique=True) so that the retry "
        "cannot add a second copy."
    )


def _row(j: NewJob) -> tuple[Any, ...]:
    return (j.id, j.job_name, j.args_json, j.queue, j.priority, j.max_attempts,
            j.scheduled_at, j.dedup_key)  # fmt: skip


def _columns(jobs: Sequence[NewJob]) -> list[list[Any]]:
    return [list(col) for col in zip(*(_row(j) for j in jobs), strict=True)]


def _copies(conn: Any, jobs: Sequence[NewJob]) -> bool:
    """COPY is asyncpg's (a psycopg executor takes the INSERT), and it needs one column
    list (``_copyable``)."""
    if not isinstance(conn, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy)):
        return False
    return _copyable(jobs, jobs[0].scheduled_at is not None)


def _copyable(jobs: Sequence[NewJob], scheduled: bool) -> bool:
    """Rows one COPY takes: no dedup key (a COPY has no conflict rule), and one column
    list: every row's run time given (``scheduled``) or every row's left to the database."""
    return all(j.dedup_key is None and (j.scheduled_at is not None) is scheduled for j in jobs)


async def _copy_jobs(conn: Any, parts: Iterator[Sequence[NewJob]], ids: list[str]) -> None:
    """COPY the parts in text format, each as soon as it is built, then notify each
    queue once; their ids join ``ids``. The caller has checked the first part with
    ``_copyable``; a later part that fails it aborts the COPY.

    asyncpg sends each part as soon as it is yielded, and the next one is built while
    PostgreSQL inserts it (binary ``copy_records_to_table`` sends only at 512 KiB).
    COPY is one statement: a part that fails to build aborts it (asyncpg sends
    CopyFail), and a row the database refuses fails the whole batch, as the INSERT
    does. Outside a transaction it commits before the NOTIFY is sent, so a woken worker
    finds the jobs; inside one (``connection=``, flow control, records) both wait for it.
    """
    first = next(parts)
    scheduled = first[0].scheduled_at is not None
    columns = (*q.JOB_COPY_COLUMNS, "scheduled_at") if scheduled else q.JOB_COPY_COLUMNS
    queues: dict[str, None] = {}

    async def lines() -> AsyncIterator[bytes]:
        part: Sequence[NewJob] | None = first  # _copyable: the caller chose COPY by it
        while part:
            ids.extend(j.id for j in part)
            queues.update(dict.fromkeys(j.queue for j in part))
            yield _copy_text(part, scheduled)
            part = next(parts, None)
            if part and not _copyable(part, scheduled):
                raise ValueError(
                    "enqueue_chunks() takes the parts of one batch, which share their "
                    "options; enqueue jobs with other options in a batch of their own"
                )

    await conn.copy_to_table(q.JOB_COPY_TABLE, source=lines(), columns=columns)
    await conn.fetchval(q.JOB_NOTIFY_QUEUES, list(queues))


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})
_needs_escape = re.compile(r"[\\\t\n\r]").search


def _copy_field(value: str) -> str:
    """A text value in COPY's text format, where backslash, tab and newline are syntax."""
    return value.translate(_COPY_ESCAPES) if _needs_escape(value) else value


def _copy_text(jobs: Sequence[NewJob], scheduled: bool) -> bytes:
    """Rows of ``JOB_COPY_COLUMNS`` (+ ``scheduled_at``) as COPY text lines."""
    field = _copy_field
    if scheduled:
        return "".join([
            f"{j.id}\t{field(j.job_name)}\t{field(j.args_json)}\t{field(j.queue)}\t"
            f"{j.priority}\t{j.max_attempts}\t{cast(datetime, j.scheduled_at).isoformat()}\n"
            for j in jobs
        ]).encode()  # fmt: skip
    return "".join([
        f"{j.id}\t{field(j.job_name)}\t{field(j.args_json)}\t{field(j.queue)}\t"
        f"{j.priority}\t{j.max_attempts}\n"
        for j in jobs
    ]).encode()  # fmt: skip


def _uuid(value: str) -> uuid.UUID | None:
    """Ids come from users and URLs: a malformed one simply matches nothing."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _loads(value: str | None) -> Any:
    return json.loads(value) if value is not None else None


def _job(r: Any) -> Job:
    return Job(
        id=str(r["id"]), job_name=r["job_name"], args=read_args(r["args"]), queue=r["queue"],
        priority=r["priority"], status=r["status"], attempts=r["attempts"],
        max_attempts=r["max_attempts"], scheduled_at=r["scheduled_at"],
        created_at=r["created_at"], updated_at=r["updated_at"], started_at=r["started_at"],
        completed_at=r["completed_at"], result=_loads(r["result"]), last_error=r["last_error"],
        worker_id=str(r["worker_id"]) if r["worker_id"] else None, dedup_key=r["dedup_key"],
        **flow_fields(r, list(r["waiting_for"] or ())),
    )  # fmt: skip


def _dead(r: Any) -> DeadLetterJob:
    return DeadLetterJob(
        id=str(r["id"]), job_name=r["job_name"], args=read_args(r["args"]), queue=r["queue"],
        priority=r["priority"], attempts=r["attempts"], max_attempts=r["max_attempts"],
        last_error=r["last_error"], traceback=r["traceback"], created_at=r["created_at"],
        dead_lettered_at=r["dead_lettered_at"], resurrection_count=r["resurrection_count"],
        last_replayed_at=r["last_replayed_at"],
    )  # fmt: skip


def _schedule(r: Any) -> Schedule:
    return Schedule(
        name=r["name"], job_name=r["job_name"], args=json.loads(r["args"]), queue=r["queue"],
        priority=r["priority"], cron=r["cron"], every_seconds=r["every_seconds"],
        timezone=r["timezone"], status=r["status"], next_run_at=r["next_run_at"],
        last_run_at=r["last_run_at"], created_at=r["created_at"], updated_at=r["updated_at"],
    )  # fmt: skip


# --- dashboard reads ------------------------------------------------------------


_LISTED = ("done", *q.LIVE_STATUSES)


def _job_page_statement(query: JobQuery) -> tuple[str | None, list[Any]]:
    """(statement, parameters) for one page; ``None`` when no row can match (a cursor id
    that is not a UUID, a status no job has)."""
    by_id, text = search_terms(query.search)
    after = query.after
    after_id = _uuid(after.id) if after is not None else None
    if (after is not None and after_id is None) or query.status not in (None, *_LISTED):
        return None, []
    sql = q.job_page_sql(
        queue=query.queue is not None, status=query.status, task=query.task is not None,
        by_id=by_id is not None, text=text is not None, after=after is not None,
    )  # fmt: skip
    present = (query.queue, query.status, query.task, by_id, like_pattern(text, ascii_json=False))
    args: list[Any] = [query.limit, *(v for v in present if v is not None)]
    if after is not None:
        args += [after.created_at, after_id]
    return sql, args


# === observability rows ---------------------------------------------------------------


async def _write_records(conn: Any, logs: list[JobLogEntry], outbox: list[OutboxEvent]) -> None:
    """One statement per kind: the logs, then the outbox fan-out to matching webhooks."""
    if logs:
        await conn.execute(
            q.JOB_LOGS_INSERT, [r.job_id for r in logs], [r.logged_at for r in logs],
            [r.level for r in logs], [r.logger for r in logs], [r.message for r in logs],
        )  # fmt: skip
    if outbox:
        await conn.execute(
            q.OUTBOX_FANOUT, [e.event for e in outbox], [e.job_id for e in outbox],
            [e.payload_json for e in outbox],
        )  # fmt: skip


def _webhook(r: Any) -> Webhook:
    return Webhook(
        id=str(r["id"]), url=r["url"], events=list(r["events"]) if r["events"] else None,
        secret=r["secret"], allow_private=r["allow_private"], created_at=r["created_at"],
    )  # fmt: skip


def _delivery(r: Any) -> WebhookDelivery:
    return WebhookDelivery(
        id=str(r["id"]), webhook_id=str(r["webhook_id"]), event=r["event"],
        job_id=str(r["job_id"]) if r["job_id"] else None, status=r["status"],
        attempts=r["attempts"], response_code=r["response_code"], error=r["error"],
        created_at=r["created_at"], delivered_at=r["delivered_at"],
    )  # fmt: skip


def _pending(r: Any) -> PendingDelivery:
    return PendingDelivery(
        id=str(r["id"]), webhook_id=str(r["webhook_id"]), event=r["event"],
        payload_json=r["payload"], created_at=r["created_at"], attempts=r["attempts"],
        url=r["url"], secret=r["secret"], allow_private=r["allow_private"],
    )  # fmt: skip


def _log_entry(r: Any) -> JobLogEntry:
    return JobLogEntry(
        job_id=str(r["job_id"]), logged_at=r["logged_at"], level=r["level"], logger=r["logger"],
        message=r["message"],
    )  # fmt: skip


# --- flow control -------------------------------------------------------------------


def _budget(r: Any) -> BudgetRow:
    return BudgetRow(r[0], r[1], r[2], r[3], r[4], r[5], r[6])


def _transaction(conn: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    """A transaction (a savepoint inside the caller's) where the connection offers one; a
    psycopg executor runs inside the caller's own transaction already."""
    begin = getattr(conn, "transaction", None)
    return begin() if callable(begin) else contextlib.nullcontext()


async def _settle_flow(conn: Any, jobs: Sequence[NewJob], ids: Sequence[str]) -> None:
    """After the insert, in its transaction: concurrency keys, then each new job's
    dependencies (flag the live ones, then wait on them or inherit a failure)."""
    fresh = [j for j, i in zip(jobs, ids, strict=True) if i == j.id]  # not a duplicate's
    keyed = [j for j in fresh if j.concurrency_key is not None]
    if keyed:
        keys = [j.concurrency_key for j in keyed]
        await conn.execute(q.FLOW_SET_KEYS, [j.id for j in keyed], keys)
    for job in fresh:
        if job.depends_on:
            live = [str(r[0]) for r in await conn.fetch(q.FLOW_DEPS_MARK, list(job.depends_on))]
            await conn.fetchval(
                q.FLOW_DEPS_SETTLE, job.id, list(job.depends_on), live, job.scheduled_at
            )
