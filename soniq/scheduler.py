"""Recurring jobs: the ``app.scheduler`` service and the leader loop of ``soniq scheduler``.

Schedules live in the backend (``soniq_schedules``), not in memory, so that any
number of scheduler processes can run for availability while exactly one (the
holder of the ``"scheduler"`` lease) fires them. Each firing is one atomic
``schedule_fire``: enqueue the job and move ``next_run_at`` forward, only if
``next_run_at`` still equals the due time the leader read. A leader that lost
its lease mid-tick therefore cannot fire a run twice.

After downtime the stored ``next_run_at`` lies in the past: the leader enqueues
that one run (a single catch-up, never a burst) and computes the following run
from *now*, anchored on the original cadence, so intervals do not drift.

Example::

    stop = asyncio.Event()
    await run_scheduler(app, stop)   # what `soniq scheduler` runs
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError, SoniqError
from soniq.job import NewJob, Schedule
from soniq.schedules import next_run, normalize_schedule, zone
from soniq.task_ref import TaskRef
from soniq.utils import to_utc, utc_now

if TYPE_CHECKING:
    from soniq.app import Soniq

log = logging.getLogger("soniq.scheduler")

Clock = Callable[[], datetime]
LEADER_ROLE = "scheduler"
STATUSES = ("active", "paused")


class Scheduler:
    """Add, pause, resume and remove schedules at runtime (exposed as ``app.scheduler``).

    Schedules are keyed by name (the task name unless ``name=`` is given);
    re-adding a name updates it in place. Firing needs a running
    ``soniq scheduler`` process.

    Example::

        await app.scheduler.add(cleanup, cron="0 9 * * *", args={"region": "US"})
        await app.scheduler.pause("jobs.cleanup")
        schedules = await app.scheduler.list(status="active")
    """

    def __init__(self, app: Soniq, *, clock: Clock | None = None) -> None:
        self.app = app
        self._clock = clock or utc_now
        self._loop_task: asyncio.Task[None] | None = None
        self._stop: asyncio.Event | None = None

    # --- in-process loop (the published package's start/stop) ---------------------
    @property
    def running(self) -> bool:
        """True while ``start()``'s loop runs in this process."""
        return self._loop_task is not None and not self._loop_task.done()

    async def start(self, check_interval: float = 30) -> None:
        """Fire schedules from this process until ``stop()``: what `soniq scheduler` runs.

        ``@app.periodic`` jobs are stored first. Leader election still applies, so
        this is safe beside `soniq scheduler` processes. Example::

            await app.scheduler.start(check_interval=5)
            ...
            await app.scheduler.stop()
        """
        if self.running:
            return
        self._stop = asyncio.Event()
        await sync_periodic(self.app)
        runner = SchedulerRunner(self.app, tick=check_interval, clock=self._clock)
        self._loop_task = asyncio.create_task(runner.run(self._stop), name="soniq-scheduler")

    async def stop(self) -> None:
        """Stop ``start()``'s loop and hand the lease back (no-op when not running)."""
        task, self._loop_task = self._loop_task, None
        if task is None or self._stop is None:
            return
        self._stop.set()
        await task

    async def add(
        self,
        target: Any = None,
        *,
        cron: Any = None,
        every: timedelta | float | None = None,
        args: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        name: str | None = None,
        timezone: str = "UTC",
    ) -> ScheduleName:
        """Create or update a schedule; arguments are validated now, as for ``enqueue``.

        ``target`` is a job function, a task-name string, a ``TaskRef``, or
        omitted when ``name=`` is a task name. Returns the schedule's name (what the
        published package returned), which also reads as the stored ``Schedule``
        (``.next_run_at``, ``.cron``...). Exactly one of ``cron=`` (a
        string or builder) or ``every=`` (a ``timedelta`` or seconds) is required;
        ``timezone`` is the IANA zone the cron expression is read in.

        Example::

            await app.scheduler.add(
                send_digest, cron=weekly().on("monday").at("08:00"),
                args={"team": "ops"}, timezone="Europe/Berlin", name="digest.ops",
            )
        """
        cron_expr, every_seconds = normalize_schedule(cron=cron, every=every)
        zone(timezone)
        job = self._validate(target, name, args, queue, priority)
        if isinstance(target, TaskRef):
            queue = queue if queue is not None else target.default_queue
            priority = priority if priority is not None else target.default_priority
        schedule = Schedule(
            name=name or job.job_name, job_name=job.job_name, args=dict(args or {}),
            queue=queue, priority=priority, cron=cron_expr, every_seconds=every_seconds,
            timezone=timezone,
        )  # fmt: skip
        await self.app.ensure_initialized()
        return ScheduleName(await store_schedule(self.app, schedule, to_utc(self._clock())))

    async def pause(self, name: str) -> bool:
        """Stop firing ``name`` until resumed; ``False`` if there is no such schedule.

        Example::

            await app.scheduler.pause("reports.daily")
        """
        await self.app.ensure_initialized()
        return await self.app.backend.schedule_set_status(name, "paused")

    async def resume(self, name: str) -> bool:
        """Fire ``name`` again, starting from the next run after now (no burst of missed runs).

        Example::

            await app.scheduler.resume("reports.daily")
        """
        await self.app.ensure_initialized()
        backend = self.app.backend
        current = await backend.schedule_get(name)
        if current is None:
            return False
        if current.status == "paused":
            now = self._clock()
            upcoming = next_run(current.cron, current.every_seconds, now, current.timezone)
            # One statement moves next_run_at and activates: no leader sees the stale due time.
            return await backend.schedule_set_status(name, "active", upcoming)
        return await backend.schedule_set_status(name, "active")

    async def remove(self, name: str) -> bool:
        """Delete the schedule; jobs it already enqueued stay. ``False`` if it did not exist.

        Example::

            await app.scheduler.remove("reports.daily")
        """
        await self.app.ensure_initialized()
        return await self.app.backend.schedule_delete(name)

    async def list(self, status: str | None = None) -> builtins.list[Schedule]:
        """All schedules by name, optionally only ``"active"`` or ``"paused"`` ones.

        Example::

            for s in await app.scheduler.list(status="active"):
                print(s.name, s.next_run_at)
        """
        if status is not None and status not in STATUSES:
            raise ConfigurationError(f"status must be 'active', 'paused' or None, got {status!r}")
        await self.app.ensure_initialized()
        return await self.app.backend.schedule_list(status)

    async def get(self, name: str) -> Schedule | None:
        """The schedule called ``name``, or ``None``.

        Example::

            sched = await app.scheduler.get("reports.daily")
        """
        await self.app.ensure_initialized()
        return await self.app.backend.schedule_get(name)

    def _validate(
        self,
        target: Any,
        name: str | None,
        args: dict[str, Any] | None,
        queue: str | None,
        priority: int | None,
    ) -> NewJob:
        if target is None and not name:
            raise TypeError("scheduler.add() needs a target (function, task name) or name=")
        if args is not None and not isinstance(args, dict):
            raise TypeError(f"args= must be a dict of the job's arguments, got {type(args)}")
        return self.app.build_job(
            name if target is None else target, args=args or {}, queue=queue, priority=priority
        )


