"""The scheduler as real processes: ``soniq scheduler`` x2 and ``soniq worker`` on PostgreSQL.

Proves, end to end, what the in-process tests in ``test_scheduler.py`` prove with
an injected clock: an ``every=1s`` job runs about once a second with exactly one
job per due time while the leading scheduler is SIGKILLed and the standby takes
over; a paused schedule enqueues nothing and resuming does not burst; a worker
warns once when periodic jobs exist and no scheduler leads. (Downtime catch-up
and cron times are covered with an injected clock in ``test_scheduler.py``.)

Every wait is a condition with a deadline; "time has passed" is proven by the
scheduler's own lease heartbeat (``soniq_leases.expires_at`` is renewed on each
tick), never by sleeping.
"""

from __future__ import annotations

import itertools
import os
import signal
import textwrap
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg

from soniq import Soniq
from tests.helpers import wait_until
from tests.processes import SoniqProcess

TICK = 0.2  # scheduler --tick; its lease TTL is then max(5, 3 * tick) = 5 s
LEASE_TTL = timedelta(seconds=5)
SCHEDULE = "tick"
WARNING = "no `soniq scheduler` has led recently"

JOBS = """
import asyncpg
from soniq import JobContext, Soniq

URL = {url!r}
app = Soniq(database_url=URL)


@app.periodic(every=1, name={name!r})
async def tick(ctx: JobContext):
    conn = await asyncpg.connect(URL)
    try:
        await conn.execute(
            "INSERT INTO ticks (job_id, ran_at) VALUES ($1, clock_timestamp())", ctx.job_id
        )
    finally:
        await conn.close()
"""


# --- processes ------------------------------------------------------------------
@contextmanager
def processes() -> Iterator[Any]:
    """Yields ``start(args)``; every process started through it is killed on exit."""
    started: list[SoniqProcess] = []

    def start(args: list[str], env: dict[str, str], cwd: Path) -> SoniqProcess:
        proc = SoniqProcess(args, env, cwd)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        with ExitStack() as stack:
            for proc in started:
                stack.callback(proc.kill)


