"""Every runtime statement of the SQLite backend, as a named constant.

Parameters are named (``:now``). Timestamps are INTEGER microseconds since the
epoch (UTC) computed by the caller, so all processes agree on "now" without SQL
date functions. Variable-length id lists travel as one JSON array through
``json_each`` so that each statement stays a constant.

Writes run inside ``BEGIN IMMEDIATE`` (see ``soniq.backends.sqlite``): SQLite has
one writer at a time, and taking the write lock up front means a transaction
never has to upgrade a read lock, which is what makes claims safe across
processes without ``SKIP LOCKED``.
"""

from __future__ import annotations

# --- connection setup -------------------------------------------------------
# busy_timeout first: switching to WAL needs a brief lock that another process
# may hold. WAL lets readers (dashboard, CLI) run while a worker writes;
# synchronous=NORMAL is durable against application crashes in WAL mode and
# skips an fsync per commit: the WAL is synced at each checkpoint, so an OS crash
# or power loss can lose the commits since the last one (never corrupts the file).
PRAGMA_BUSY_TIMEOUT = "PRAGMA busy_timeout = 5000"
PRAGMA_JOURNAL_WAL = "PRAGMA journal_mode = WAL"
PRAGMA_SYNCHRONOUS = "PRAGMA synchronous = NORMAL"
# Checkpoint every 4,000 WAL pages (16 MiB at 4 KiB pages) instead of SQLite's 1,000:
# a claim or ack rewrites the same few index pages again and again, and a checkpoint
# writes each page once however often it changed, so rarer checkpoints write (and
# fsync) far less per job. The WAL file is cut back to 64 MiB after a checkpoint.
PRAGMA_WAL_AUTOCHECKPOINT = "PRAGMA wal_autocheckpoint = 4000"
PRAGMA_JOURNAL_SIZE_LIMIT = "PRAGMA journal_size_limit = 67108864"
# A 16 MiB page cache per connection (SQLite's default is 2 MiB): the claim and ack
# frontier of every index of a large backlog stays in memory.
PRAGMA_CACHE_SIZE = "PRAGMA cache_size = -16384"
CONNECTION_PRAGMAS = (
    PRAGMA_BUSY_TIMEOUT, PRAGMA_JOURNAL_WAL, PRAGMA_SYNCHRONOUS, PRAGMA_WAL_AUTOCHECKPOINT,
    PRAGMA_JOURNAL_SIZE_LIMIT, PRAGMA_CACHE_SIZE,
)  # fmt: skip

BEGIN_WRITE = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

LIVE_PREDICATE = "dedup_key IS NOT NULL AND status IN ('queued', 'processing')"

# --- producing --------------------------------------------------------------
# A duplicate live dedup_key inserts nothing (the partial unique index is the
# conflict target); the caller then looks up which job holds the key.
JOB_INSERT = f"""
INSERT INTO soniq_jobs
    (id, job_name, args, queue, priority, max_attempts, scheduled_at, created_at, updated_at,
     dedup_key)
VALUES (:id, :job_name, :args, :queue, :priority, :max_attempts, :scheduled_at, :now, :now,
        :dedup_key)
ON CONFLICT (dedup_key) WHERE {LIVE_PREDICATE} DO NOTHING
"""

# The predicate repeats the index's WHERE so the planner can use the partial index.
JOB_LIVE_BY_DEDUP = f"""
SELECT dedup_key, id FROM soniq_jobs INDEXED BY soniq_jobs_dedup_idx
WHERE dedup_key IN (SELECT value FROM json_each(:keys)) AND {LIVE_PREDICATE}
"""

# --- claiming ---------------------------------------------------------------
_CLAIM_SET = """
UPDATE soniq_jobs
SET status = 'processing', attempts = attempts + 1, worker_id = :worker_id, lease = :lease,
    started_at = :now, updated_at = :now
"""
_CLAIM_RETURNING = """
RETURNING id, job_name, args, queue, attempts, max_attempts, scheduled_at, created_at, priority,
          rowid AS seq
"""
_DUE = "status = 'queued' AND scheduled_at <= :now"
# Claim order: priority, run time, then enqueue order (FIFO). rowid grows with
# each insert and is the implicit last column of every index, so the claim
# indexes still deliver rows in this order without a sort, and the claims select
# rows by rowid straight from the index (no lookup through the id index). The claims name
# their index (INDEXED BY): the planner once preferred a listing index plus a
# sort, and a claim must stay an ordered walk of the backlog whatever indexes
# later migrations add.
_ORDER = "ORDER BY priority, scheduled_at, created_at, rowid"

# Walks soniq_jobs_claim_all_idx in order and stops after :limit due rows.
JOB_CLAIM_ALL = f"""
{_CLAIM_SET}
WHERE rowid IN (
    SELECT rowid FROM soniq_jobs INDEXED BY soniq_jobs_claim_all_idx
    WHERE {_DUE} {_ORDER} LIMIT :limit
)
{_CLAIM_RETURNING}
"""

