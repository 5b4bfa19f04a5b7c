-- Observability: webhooks (endpoints + delivery outbox) and per-job logs.
-- Forward-only. Timestamps are INTEGER microseconds since the epoch (UTC).

CREATE TABLE soniq_webhooks (
    id             TEXT PRIMARY KEY,
    url            TEXT    NOT NULL,
    -- NULL = every event; otherwise a JSON array of canonical event names.
    events         TEXT,
    secret         TEXT,
    allow_private  INTEGER NOT NULL DEFAULT 0,
    created_at     INTEGER NOT NULL
);

-- The outbox: one row per (event, webhook), inserted in the same transaction as
-- the job state change it reports. next_attempt_at doubles as the claim lease.
CREATE TABLE soniq_webhook_deliveries (
    id               TEXT PRIMARY KEY,
    webhook_id       TEXT    NOT NULL REFERENCES soniq_webhooks (id) ON DELETE CASCADE,
    event            TEXT    NOT NULL,
    job_id           TEXT,
    payload          TEXT    NOT NULL,
    status           TEXT    NOT NULL DEFAULT 'pending',
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    response_code    INTEGER,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    CONSTRAINT soniq_webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX soniq_webhook_deliveries_due_idx
    ON soniq_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX soniq_webhook_deliveries_hook_idx
    ON soniq_webhook_deliveries (webhook_id, created_at);

-- No foreign key to soniq_jobs: a dead-lettered job leaves soniq_jobs and its
-- logs must stay. Orphans are pruned by the logs sweep.
CREATE TABLE soniq_job_logs (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT    NOT NULL,
    logged_at  INTEGER NOT NULL,
    level      INTEGER NOT NULL,
    logger     TEXT    NOT NULL,
    message    TEXT    NOT NULL
);
CREATE INDEX soniq_job_logs_job_idx ON soniq_job_logs (job_id, id);
CREATE INDEX soniq_job_logs_time_idx ON soniq_job_logs (logged_at);
