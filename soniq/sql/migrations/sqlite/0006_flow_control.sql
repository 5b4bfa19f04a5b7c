-- Flow control: progress, cancelling running jobs, limits enforced in the claim, and
-- dependencies between jobs (soniq/flow.py; statements in sqlite_queries.py, section
-- "Flow control"). The same rules as migrations/postgres/0006_flow_control.sql.
-- SQLite runs one writer at a time, so no locking is needed beyond BEGIN IMMEDIATE.

ALTER TABLE soniq_jobs ADD COLUMN progress REAL;
ALTER TABLE soniq_jobs ADD COLUMN progress_message TEXT;
ALTER TABLE soniq_jobs ADD COLUMN cancel_requested_at INTEGER;
ALTER TABLE soniq_jobs ADD COLUMN concurrency_key TEXT;
ALTER TABLE soniq_jobs ADD COLUMN has_dependants INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS soniq_queue_limits (
    queue            TEXT PRIMARY KEY,
    max_concurrency  INTEGER CHECK (max_concurrency >= 1),
    rate_count       INTEGER CHECK (rate_count >= 1),
    rate_seconds     REAL CHECK (rate_seconds > 0),
    updated_at       INTEGER NOT NULL,
    CONSTRAINT soniq_queue_limits_rate_check CHECK ((rate_count IS NULL) = (rate_seconds IS NULL))
);

-- One row per start of a rate-limited job, per rate it falls under; claims prune it.
CREATE TABLE IF NOT EXISTS soniq_flow_starts (
    scope       TEXT    NOT NULL,
    started_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS soniq_flow_starts_idx ON soniq_flow_starts (scope, started_at);

CREATE TABLE IF NOT EXISTS soniq_job_deps (
    job_id      TEXT NOT NULL,
    depends_on  TEXT NOT NULL,
    run_at      INTEGER,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX IF NOT EXISTS soniq_job_deps_on_idx ON soniq_job_deps (depends_on);

-- The dependency rule (see the PostgreSQL file). SQLite does not let a trigger fire
-- itself, so a cancellation walks every waiting job below the failed one at once
-- (recursive), and names the failed job. "now" in a trigger: the row's own updated_at
-- when the statement wrote one, else the clock in microseconds.

CREATE TRIGGER IF NOT EXISTS soniq_jobs_dependants_done
AFTER UPDATE OF status ON soniq_jobs
WHEN OLD.has_dependants = 1 AND NEW.status = 'done' AND OLD.status <> 'done'
BEGIN
    UPDATE soniq_jobs
    SET scheduled_at = max(NEW.updated_at, coalesce(
            (SELECT d.run_at FROM soniq_job_deps d
             WHERE d.job_id = soniq_jobs.id AND d.depends_on = OLD.id), 0)),
        updated_at = NEW.updated_at
    WHERE status = 'queued'
      AND id IN (SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id)
      AND NOT EXISTS (SELECT 1 FROM soniq_job_deps d
                      WHERE d.job_id = soniq_jobs.id AND d.depends_on <> OLD.id);
    DELETE FROM soniq_job_deps WHERE depends_on = OLD.id;
END;

CREATE TRIGGER IF NOT EXISTS soniq_jobs_dependants_cancelled
AFTER UPDATE OF status ON soniq_jobs
WHEN OLD.has_dependants = 1 AND NEW.status = 'cancelled' AND OLD.status <> 'cancelled'
BEGIN
    UPDATE soniq_jobs
    SET status = 'cancelled', completed_at = NEW.updated_at, updated_at = NEW.updated_at,
        last_error = printf('dependency %s was cancelled', OLD.id)
    WHERE status = 'queued' AND id IN (
        WITH RECURSIVE down(id) AS (
            SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id
            UNION
            SELECT d.job_id FROM soniq_job_deps d JOIN down ON d.depends_on = down.id
        )
        SELECT id FROM down
    );
    DELETE FROM soniq_job_deps WHERE depends_on = OLD.id OR job_id IN (
        SELECT id FROM soniq_jobs WHERE status = 'cancelled'
          AND last_error = printf('dependency %s was cancelled', OLD.id)
    );
END;

CREATE TRIGGER IF NOT EXISTS soniq_jobs_dependants_gone
AFTER DELETE ON soniq_jobs
WHEN OLD.has_dependants = 1 AND OLD.status IN ('queued', 'processing')
BEGIN
    -- Dead-lettered (the dead-letter row is copied before the delete): cancel them.
    UPDATE soniq_jobs
    SET status = 'cancelled',
        completed_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
        last_error = printf('dependency %s was dead-lettered', OLD.id)
    WHERE EXISTS (SELECT 1 FROM soniq_dead_letter_jobs WHERE id = OLD.id)
      AND status = 'queued' AND id IN (
        WITH RECURSIVE down(id) AS (
            SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id
            UNION
            SELECT d.job_id FROM soniq_job_deps d JOIN down ON d.depends_on = down.id
        )
        SELECT id FROM down
    );
    -- Otherwise it finished and its row went (result_ttl = 0, delete_job): as done.
    UPDATE soniq_jobs
    SET scheduled_at = max(
            CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER),
            coalesce((SELECT d.run_at FROM soniq_job_deps d
                      WHERE d.job_id = soniq_jobs.id AND d.depends_on = OLD.id), 0)),
        updated_at = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)
    WHERE NOT EXISTS (SELECT 1 FROM soniq_dead_letter_jobs WHERE id = OLD.id)
      AND status = 'queued'
      AND id IN (SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id)
      AND NOT EXISTS (SELECT 1 FROM soniq_job_deps d
                      WHERE d.job_id = soniq_jobs.id AND d.depends_on <> OLD.id);
    DELETE FROM soniq_job_deps WHERE depends_on = OLD.id OR job_id IN (
        SELECT id FROM soniq_jobs WHERE status = 'cancelled'
          AND last_error = printf('dependency %s was dead-lettered', OLD.id)
    );
END;

-- A job asked to cancel while it ran never returns to the queue.
CREATE TRIGGER IF NOT EXISTS soniq_jobs_keep_cancelled
AFTER UPDATE OF status ON soniq_jobs
WHEN NEW.status = 'queued' AND NEW.cancel_requested_at IS NOT NULL
BEGIN
    UPDATE soniq_jobs
    SET status = 'cancelled', completed_at = NEW.updated_at, worker_id = NULL, lease = NULL,
        last_error = 'JobCancelledError: cancelled by cancel_job() while it ran'
    WHERE id = NEW.id;
END;