# Walks soniq_jobs_claim_queue_idx for one queue, already in claim order.
JOB_CLAIM_QUEUE = f"""
{_CLAIM_SET}
WHERE rowid IN (
    SELECT rowid FROM soniq_jobs INDEXED BY soniq_jobs_claim_queue_idx
    WHERE queue = :queue AND {_DUE} {_ORDER} LIMIT :limit
)
{_CLAIM_RETURNING}
"""

# Several queues: the best :limit candidates of each queue (an ordered index
# walk each), merged by the caller, then claimed by id in the same transaction.
JOB_DUE_IN_QUEUE = f"""
SELECT id, priority, scheduled_at, created_at, rowid AS seq
FROM soniq_jobs INDEXED BY soniq_jobs_claim_queue_idx
WHERE queue = :queue AND {_DUE} {_ORDER} LIMIT :limit
"""
JOB_CLAIM_IDS = f"""
{_CLAIM_SET}
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'queued'
{_CLAIM_RETURNING}
"""

# --- acks (executemany, one parameter dict per job) -------------------------
# Each ack applies only to the holder of the lease: a late ack from a worker
# whose job was recovered and claimed again elsewhere changes nothing.
_HELD = "id = :id AND lease = :lease AND status = 'processing'"

JOB_ACK_DONE = f"""
UPDATE soniq_jobs
SET status = 'done', result = :result, completed_at = :now, updated_at = :now,
    expires_at = :expires_at, lease = NULL
WHERE {_HELD}
"""
JOB_ACK_DONE_DELETE = f"DELETE FROM soniq_jobs WHERE {_HELD}"
JOB_ACK_RETRY = f"""
UPDATE soniq_jobs
SET status = 'queued', scheduled_at = :run_at, last_error = :error, worker_id = NULL,
    lease = NULL, updated_at = :now
WHERE {_HELD}
"""
JOB_ACK_REQUEUE = f"""
UPDATE soniq_jobs
SET status = 'queued', attempts = MAX(attempts - 1, 0), scheduled_at = :run_at,
    worker_id = NULL, lease = NULL, updated_at = :now
WHERE {_HELD}
"""

_DEAD_LETTER_INSERT = """
INSERT INTO soniq_dead_letter_jobs
    (id, job_name, args, queue, priority, attempts, max_attempts, last_error, traceback,
     created_at, dead_lettered_at, resurrection_count)
"""
_DEAD_LETTER_CONFLICT = """
ON CONFLICT (id) DO UPDATE
SET last_error = excluded.last_error, traceback = excluded.traceback,
    attempts = excluded.attempts, dead_lettered_at = excluded.dead_lettered_at
"""

# Fail = copy to the dead-letter table, then delete, in one transaction, so a
# job is always in exactly one of the two tables.
JOB_ACK_FAIL_COPY = f"""
{_DEAD_LETTER_INSERT}
SELECT id, job_name, args, queue, priority, attempts, max_attempts, :error, :traceback,
       created_at, :now, 0
FROM soniq_jobs WHERE {_HELD}
{_DEAD_LETTER_CONFLICT}
"""
JOB_ACK_FAIL_DELETE = JOB_ACK_DONE_DELETE

# --- workers ----------------------------------------------------------------
WORKER_REGISTER = """
INSERT INTO soniq_workers (id, hostname, pid, queues, concurrency, started_at, last_heartbeat)
VALUES (:id, :hostname, :pid, :queues, :concurrency, :now, :now)
ON CONFLICT (id) DO UPDATE SET last_heartbeat = excluded.last_heartbeat
"""
WORKER_HEARTBEAT = "UPDATE soniq_workers SET last_heartbeat = :now WHERE id = :id"
WORKER_DEREGISTER = "DELETE FROM soniq_workers WHERE id = :id"
WORKER_LIST = """
SELECT id, hostname, pid, queues, concurrency, started_at, last_heartbeat
FROM soniq_workers ORDER BY started_at, id
"""
WORKER_DELETE_STALE = "DELETE FROM soniq_workers WHERE last_heartbeat < :cutoff"

