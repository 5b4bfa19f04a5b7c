-- Claim order is priority, then run time, then enqueue order (FIFO), on every
-- backend. Jobs enqueued in one statement share scheduled_at and created_at
-- (both now() of one transaction), so neither can break the tie: seq records
-- the order of insertion. Adding the column rewrites soniq_jobs once.
ALTER TABLE soniq_jobs ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;

DROP INDEX soniq_jobs_claim_queue_idx;
DROP INDEX soniq_jobs_claim_all_idx;
CREATE INDEX soniq_jobs_claim_queue_idx
    ON soniq_jobs (queue, priority, scheduled_at, seq) WHERE status = 'queued';
CREATE INDEX soniq_jobs_claim_all_idx
    ON soniq_jobs (priority, scheduled_at, seq) WHERE status = 'queued';
