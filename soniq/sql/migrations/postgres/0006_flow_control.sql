-- Flow control: progress, cancelling running jobs, limits enforced in the claim, and
-- dependencies between jobs (soniq/flow.py; statements in postgres_queries.py, section
-- "Flow control"). Forward-only.
--
-- Nothing here is on the path of a job that uses none of it: the new columns have no
-- index, the claim of an app without limits is unchanged, and the two triggers fire
-- only for a row that has dependants (a WHEN test on a column of the row itself).

-- progress / progress_message: ctx.progress (throttled writes, lease-guarded).
-- cancel_requested_at: cancel_job() on a running job; its worker stops it, and a job
--   asked to cancel never goes back to the queue (trigger below).
-- concurrency_key: @app.job(concurrency_key=...), computed at enqueue.
-- has_dependants: some job was enqueued with depends_on this one; its end settles them.
ALTER TABLE soniq_jobs
    ADD COLUMN IF NOT EXISTS progress real,
    ADD COLUMN IF NOT EXISTS progress_message text,
    ADD COLUMN IF NOT EXISTS cancel_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS concurrency_key text,
    ADD COLUMN IF NOT EXISTS has_dependants boolean NOT NULL DEFAULT false;

-- app.queue_limits(): read by every worker (so a limit holds across hosts), and by
-- each limited claim inside its transaction.
CREATE TABLE IF NOT EXISTS soniq_queue_limits (
    queue            text PRIMARY KEY,
    max_concurrency  integer CHECK (max_concurrency >= 1),
    rate_count       integer CHECK (rate_count >= 1),
    rate_seconds     double precision CHECK (rate_seconds > 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT soniq_queue_limits_rate_check CHECK ((rate_count IS NULL) = (rate_seconds IS NULL))
);

-- One row per start of a rate-limited job, per rate it falls under ('queue:<name>',
-- 'task:<name>'): a sliding window counts the rows younger than it. Claims delete the
-- rows that left their window, so the table stays at about N rows per rate.
CREATE TABLE IF NOT EXISTS soniq_flow_starts (
    scope       text        NOT NULL,
    started_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS soniq_flow_starts_idx ON soniq_flow_starts (scope, started_at);

-- depends_on: one row per (waiting job, job it waits for), deleted as each finishes.
-- run_at is the waiting job's own scheduled_at (it runs at the later of the two).
-- No foreign keys: they would add a lookup to every delete of soniq_jobs.
CREATE TABLE IF NOT EXISTS soniq_job_deps (
    job_id      uuid NOT NULL,
    depends_on  uuid NOT NULL,
    run_at      timestamptz,
    PRIMARY KEY (job_id, depends_on)
);
CREATE INDEX IF NOT EXISTS soniq_job_deps_on_idx ON soniq_job_deps (depends_on);

-- The dependency rule, in one place for every path that ends a job (ack, dead letter,
-- crash recovery, cancel, delete), whoever writes it:
--   * done (or deleted while live, e.g. result_ttl = 0): the dependants' rows for it go;
--     a dependant with none left becomes due (scheduled_at = its own run time or now).
--   * cancelled or dead-lettered: every job waiting on it, directly or through other
--     waiting jobs, is cancelled with the error "dependency <id> was <how>".
-- A waiting job is a queued row with scheduled_at = 9999-12-31 (soniq.flow.WAITING_AT),
-- which no claim ever takes, so the claim needs no extra predicate.
CREATE OR REPLACE FUNCTION soniq_settle_dependants() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    how   text;
    woken integer;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        how := CASE NEW.status WHEN 'done' THEN 'done' ELSE 'cancelled' END;
    ELSIF EXISTS (SELECT 1 FROM soniq_dead_letter_jobs WHERE id = OLD.id) THEN
        how := 'dead-lettered';  -- the dead-letter row was written by the same statement
    ELSE
        how := 'done';
    END IF;
    -- Lock the dependants, in id order: two of a job's dependencies finishing in two
    -- transactions at once then settle it one after the other, and the second one sees
    -- the first one's deletion (READ COMMITTED: a fresh snapshot per statement).
    PERFORM 1 FROM soniq_jobs
    WHERE id IN (SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id)
    ORDER BY id FOR UPDATE;
    IF how = 'done' THEN
        WITH gone AS (
            DELETE FROM soniq_job_deps WHERE depends_on = OLD.id RETURNING job_id, run_at
        ), ready AS (
            UPDATE soniq_jobs j
            SET scheduled_at = greatest(clock_timestamp(), coalesce(g.run_at, '-infinity')),
                updated_at = now()
            FROM gone g
            WHERE j.id = g.job_id AND j.status = 'queued'
              AND NOT EXISTS (SELECT 1 FROM soniq_job_deps d
                              WHERE d.job_id = g.job_id AND d.depends_on <> OLD.id)
            RETURNING j.queue
        )
        SELECT count(pg_notify('soniq_new_job', q)) INTO woken
        FROM (SELECT DISTINCT queue AS q FROM ready) r;
    ELSE
        WITH RECURSIVE down(id) AS (
            SELECT job_id FROM soniq_job_deps WHERE depends_on = OLD.id
            UNION
            SELECT d.job_id FROM soniq_job_deps d JOIN down ON d.depends_on = down.id
        ), hit AS (
            UPDATE soniq_jobs j
            SET status = 'cancelled', completed_at = now(), updated_at = now(),
                last_error = format('dependency %s was %s', OLD.id, how)
            FROM down WHERE j.id = down.id AND j.status = 'queued'
            RETURNING j.id
        )
        DELETE FROM soniq_job_deps
        WHERE depends_on = OLD.id OR job_id IN (SELECT id FROM hit);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS soniq_jobs_settle_dependants ON soniq_jobs;
CREATE TRIGGER soniq_jobs_settle_dependants
    AFTER UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.has_dependants AND NEW.status IN ('done', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION soniq_settle_dependants();

DROP TRIGGER IF EXISTS soniq_jobs_settle_dependants_gone ON soniq_jobs;
CREATE TRIGGER soniq_jobs_settle_dependants_gone
    AFTER DELETE ON soniq_jobs
    FOR EACH ROW
    WHEN (OLD.has_dependants AND OLD.status IN ('queued', 'processing'))
    EXECUTE FUNCTION soniq_settle_dependants();

-- A job asked to cancel while it ran never returns to the queue: whichever path
-- would requeue it (its worker's retry or shutdown, crash recovery) cancels it instead.
CREATE OR REPLACE FUNCTION soniq_keep_cancelled() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'cancelled';
    NEW.completed_at := now();
    NEW.worker_id := NULL;
    NEW.lease := NULL;
    NEW.last_error := 'JobCancelledError: cancelled by cancel_job() while it ran';
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS soniq_jobs_keep_cancelled ON soniq_jobs;
CREATE TRIGGER soniq_jobs_keep_cancelled
    BEFORE UPDATE OF status ON soniq_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'queued' AND OLD.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION soniq_keep_cancelled();