# --- recovery ---------------------------------------------------------------
# Jobs held by no registered worker (its row was removed as stale, or it
# crashed before ever heartbeating) go back to the queue, or to the dead-letter
# table when the lost attempt was their last. soniq_jobs_processing_idx keeps
# this to the running jobs.
_ORPHAN = """
status = 'processing'
AND NOT EXISTS (SELECT 1 FROM soniq_workers w WHERE w.id = soniq_jobs.worker_id)
"""
# :lost_error is the text's template (soniq.backends._common.LOST_WORKER_ERROR).
_LOST_ERROR = "printf(:lost_error, coalesce(worker_id, '?'), attempts)"
JOB_RECOVER_REQUEUE = f"""
UPDATE soniq_jobs
SET status = 'queued', scheduled_at = :now, worker_id = NULL, lease = NULL,
    updated_at = :now, last_error = {_LOST_ERROR}
WHERE {_ORPHAN} AND attempts < max_attempts
RETURNING queue
"""
JOB_RECOVER_DEAD_COPY = f"""
{_DEAD_LETTER_INSERT}
SELECT id, job_name, args, queue, priority, attempts, max_attempts, {_LOST_ERROR}, NULL,
       created_at, :now, 0
FROM soniq_jobs WHERE {_ORPHAN} AND attempts >= max_attempts
{_DEAD_LETTER_CONFLICT}
"""
JOB_RECOVER_DEAD_DELETE = f"DELETE FROM soniq_jobs WHERE {_ORPHAN} AND attempts >= max_attempts"

# In bounded chunks, each its own transaction: one huge DELETE would hold the
# single write lock and stall every worker's claims while it runs.
# Found by soniq_jobs_expires_idx (0008_history.sql), oldest expiry first.
JOB_PRUNE = """
DELETE FROM soniq_jobs WHERE id IN (
    SELECT id FROM soniq_jobs WHERE status = 'done' AND expires_at <= :now
    ORDER BY expires_at LIMIT :limit
)
"""

# --- leader leases ----------------------------------------------------------
# Take the row when free, expired or already ours; RETURNING yields a row only
# when the insert or the guarded update happened, i.e. when we hold the lease.
LEASE_TAKE = """
INSERT INTO soniq_leases (role, owner, expires_at) VALUES (:role, :owner, :expires_at)
ON CONFLICT (role) DO UPDATE
SET owner = excluded.owner, expires_at = excluded.expires_at
WHERE soniq_leases.owner = excluded.owner OR soniq_leases.expires_at < :now
RETURNING owner
"""
LEASE_RELEASE = "DELETE FROM soniq_leases WHERE role = :role AND owner = :owner"

# --- reads and management ---------------------------------------------------
# The last four are flow control (0006): in the subquery, a bare `id` is the job's.
_JOB_COLUMNS = """
id, job_name, args, queue, priority, status, attempts, max_attempts, scheduled_at,
created_at, updated_at, started_at, completed_at, result, last_error, worker_id, dedup_key,
progress, progress_message, cancel_requested_at IS NOT NULL AS cancel_requested,
CASE WHEN json_extract(args, '$.__soniq__.snoozed') = id
     THEN coalesce(json_extract(args, '$.__soniq__.snoozes'), 0) ELSE 0 END AS snoozes,
(SELECT json_group_array(depends_on) FROM (
    SELECT depends_on FROM soniq_job_deps WHERE job_id = id ORDER BY 1)) AS waiting_for
"""
JOB_GET = f"SELECT {_JOB_COLUMNS} FROM soniq_jobs WHERE id = :id"
JOB_LIST = f"""
SELECT {_JOB_COLUMNS} FROM soniq_jobs
WHERE (:queue IS NULL OR queue = :queue) AND (:status IS NULL OR status = :status)
ORDER BY created_at DESC, id DESC
LIMIT :limit OFFSET :offset
"""
JOB_CANCEL = """
UPDATE soniq_jobs SET status = 'cancelled', updated_at = :now, completed_at = :now
WHERE id = :id AND status = 'queued'
"""
JOB_DELETE = "DELETE FROM soniq_jobs WHERE id = :id"
# Done rows counted on their own, from soniq_jobs_done_queue_idx (0008_history.sql).
QUEUE_STATS = """
SELECT queue, status, count(*) AS n FROM soniq_jobs WHERE status <> 'done'
GROUP BY queue, status
UNION ALL
SELECT queue, 'done', count(*) FROM soniq_jobs WHERE status = 'done' GROUP BY queue
UNION ALL
SELECT queue, 'dead_letter', count(*) FROM soniq_dead_letter_jobs GROUP BY queue
"""

# --- dead letters -----------------------------------------------------------
_DLQ_COLUMNS = """
id, job_name, args, queue, priority, attempts, max_attempts, last_error, traceback,
created_at, dead_lettered_at, resurrection_count, last_replayed_at
"""
_DLQ_FILTER = "(:queue IS NULL OR queue = :queue) AND (:task IS NULL OR job_name = :task)"
DLQ_LIST = f"""
SELECT {_DLQ_COLUMNS} FROM soniq_dead_letter_jobs WHERE {_DLQ_FILTER}
ORDER BY dead_lettered_at DESC, id LIMIT :limit OFFSET :offset
"""
DLQ_GET = f"SELECT {_DLQ_COLUMNS} FROM soniq_dead_letter_jobs WHERE id = :id"
DLQ_COUNT = f"SELECT count(*) FROM soniq_dead_letter_jobs WHERE {_DLQ_FILTER}"
DLQ_PURGE_IDS = """
DELETE FROM soniq_dead_letter_jobs WHERE id IN (SELECT value FROM json_each(:ids))
"""
DLQ_PURGE_FILTER = f"DELETE FROM soniq_dead_letter_jobs WHERE {_DLQ_FILTER}"

