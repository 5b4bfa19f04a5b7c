-- Two indexes of 0001 that later migrations made redundant (issue 15). Every row version
-- paid for them: soniq_jobs_created_idx at insert, soniq_jobs_expiry_idx at each Done ack.
-- * soniq_jobs_created_idx (created_at): soniq_jobs_recent_idx (created_at, id) of 0004
--   serves every read it served, in the same order.
-- * soniq_jobs_expiry_idx (expires_at) WHERE status = 'done': 0008 created the same index
--   again as soniq_jobs_expires_idx, the name PostgreSQL's schema uses.
-- In-process drain, c16, 20,000 jobs, 7 alternations: 11.0-13.6k -> 12.2-15.7k jobs/s,
-- CPU per job -5% to -10% (bench/RESULTS.md, "SQLite: redundant indexes").
DROP INDEX IF EXISTS soniq_jobs_created_idx;
DROP INDEX IF EXISTS soniq_jobs_expiry_idx;