def setup_jobs(url: str, tmp_path: Path) -> dict[str, str]:
    """Write the jobs module; return the environment for ``soniq`` subprocesses."""
    module = tmp_path / "tick_jobs.py"
    module.write_text(textwrap.dedent(JOBS.format(url=url, name=SCHEDULE)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env.update(
        SONIQ_JOBS_MODULES="tick_jobs",
        SONIQ_POLL_INTERVAL="0.2",
        SONIQ_HEARTBEAT_INTERVAL="0.5",
        SONIQ_CLEANUP_INTERVAL="0.3",
        SONIQ_LOG_LEVEL="INFO",
    )
    return env


SCHEDULER = ["scheduler", "--tick", str(TICK)]
WORKER = ["worker", "--concurrency", "2"]


# --- database -------------------------------------------------------------------
async def query(url: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def value(url: str, sql: str, *args: Any) -> Any:
    rows = await query(url, sql, *args)
    return rows[0][0] if rows else None


async def create_ticks_table(url: str) -> None:
    await query(url, "CREATE TABLE ticks (job_id uuid NOT NULL, ran_at timestamptz NOT NULL)")


async def lease(url: str) -> Any:
    rows = await query(
        url, "SELECT owner, expires_at, now() AS db_now FROM soniq_leases WHERE role = 'scheduler'"
    )
    return rows[0] if rows else None


async def tick_jobs(url: str) -> list[Any]:
    """The schedule's jobs with the due time from the dedup key, in due order."""
    rows = await query(
        url,
        "SELECT id, dedup_key, created_at FROM soniq_jobs WHERE job_name = $1",
        SCHEDULE,
    )
    prefix = f"schedule:{SCHEDULE}:"
    jobs = []
    for r in rows:
        assert r["dedup_key"].startswith(prefix), r["dedup_key"]
        due = datetime.fromisoformat(r["dedup_key"][len(prefix) :])
        jobs.append({"id": r["id"], "due": due, "created_at": r["created_at"]})
    return sorted(jobs, key=lambda j: j["due"])


def owner_pid(owner: str) -> int:
    """Scheduler owner ids are ``host:pid:random``."""
    return int(owner.rsplit(":", 2)[1])


async def next_run_of(app: Soniq, name: str) -> datetime:
    """The stored next run of a schedule that must exist and have one."""
    schedule = await app.scheduler.get(name)
    assert schedule is not None and schedule.next_run_at is not None, schedule
    return schedule.next_run_at


async def scheduler_ticked_past(url: str, moment: datetime) -> bool:
    """True once the leading scheduler has renewed its lease at or after ``moment`` (DB time)."""
    row = await lease(url)
    return row is not None and row["expires_at"] - LEASE_TTL >= moment


# --- 1. failover ----------------------------------------------------------------
async def test_every_second_job_runs_once_per_due_time_across_leader_sigkill(
    pg_url: str, tmp_path: Path
) -> None:
    await create_ticks_table(pg_url)
    env = setup_jobs(pg_url, tmp_path)
    with processes() as start:
        schedulers = [start(SCHEDULER, env, tmp_path), start(SCHEDULER, env, tmp_path)]
        worker = start(WORKER, env, tmp_path)

        async def ticks() -> int:
            return int(await value(pg_url, "SELECT count(*) FROM ticks"))

        await wait_until(lambda: _atleast(ticks, 3), timeout=20, interval=0.1, message="3 ticks")

        row = await lease(pg_url)
        by_pid = {p.pid: p for p in schedulers}
        assert owner_pid(row["owner"]) in by_pid, (row["owner"], list(by_pid))
        leader = by_pid[owner_pid(row["owner"])]
        standby = next(p for p in schedulers if p is not leader)
        assert "is now the leader" in leader.output
        assert "is now the leader" not in standby.output

        killed_at = await value(pg_url, "SELECT clock_timestamp()")
        leader.proc.send_signal(signal.SIGKILL)
        leader.kill()  # reap it

        async def standby_leads() -> bool:
            now = await lease(pg_url)
            return now is not None and owner_pid(now["owner"]) == standby.pid

        await wait_until(standby_leads, timeout=12, interval=0.1, message="standby takes the lease")
        standby.wait_for("is now the leader", timeout=5)

        async def after_kill() -> int:
            sql = "SELECT count(*) FROM soniq_jobs WHERE job_name = $1 AND created_at > $2"
            return int(await value(pg_url, sql, SCHEDULE, killed_at))

        await wait_until(
            lambda: _atleast(after_kill, 4), timeout=15, interval=0.1, message="4 more ticks"
        )

        async def all_ran() -> bool:
            return bool(
                await value(
                    pg_url,
                    "SELECT count(*) = 0 FROM soniq_jobs WHERE job_name = $1 AND status <> 'done'",
                    SCHEDULE,
                )
            )

        await wait_until(all_ran, timeout=10, interval=0.1, message="every tick job done")
        for proc in (standby, worker):
            proc.assert_alive()
        final = await lease(pg_url)
        assert owner_pid(final["owner"]) == standby.pid
        assert final["expires_at"] > final["db_now"]
        jobs = await tick_jobs(pg_url)
        tick_rows = await query(pg_url, "SELECT job_id, ran_at FROM ticks ORDER BY ran_at")

    # One job per due time, and each job ran exactly once.
    dues = [j["due"] for j in jobs]
    assert len(set(dues)) == len(dues), dues
    assert sorted(r["job_id"] for r in tick_rows) == sorted(j["id"] for j in jobs)

    # Due times stay on the one-second grid of the first run: no drift across the takeover.
    step = timedelta(seconds=1)
    for due in dues:
        assert (due - dues[0]) % step == timedelta(0), (dues[0], due)

    # About once a second, never a burst: consecutive enqueues are ~1 s apart except
    # across the takeover (a gap of up to the lease TTL), where the new leader
    # enqueues the one missed due time as catch-up and then returns to the grid.
    created = sorted(j["created_at"] for j in jobs)
    elapsed = (created[-1] - created[0]).total_seconds()
    assert len(jobs) <= elapsed + 2, (len(jobs), elapsed)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(created)]
    before = [j for j in jobs if j["created_at"] <= killed_at]
    after = [j for j in jobs if j["created_at"] > killed_at]
    takeover_gap = (after[0]["created_at"] - before[-1]["created_at"]).total_seconds()
    assert takeover_gap <= LEASE_TTL.total_seconds() + 2.5, takeover_gap
    # The new leader's first run is the one due time that was pending at the kill.
    assert after[0]["due"] == before[-1]["due"] + step, (before[-1], after[0])
    late = [j for j in jobs if (j["created_at"] - j["due"]).total_seconds() > 1.0]
    assert len(late) <= 1, late  # at most the single catch-up run of the takeover
    short = [g for g in gaps if g < 0.5]
    assert len(short) <= 1, gaps  # the catch-up may be followed closely by the next grid run
    steady = [g for g in gaps if g < 2]
    spacing = [(b - a).total_seconds() for a, b in itertools.pairwise(_ran(tick_rows))]
    print(
        f"\n{len(jobs)} jobs over {elapsed:.2f}s; takeover gap {takeover_gap:.2f}s; "
        f"steady enqueue spacing {min(steady):.3f}..{max(steady):.3f}s; "
        f"run spacing {min(spacing):.3f}..{max(spacing):.3f}s; late (catch-up) runs {len(late)}"
    )


def _ran(rows: list[Any]) -> list[datetime]:
    return [r["ran_at"] for r in rows]


async def _atleast(count: Any, n: int) -> bool:
    return bool(await count() >= n)


# --- 2. pause / resume ----------------------------------------------------------
async def test_paused_schedule_enqueues_nothing_and_resume_does_not_burst(
    pg_url: str, tmp_path: Path
) -> None:
    await create_ticks_table(pg_url)
    env = setup_jobs(pg_url, tmp_path)
    app = Soniq(database_url=pg_url)
    try:
        with processes() as start:
            sched = start(SCHEDULER, env, tmp_path)

            async def enqueued() -> int:
                return len(await tick_jobs(pg_url))

            await wait_until(
                lambda: _atleast(enqueued, 1), timeout=20, interval=0.1, message="a first tick"
            )
            assert await app.scheduler.pause(SCHEDULE) is True
            paused_at = await value(pg_url, "SELECT clock_timestamp()")
            count = await enqueued()
            stale_next = await next_run_of(app, SCHEDULE)

            # The leader keeps ticking (lease renewed) for 3 s of due times: nothing fires.
            await wait_until(
                lambda: scheduler_ticked_past(pg_url, paused_at + timedelta(seconds=3.2)),
                timeout=10, interval=0.1, message="scheduler ticking 3 s after the pause",
            )  # fmt: skip
            sched.assert_alive()
            assert await enqueued() == count
            paused = await app.scheduler.get(SCHEDULE)
            assert paused is not None
            assert paused.status == "paused" and paused.next_run_at == stale_next

            # Resume: the next run is after now; the ~3 missed ones are not replayed.
            resumed_at = await value(pg_url, "SELECT clock_timestamp()")
            assert await app.scheduler.resume(SCHEDULE) is True
            await wait_until(
                lambda: scheduler_ticked_past(pg_url, resumed_at + timedelta(seconds=3.2)),
                timeout=10, interval=0.1, message="scheduler ticking 3 s after resuming",
            )  # fmt: skip
            sched.assert_alive()
            new = (await tick_jobs(pg_url))[count:]
            assert 2 <= len(new) <= 4, new  # ~3 due times elapsed; never a burst
            assert all(j["due"] > resumed_at for j in new), (resumed_at, new)
            dues = [j["due"] for j in new]
            assert len(set(dues)) == len(dues)
    finally:
        await app.close()


# --- 4. worker warning ----------------------------------------------------------
async def _maintenance_ran(url: str, times: int) -> Any:
    """Wait until the worker's maintenance loop (which runs after the check) renewed ``times``."""
    seen: set[Any] = set()

    async def renewed() -> bool:
        v = await value(url, "SELECT expires_at FROM soniq_leases WHERE role = 'maintenance'")
        if v is not None:
            seen.add(v)
        return len(seen) >= times

    await wait_until(renewed, timeout=15, interval=0.05, message="worker maintenance sweeps")


async def test_worker_warns_once_when_periodic_jobs_have_no_scheduler(
    pg_url: str, tmp_path: Path
) -> None:
    env = setup_jobs(pg_url, tmp_path)
    with processes() as start:
        worker = start(WORKER, env, tmp_path)
        worker.wait_for(WARNING)
        await _maintenance_ran(pg_url, 3)
        assert worker.stop() == 0
    assert worker.output.count(WARNING) == 1, worker.output
    assert "soniq scheduler" in next(line for line in worker.lines if WARNING in line)
    assert await lease(pg_url) is None  # the worker's probe did not keep the lease


async def test_worker_does_not_warn_while_a_scheduler_leads(pg_url: str, tmp_path: Path) -> None:
    env = setup_jobs(pg_url, tmp_path)
    with processes() as start:
        sched = start(SCHEDULER, env, tmp_path)
        await wait_until(lambda: lease(pg_url), timeout=20, interval=0.1, message="a leader")
        leader = (await lease(pg_url))["owner"]
        worker = start(WORKER, env, tmp_path)
        worker.wait_for("worker starting")
        await _maintenance_ran(pg_url, 2)
        assert worker.stop() == 0
        assert (await lease(pg_url))["owner"] == leader  # the probe did not disturb the leader
        sched.assert_alive()
    assert WARNING not in worker.output, worker.output


# --- a standby (re)starting while the leader fires ------------------------------
async def test_standby_start_during_a_fire_does_not_rewind_the_schedule(
    pg_url: str, monkeypatch: Any
) -> None:
    """Each ``soniq scheduler`` start re-syncs ``@app.periodic`` schedules.

    The re-sync computes ``next_run_at`` from its own clock. If the leader fires
    just before that write lands, writing the computed (earlier) due time would
    rewind the schedule and the same due time would fire twice; the upsert keeps
    the stored due time when the timing is unchanged.
    """
    from soniq.scheduler import SchedulerRunner, sync_periodic

    t0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    now = [t0]
    app = Soniq(database_url=pg_url)

    @app.periodic(every=60, name="minutely")
    async def minutely() -> None: ...

    try:
        await sync_periodic(app, now=t0)
        due = await next_run_of(app, "minutely")
        leader = SchedulerRunner(app, owner_id="leader", clock=lambda: now[0])
        now[0] = due
        real_upsert = app.backend.schedule_upsert

        async def leader_fires_then_upsert(schedule: Any) -> Any:
            assert await leader.tick_once() == 1
            return await real_upsert(schedule)

        monkeypatch.setattr(app.backend, "schedule_upsert", leader_fires_then_upsert)
        await sync_periodic(app, now=due)  # the standby's start-up sync
        monkeypatch.undo()

        assert await next_run_of(app, "minutely") == due + timedelta(seconds=60)
        await query(pg_url, "UPDATE soniq_jobs SET status = 'done'")  # the run completed
        assert await leader.tick_once() == 0  # the same due time does not fire again
        assert int(await value(pg_url, "SELECT count(*) FROM soniq_jobs")) == 1
    finally:
        await app.close()
