-- A new job gets one listing index entry instead of three (issue 15). Forward-only.
--
-- Every index whose predicate a queued row matches gets an entry on the enqueue's
-- critical path. Before this file that was six: the key, the two claim indexes and the
-- three listing indexes of 0004/0009. With one listing index for the rows that are not
-- done, a 1,000-row COPY writes 24% less WAL (516 instead of 676 bytes per row) and
-- takes 10-25% less server time (bench/RESULTS.md, "Lean enqueue"); a retried job,
-- which goes back to queued, saves the same two entries.
--
-- * soniq_jobs_recent_idx and soniq_jobs_task_recent_idx keep done rows only: the
--   history, listed newest first, whole or by task (a Done ack writes them, as before).
-- * soniq_jobs_live_recent_idx holds every other row (queued, processing, cancelled),
--   keyed (status, queue, job_name, created_at, id): the rows of one status, queue and
--   task are one range, newest first at its end. A listing finds the keys present by
--   skip scan (one index descent each), reads the range of each key its filters let
--   through and merges them (postgres_queries.py, _listing): a page costs the number of
--   keys times a page, never the backlog.
--
-- Rebuilt inside the migration's transaction: on a big existing table, writes to
-- soniq_jobs wait for the three builds (a few seconds per million rows).
DROP INDEX IF EXISTS soniq_jobs_recent_idx;
CREATE INDEX soniq_jobs_recent_idx ON soniq_jobs (created_at, id) WHERE status = 'done';

DROP INDEX IF EXISTS soniq_jobs_task_recent_idx;
CREATE INDEX soniq_jobs_task_recent_idx
    ON soniq_jobs (job_name, created_at, id) WHERE status = 'done';

DROP INDEX IF EXISTS soniq_jobs_live_recent_idx;
CREATE INDEX soniq_jobs_live_recent_idx
    ON soniq_jobs (status, queue, job_name, created_at, id) WHERE status <> 'done';

-- A queue filter reads done rows newest first through soniq_jobs_recent_idx, which is
-- right for a queue with a history and a walk of the whole history for one without
-- (a new queue with a backlog: 288 ms at a million rows). Which is which depends on how
-- status and queue go together, which the planner only knows from statistics on the
-- pair: with them it reads such a queue's few done rows through
-- soniq_jobs_done_queue_idx instead (29 ms). ANALYZE (autovacuum's too) fills them.
CREATE STATISTICS IF NOT EXISTS soniq_jobs_status_queue (mcv) ON status, queue FROM soniq_jobs;