# Replay, per dead id and in one transaction: mint a fresh queued row from the
# dead-letter row, then record the replay on it.
DLQ_REPLAY_INSERT = """
INSERT INTO soniq_jobs
    (id, job_name, args, queue, priority, max_attempts, scheduled_at, created_at, updated_at)
SELECT :new_id, job_name, args, queue, priority, max_attempts, :now, :now, :now
FROM soniq_dead_letter_jobs WHERE id = :dead_id
RETURNING queue
"""
DLQ_MARK_REPLAYED = """
UPDATE soniq_dead_letter_jobs
SET resurrection_count = resurrection_count + 1, last_replayed_at = :now
WHERE id = :dead_id
"""

# --- schedules --------------------------------------------------------------
_SCHEDULE_COLUMNS = """
name, job_name, args, queue, priority, cron, every_seconds, timezone, status, next_run_at,
last_run_at, created_at, updated_at
"""
# An update replaces the definition and keeps status, last_run_at and created_at.
SCHEDULE_UPSERT = f"""
INSERT INTO soniq_schedules
    (name, job_name, args, queue, priority, cron, every_seconds, timezone, status,
     next_run_at, created_at, updated_at)
VALUES (:name, :job_name, :args, :queue, :priority, :cron, :every_seconds, :timezone, :status,
        :next_run_at, :now, :now)
ON CONFLICT (name) DO UPDATE
SET job_name = excluded.job_name, args = excluded.args, queue = excluded.queue,
    priority = excluded.priority, cron = excluded.cron,
    every_seconds = excluded.every_seconds, timezone = excluded.timezone,
    -- Same timing: keep the stored due time (a leader may have just advanced it).
    next_run_at = CASE
        WHEN soniq_schedules.cron IS excluded.cron
         AND soniq_schedules.every_seconds IS excluded.every_seconds
         AND soniq_schedules.timezone = excluded.timezone
        THEN coalesce(soniq_schedules.next_run_at, excluded.next_run_at)
        ELSE excluded.next_run_at END,
    updated_at = excluded.updated_at
RETURNING {_SCHEDULE_COLUMNS}
"""
SCHEDULE_GET = f"SELECT {_SCHEDULE_COLUMNS} FROM soniq_schedules WHERE name = :name"
SCHEDULE_LIST = f"""
SELECT {_SCHEDULE_COLUMNS} FROM soniq_schedules
WHERE (:status IS NULL OR status = :status) ORDER BY name
"""
SCHEDULE_SET_STATUS = """
UPDATE soniq_schedules
SET status = :status, updated_at = :now, next_run_at = COALESCE(:next_run_at, next_run_at)
WHERE name = :name
"""
SCHEDULE_DELETE = "DELETE FROM soniq_schedules WHERE name = :name"
# Compare-and-set on next_run_at: of two leaders racing on one due time, one fires.
SCHEDULE_ADVANCE = """
UPDATE soniq_schedules
SET last_run_at = :due, next_run_at = :next_run_at, updated_at = :now
WHERE name = :name AND next_run_at = :due AND status = 'active'
"""

