-- Dashboard reads (soniq.dashboard): keyset pages of jobs and throughput over time.
--
-- The job list pages newest first with a (created_at, id) cursor, so page 500
-- costs what page 1 costs: each filter the list offers has an index in that
-- order, walked backwards from the cursor and stopped after one page.
-- Updates of soniq_jobs are never HOT (status is in the claim indexes'
-- predicates), so each index here costs one entry per row version written;
-- bench/RESULTS.md records the drain rate before and after.

-- Unfiltered pages, and queue/search filters (scan newest first, stop at a page).
CREATE INDEX IF NOT EXISTS soniq_jobs_recent_idx ON soniq_jobs (created_at, id);

-- "Show me what is queued / processing / cancelled": those rows are few next to
-- the done ones, so the index skips done rows (the unfiltered index serves
-- status=done, which is most rows) and costs nothing when a job completes.
CREATE INDEX IF NOT EXISTS soniq_jobs_live_recent_idx
    ON soniq_jobs (status, created_at, id) WHERE status <> 'done';

-- Filter by task, and the list of task names (a skip scan over this index).
CREATE INDEX IF NOT EXISTS soniq_jobs_task_recent_idx ON soniq_jobs (job_name, created_at, id);

-- Throughput: completions per minute/hour, read by completion time.
CREATE INDEX IF NOT EXISTS soniq_jobs_completed_idx
    ON soniq_jobs (completed_at) WHERE status = 'done';

-- Dead letters by task (filter and the task-name list).
CREATE INDEX IF NOT EXISTS soniq_dead_letter_task_idx ON soniq_dead_letter_jobs (job_name);
