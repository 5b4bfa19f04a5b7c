"""Scheduler service and leader loop, on the memory backend and on PostgreSQL.

Time is injected (a ``Clock`` the test moves), so catch-up, drift and DST cases
run instantly and deterministically; only the end-to-end ``run_scheduler``
test uses the real clock, with a deadline instead of a sleep.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from soniq import Soniq, daily, every
from soniq.errors import ConfigurationError, JobValidationError, UnknownTaskError
from soniq.job import Job, Schedule
from soniq.scheduler import (
    Scheduler,
    SchedulerRunner,
    following_run,
    run_scheduler,
    sync_periodic,
)
from soniq.task_ref import task_ref
from tests.helpers import wait_until

UTC = timezone.utc
T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # a Monday, far from any DST change


class Clock:
    """A hand-moved UTC clock shared by the service and the runners under test."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
async def sched_app(soniq_app: Soniq) -> AsyncIterator[Soniq]:
    """An app on each backend (tests/backend_apps.py) with two jobs to schedule."""
    instance = soniq_app

    @instance.job(name="reports.build", queue="reports")
    async def build_report(region: str = "EU") -> str:
        return region

    @instance.job(name="jobs.cleanup")
    async def cleanup() -> None:
        return None

    yield instance


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def scheduler(sched_app: Soniq, clock: Clock) -> Scheduler:
    return Scheduler(sched_app, clock=clock)


def runner(app: Soniq, clock: Clock, owner: str = "runner-a", **kw: float) -> SchedulerRunner:
    return SchedulerRunner(app, owner_id=owner, clock=clock, **kw)


async def jobs_of(app: Soniq, name: str | None = None) -> list[Job]:
    await app.ensure_initialized()
    jobs = await app.backend.list_jobs(queue=None, status=None, limit=1000, offset=0)
    return [j for j in jobs if name is None or j.job_name == name]


# --- the service --------------------------------------------------------------


async def test_add_with_callable_keys_by_task_name(sched_app, scheduler, clock):
    build = sched_app._get_job_registry().get("reports.build").func
    stored = await scheduler.add(build, cron="0 9 * * *", args={"region": "US"}, priority=10)
    assert stored.name == stored.job_name == "reports.build"
    assert stored.args == {"region": "US"} and stored.priority == 10 and stored.queue is None
    assert stored.cron == "0 9 * * *" and stored.every_seconds is None
    assert stored.status == "active"
    assert stored.next_run_at == datetime(2030, 1, 8, 9, tzinfo=UTC)
    assert await scheduler.get("reports.build") == stored


async def test_add_by_task_name_string_builder_and_interval(scheduler, clock):
    by_string = await scheduler.add("jobs.cleanup", cron=daily().at("03:30"), name="nightly")
    assert (by_string.name, by_string.job_name, by_string.cron) == (
        "nightly", "jobs.cleanup", "30 3 * * *",
    )  # fmt: skip
    by_name = await scheduler.add(name="jobs.cleanup", every=timedelta(seconds=30))
    assert by_name.job_name == "jobs.cleanup" and by_name.every_seconds == 30.0
    assert by_name.next_run_at == T0 + timedelta(seconds=30)
    assert [s.name for s in await scheduler.list()] == ["jobs.cleanup", "nightly"]


async def test_add_with_task_ref_uses_its_defaults(sched_app, scheduler):
    ref = task_ref("jobs.cleanup", default_queue="ops", default_priority=7)
    stored = await scheduler.add(ref, every=60)
    assert (stored.job_name, stored.queue, stored.priority) == ("jobs.cleanup", "ops", 7)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.add("reports.build", cron="* * * * *", args={"nope": 1}), JobValidationError),
        (lambda s: s.add("no.such.task", cron="* * * * *"), UnknownTaskError),
        (lambda s: s.add("jobs.cleanup", cron="* * * * *", every=5), ConfigurationError),
        (lambda s: s.add("jobs.cleanup"), ConfigurationError),
        (lambda s: s.add("jobs.cleanup", cron="0 25 * * *"), ConfigurationError),
        (lambda s: s.add("jobs.cleanup", every=5, timezone="Nowhere/City"), ConfigurationError),
        (lambda s: s.add("jobs.cleanup", every=5, priority=0), JobValidationError),
        (lambda s: s.add(cron="* * * * *"), TypeError),
        (lambda s: s.add("reports.build", every=5, args=["EU"]), TypeError),
    ],
)
async def test_add_validates_now_and_stores_nothing(scheduler, call, error):
    with pytest.raises(error):
        await call(scheduler)
    assert await scheduler.list() == []


