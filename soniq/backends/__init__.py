"""The storage protocol every feature talks to, and backend selection.

Backends speak lifecycle verbs over the frozen rows of :mod:`soniq.job`; the
app, the worker, the CLI, the scheduler and the dead-letter service use only
these verbs, so each of them works on PostgreSQL, SQLite and memory alike.
Capability flags say what a backend cannot do (transactional enqueue, push
notifications) instead of callers testing for a class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from soniq.job import (
    Ack,
    ClaimedJob,
    DeadLetterJob,
    Job,
    NewJob,
    QueueStats,
    Schedule,
    WorkerInfo,
)

if TYPE_CHECKING:
    from soniq.events import (
        DeliveryResult,
        JobLogEntry,
        PendingDelivery,
        Record,
        Webhook,
        WebhookDelivery,
    )
    from soniq.flow import LimitedClaim, QueueLimit, TaskLimit
    from soniq.settings import SoniqSettings


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``setup`` did: which migrations it applied and which were already there."""

    applied: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    database_created: bool = False


@dataclass(frozen=True, slots=True)
class MigrationInfo:
    name: str
    applied: bool
    applied_at: datetime | None = None


class Listener(Protocol):
    """A subscription to new-job notifications; closing it releases its connection."""

    def is_alive(self) -> bool:
        """False once the subscription is lost (its connection dropped); the worker re-listens."""

    async def close(self) -> None: ...


