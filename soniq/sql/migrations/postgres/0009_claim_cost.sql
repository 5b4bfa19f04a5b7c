-- Claims write fewer index entries (issue 15). Forward-only.
--
-- A claim changes a row's status, and every index whose predicate mentions status makes
-- that update non-HOT: the new row version gets an entry in every index on soniq_jobs
-- whose predicate it matches. The two dashboard listing indexes of 0004 had none, so
-- each claimed row added an entry to both, on the claim's critical path, for a state
-- that lasts as long as the job runs. Excluding 'processing' rows from them halves the
-- index work of a claim (EXPLAIN ANALYZE of a 64-row claim: ~1.3 ms -> ~0.8 ms;
-- bench/RESULTS.md). Listings find the few processing rows through
-- soniq_jobs_live_recent_idx instead (job_page_sql, JOB_LIST, JOB_TASK_NAMES).
--
-- Rebuilt inside the migration's transaction: on a big existing table, writes to
-- soniq_jobs wait for the two builds (a few seconds per million rows).
DROP INDEX IF EXISTS soniq_jobs_recent_idx;
CREATE INDEX soniq_jobs_recent_idx
    ON soniq_jobs (created_at, id) WHERE status <> 'processing';

DROP INDEX IF EXISTS soniq_jobs_task_recent_idx;
CREATE INDEX soniq_jobs_task_recent_idx
    ON soniq_jobs (job_name, created_at, id) WHERE status <> 'processing';
