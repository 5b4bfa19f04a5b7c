-- Soniq schema, version 1. Forward-only: later changes go in 0002_*.sql and up.

CREATE TABLE soniq_jobs (
    id            uuid PRIMARY KEY,
    job_name      text        NOT NULL,
    args          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue         text        NOT NULL DEFAULT 'default',
    priority      integer     NOT NULL DEFAULT 100,
    status        text        NOT NULL DEFAULT 'queued',
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 4,
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    expires_at    timestamptz,
    result        jsonb,
    last_error    text,
    worker_id     uuid,
    lease         uuid,
    dedup_key     text,
    CONSTRAINT soniq_jobs_status_check
        CHECK (status IN ('queued', 'processing', 'done', 'cancelled')),
    CONSTRAINT soniq_jobs_priority_check CHECK (priority BETWEEN 1 AND 1000)
);

-- The claim query reads only queued rows in (priority, scheduled_at) order.
-- Partial indexes keep that read proportional to the backlog, never to the
-- history of done rows. One index serves "these queues", one "all queues".
CREATE INDEX soniq_jobs_claim_queue_idx
    ON soniq_jobs (queue, priority, scheduled_at) WHERE status = 'queued';
CREATE INDEX soniq_jobs_claim_all_idx
    ON soniq_jobs (priority, scheduled_at) WHERE status = 'queued';

-- Deduplication holds across processes and transactions because the database
-- enforces it: at most one live (queued or processing) job per dedup key.
CREATE UNIQUE INDEX soniq_jobs_dedup_idx
    ON soniq_jobs (dedup_key)
    WHERE dedup_key IS NOT NULL AND status IN ('queued', 'processing');

-- The queue churns: vacuum it early so dead tuples never pile up under load.
ALTER TABLE soniq_jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_limit = 2000
);

CREATE TABLE soniq_dead_letter_jobs (
    id                  uuid PRIMARY KEY,
    job_name            text        NOT NULL,
    args                jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue               text        NOT NULL,
    priority            integer     NOT NULL,
    attempts            integer     NOT NULL,
    max_attempts        integer     NOT NULL,
    last_error          text,
    traceback           text,
    created_at          timestamptz,
    dead_lettered_at    timestamptz NOT NULL DEFAULT now(),
    resurrection_count  integer     NOT NULL DEFAULT 0,
    last_replayed_at    timestamptz
);
CREATE INDEX soniq_dead_letter_recent_idx ON soniq_dead_letter_jobs (dead_lettered_at DESC);

CREATE TABLE soniq_workers (
    id              uuid PRIMARY KEY,
    hostname        text        NOT NULL,
    pid             integer     NOT NULL,
    queues          text[],
    concurrency     integer     NOT NULL,
    started_at      timestamptz NOT NULL DEFAULT now(),
    last_heartbeat  timestamptz NOT NULL DEFAULT now()
);

-- Leader election (maintenance sweeps, the scheduler) by an expiring lease row:
-- it survives connection loss cleanly and works the same on every backend.
CREATE TABLE soniq_leases (
    role        text PRIMARY KEY,
    owner       text        NOT NULL,
    expires_at  timestamptz NOT NULL
);

CREATE TABLE soniq_schedules (
    name           text PRIMARY KEY,
    job_name       text        NOT NULL,
    args           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    queue          text,
    priority       integer,
    cron           text,
    every_seconds  double precision,
    timezone       text        NOT NULL DEFAULT 'UTC',
    status         text        NOT NULL DEFAULT 'active',
    next_run_at    timestamptz,
    last_run_at    timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT soniq_schedules_status_check CHECK (status IN ('active', 'paused')),
    CONSTRAINT soniq_schedules_kind_check CHECK ((cron IS NULL) <> (every_seconds IS NULL))
);