class ScheduleName(str):
    """The name ``scheduler.add`` returns, which is also the stored ``Schedule``.

    A ``str`` (``pause(name)``, logging, JSON) as in the published package; the
    schedule's fields (``.next_run_at``, ``.cron``, ...) read through, and it equals
    the ``Schedule`` that ``scheduler.get(name)`` returns.
    """

    schedule: Schedule

    def __new__(cls, schedule: Schedule) -> ScheduleName:
        self = super().__new__(cls, schedule.name)
        self.schedule = schedule
        return self

    def __getattr__(self, attr: str) -> Any:
        if attr == "schedule":  # not set yet (copy, pickle): no recursion
            raise AttributeError(attr)
        return getattr(self.schedule, attr)

    def __getitem__(self, key: Any) -> Any:
        return self.schedule[key] if isinstance(key, str) else str.__getitem__(self, key)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Schedule):
            return self.schedule == other
        return str.__eq__(self, other)

    __hash__ = str.__hash__

    def __reduce__(self) -> tuple[Any, ...]:
        return (ScheduleName, (self.schedule,))


async def store_schedule(app: Soniq, schedule: Schedule, now: datetime) -> Schedule:
    """Upsert ``schedule`` with its next due time counted from ``now``.

    The backend keeps the stored status and, when the timing (cron, interval,
    time zone) is unchanged, the stored due time, atomically: that is what lets
    a scheduler that was down catch up (the stored due time is in the past),
    stops an app that re-adds its schedules on every start from pushing a long
    interval forward forever, and keeps a re-sync from rewinding a due time a
    leader has just advanced. The rule lives in each dialect's SCHEDULE_UPSERT.
    """
    upcoming = next_run(schedule.cron, schedule.every_seconds, now, schedule.timezone)
    return await app.backend.schedule_upsert(replace(schedule, next_run_at=upcoming))