# --- migrations -------------------------------------------------------------
MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS soniq_migrations (
    name        TEXT PRIMARY KEY,
    applied_at  INTEGER NOT NULL
)
"""
MIGRATIONS_TABLE_PRESENT = """
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'soniq_migrations'
"""
MIGRATIONS_APPLIED = "SELECT name, applied_at FROM soniq_migrations ORDER BY name"
MIGRATION_RECORD = "INSERT INTO soniq_migrations (name, applied_at) VALUES (:name, :now)"


# === Dashboard reads (soniq.dashboard) =========================================
# Added for the web dashboard; indexes in migrations/sqlite/0004_dashboard.sql.


def job_page_sql(
    *, queue: bool, status: bool, task: bool, by_id: bool, text: bool, after: bool
) -> str:
    """The job-list statement for the filters present (named parameters ``:queue`` …).

    One statement per combination (not ``:x IS NULL OR ...``), so the planner
    picks the index of the filter present: SQLite cannot choose by value.
    """
    where = [
        clause
        for present, clause in (
            (queue, "queue = :queue"),
            (status, "status = :status"),
            (task, "job_name = :task"),
            (by_id, "id = :id"),
            # Substring of the arguments' JSON, newest first, stopped at one page.
            (text, "args LIKE :text ESCAPE '\\'"),
            # Row value comparison: a range on the (created_at, id) index, walked backwards.
            (after, "(created_at, id) < (:after_created, :after_id)"),
        )
        if present
    ]
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    return (
        f"SELECT {_JOB_COLUMNS} FROM soniq_jobs {clause} "
        "ORDER BY created_at DESC, id DESC LIMIT :limit"
    )


# Distinct names from the job_name indexes of both tables.
JOB_TASK_NAMES = """
SELECT job_name FROM soniq_jobs
UNION
SELECT job_name FROM soniq_dead_letter_jobs
ORDER BY 1
"""


# === observability: webhooks outbox, job logs, gauges (soniq/events.py) =============
# Owned by the webhooks/logs/metrics features; 0003_observability.sql is the schema.
# Fan-out and lease checks run in Python inside the same BEGIN IMMEDIATE
# transaction, which already holds the single write lock.

_WEBHOOK_COLUMNS = "id, url, events, secret, allow_private, created_at"
WEBHOOK_INSERT = f"""
INSERT INTO soniq_webhooks (id, url, events, secret, allow_private, created_at)
VALUES (:id, :url, :events, :secret, :allow_private, :now)
RETURNING {_WEBHOOK_COLUMNS}
"""
WEBHOOK_LIST = f"SELECT {_WEBHOOK_COLUMNS} FROM soniq_webhooks ORDER BY created_at, id"
WEBHOOK_TARGETS = "SELECT id, events FROM soniq_webhooks"
# Foreign keys are off in SQLite by default: deliveries go explicitly, same transaction.
WEBHOOK_DELETE = "DELETE FROM soniq_webhooks WHERE id = :id"
WEBHOOK_DELETE_DELIVERIES = "DELETE FROM soniq_webhook_deliveries WHERE webhook_id = :id"

# The (id, lease) pairs of an ack batch that are still held; compared in Python.
ACK_HELD = """
SELECT id, lease FROM soniq_jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'processing'
"""

OUTBOX_INSERT = """
INSERT INTO soniq_webhook_deliveries
    (id, webhook_id, event, job_id, payload, status, attempts, next_attempt_at, created_at)
VALUES (:id, :webhook_id, :event, :job_id, :payload, 'pending', 0, :now, :now)
"""

# Claim lease: next_attempt_at moves to :lock_until while a worker delivers.
WEBHOOK_CLAIM = """
UPDATE soniq_webhook_deliveries
SET attempts = attempts + 1, next_attempt_at = :lock_until
WHERE id IN (
    SELECT id FROM soniq_webhook_deliveries
    WHERE status = 'pending' AND next_attempt_at <= :now
    ORDER BY next_attempt_at LIMIT :limit
)
RETURNING id
"""
WEBHOOK_CLAIMED = """
SELECT d.id, d.webhook_id, d.event, d.payload, d.created_at, d.attempts,
       w.url, w.secret, w.allow_private
FROM soniq_webhook_deliveries d JOIN soniq_webhooks w ON w.id = d.webhook_id
WHERE d.id IN (SELECT value FROM json_each(:ids))
"""
WEBHOOK_SETTLE = """
UPDATE soniq_webhook_deliveries
SET status = :status, response_code = :code, error = :error,
    next_attempt_at = COALESCE(:retry_at, next_attempt_at),
    delivered_at = CASE WHEN :status = 'delivered' THEN :now ELSE delivered_at END
WHERE id = :id
"""
WEBHOOK_DELIVERIES = """
SELECT id, webhook_id, event, job_id, status, attempts, response_code, error, created_at,
       delivered_at
FROM soniq_webhook_deliveries
WHERE (:webhook_id IS NULL OR webhook_id = :webhook_id)
ORDER BY created_at DESC, id
LIMIT :limit
"""

JOB_LOGS_INSERT = """
INSERT INTO soniq_job_logs (job_id, logged_at, level, logger, message)
VALUES (:job_id, :logged_at, :level, :logger, :message)
"""
_LOG_COLUMNS = "job_id, logged_at, level, logger, message"
JOB_LOGS_FOR_JOB = f"SELECT {_LOG_COLUMNS} FROM soniq_job_logs WHERE job_id = :job_id ORDER BY id"
# LIKE is case-insensitive for ASCII in SQLite; :pattern's wildcards are escaped.
JOB_LOGS_SEARCH = f"""
SELECT {_LOG_COLUMNS} FROM soniq_job_logs
WHERE logged_at >= :since AND (:job_id IS NULL OR job_id = :job_id) AND level >= :level
  AND message LIKE :pattern ESCAPE '\\'
