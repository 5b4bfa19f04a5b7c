-- Completions per minute and queue, for the dashboard's throughput chart (job_throughput).
-- Done rows are deleted after result_ttl (at once with 0), so counting them loses every
-- completion older than a few minutes. Workers count Done acks in memory and add them
-- here once per heartbeat (throughput_add), so nothing is written per job; prune drops
-- rows older than 8 days. Statements in postgres_queries.py, section "Throughput rollup".
CREATE TABLE IF NOT EXISTS soniq_throughput (
    bucket_start  timestamptz NOT NULL,
    queue         text        NOT NULL,
    completed     bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket_start, queue)
);
