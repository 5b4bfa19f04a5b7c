-- Completions per minute and queue, for the dashboard's throughput chart (job_throughput).
-- The same rules as migrations/postgres/0007_throughput.sql: done rows are deleted after
-- result_ttl, so workers count Done acks in memory and add them here once per heartbeat.
-- bucket_start: microseconds since the epoch, like every other SQLite timestamp here.
CREATE TABLE IF NOT EXISTS soniq_throughput (
    bucket_start  INTEGER NOT NULL,
    queue         TEXT    NOT NULL,
    completed     INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_start, queue)
);