ORDER BY logged_at DESC, id DESC
LIMIT :limit
"""
# Orphaned logs, one window of :limit records after id :after per transaction (no index
# finds orphans: the table is walked by id); JOB_LOGS_WINDOW_END is where the next starts.
_LOG_WINDOW = "SELECT id, job_id FROM soniq_job_logs WHERE id > :after ORDER BY id LIMIT :limit"
JOB_LOGS_PRUNE = f"""
DELETE FROM soniq_job_logs WHERE id IN (
    SELECT w.id FROM ({_LOG_WINDOW}) w
    WHERE NOT EXISTS (SELECT 1 FROM soniq_jobs j WHERE j.id = w.job_id)
      AND NOT EXISTS (SELECT 1 FROM soniq_dead_letter_jobs d WHERE d.id = w.job_id)
)
"""
JOB_LOGS_WINDOW_END = f"SELECT max(id) FROM ({_LOG_WINDOW})"
# Settled deliveries past :cutoff, oldest first, by soniq_webhook_deliveries_settled_idx.
WEBHOOK_DELIVERIES_PRUNE = """
DELETE FROM soniq_webhook_deliveries WHERE id IN (
    SELECT id FROM soniq_webhook_deliveries
    WHERE status <> 'pending' AND created_at < :cutoff
    ORDER BY created_at LIMIT :limit
)
"""

QUEUE_OLDEST = """
SELECT queue, min(scheduled_at) AS oldest FROM soniq_jobs
WHERE status = 'queued' AND scheduled_at <= :now
GROUP BY queue
"""


# === Flow control: snooze, cancel running jobs, progress, limits, dependencies =======
# soniq/flow.py and the worker; schema and the dependency triggers in
# migrations/sqlite/0006_flow_control.sql. A job's snooze count and checkpoint live in
# its metadata (args.__soniq__), so the claim returns them with the arguments.
# json_set creates the __soniq__ object when the job has none yet.

# Snooze: back to the queue at :run_at with the attempt given back, snoozes + 1.
JOB_ACK_SNOOZE = f"""
UPDATE soniq_jobs
SET status = 'queued', attempts = MAX(attempts - 1, 0), scheduled_at = :run_at,
    worker_id = NULL, lease = NULL, updated_at = :now,
    args = json_set(
        args,
        '$.__soniq__.snoozes', CASE WHEN json_extract(args, '$.__soniq__.snoozed') = id
            THEN coalesce(json_extract(args, '$.__soniq__.snoozes'), 0) ELSE 0 END + 1,
        -- the count is the job's own: a replayed dead letter (new id) starts from none
        '$.__soniq__.snoozed', id)
WHERE {_HELD}
"""
# A running job its worker stopped after cancel_job(): final, never retried.
JOB_ACK_CANCELLED = f"""
UPDATE soniq_jobs
SET status = 'cancelled', completed_at = :now, updated_at = :now, last_error = :error,
    lease = NULL
WHERE {_HELD}
"""

# cancel_job() of a running job: marked here; its worker hears it at its next
# heartbeat (or at once, through the in-process listeners of this backend object).
JOB_CANCEL_RUNNING = """
UPDATE soniq_jobs SET cancel_requested_at = coalesce(cancel_requested_at, :now)
WHERE id = :id AND status = 'processing'
"""
# This worker's running jobs that were asked to cancel (soniq_jobs_processing_idx).
JOB_CANCEL_REQUESTS = """
SELECT id FROM soniq_jobs
WHERE status = 'processing' AND worker_id = :worker_id AND cancel_requested_at IS NOT NULL
"""

# ctx.progress / ctx.checkpoint: only the claim's holder writes (the lease guard).
JOB_PROGRESS = """
UPDATE soniq_jobs SET progress = :progress, progress_message = :message
WHERE id = :id AND lease = :lease AND status = 'processing'
"""
JOB_CHECKPOINT = """
UPDATE soniq_jobs SET args = json_set(args, '$.__soniq__.checkpoint', json(:data))
WHERE id = :id AND lease = :lease AND status = 'processing'
"""

# --- limits (app.queue_limits, @app.job(rate_limit=, concurrency_key=)) ------------
_QUEUE_LIMIT_COLUMNS = "queue, max_concurrency, rate_count, rate_seconds"
QUEUE_LIMIT_UPSERT = f"""
INSERT INTO soniq_queue_limits ({_QUEUE_LIMIT_COLUMNS}, updated_at)
VALUES (:queue, :max_concurrency, :rate_count, :rate_seconds, :now)
ON CONFLICT (queue) DO UPDATE
SET max_concurrency = excluded.max_concurrency, rate_count = excluded.rate_count,
    rate_seconds = excluded.rate_seconds, updated_at = excluded.updated_at
