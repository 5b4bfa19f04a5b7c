-- Observability: webhooks (endpoints + delivery outbox) and per-job logs.
-- Forward-only. See docs/observability.md for the delivery guarantees.

CREATE TABLE soniq_webhooks (
    id             uuid PRIMARY KEY,
    url            text        NOT NULL,
    -- NULL = every event; otherwise canonical event names (job.queued, ...).
    events         text[],
    secret         text,
    allow_private  boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per (event, webhook), inserted in the same transaction as
-- the job state change it reports, then delivered (and retried) by workers.
-- next_attempt_at doubles as the claim lease: a worker pushes it forward while
-- it delivers, so a delivery whose worker died becomes due again by itself.
CREATE TABLE soniq_webhook_deliveries (
    id               uuid PRIMARY KEY,
    webhook_id       uuid        NOT NULL REFERENCES soniq_webhooks (id) ON DELETE CASCADE,
    event            text        NOT NULL,
    job_id           uuid,
    payload          text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    response_code    integer,
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT soniq_webhook_deliveries_status_check
        CHECK (status IN ('pending', 'delivered', 'failed'))
);
-- Delivery loop: only pending rows, due first; stays small however long the history.
CREATE INDEX soniq_webhook_deliveries_due_idx
    ON soniq_webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX soniq_webhook_deliveries_hook_idx
    ON soniq_webhook_deliveries (webhook_id, created_at DESC);

-- No foreign key to soniq_jobs: a dead-lettered job leaves soniq_jobs, and its
-- logs are what one wants most. Orphans are pruned by the logs sweep.
CREATE TABLE soniq_job_logs (
    id         bigserial   PRIMARY KEY,
    job_id     uuid        NOT NULL,
    logged_at  timestamptz NOT NULL,
    level      integer     NOT NULL,
    logger     text        NOT NULL,
    message    text        NOT NULL
);
CREATE INDEX soniq_job_logs_job_idx ON soniq_job_logs (job_id, id);
CREATE INDEX soniq_job_logs_time_idx ON soniq_job_logs (logged_at);