async def test_readd_updates_in_place_and_keeps_status_and_next_run(scheduler, clock):
    first = await scheduler.add("jobs.cleanup", every=60)
    assert await scheduler.pause("jobs.cleanup")
    clock.advance(minutes=5)
    again = await scheduler.add("jobs.cleanup", every=60, priority=5)
    assert again.status == "paused" and again.priority == 5
    assert again.next_run_at == first.next_run_at  # same timing: the pending run is kept
    changed = await scheduler.add("jobs.cleanup", every=120)
    assert changed.next_run_at == clock.now + timedelta(seconds=120)
    assert len(await scheduler.list()) == 1


async def test_pause_resume_remove_list_and_get(scheduler):
    await scheduler.add("jobs.cleanup", every=60)
    await scheduler.add("reports.build", cron="0 9 * * *")
    assert await scheduler.pause("jobs.cleanup") is True
    assert [s.name for s in await scheduler.list(status="paused")] == ["jobs.cleanup"]
    assert [s.name for s in await scheduler.list(status="active")] == ["reports.build"]
    assert await scheduler.resume("jobs.cleanup") is True
    assert await scheduler.list(status="paused") == []
    assert await scheduler.remove("jobs.cleanup") is True
    assert await scheduler.remove("jobs.cleanup") is False
    assert await scheduler.get("jobs.cleanup") is None
    assert await scheduler.pause("missing") is False
    assert await scheduler.resume("missing") is False
    with pytest.raises(ConfigurationError, match="status"):
        await scheduler.list(status="running")


async def test_app_scheduler_is_the_service(sched_app):
    assert isinstance(sched_app.scheduler, Scheduler)
    assert sched_app.scheduler is sched_app.scheduler
    stored = await sched_app.scheduler.add("jobs.cleanup", every=timedelta(minutes=5))
    assert await sched_app.scheduler.get("jobs.cleanup") == stored


# --- the runner -----------------------------------------------------------------


async def test_due_schedule_enqueues_one_job_and_advances(sched_app, scheduler, clock):
    sched = await scheduler.add("reports.build", every=60, args={"region": "US"}, priority=3)
    run = runner(sched_app, clock)
    assert await run.tick_once() == 0  # not due yet
    clock.now = sched.next_run_at
    assert await run.tick_once() == 1
    [job] = await jobs_of(sched_app)
    assert (job.job_name, job.args, job.queue, job.priority) == (
        "reports.build", {"region": "US"}, "reports", 3,
    )  # fmt: skip
    assert job.dedup_key == f"schedule:reports.build:{sched.next_run_at.isoformat()}"
    after = await scheduler.get("reports.build")
    assert after.last_run_at == sched.next_run_at
    assert after.next_run_at == sched.next_run_at + timedelta(seconds=60)
    assert await run.tick_once() == 0  # same instant: nothing more is due


async def test_downtime_produces_one_catch_up_run_not_a_burst(sched_app, scheduler, clock):
    sched = await scheduler.add("jobs.cleanup", every=60)
    clock.advance(hours=3)  # 180 runs were missed while no scheduler ran
    run = runner(sched_app, clock)
    assert await run.tick_once() == 1
    assert await run.tick_once() == 0
    assert len(await jobs_of(sched_app)) == 1
    # The cadence stays on the original grid: T0 + 60s * k, the first one after now.
    stored = await scheduler.get("jobs.cleanup")
    assert stored.next_run_at == T0 + timedelta(hours=3, seconds=60)
    assert (stored.next_run_at - sched.next_run_at) % timedelta(seconds=60) == timedelta(0)


async def test_cron_catch_up_is_one_run_then_the_next_slot(sched_app, scheduler, clock):
    await scheduler.add("jobs.cleanup", cron=every(5).minutes())
    clock.advance(hours=1, seconds=7)
    assert await runner(sched_app, clock).tick_once() == 1
    stored = await scheduler.get("jobs.cleanup")
    assert stored.next_run_at == T0 + timedelta(hours=1, minutes=5)
    assert len(await jobs_of(sched_app)) == 1


async def test_interval_runs_do_not_drift_when_ticks_are_late(sched_app, scheduler, clock):
    sched = await scheduler.add("jobs.cleanup", every=60)
    run = runner(sched_app, clock)
    for k in range(1, 6):
        clock.now = sched.next_run_at + timedelta(seconds=60 * (k - 1) + 7)  # 7 s late
        assert await run.tick_once() == 1
    stored = await scheduler.get("jobs.cleanup")
    assert stored.next_run_at == sched.next_run_at + timedelta(seconds=300)
    assert len(await jobs_of(sched_app)) == 5