RETURNING {_QUEUE_LIMIT_COLUMNS}
"""
QUEUE_LIMIT_DELETE = "DELETE FROM soniq_queue_limits WHERE queue = :queue"
QUEUE_LIMITS = f"SELECT {_QUEUE_LIMIT_COLUMNS} FROM soniq_queue_limits ORDER BY queue"

# What each limit has left. The claim's BEGIN IMMEDIATE already serialises it with
# every other writer, here and in other processes. :queues NULL = all; :rates a JSON
# list of [scope, N, window seconds] of rated tasks; :keyed tasks with per-key limits.
FLOW_BUDGETS = """
WITH limits AS (
    SELECT queue, max_concurrency, rate_count, rate_seconds FROM soniq_queue_limits
    WHERE :queues IS NULL OR queue IN (SELECT value FROM json_each(:queues))
),
running AS MATERIALIZED (
    SELECT queue, job_name, concurrency_key FROM soniq_jobs WHERE status = 'processing'
),
rates AS (
    SELECT 'queue:' || queue AS scope, rate_count AS n, rate_seconds AS secs
    FROM limits WHERE rate_count IS NOT NULL
    UNION ALL
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]')
    FROM json_each(:rates)
)
SELECT 'queue' AS kind, l.queue AS name, NULL AS key, l.max_concurrency AS cap,
       (SELECT count(*) FROM running r WHERE r.queue = l.queue) AS used,
       NULL AS oldest, NULL AS secs
FROM limits l WHERE l.max_concurrency IS NOT NULL
UNION ALL
SELECT 'rate', r.scope, NULL, r.n,
       (SELECT count(*) FROM soniq_flow_starts f
        WHERE f.scope = r.scope AND f.started_at > :now - CAST(r.secs * 1000000 AS INTEGER)),
       (SELECT min(f.started_at) FROM soniq_flow_starts f
        WHERE f.scope = r.scope AND f.started_at > :now - CAST(r.secs * 1000000 AS INTEGER)),
       r.secs
FROM rates r
UNION ALL
SELECT 'key', r.job_name, r.concurrency_key, NULL, count(*), NULL, NULL
FROM running r
WHERE r.concurrency_key IS NOT NULL AND r.job_name IN (SELECT value FROM json_each(:keyed))
GROUP BY r.job_name, r.concurrency_key
"""

# Due rows in claim order (the claim index, named as the plain claims name it), minus
# those of a queue, task or key with no slot left: a limit that is reached never hides
# the jobs behind it.
FLOW_CANDIDATES = """
SELECT id, job_name, queue, concurrency_key FROM soniq_jobs INDEXED BY soniq_jobs_claim_all_idx
WHERE status = 'queued' AND scheduled_at <= :now
  AND (:queues IS NULL OR queue IN (SELECT value FROM json_each(:queues)))
  AND queue NOT IN (SELECT value FROM json_each(:blocked_queues))
  AND job_name NOT IN (SELECT value FROM json_each(:blocked_tasks))
  AND (concurrency_key IS NULL OR job_name || char(31) || concurrency_key
       NOT IN (SELECT value FROM json_each(:blocked_keys)))
  AND id NOT IN (SELECT value FROM json_each(:exclude))
ORDER BY priority, scheduled_at, created_at, rowid
LIMIT :limit
"""
# One start per admitted job per rate it falls under, and the starts that left
# their window dropped (:windows: a JSON list of [scope, seconds]).
FLOW_START_LOG = """
INSERT INTO soniq_flow_starts (scope, started_at) SELECT value, :now FROM json_each(:scopes)
"""
FLOW_START_PRUNE = """
DELETE FROM soniq_flow_starts WHERE rowid IN (
    SELECT f.rowid FROM soniq_flow_starts f JOIN json_each(:windows) w
      ON f.scope = json_extract(w.value, '$[0]')
    WHERE f.started_at <= :now - CAST(json_extract(w.value, '$[1]') * 1000000 AS INTEGER)
)
"""

# --- dependencies (enqueue(..., depends_on=[...])), in the enqueue's transaction ----
# Flag the dependencies still live, so their end settles the new job (trigger).
FLOW_DEPS_MARK = """
UPDATE soniq_jobs SET has_dependants = 1
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('queued', 'processing')
RETURNING id
"""
# A dependency already cancelled or dead-lettered (the first, by id).
FLOW_DEPS_FAILED = """
SELECT id, 'cancelled' AS how FROM soniq_jobs
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'cancelled'
UNION ALL
SELECT id, 'dead-lettered' FROM soniq_dead_letter_jobs
WHERE id IN (SELECT value FROM json_each(:ids))
ORDER BY 1 LIMIT 1
"""
FLOW_DEPS_CANCEL = """
UPDATE soniq_jobs SET status = 'cancelled', completed_at = :now, updated_at = :now,
    last_error = :error