@runtime_checkable
class StorageBackend(Protocol):
    """Lifecycle verbs and reads. Implementations: postgres, sqlite, memory."""

    name: str
    supports_transactions: bool
    # Whether a worker may claim ahead (soniq/claiming.py): it pays where a claim is a
    # round trip to a server, overlapped with the jobs; it costs where the claim runs on
    # the worker's own connection thread, behind the acks (SQLite, memory: -7%).
    claim_ahead: bool

    # --- lifecycle ---------------------------------------------------------
    async def open(self) -> None:
        """Connect (idempotent). Raises ``DatabaseUnavailableError`` with how to fix it."""

    async def close(self) -> None:
        """Release every connection (idempotent)."""

    def acquire(self) -> AbstractAsyncContextManager[Any]:
        """Lend a raw connection for transactional enqueue (PostgreSQL); others raise ValueError."""

    def reserve_capacity(self, concurrency: int) -> None:
        """Make room, before ``open()``, for a worker running ``concurrency`` jobs at once.

        PostgreSQL sizes its pool by ``soniq.settings.worker_pool_size`` (a pool
        opened already keeps its size); the embedded backends need nothing.
        """

    async def migrate(self, extra: Sequence[tuple[str, str]] = ()) -> MigrationReport:
        """Create the database if missing and apply pending migrations, safely concurrent.

        ``extra``: more ``(name, sql)`` migrations (plugins', soniq/migrations.py),
        applied after ours by the same code, under the same lock and bookkeeping.
        """

    async def migration_status(self) -> list[MigrationInfo]: ...

    # --- producing ---------------------------------------------------------
    async def enqueue(self, jobs: Sequence[NewJob], *, connection: Any = None) -> list[str]:
        """Insert ``jobs`` (one round trip where possible) and wake listening workers.

        Returns one id per input job, in order: the new id, or for a duplicate
        (same ``dedup_key`` while a job with it is queued or processing) the id
        of the existing job.
        """

    async def enqueue_chunks(
        self, chunks: Iterator[Sequence[NewJob]], records: Sequence[Record] | None = None
    ) -> list[str]:
        """``enqueue`` of one batch that is built while it is written (``enqueue_many``).

        ``chunks`` builds the next part of the batch when asked; the parts share their
        task, queue and options. If building a part raises, nothing of the batch is
        written and the error propagates. ``records``, when given, fills as the parts
        are built (observers of ``job.enqueued``) and is written with the jobs, in their
        transaction, as ``enqueue_observed`` does. PostgreSQL streams the parts into
        one COPY, so the server inserts one part while the next is built; the embedded
        backends build them all, then enqueue.
        """

    # --- working -----------------------------------------------------------
    async def claim(
        self, queues: Sequence[str] | None, worker_id: str, limit: int
    ) -> list[ClaimedJob]:
        """Atomically take up to ``limit`` due queued jobs, priority then run time."""

    async def ack(self, acks: Sequence[Ack], *, result_ttl: float) -> None:
        """Record many outcomes at once. Acks whose lease no longer matches are ignored."""

    async def register_worker(self, info: WorkerInfo) -> None:
        """Add (or refresh) the worker's row.

        PostgreSQL also takes the worker's liveness lock on a direct connection of its
        own and, while any worker of this process is registered, requeues the jobs of
        workers whose lock the database has released (their connection ended) within
        seconds; see soniq/backends/pg_liveness.py. Others rely on ``recover_stale``.
        """

    async def heartbeat(self, worker_id: str) -> bool:
        """Refresh liveness; ``False`` when the row is gone (another worker declared us dead)."""

    async def deregister_worker(self, worker_id: str) -> None:
        """Remove the worker's row (and release its liveness lock, on PostgreSQL)."""

    async def recover_stale(self, heartbeat_timeout: float) -> int:
        """Requeue jobs of workers silent for ``heartbeat_timeout`` and remove those workers.

        A recovered job that has no attempt left moves to the dead-letter table.
        Returns the number of jobs recovered or dead-lettered.
        """

    async def prune(self) -> int:
        """Delete finished rows whose result TTL has passed (returns how many), and
        throughput rollup rows (``throughput_add``) older than 8 days."""

    async def try_lead(self, role: str, owner: str, ttl: float) -> bool:
        """Take or extend the lease on ``role``; ``True`` while ``owner`` holds it."""

    async def release_lead(self, role: str, owner: str) -> None: ...

    async def listen(self, on_new_job: Callable[[str], None]) -> Listener | None:
        """Call ``on_new_job(queue)`` when a job is enqueued; ``None`` when only polling works."""

    # --- reads and management ---------------------------------------------
    async def get_job(self, job_id: str) -> Job | None: ...

    async def list_jobs(
        self, *, queue: str | None, status: str | None, limit: int, offset: int
    ) -> list[Job]: ...

    async def queue_stats(self) -> list[QueueStats]: ...

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a queued job, or ask a running one's worker to stop it (it then ends
        ``cancelled``); ``False`` if the job already finished or does not exist."""

    async def delete_job(self, job_id: str) -> bool: ...

    async def reset(self) -> None:
        """Delete every job, dead letter, worker and what hangs off them; keep schedules,
        webhooks and limits, the schema and the pool (``app._reset()`` in test suites)."""

    async def list_workers(self) -> list[WorkerInfo]: ...

    # --- dead letters ------------------------------------------------------
    async def dead_letter_list(
        self, *, queue: str | None, task: str | None, limit: int, offset: int
    ) -> list[DeadLetterJob]: ...

    async def dead_letter_get(self, job_id: str) -> DeadLetterJob | None: ...

    async def dead_letter_count(self, *, queue: str | None, task: str | None) -> int: ...

    async def dead_letter_replay(self, job_ids: Sequence[str]) -> dict[str, str]:
        """Mint a fresh queued job per dead-letter id; returns ``{dead_id: new_job_id}``.

        The dead-letter row stays, with ``resurrection_count`` + 1 and ``last_replayed_at``.
        Unknown ids are absent from the result.
        """

    async def dead_letter_purge(
        self, *, job_ids: Sequence[str] | None, queue: str | None, task: str | None
    ) -> int: ...

    async def dead_letter_replay_as(
        self, job_id: str, *, queue: str | None, priority: int | None,
        max_attempts: int | None, keep_attempts: bool,
    ) -> str | None:  # fmt: skip
        """Replay one dead letter with overrides (``None`` keeps the stored value) and
        marked like ``dead_letter_replay``; ``keep_attempts`` starts the new job with the
        attempts already spent. Returns the new job's id, ``None`` for an unknown id."""

    # --- schedules ---------------------------------------------------------
    async def schedule_upsert(self, schedule: Schedule) -> Schedule:
        """Insert or update by name, keeping ``last_run_at``; returns the stored row."""

    async def schedule_get(self, name: str) -> Schedule | None: ...

    async def schedule_list(self, status: str | None = None) -> list[Schedule]: ...

    async def schedule_set_status(
        self, name: str, status: str, next_run_at: datetime | None = None
    ) -> bool:
        """Pause/resume; a given ``next_run_at`` is written in the same statement."""

    async def schedule_delete(self, name: str) -> bool: ...

    async def schedule_fire(
        self, name: str, due: datetime, next_run_at: datetime | None, job: NewJob
    ) -> bool:
        """Enqueue ``job`` for the run due at ``due`` and advance the schedule, atomically.

        Does nothing and returns ``False`` unless the stored ``next_run_at``
        still equals ``due`` (another leader already fired it).
        """

    # --- dashboard reads (soniq.dashboard) ----------------------------------
    async def job_page(self, query: JobQuery) -> list[Job]:
        """Jobs newest first (``created_at`` desc, then ``id`` desc), strictly after the cursor.

        Keyset, not OFFSET: page 500 costs what page 1 costs. ``search`` matches
        a job id exactly (when it is a UUID) or a substring of the arguments'
        JSON text, case-insensitively.
        """

    async def job_task_names(self) -> list[str]:
        """Every task name seen in jobs or dead letters, sorted (the dashboard's filter list)."""

    async def job_throughput(self, since: datetime, bucket_seconds: int) -> list[ThroughputBucket]:
        """Completions and dead letters per time bucket since ``since``; empty buckets omitted.

        Completions: per bucket, the larger of the rollup workers add to with
        ``throughput_add`` (kept 8 days, whatever ``result_ttl``; it lags by up to a
        heartbeat) and the ``done`` rows still kept (fresh, gone after ``result_ttl``).
        Failures come from the dead-letter table.
        """

    async def throughput_add(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """Add ``counts`` (completions per (UTC minute start, queue)) to the rollup that
        ``job_throughput`` reads, in one statement: workers tally Done acks in memory and
        call this once per heartbeat, so the chart costs no write per job."""

    async def queue_counts(self, *, exact_below: int) -> QueueCounts:
        """``queue_stats`` for a dashboard: exact while the jobs table holds fewer than
        ``exact_below`` rows; above that, queued/processing/cancelled and dead letters
        stay exact and ``done`` is estimated (``QueueCounts.estimated``), so a page
        never counts a million rows.
        """

    # --- observability (soniq/events.py: webhooks outbox, job logs, gauges) --------
    async def enqueue_observed(
        self, jobs: Sequence[NewJob], records: Sequence[Record], *, connection: Any = None
    ) -> list[str]:
        """``enqueue`` plus ``records`` in the same transaction (the caller's, with
        ``connection``). Outbox events are written only for jobs actually inserted
        (not for a duplicate that returned an existing id)."""

    async def ack_observed(
        self, acks: Sequence[Ack], records: Sequence[Record], *, result_ttl: float
    ) -> None:
        """``ack`` plus ``records`` in one transaction. An ``OutboxEvent`` with a lease is
        written only if that claim's ack applied; ``acks`` may be empty."""

    async def observe_write(self, records: Sequence[Record]) -> None:
        """Write records that go with no state change of ours (cancel, replay events)."""

    async def webhook_add(self, hook: Webhook) -> Webhook: ...

    async def webhook_list(self) -> list[Webhook]: ...

    async def webhook_remove(self, webhook_id: str) -> bool:
        """Delete the endpoint and its deliveries; ``False`` if unknown."""

    async def webhook_deliveries(self, webhook_id: str | None, limit: int) -> list[WebhookDelivery]:
        """Newest first."""

    async def webhook_claim(self, limit: int, lock_seconds: float) -> list[PendingDelivery]:
        """Take due pending deliveries (``attempts`` + 1) for ``lock_seconds``; disjoint
        between concurrent callers."""

    async def webhook_settle(self, results: Sequence[DeliveryResult]) -> None: ...

    async def webhook_delivery_counts(self, since: datetime) -> dict[str, int]:
        """Deliveries created at or after ``since``, per status."""

    async def job_logs(self, job_id: str) -> list[JobLogEntry]:
        """A job's log records in the order they were emitted."""

    async def search_logs(
        self, text: str, *, job_id: str | None, min_level: int, since: datetime, limit: int
    ) -> list[JobLogEntry]:
        """Records whose message contains ``text`` (case-insensitive), newest first."""

    async def observability_prune(self) -> int:
        """Delete logs of jobs that are gone and week-old settled deliveries."""

    async def queue_oldest(self) -> dict[str, float]:
        """Seconds since the oldest due queued job of each queue became due."""

    # --- flow control (soniq/flow.py): limits, cancel running jobs, progress ---------
    async def claim_limited(
        self, queues: Sequence[str] | None, worker_id: str, limit: int,
        tasks: Sequence[TaskLimit],
    ) -> LimitedClaim:  # fmt: skip
        """``claim``, within every queue limit (``queue_limits``) and task limit (``tasks``).

        One claim at a time across every process (a cluster-wide lock on PostgreSQL,
        the write lock on SQLite): it reads what each limit has left, skips the rows
        of a queue, task or key with nothing left (they never hide other work), and
        logs a start per rate. ``retry_in``: seconds until an exhausted rate reopens.
        """

    async def queue_limit_set(self, limit: QueueLimit) -> QueueLimit | None:
        """Store a queue's limits (replacing them); a limit of all ``None`` deletes them."""

    async def queue_limits(self) -> list[QueueLimit]:
        """Every stored queue limit, sorted by queue."""

    async def cancel_requests(self, worker_id: str) -> list[str]:
        """Ids of ``worker_id``'s running jobs that ``cancel_job`` asked to stop."""

    async def job_progress(
        self, job_id: str, lease: str, fraction: float, message: str | None
    ) -> bool:
        """Record progress while the claim with ``lease`` holds the job; False otherwise."""

    async def job_checkpoint(self, job_id: str, lease: str, data_json: str) -> bool:
        """Store the checkpoint the job's next run reads, while ``lease`` holds it."""


def make_backend(
    database_url: str, backend: StorageBackend | str | None, settings: SoniqSettings
) -> StorageBackend:
    """Pick the backend from an explicit choice or the URL's shape, behind the input rules."""
    from soniq.backends.checked import checked

    return checked(_choose_backend(database_url, backend, settings))


def _choose_backend(
    database_url: str, backend: StorageBackend | str | None, settings: SoniqSettings
) -> StorageBackend:
    from soniq.errors import ConfigurationError

    if backend is not None and not isinstance(backend, str):
        return backend
    kind = backend or detect_backend(database_url)
    if kind in ("postgres", "postgresql"):
        from soniq.backends.postgres import PostgresBackend

        return PostgresBackend(database_url, settings)
    if kind == "sqlite":
        from soniq.backends.sqlite import SQLiteBackend

        return SQLiteBackend(sqlite_path(database_url), settings)
    if kind == "memory":
        from soniq.backends.memory import MemoryBackend

        return MemoryBackend(settings)
    raise ConfigurationError(
        f"Unknown backend {kind!r}. Use backend='postgres', 'sqlite' or 'memory', "
        "or pass a StorageBackend instance."
    )


SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def detect_backend(database_url: str) -> str:
    url = database_url.strip()
    if url.startswith("sqlite:") or url.lower().endswith(SQLITE_SUFFIXES):
        return "sqlite"
    if url.startswith("memory:") or url == ":memory:":
        return "memory"
    return "postgres"


def sqlite_path(database_url: str) -> str:
    """``sqlite:///rel.db`` → ``rel.db``; ``sqlite:////abs.db`` → ``/abs.db``; paths as is."""
    url = database_url.strip()
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        return rest[1:] if rest.startswith("/") else rest or "soniq.db"
    if url.startswith("sqlite:"):
        return url[len("sqlite:") :] or "soniq.db"
    if not url.lower().endswith(SQLITE_SUFFIXES):
        return "soniq.db"
    return url


__all__ = [
    "Listener",
    "MigrationInfo",
    "MigrationReport",
    "StorageBackend",
    "detect_backend",
    "make_backend",
    "sqlite_path",
]


# --- dashboard reads ------------------------------------------------------------
# Rows the dashboard's read verbs exchange with the backends (see StorageBackend).


@dataclass(frozen=True, slots=True)
class JobCursor:
    """Where a page of jobs ended: the last row's ``created_at`` and ``id``."""

    created_at: datetime
    id: str


@dataclass(frozen=True, slots=True)
class JobQuery:
    """Filters and keyset cursor of one page of ``job_page`` (``None`` = no filter)."""

    queue: str | None = None
    status: str | None = None
    task: str | None = None
    search: str | None = None
    after: JobCursor | None = None
    limit: int = 50


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    """Jobs completed and dead-lettered in ``[start, start + bucket_seconds)``."""

    start: datetime
    completed: int
    failed: int


@dataclass(frozen=True, slots=True)
class QueueCounts:
    """Per-queue counts; ``estimated`` when ``done`` counts are an estimate."""

    stats: list[QueueStats]
    estimated: bool


__all__ += ["JobCursor", "JobQuery", "QueueCounts", "ThroughputBucket"]
