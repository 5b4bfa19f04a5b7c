-- Flat with history (issue 15): the same indexes as migrations/postgres/0008_history.sql,
-- so a prune chunk (JOB_PRUNE, WEBHOOK_DELIVERIES_PRUNE in sqlite_queries.py) finds the
-- rows it deletes by index, and QUEUE_STATS counts done rows from a covering index,
-- instead of scanning the history kept.
CREATE INDEX IF NOT EXISTS soniq_jobs_expires_idx
    ON soniq_jobs (expires_at) WHERE status = 'done';

CREATE INDEX IF NOT EXISTS soniq_jobs_done_queue_idx
    ON soniq_jobs (queue) WHERE status = 'done';

CREATE INDEX IF NOT EXISTS soniq_dead_letter_queue_idx ON soniq_dead_letter_jobs (queue);

CREATE INDEX IF NOT EXISTS soniq_webhook_deliveries_settled_idx
    ON soniq_webhook_deliveries (created_at) WHERE status <> 'pending';