WHERE id = :id AND status = 'queued'
"""
# Waiting: never due (soniq.flow.WAITING_AT) until the trigger moves it.
FLOW_DEPS_WAIT = """
UPDATE soniq_jobs SET scheduled_at = :waiting_at WHERE id = :id AND status = 'queued'
"""
FLOW_DEPS_LINK = """
INSERT INTO soniq_job_deps (job_id, depends_on, run_at)
SELECT :id, value, :run_at FROM json_each(:ids)
"""
FLOW_SET_KEY = "UPDATE soniq_jobs SET concurrency_key = :key WHERE id = :id"


# === Compatibility with the published package (soniq/dead_letter.py) =====================
# Replay of one dead letter with options: NULL keeps the stored value, :keep keeps the
# spent attempts instead of starting from 0. Marked with DLQ_MARK_REPLAYED, same transaction.
DLQ_REPLAY_AS_INSERT = """
INSERT INTO soniq_jobs
    (id, job_name, args, queue, priority, max_attempts, attempts, scheduled_at, created_at,
     updated_at)
SELECT :new_id, job_name, args, COALESCE(:queue, queue), COALESCE(:priority, priority),
       COALESCE(:max_attempts, max_attempts), CASE WHEN :keep THEN attempts ELSE 0 END,
       :now, :now, :now
FROM soniq_dead_letter_jobs WHERE id = :dead_id
RETURNING queue
"""

# Per-status counts for app.webhooks.get_delivery_stats (observability section above).
WEBHOOK_DELIVERY_COUNTS = """
SELECT status, count(*) FROM soniq_webhook_deliveries WHERE created_at >= :since GROUP BY 1
"""


# === Throughput rollup (migration 0007_throughput.sql) ==============================
# Done rows are deleted after result_ttl, so the dashboard's chart counts completions
# from soniq_throughput as well: workers tally Done acks per (minute, queue) in memory
# and add them here once per heartbeat, never a write per job. Times in microseconds.

# Run with executemany for a worker's whole tally, in one write transaction.
THROUGHPUT_ADD = """
INSERT INTO soniq_throughput (bucket_start, queue, completed)
VALUES (:bucket_start, :queue, :completed)
ON CONFLICT (bucket_start, queue) DO UPDATE SET completed = completed + excluded.completed
"""

# The chart shows at most a day; 8 days of minutes keeps a margin and the table small.
# In chunks like JOB_PRUNE (the primary key finds them): a sweep usually finds only the
# minutes aged out since the last one, but after a long pause it may find many.
THROUGHPUT_PRUNE = """
DELETE FROM soniq_throughput WHERE rowid IN (
    SELECT rowid FROM soniq_throughput WHERE bucket_start < :now - 8 * 86400000000
    ORDER BY bucket_start LIMIT :limit
)
"""

# Completions and dead letters per bucket of :bucket_us microseconds since :since; bucket n
# starts at epoch + n * bucket. Completions: the larger of the rollup's sum (minutes
# overlapping the bucket and since :since; it lags by up to a heartbeat) and the done rows
# still kept (fresh, but gone after result_ttl): both are lower bounds of the real count.
JOB_THROUGHPUT_ROLLUP = """
WITH done AS (
    SELECT completed_at / :bucket_us AS b, count(*) AS n FROM soniq_jobs
    WHERE status = 'done' AND completed_at >= :since GROUP BY 1
), rolled AS (
    SELECT bucket_start / :bucket_us AS b, sum(completed) AS n FROM soniq_throughput
    WHERE bucket_start > :since - 60000000 GROUP BY 1
), dead AS (
    SELECT dead_lettered_at / :bucket_us AS b, count(*) AS n FROM soniq_dead_letter_jobs
    WHERE dead_lettered_at >= :since GROUP BY 1
), buckets AS (SELECT b FROM done UNION SELECT b FROM rolled UNION SELECT b FROM dead)
SELECT buckets.b, max(coalesce(done.n, 0), coalesce(rolled.n, 0)) AS completed,
       coalesce(dead.n, 0) AS failed
FROM buckets LEFT JOIN done ON done.b = buckets.b LEFT JOIN rolled ON rolled.b = buckets.b
LEFT JOIN dead ON dead.b = buckets.b
ORDER BY buckets.b
"""


# --- test reset (app._reset(), the published testing guide) ----------------------
# What a test run leaves behind, dependencies first so no trigger has anything to settle.
# Definitions (schedules, webhooks, queue limits) stay.
RESET_RUNTIME_STATE = (
    "DELETE FROM soniq_job_deps",
    "DELETE FROM soniq_job_logs",
    "DELETE FROM soniq_flow_starts",
    "DELETE FROM soniq_throughput",
    "DELETE FROM soniq_webhook_deliveries",
    "DELETE FROM soniq_jobs",
    "DELETE FROM soniq_dead_letter_jobs",
    "DELETE FROM soniq_workers",
    "DELETE FROM soniq_leases",
)
