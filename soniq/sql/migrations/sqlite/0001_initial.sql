-- Soniq schema for SQLite, version 1. Forward-only: later changes go in 0002_*.sql and up.
--
-- Timestamps are INTEGER microseconds since the Unix epoch, UTC: they sort and
-- compare exactly (schedule_fire compares next_run_at for equality), and every
-- process computes "now" the same way, in Python. JSON lives in TEXT columns.

CREATE TABLE IF NOT EXISTS soniq_migrations (
    name        TEXT PRIMARY KEY,
    applied_at  INTEGER NOT NULL
);

CREATE TABLE soniq_jobs (
    id            TEXT PRIMARY KEY,
    job_name      TEXT    NOT NULL,
    args          TEXT    NOT NULL DEFAULT '{}',
    queue         TEXT    NOT NULL DEFAULT 'default',
    priority      INTEGER NOT NULL DEFAULT 100,
    status        TEXT    NOT NULL DEFAULT 'queued',
    attempts      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL DEFAULT 4,
    scheduled_at  INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    expires_at    INTEGER,
    result        TEXT,
    last_error    TEXT,
    worker_id     TEXT,
    lease         TEXT,
    dedup_key     TEXT,
    CONSTRAINT soniq_jobs_status_check
        CHECK (status IN ('queued', 'processing', 'done', 'cancelled')),
    CONSTRAINT soniq_jobs_priority_check CHECK (priority BETWEEN 1 AND 1000)
);

-- The claim query reads only queued rows in (priority, scheduled_at, created_at)
-- order. Partial indexes keep that read proportional to the backlog, never to
-- the history of done rows, and hand rows over already sorted (no temp B-tree).
-- One index serves "this queue", one "all queues".
CREATE INDEX soniq_jobs_claim_queue_idx
    ON soniq_jobs (queue, priority, scheduled_at, created_at) WHERE status = 'queued';
CREATE INDEX soniq_jobs_claim_all_idx
    ON soniq_jobs (priority, scheduled_at, created_at) WHERE status = 'queued';

-- Deduplication holds across processes because the database enforces it: at
-- most one live (queued or processing) job per dedup key.
CREATE UNIQUE INDEX soniq_jobs_dedup_idx
    ON soniq_jobs (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('queued', 'processing');

-- Crash recovery looks only at running jobs; pruning only at finished ones.
CREATE INDEX soniq_jobs_processing_idx ON soniq_jobs (worker_id) WHERE status = 'processing';
CREATE INDEX soniq_jobs_expiry_idx ON soniq_jobs (expires_at) WHERE status = 'done';
-- Listings (CLI, dashboard) page newest first.
CREATE INDEX soniq_jobs_created_idx ON soniq_jobs (created_at);

CREATE TABLE soniq_dead_letter_jobs (
    id                  TEXT PRIMARY KEY,
    job_name            TEXT    NOT NULL,
    args                TEXT    NOT NULL DEFAULT '{}',
    queue               TEXT    NOT NULL,
    priority            INTEGER NOT NULL,
    attempts            INTEGER NOT NULL,
    max_attempts        INTEGER NOT NULL,
    last_error          TEXT,
    traceback           TEXT,
    created_at          INTEGER,
    dead_lettered_at    INTEGER NOT NULL,
    resurrection_count  INTEGER NOT NULL DEFAULT 0,
    last_replayed_at    INTEGER
);
CREATE INDEX soniq_dead_letter_recent_idx ON soniq_dead_letter_jobs (dead_lettered_at DESC);

CREATE TABLE soniq_workers (
    id              TEXT PRIMARY KEY,
    hostname        TEXT    NOT NULL,
    pid             INTEGER NOT NULL,
    queues          TEXT,
    concurrency     INTEGER NOT NULL,
    started_at      INTEGER NOT NULL,
    last_heartbeat  INTEGER NOT NULL
);

-- Leader election (maintenance sweeps, the scheduler) by an expiring lease row.
CREATE TABLE soniq_leases (
    role        TEXT PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL
);

CREATE TABLE soniq_schedules (
    name           TEXT PRIMARY KEY,
    job_name       TEXT    NOT NULL,
    args           TEXT    NOT NULL DEFAULT '{}',
    queue          TEXT,
    priority       INTEGER,
    cron           TEXT,
    every_seconds  REAL,
    timezone       TEXT    NOT NULL DEFAULT 'UTC',
    status         TEXT    NOT NULL DEFAULT 'active',
    next_run_at    INTEGER,
    last_run_at    INTEGER,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    CONSTRAINT soniq_schedules_status_check CHECK (status IN ('active', 'paused')),
    CONSTRAINT soniq_schedules_kind_check CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);