async def sync_periodic(app: Soniq, *, now: datetime | None = None) -> list[Schedule]:
    """Store a schedule for every ``@app.periodic`` job; paused ones stay paused.

    Called by ``soniq scheduler`` at start. A periodic job whose stored
    arguments no longer fit its handler raises here, at start, not at 3 a.m.

    Example::

        schedules = await sync_periodic(app)
    """
    await app.ensure_initialized()
    now = now or utc_now()
    stored = []
    for definition in app.registry.definitions():
        if definition.periodic:
            schedule = _periodic_schedule(app, definition.name, definition.periodic)
            stored.append(await store_schedule(app, schedule, now))
    return stored


def _periodic_schedule(app: Soniq, task: str, periodic: dict[str, Any]) -> Schedule:
    cron_expr, every_seconds = normalize_schedule(
        cron=periodic.get("cron"), every=periodic.get("every")
    )
    args = dict(periodic.get("args") or {})
    queue, priority = periodic.get("queue"), periodic.get("priority")
    app.build_job(task, args=args, queue=queue, priority=priority)
    tz = str(periodic.get("timezone") or "UTC")
    zone(tz)
    return Schedule(
        name=task, job_name=task, args=args, queue=queue, priority=priority,
        cron=cron_expr, every_seconds=every_seconds, timezone=tz,
    )  # fmt: skip


