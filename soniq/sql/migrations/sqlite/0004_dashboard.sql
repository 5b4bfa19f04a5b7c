-- Dashboard reads (soniq.dashboard): keyset pages of jobs and throughput over time.
-- The job list pages newest first with a (created_at, id) cursor, so page 500
-- costs what page 1 costs: each filter it offers has an index in that order.

-- Unfiltered pages, and queue/search filters (scan newest first, stop at a page).
CREATE INDEX IF NOT EXISTS soniq_jobs_recent_idx ON soniq_jobs (created_at, id);

-- Filter by status (queued, processing, cancelled rows are few next to done ones).
CREATE INDEX IF NOT EXISTS soniq_jobs_status_recent_idx ON soniq_jobs (status, created_at, id);

-- Filter by task, and the list of task names.
CREATE INDEX IF NOT EXISTS soniq_jobs_task_recent_idx ON soniq_jobs (job_name, created_at, id);

-- Throughput: completions per minute/hour, read by completion time.
CREATE INDEX IF NOT EXISTS soniq_jobs_completed_idx
    ON soniq_jobs (completed_at) WHERE status = 'done';

-- Dead letters by task (filter and the task-name list).
CREATE INDEX IF NOT EXISTS soniq_dead_letter_task_idx ON soniq_dead_letter_jobs (job_name);