async def test_paused_schedule_enqueues_nothing(sched_app, scheduler, clock):
    await scheduler.add("jobs.cleanup", every=60)
    await scheduler.pause("jobs.cleanup")
    run = runner(sched_app, clock)
    for _ in range(3):
        clock.advance(minutes=10)
        assert await run.tick_once() == 0
    assert await jobs_of(sched_app) == []


async def test_resume_does_not_burst_missed_runs(sched_app, scheduler, clock):
    await scheduler.add("jobs.cleanup", every=60)
    await scheduler.pause("jobs.cleanup")
    clock.advance(hours=5)
    assert await scheduler.resume("jobs.cleanup")
    resumed = await scheduler.get("jobs.cleanup")
    assert resumed.status == "active" and resumed.next_run_at > clock.now
    run = runner(sched_app, clock)
    assert await run.tick_once() == 0
    clock.now = resumed.next_run_at
    assert await run.tick_once() == 1
    assert len(await jobs_of(sched_app)) == 1


async def test_resume_of_an_active_schedule_keeps_its_pending_run(sched_app, scheduler, clock):
    sched = await scheduler.add("jobs.cleanup", every=60)
    clock.advance(minutes=30)
    assert await scheduler.resume("jobs.cleanup")
    assert (await scheduler.get("jobs.cleanup")).next_run_at == sched.next_run_at


async def test_cron_is_evaluated_in_the_schedule_time_zone(sched_app, scheduler, clock):
    clock.now = datetime(2030, 7, 10, 0, 0, tzinfo=UTC)
    sched = await scheduler.add("jobs.cleanup", cron="0 9 * * *", timezone="Europe/Berlin")
    assert sched.next_run_at == datetime(2030, 7, 10, 7, 0, tzinfo=UTC)  # 09:00 CEST
    run = runner(sched_app, clock)
    clock.now = datetime(2030, 7, 10, 6, 59, tzinfo=UTC)
    assert await run.tick_once() == 0
    clock.now = datetime(2030, 7, 10, 7, 0, tzinfo=UTC)
    assert await run.tick_once() == 1
    assert (await scheduler.get("jobs.cleanup")).next_run_at == datetime(2030, 7, 11, 7, tzinfo=UTC)


async def test_cron_across_dst_keeps_local_time(sched_app, scheduler, clock):
    # Berlin leaves summer time on 2030-10-27: 09:00 local moves from 07:00Z to 08:00Z.
    clock.now = datetime(2030, 10, 26, 7, 30, tzinfo=UTC)
    await scheduler.add("jobs.cleanup", cron="0 9 * * *", timezone="Europe/Berlin")
    run = runner(sched_app, clock)
    clock.now = datetime(2030, 10, 27, 8, 0, tzinfo=UTC)
    assert await run.tick_once() == 1
    assert (await scheduler.get("jobs.cleanup")).next_run_at == datetime(
        2030, 10, 28, 8, tzinfo=UTC
    )


async def test_only_the_leader_fires_and_a_new_leader_does_not_refire(sched_app, scheduler, clock):
    sched = await scheduler.add("jobs.cleanup", every=60)
    clock.now = sched.next_run_at
    a, b = runner(sched_app, clock, "a"), runner(sched_app, clock, "b")
    assert await a.tick_once() == 1 and a.is_leader
    assert await b.tick_once() == 0 and not b.is_leader

    stop = asyncio.Event()
    stop.set()
    await a.run(stop)  # one pass, then hands the lease back
    assert not a.is_leader
    assert await b.tick_once() == 0 and b.is_leader  # leads now, but the run already fired
    clock.advance(seconds=60)
    assert await b.tick_once() == 1
    assert await a.tick_once() == 0
    dedup = sorted(j.dedup_key for j in await jobs_of(sched_app))
    assert len(dedup) == len(set(dedup)) == 2


async def test_two_leaders_racing_on_one_due_time_fire_once(sched_app, scheduler, clock):
    """A leader whose lease lapsed mid-tick cannot double-fire: the fire is compare-and-set."""
    sched = await scheduler.add("jobs.cleanup", every=60)
    clock.now = sched.next_run_at
    a, b = runner(sched_app, clock, "a"), runner(sched_app, clock, "b")
    stale = await sched_app.backend.schedule_list("active")
    assert await a.tick_once() == 1
    # b read the same row before a fired (its lease had lapsed); its fire is refused.
    assert await b._fire(stale[0], sched.next_run_at, clock.now) == 0
    assert len(await jobs_of(sched_app)) == 1