class SchedulerRunner:
    """The loop of ``soniq scheduler``: while holding the lease, fire what is due.

    The lease (role ``"scheduler"``) doubles as a heartbeat: its expiry tells
    anyone looking whether a scheduler led recently. ``clock`` is injectable so
    tests can move time without sleeping.

    Example::

        runner = SchedulerRunner(app, tick=1.0)
        await runner.run(stop_event)
    """

    def __init__(
        self,
        app: Soniq,
        *,
        owner_id: str | None = None,
        tick: float = 1.0,
        lease_ttl: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not tick > 0:
            raise ConfigurationError(f"tick must be a positive number of seconds, got {tick!r}")
        self.app = app
        self.owner_id = owner_id or default_owner_id()
        self.tick = tick
        self.lease_ttl = lease_ttl if lease_ttl is not None else max(5.0, 3 * tick)
        self._clock = clock or utc_now
        self.is_leader = False

    async def run(self, stop: asyncio.Event) -> None:
        """Tick until ``stop`` is set, then hand the lease back so a standby takes over at once."""
        await self.app.ensure_initialized()
        try:
            while not stop.is_set():
                try:
                    await self.tick_once()
                except Exception:  # a database blip must not kill the scheduler
                    log.exception("Scheduler tick failed; retrying in %.1fs", self.tick)
                await _wait(stop, self.tick)
        finally:
            await self._release()

    async def tick_once(self, now: datetime | None = None) -> int:
        """Fire every due active schedule if this runner leads; returns how many fired."""
        await self.app.ensure_initialized()
        now = to_utc(now or self._clock())
        backend = self.app.backend
        leading = await backend.try_lead(LEADER_ROLE, self.owner_id, self.lease_ttl)
        self._note_leadership(leading)
        if not leading:
            return 0
        fired = 0
        for schedule in await backend.schedule_list("active"):
            if schedule.next_run_at is None:
                await store_schedule(self.app, schedule, now)
            elif schedule.next_run_at <= now:
                fired += await self._fire(schedule, schedule.next_run_at, now)
        return fired

    async def _fire(self, schedule: Schedule, due: datetime, now: datetime) -> int:
        upcoming = following_run(schedule, due, now)
        try:
            job = self._job_for(schedule, due)
        except SoniqError as exc:
            log.error(
                "Schedule %r cannot enqueue %s (%s); skipping the run due at %s",
                schedule.name, schedule.job_name, exc, due.isoformat(),
            )  # fmt: skip
            await self.app.backend.schedule_set_status(schedule.name, schedule.status, upcoming)
            return 0
        fired = await self.app.backend.schedule_fire(schedule.name, due, upcoming, job)
        if fired:
            log.info("Schedule %r enqueued %s (due %s)", schedule.name, job.id, due.isoformat())
        return int(fired)

    def _job_for(self, schedule: Schedule, due: datetime) -> NewJob:
        """The job of one run; the dedup key makes a run at most one queued job."""
        registry = self.app.registry
        # A task this process does not import (another service's) is enqueued by name.
        # TaskRef directly, not task_ref(): a stored name is not re-judged by the pattern.
        target: Any = schedule.job_name
        if schedule.job_name not in registry:
            target = TaskRef(schedule.job_name)
        return self.app.build_job(
            target, args=schedule.args, queue=schedule.queue, priority=schedule.priority,
            dedup_key=f"schedule:{schedule.name}:{due.isoformat()}",
        )  # fmt: skip

    def _note_leadership(self, leading: bool) -> None:
        if leading != self.is_leader:
            state = "is now" if leading else "is no longer"
            log.info("Scheduler %s %s the leader", self.owner_id, state)
        self.is_leader = leading

    async def _release(self) -> None:
        if not self.is_leader:
            return
        self.is_leader = False
        try:
            await self.app.backend.release_lead(LEADER_ROLE, self.owner_id)
        except Exception as exc:  # noqa: BLE001 - the lease expires on its own
            log.warning("Could not release the scheduler lease: %s", exc)


def following_run(schedule: Schedule, due: datetime, now: datetime) -> datetime:
    """The first run strictly after ``now``, keeping the schedule's cadence.

    Cron runs are absolute wall-clock times, so the next one after ``now`` is
    the answer. Interval runs stay on the grid ``due + k * every``: a tick that
    is late by a second does not push every later run back by a second.
    """
    if schedule.every_seconds is None:
        return next_run(schedule.cron, None, now, schedule.timezone)
    step = timedelta(seconds=schedule.every_seconds)
    missed = max(0, math.floor((now - due) / step))
    upcoming = due + step * (missed + 1)
    while upcoming <= now:  # float rounding of the division
        upcoming += step
    return upcoming


def default_owner_id() -> str:
    """Unique per process and instance: ``host:pid:random``."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def run_scheduler(app: Soniq, stop: asyncio.Event, *, tick: float = 1.0) -> None:
    """Sync ``@app.periodic`` jobs, then fire schedules until ``stop`` is set.

    Run as many of these as you like; one leads at a time and a standby takes
    over when the leader's lease expires.

    Example::

        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await run_scheduler(app, stop)
    """
    await sync_periodic(app)
    await SchedulerRunner(app, tick=tick).run(stop)


__all__ = [
    "ScheduleName",
    "Scheduler",
    "SchedulerRunner",
    "following_run",
    "run_scheduler",
    "store_schedule",
    "sync_periodic",
]
