-- Flat with history (issue 15): with a million done rows kept, pruning, the queue stats
-- and the claim touch what they need, not the whole history (statements in
-- postgres_queries.py: JOB_PRUNE, QUEUE_STATS, WEBHOOK_DELIVERIES_PRUNE; batches in
-- PostgresBackend.prune). Forward-only.
--
-- Both soniq_jobs indexes are partial on done rows: a claim or a retry never writes
-- them; each Done ack adds one entry to each (bench/RESULTS.md, "Flat with history",
-- measures the cost). Built inside the migration's transaction: on a big existing
-- table, writes to soniq_jobs wait for the build (about a second per million done rows).

-- Expired results, oldest first. soniq_jobs_completed_idx (0004) cannot serve:
-- expires_at is completed_at + the acking worker's result_ttl, which differs between
-- apps and over time, and a batch that comes back short would walk every kept done
-- row to prove there is no other.
CREATE INDEX IF NOT EXISTS soniq_jobs_expires_idx
    ON soniq_jobs (expires_at) WHERE status = 'done';

-- get_queue_stats() counts done rows per queue exactly, by an index-only scan: one key
-- per queue, so btree deduplication keeps it at a few bytes per row (about 7 MB for a
-- million rows, against 150 MB of table).
CREATE INDEX IF NOT EXISTS soniq_jobs_done_queue_idx
    ON soniq_jobs (queue) WHERE status = 'done';

-- Dead letters per queue, for the same stats (written once per dead letter).
CREATE INDEX IF NOT EXISTS soniq_dead_letter_queue_idx ON soniq_dead_letter_jobs (queue);

-- Settled webhook deliveries older than a week, oldest first.
CREATE INDEX IF NOT EXISTS soniq_webhook_deliveries_settled_idx
    ON soniq_webhook_deliveries (created_at) WHERE status <> 'pending';

-- Fresh jobs on pages of their own. With the default fillfactor (100) an insert goes
-- wherever the free-space map knows a few spare bytes, and a big history (or pruning's
-- holes in it) has some on nearly every page: 20,000 new jobs landed on 17,632 old pages,
-- so each claim and ack touched a cold page per job (bench/RESULTS.md, "Flat with
-- history"). At 90 an insert skips pages less than 10% free, and an update can keep
-- the new row version on its own page. Existing pages are left as they are.
ALTER TABLE soniq_jobs SET (fillfactor = 90);