async def test_lease_expiry_hands_leadership_over(sched_app, scheduler, clock):
    a = runner(sched_app, clock, "a", lease_ttl=0.2)
    b = runner(sched_app, clock, "b", lease_ttl=0.2)
    await a.tick_once()
    assert a.is_leader
    assert await b.tick_once() == 0 and not b.is_leader

    async def b_leads() -> bool:
        await b.tick_once()
        return b.is_leader

    await wait_until(b_leads, timeout=5, message="standby scheduler to take over")


async def test_unregistered_task_is_enqueued_by_name(sched_app, clock):
    """Another service's task: this scheduler process does not import it."""
    await sched_app.ensure_initialized()
    await sched_app.backend.schedule_upsert(
        Schedule(name="remote", job_name="billing.remote", args={"x": 1}, every_seconds=60,
                 queue="billing", next_run_at=T0)
    )  # fmt: skip
    assert await runner(sched_app, clock).tick_once() == 1
    [job] = await jobs_of(sched_app)
    assert (job.job_name, job.args, job.queue) == ("billing.remote", {"x": 1}, "billing")


async def test_run_that_cannot_be_built_is_skipped_and_logged(sched_app, clock, caplog):
    await sched_app.ensure_initialized()
    await sched_app.backend.schedule_upsert(
        Schedule(name="broken", job_name="reports.build", args={"nope": 1}, every_seconds=60,
                 next_run_at=T0)
    )  # fmt: skip
    with caplog.at_level(logging.ERROR, logger="soniq.scheduler"):
        assert await runner(sched_app, clock).tick_once() == 0
    assert "broken" in caplog.text
    assert (await sched_app.backend.schedule_get("broken")).next_run_at == T0 + timedelta(
        seconds=60
    )
    assert await jobs_of(sched_app) == []


# --- @app.periodic and the process entry point -----------------------------------


async def test_sync_periodic_stores_every_periodic_job_and_keeps_pauses(sched_app: Soniq) -> None:
    @sched_app.periodic(cron=daily().at("09:00"), name="reports.daily")
    async def daily_report() -> None: ...

    @sched_app.periodic(every=timedelta(seconds=30), name="metrics.flush", queue="metrics")
    async def flush_metrics() -> None: ...

    stored = await sync_periodic(sched_app, now=T0)
    assert {s.name: (s.cron, s.every_seconds) for s in stored} == {
        "metrics.flush": (None, 30.0),
        "reports.daily": ("0 9 * * *", None),
    }
    await sched_app.scheduler.pause("reports.daily")
    again = {s.name: s for s in await sync_periodic(sched_app, now=T0 + timedelta(hours=1))}
    assert again["reports.daily"].status == "paused"
    assert again["metrics.flush"].next_run_at == T0 + timedelta(seconds=30)  # kept for catch-up
    assert len(await sched_app.scheduler.list()) == 2


async def test_run_scheduler_fires_periodic_jobs_until_stopped(sched_app: Soniq) -> None:
    @sched_app.periodic(every=0.1, name="tick.tock")
    async def tick_tock() -> None: ...

    stop = asyncio.Event()
    task = asyncio.create_task(run_scheduler(sched_app, stop, tick=0.05))

    async def fired_twice() -> bool:
        return len(await jobs_of(sched_app, "tick.tock")) >= 2

    try:
        await wait_until(fired_twice, timeout=10, message="two periodic runs")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=5)
    # The lease was handed back: another scheduler leads at once.
    assert await sched_app.backend.try_lead("scheduler", "next-one", 5.0)


# --- pure cadence maths -------------------------------------------------------------


def test_following_run_for_intervals_stays_on_the_grid():
    s = Schedule(name="x", job_name="x", every_seconds=60)
    assert following_run(s, T0, T0) == T0 + timedelta(seconds=60)
    assert following_run(s, T0, T0 + timedelta(seconds=59)) == T0 + timedelta(seconds=60)
    assert following_run(s, T0, T0 + timedelta(seconds=60)) == T0 + timedelta(seconds=120)
    assert following_run(s, T0, T0 + timedelta(days=1, seconds=1)) == T0 + timedelta(
        days=1, seconds=60
    )


def test_following_run_for_cron_is_the_next_slot_after_now():
    s = Schedule(name="x", job_name="x", cron="*/15 * * * *", timezone="UTC")
    assert following_run(s, T0, T0 + timedelta(minutes=31)) == T0 + timedelta(minutes=45)
    berlin = replace(s, cron="0 9 * * *", timezone="Europe/Berlin")
    assert following_run(berlin, T0, T0) == datetime(2030, 1, 8, 8, tzinfo=UTC)
