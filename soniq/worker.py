"""The worker: claim a batch → run each job as a task → ack outcomes in batches.

Read top to bottom:

* ``run`` / ``run_once`` start one loop (``_loop``) that claims as many jobs as
  there are free slots in one query, and sleeps on NOTIFY (or ``poll_interval``)
  when there is nothing to do. When jobs run quicker than a claim travels, the next
  claim leaves before the last one's jobs start (``_claim_ahead``; the rule is
  ``ClaimPacer`` in soniq/claiming.py).
* ``_execute`` runs one attempt and turns it into an ``Outcome`` value; it never
  touches the database. Outcomes are buffered and ``_ack_loop`` writes whatever
  has accumulated in one statement per kind, as soon as the previous write ends.
* Side loops: heartbeat, maintenance (recover jobs of dead workers, prune
  expired results; one leader at a time), and signal-driven shutdown that
  requeues unfinished jobs without spending their attempt.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import functools
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

from soniq.backends import Listener, StorageBackend
from soniq.backends.checked import checked
from soniq.claiming import ClaimPacer
from soniq.core.middleware import Middleware, run_chain
from soniq.core.registry import JobDefinition, JobRegistry
from soniq.core.retry import ExponentialBackoff, RetryPolicy
from soniq.deadlines import Deadlines
from soniq.errors import (
    ConfigurationError,
    JobCancelledError,
    JobTimeoutError,
    JobValidationError,
    SchemaMissingError,
    SnoozeLimitError,
    WorkerError,
    describe_error,
)
from soniq.events import META_KEY, EventBus, Record, claimed_snapshot, job_meta
from soniq.flow import CANCEL_NOTICE, FlowLimits, JobControl
from soniq.hooks import HookSet
from soniq.job import (
    Ack,
    Cancelled,
    ClaimedJob,
    Done,
    Fail,
    JobContext,
    Outcome,
    Requeue,
    Retry,
    RunningContext,
    Snooze,
    Snoozed,
    WorkerInfo,
)
from soniq.leases import leading
from soniq.retry import retry_delay_seconds
from soniq.serialization import dumps_strict
from soniq.settings import SoniqSettings

log = logging.getLogger("soniq.worker")
# Shutdown waits this long for claims in flight to answer before cancelling them.
CLAIM_SETTLE_TIMEOUT = 10.0
# Tries at registering before a worker gives up (``_register``), error_retry_delay apart.
REGISTER_ATTEMPTS = 5


class _Attempt(Exception):
    """Internal: an attempt failed with this error text and traceback."""

    def __init__(self, error: str, tb: str | None, exc: BaseException) -> None:
        super().__init__(error)
        self.error, self.tb, self.exc = error, tb, exc


class _Stopped(Exception):
    """Internal: the attempt was cancelled because ``cancel_job`` asked for it."""


class Worker:
    """Runs jobs from one backend with the handlers of one registry.

    Example::

        worker = Worker(backend=app.backend, registry=app.registry)
        await worker.run_once(queues=["emails"], max_jobs=10)
    """

    def __init__(
        self,
        backend: StorageBackend,
        registry: JobRegistry,
        settings: SoniqSettings | None = None,
        hooks: dict[str, list[Callable[..., Any]]] | HookSet | None = None,
        events: EventBus | None = None,
        middleware: Sequence[Middleware] = (),
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.backend = checked(backend)  # a raw backend gets the input rules too
        self.registry = registry
        self.settings = settings if settings is not None else SoniqSettings()
        self.hooks = hooks if isinstance(hooks, HookSet) else HookSet.from_dict(hooks)
        self.events = events if events is not None else EventBus()  # features' one seam
        # app.middleware wraps each handler call; the retry policy decides each retry
        # (soniq/core/). Sync handlers share sync_handler_pool_size threads.
        self.middleware = list(middleware)
        self.retry_policy: RetryPolicy = retry_policy or ExponentialBackoff()
        self._sync_slots: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self.worker_id = str(uuid.uuid4())
        self._timeout_default = self.settings.effective_job_timeout
        self._control = JobControl(self.backend)  # ctx.progress / ctx.checkpoint
        self._reset_state()

    def _reset_state(self) -> None:
        self._running: dict[asyncio.Task[None], ClaimedJob] = {}
        # Claimed ahead of free slots (ClaimPacer.claims_ahead): each starts as a slot frees.
        self._ready: collections.deque[ClaimedJob] = collections.deque()
        self._concurrency = 1
        self._ahead = 0  # how many jobs the loop may claim beyond its free slots
        self._acks: list[Ack] = []
        self._unwritten = 0  # outcomes pushed but not yet written by the backend
        self._wake = asyncio.Event()
        self._acks_ready = asyncio.Event()
        self._stopping = False
        self._force = False
        self._processed = 0
        self._listener: Listener | None = None
        self._records: list[Record] = []  # written with the next ack batch (soniq/events.py)
        self._pacer = ClaimPacer()  # when to claim (soniq/claiming.py)
        self._deadlines = Deadlines()  # the running attempts' timeouts
        self._claim_task: asyncio.Task[None] | None = None  # the claim out, if any
        self._drained = False  # run_once: an empty claim saw every outcome written
        # Flow control (soniq/flow.py): whether to claim within limits, the running jobs
        # cancel_job() asked to stop, and when a rate-limited queue reopens.
        self._flow: FlowLimits | None = None
        self._cancel_requested: set[str] = set()
        self._retry_in: float | None = None
        # Done acks written per (UTC minute, queue), not yet in the throughput rollup:
        # added to it once per heartbeat (_flush_throughput), never a write per job.
        self._completed: dict[tuple[datetime, str], int] = {}

    # --- entry points ------------------------------------------------------
    async def run(
        self, concurrency: int = 4, run_once: bool = False, queues: list[str] | None = None
    ) -> bool:
        """Process jobs until stopped (SIGINT/SIGTERM or cancellation). True if any ran."""
        if run_once:
            return await self._loop(concurrency, queues, drain=True, max_jobs=None)
        with self._signal_handlers():
            return await self._loop(concurrency, queues, drain=False, max_jobs=None)

    async def run_once(self, queues: list[str] | None = None, max_jobs: int | None = None) -> bool:
        """Process what is available now (at most ``max_jobs``) and return. True if any ran."""
        return await self._loop(1, queues, drain=True, max_jobs=max_jobs)

    def stop(self) -> None:
        """Ask the loop to stop claiming and shut down gracefully (thread-unsafe; loop only)."""
        self._stopping = True
        self._wake.set()

    # --- the loop ----------------------------------------------------------
    async def _loop(
        self, concurrency: int, queues: Sequence[str] | None, *, drain: bool, max_jobs: int | None
    ) -> bool:
        self._check_capacity(concurrency)
        self._reset_state()
        self._concurrency = concurrency
        # A long-running worker may claim ahead; a drain takes only what it can run. A
        # backend written before the attribute existed does not; SONIQ_CLAIM_AHEAD=false
        # turns it off.
        ahead_pays = getattr(self.backend, "claim_ahead", False) and self.settings.claim_ahead
        claims_ahead = ahead_pays and not drain and max_jobs is None
        self._ahead = concurrency if claims_ahead else 0
        queues = list(queues) if queues else None
        pacer = self._pacer  # when to claim, and how many (fresh from _reset_state)
        side_loops = await self._start(concurrency, queues, listen=not drain)
        try:
            while not self._stopping and not self._drained:
                self._wake.clear()  # set by a finished job, a claim's answer, NOTIFY, stop()
                free = self._free_slots()
                if max_jobs is not None:
                    free = min(free, max_jobs - self._processed - len(self._running))
                    if free <= 0 and not self._running and not pacer.in_flight:
                        break
                n, wait = pacer.plan(free, time.monotonic(), self._ahead)
                if n:
                    self._claim_soon(queues, n, drain)
                else:
                    await self._wait(wait)
        finally:
            await self._settle_claim()
            await self._shutdown(side_loops)
        return self._processed > 0

    async def _claim_and_start(self, queues: Sequence[str] | None, n: int, drain: bool) -> None:
        """One claim, as a task of its own: the loop goes on hearing wake-ups and stop()
        while it is out, and the pacer decides what happens next (soniq/claiming.py)."""
        pacer = self._pacer
        # A drain ends only after an empty claim that saw every outcome written: an
        # unwritten Retry due now would otherwise be left behind.
        settled = not self._running and not self._unwritten
        got, pokes = 0, pacer.pokes
        idle_wait: float | None = 0.0
        try:
            jobs = await self._claim(queues, n)
            idle_wait = None if drain else self._idle_wait()  # after the claim: its retry_in
            if jobs is None:  # the database is away: back off (stop() ends it sooner)
                await self._wait(self.settings.error_retry_delay)
                jobs, idle_wait = [], 0.0
            got = len(jobs)
            if not jobs and drain and settled:
                self._drained = True
        finally:
            pacer.answered(got, time.monotonic(), idle_wait, pokes)
            self._wake.set()
        if jobs:
            if self._ahead and pacer.claims_ahead and not self._stopping:
                self._claim_ahead(queues, len(jobs))
            self._start_jobs(jobs)

    def _claim_ahead(self, queues: Sequence[str] | None, arriving: int) -> None:
        """Send the next claim before this answer's jobs start (ClaimPacer.claims_ahead):
        it is then on its way while they run, instead of leaving only once they have
        taken the event loop. Any other claim waits for the loop, after the jobs start."""
        n, _ = self._pacer.plan(self._free_slots() - arriving, time.monotonic(), self._ahead)
        if n:
            self._claim_soon(queues, n, drain=False)

    def _free_slots(self) -> int:
        """Slots neither running a job nor promised to one claimed ahead."""
        return self._concurrency - len(self._running) - len(self._ready)

    def _claim_soon(self, queues: Sequence[str] | None, n: int, drain: bool) -> None:
        self._claim_task = asyncio.create_task(self._claim_and_start(queues, n, drain))

    async def _settle_claim(self) -> None:
        """Let a claim in flight answer (its jobs then run or are requeued by the
        shutdown); one that hangs is cancelled, and the backend requeues what it took."""
        task = self._claim_task
        if task is not None and not task.done():
            await asyncio.wait({task}, timeout=CLAIM_SETTLE_TIMEOUT)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _poke(self) -> None:
        """Work may be available (a NOTIFY, a free slot, an outcome written): wake the loop."""
        self._pacer.poke()
        self._wake.set()

    async def _claim(self, queues: Sequence[str] | None, limit: int) -> list[ClaimedJob] | None:
        """The claimed jobs; ``None`` when the claim failed (logged)."""
        try:
            flow = self._flow
            if flow is not None and flow.due():  # limits configured? re-read each poll_interval
                await flow.refresh(self.backend)
            if flow is None or flow.tasks is None:  # no limits: the plain claim, untouched
                return await self.backend.claim(queues, self.worker_id, limit)
            claim = await self.backend.claim_limited(queues, self.worker_id, limit, flow.tasks)
            self._retry_in = claim.retry_in
            return claim.jobs
        except Exception as exc:  # noqa: BLE001 - database lost: back off, keep going
            log.error(
                "Claiming jobs failed (%s: %s); retrying in %ss",
                type(exc).__name__, exc, self.settings.error_retry_delay,
            )  # fmt: skip
            return None

    def _start_jobs(self, jobs: list[ClaimedJob]) -> None:
        """Start as many as there are free slots, in claim order; the rest wait ready.
        Once the worker is stopping none start: the shutdown gives them back unspent."""
        ready = self._ready
        if ready:
            jobs = [*ready, *jobs]
            ready.clear()
        jobs.sort(key=lambda j: (j.priority, j.scheduled_at or _EPOCH))
        room = 0 if self._stopping else self._concurrency - len(self._running)
        for job in jobs[:room]:
            self._start_job(job)
        ready.extend(jobs[room:])

    def _start_job(self, job: ClaimedJob) -> None:
        task = asyncio.create_task(self._execute(job))
        self._running[task] = job
        task.add_done_callback(self._job_finished)

    def _job_finished(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._processed += 1
        if self._ready and not self._stopping:
            self._start_job(self._ready.popleft())
        self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        """Until woken, or ``timeout`` seconds. A timer sets the event rather than
        ``asyncio.wait_for``: on 3.11 that can swallow a cancellation arriving as the
        event fires, and a cancelled ``run_worker`` then never stopped."""
        if timeout is not None and timeout <= 0:
            return
        timer = None if timeout is None else self._loop_timer(timeout)
        try:
            await self._wake.wait()
        finally:
            if timer is not None:
                timer.cancel()

    def _loop_timer(self, timeout: float) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(timeout, self._wake.set)

    def _idle_wait(self) -> float:
        """``poll_interval``, or less when a rate-limited queue reopens sooner: the worker
        sleeps until then instead of polling a queue that is at its limit."""
        reopens, self._retry_in = self._retry_in, None
        poll = self.settings.poll_interval
        return poll if reopens is None else min(poll, reopens)

    # --- one attempt -------------------------------------------------------
    async def _execute(self, job: ClaimedJob) -> None:
        """Run one attempt and buffer its outcome; a cancelled attempt is requeued unspent.

        Lifecycle events are emitted here, in the job's own task, and only when a
        feature subscribed to them (an empty list check otherwise).
        """
        events = self.events
        if events.started:
            self._note(events.emit_started(job))
        began = time.perf_counter()
        try:
            outcome = await self._attempt(job)
        except asyncio.CancelledError:
            stopped = job.id in self._cancel_requested  # cancel_job(), not a shutdown
            self._finish(job, Cancelled(_stopped_error(job.id)) if stopped else Requeue(), began)
            raise
        self._finish(job, outcome, began)

    def _finish(self, job: ClaimedJob, outcome: Outcome, began: float) -> None:
        took = time.perf_counter() - began
        self._pacer.finished(took)
        events = self.events
        if events.finished:  # records and ack land in the same batch: one transaction
            self._note(events.emit_finished(job, outcome, took))
        self._push(Ack(job, outcome))
        if self._cancel_requested:
            self._cancel_requested.discard(job.id)

    def _give_back(self, job: ClaimedJob, outcome: Requeue | Cancelled) -> None:
        """The outcome of a job claimed ahead that never started. Observers never heard it
        start, so they do not hear an attempt end: a requeued one is as if never claimed,
        a cancelled one is announced as a change, like a queued job's cancel."""
        if isinstance(outcome, Cancelled):
            snapshot = claimed_snapshot(job, "cancelled", error=outcome.error)
            self._note(self.events.emit_changed("job.cancelled", snapshot))
        self._push(Ack(job, outcome))

    def _note(self, records: list[Record]) -> None:
        if records:
            self._records.extend(records)
            self._acks_ready.set()

    def _push(self, ack: Ack) -> None:
        self._acks.append(ack)
        self._unwritten += 1
        self._acks_ready.set()

    async def _attempt(self, job: ClaimedJob) -> Outcome:
        definition = self.registry.get(job.job_name)
        if definition is None:
            # Straight to the dead letters: another attempt here would fail the same
            # way. Fix SONIQ_JOBS_MODULES (or the name), then replay it.
            log.error(
                "Job %s not registered in this worker: dead-lettered. Add its module to "
                "SONIQ_JOBS_MODULES, then replay it from the dead letters.",
                job.job_name,
            )
            return Fail(_unknown_task(job.job_name), None)
        checkpoint = job_meta(job.args).get("checkpoint") if META_KEY in job.args else None
        ctx = RunningContext(
            job.id, job.job_name, job.attempt, job.max_attempts, job.queue,
            self.worker_id, job.scheduled_at, job.created_at,
            (self._cancel_requested, self._control, job.lease, checkpoint),
        )  # fmt: skip
        hooks = self.hooks
        if hooks.before_job:
            await hooks.run("before_job", ctx)
        started = time.perf_counter()
        try:
            result_json = await self._call(definition, job, ctx)
        except _Stopped:
            return await self._stopped(ctx)
        except _Attempt as failure:
            if job.id in self._cancel_requested:  # stopped after cancel_job(): not a failure
                return await self._stopped(ctx)
            if isinstance(failure.exc, Snooze):  # raised or returned
                snoozed = self._snoozed(job, definition, failure.exc)
                if snoozed is not None:
                    return snoozed
                failure = _too_many_snoozes(job, definition)
            if hooks.on_error:
                await hooks.run("on_error", ctx, failure.exc)
            if isinstance(failure.exc, _InvalidArguments):  # no retry can fix the arguments
                return Fail(failure.error, None)
            return self._failed(job, definition, failure.error, failure.tb)
        if self._cancel_requested and job.id in self._cancel_requested:
            return await self._stopped(ctx)  # a sync handler that saw ctx.cancelled
        if hooks.after_job:
            await hooks.run("after_job", ctx, (time.perf_counter() - started) * 1000.0)
        return Done(result_json)

    async def _call(
        self, definition: JobDefinition, job: ClaimedJob, ctx: JobContext
    ) -> str | None:
        kwargs = job.args
        if META_KEY in kwargs:  # trace context or sealed arguments: not the handler's
            kwargs = self._open_args(kwargs)
        if definition.args_model is not None:  # validate=: refused rows never run
            _validate_args(definition, kwargs)
        if definition.context_param is not None:
            kwargs = {**kwargs, definition.context_param: ctx}
        timeout = definition.timeout if definition.timeout is not None else self._timeout_default
        task = asyncio.current_task()
        deadline = self._deadlines.arm(task, timeout) if timeout and task is not None else None
        try:
            result = await self._run_handler(definition, kwargs, ctx)
        except asyncio.CancelledError:
            expired = deadline is not None and deadline.expired
            if not expired and job.id in self._cancel_requested:
                if sys.version_info >= (3, 11) and task is not None:
                    task.uncancel()
                raise _Stopped from None  # cancel_job(): ends cancelled, never requeued
            if not expired:
                raise  # shutdown: the attempt is requeued unspent
            if sys.version_info >= (3, 11) and task is not None:
                task.uncancel()
            message = (
                f"job exceeded its {timeout:g}s timeout; if it needs longer, raise "
                "@app.job(timeout=...) or SONIQ_JOB_TIMEOUT (0 disables the limit)"
            )
            error = JobTimeoutError(message)
            raise _Attempt(f"TimeoutError: {message}", None, error) from None
        except Exception as exc:  # noqa: BLE001 - every handler error is a failed attempt
            raise _Attempt(_describe(exc), traceback.format_exc(), exc) from None
        finally:
            if deadline is not None:
                deadline.disarm()
        return _dump_result(result)

    def _open_args(self, args: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.events.open_args(args)
        except Exception as exc:  # noqa: BLE001 - e.g. no key to open sealed arguments
            raise _Attempt(_describe(exc), None, exc) from None

    def _invoke(self, definition: JobDefinition, kwargs: dict[str, Any]) -> Awaitable[Any]:
        if definition.is_async:
            coro: Awaitable[Any] = definition.func(**kwargs)
            return coro
        return self._run_sync(functools.partial(definition.func, **kwargs))

    def _run_handler(
        self, definition: JobDefinition, kwargs: dict[str, Any], ctx: JobContext
    ) -> Awaitable[Any]:
        """The handler, through the app's middleware chain when there is one."""
        if not self.middleware:
            return self._invoke(definition, kwargs)
        return run_chain(self.middleware, ctx, lambda _ctx: self._invoke(definition, kwargs))

    async def _run_sync(self, call: Callable[[], Any]) -> Any:
        """A sync handler on one of ``sync_handler_pool_size`` threads; the claimed job
        waits (in ``processing``) for a free one. A slot is freed when its thread ends,
        not when the attempt is abandoned (timeout, shutdown): a runaway handler keeps
        holding it, so the bound is real."""
        loop = asyncio.get_running_loop()
        if self._sync_slots is None or self._sync_slots[0] is not loop:
            self._sync_slots = (loop, asyncio.Semaphore(self.settings.sync_handler_pool_size))
        slots = self._sync_slots[1]
        await slots.acquire()

        def release() -> None:  # in the handler's thread, when it ends
            with contextlib.suppress(RuntimeError):  # the loop is gone: so is the semaphore
                loop.call_soon_threadsafe(slots.release)

        return await _in_daemon_thread(call, on_exit=release)

    def _snoozed(
        self, job: ClaimedJob, definition: JobDefinition, snooze: Snooze
    ) -> Outcome | None:
        """The snooze as an outcome; ``None`` when it is one more than ``max_snoozes``."""
        meta = job_meta(job.args) if META_KEY in job.args else {}
        count = meta.get("snoozes", 0) if meta.get("snoozed") == job.id else 0  # its own
        if isinstance(count, int) and count >= definition.max_snoozes:
            return None
        log.debug("Job %s %s", job.id, snooze)
        return Snoozed(
            datetime.now(timezone.utc) + timedelta(seconds=snooze.seconds), snooze.reason
        )

    async def _stopped(self, ctx: JobContext) -> Outcome:
        """``cancel_job`` stopped the job: ``on_error`` hooks hear it; it ends cancelled."""
        error = _stopped_error(ctx.job_id)
        if self.hooks.on_error:
            await self.hooks.run("on_error", ctx, JobCancelledError(error.split(": ", 1)[1]))
        log.info("Job %s cancelled while running", ctx.job_id)
        return Cancelled(error)

    def _failed(
        self, job: ClaimedJob, definition: JobDefinition | None, error: str, tb: str | None
    ) -> Outcome:
        if job.attempt >= job.max_attempts:
            return Fail(error, tb)
        delay = 0.0 if definition is None else self._retry_delay(job, definition, error, tb)
        if delay is None:  # the retry policy gave up on this job
            return Fail(error, tb)
        return Retry(datetime.now(timezone.utc) + timedelta(seconds=delay), error)

    def _retry_delay(
        self, job: ClaimedJob, definition: JobDefinition, error: str, tb: str | None
    ) -> float | None:
        """The retry policy's delay (None: dead-letter now); a raising policy is logged and
        the job's own delays apply, so a broken policy never loses a job."""
        try:
            return self.retry_policy.delay_for(
                attempt=job.attempt, job_meta=definition.as_dict(), exc=RuntimeError(tb or error)
            )
        except Exception as exc:  # noqa: BLE001 - user code
            log.warning(
                "Retry policy %r failed (%r); using the job's retry_delay", self.retry_policy, exc
            )
            return retry_delay_seconds(
                job.attempt, definition.retry_delay, definition.retry_backoff,
                definition.retry_max_delay,
            )  # fmt: skip

    # --- acks --------------------------------------------------------------
    async def _ack_loop(self) -> None:
        """Write every buffered outcome in one backend call, as soon as the last one ended."""
        while True:
            await self._acks_ready.wait()
            self._acks_ready.clear()
            await self._flush()

    async def _flush(self) -> None:
        while self._acks or self._records:
            batch, self._acks = self._acks, []
            records, self._records = self._records, []
            try:
                await self._write(batch, records)
                self._count_done(batch)
                self._unwritten -= len(batch)
                self._poke()  # e.g. a Retry due now, a concurrency limit with room again
            except asyncio.CancelledError:
                # Shutdown cancels the ack loop, possibly mid-write: keep the batch so
                # the final flush writes it (acks are idempotent thanks to the lease).
                self._acks[:0] = batch
                self._records[:0] = records
                raise
            except Exception as exc:  # noqa: BLE001 - keep the outcomes, try again
                self._acks[:0] = batch
                self._records[:0] = records
                log.error("Recording %d job outcomes failed (%s); retrying", len(batch), exc)
                await asyncio.sleep(self.settings.error_retry_delay)

    def _count_done(self, batch: list[Ack]) -> None:
        """Tally a written batch's completions for the dashboard's chart: done rows are
        deleted after ``result_ttl``, so ``job_throughput`` also reads this rollup. An ack
        whose lease had already been lost is counted too (rare; the chart is a gauge)."""
        minute: datetime | None = None
        counts = self._completed
        for ack in batch:
            if isinstance(ack.outcome, Done):
                if minute is None:
                    minute = datetime.now(timezone.utc).replace(second=0, microsecond=0)
                key = (minute, ack.job.queue)
                counts[key] = counts.get(key, 0) + 1

    async def _flush_throughput(self) -> None:
        """Add the tally to the rollup in one call (each heartbeat, and at shutdown); kept
        for the next try when the database is away. A backend without the verb: dropped."""
        counts, self._completed = self._completed, {}
        add = getattr(self.backend, "throughput_add", None)
        if not counts or add is None:
            return
        try:
            await add(counts)
        except Exception as exc:  # noqa: BLE001 - database away: next heartbeat
            for key, n in counts.items():
                self._completed[key] = self._completed.get(key, 0) + n
            log.warning("Recording completion counts failed: %s", exc)

    async def _write(self, batch: list[Ack], records: list[Record]) -> None:
        ttl = self.settings.result_ttl
        if not records:
            await self.backend.ack(batch, result_ttl=ttl)
            return
        try:
            await self.backend.ack_observed(batch, records, result_ttl=ttl)
        except Exception as exc:  # noqa: BLE001
            # Outcomes never wait on a feature's rows: write them alone. If that works the
            # rows were at fault and are dropped; if not, the database is, and _flush retries.
            await self.backend.ack(batch, result_ttl=ttl)
            log.error("Dropped %d webhook/log records (%s)", len(records), exc)

    # --- start, side loops, shutdown --------------------------------------
    def _check_capacity(self, concurrency: int) -> None:
        """Let the backend make room for ``concurrency`` jobs before it opens (a pool size)."""
        if concurrency < 1:
            raise WorkerError(
                f"concurrency must be at least 1, got {concurrency}; pass 1 or more "
                "(--concurrency, SONIQ_CONCURRENCY)"
            )
        self.backend.reserve_capacity(concurrency)

    async def _register(self, info: WorkerInfo) -> None:
        """Register; a failure the database may recover from (a connection it dropped, as
        a failover or ``pg_terminate_backend`` does) is retried, like a failed claim,
        before it ends the worker. A missing schema or bad settings end it at once."""
        delay = self.settings.error_retry_delay
        for attempt in range(1, REGISTER_ATTEMPTS + 1):
            try:
                await self.backend.register_worker(info)
                return
            except (SchemaMissingError, ConfigurationError):
                raise
            except Exception as exc:
                if attempt == REGISTER_ATTEMPTS:
                    raise
                log.warning(
                    "Registering worker %s failed (%s: %s); retrying in %.1fs",
                    self.worker_id, type(exc).__name__, exc, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def _start(
        self, concurrency: int, queues: list[str] | None, *, listen: bool
    ) -> list[asyncio.Task[None]]:
        """Register, subscribe, and start the side loops; returns them for ``_shutdown``."""
        await self.backend.open()
        info = WorkerInfo(self.worker_id, socket.gethostname(), os.getpid(), queues, concurrency)
        await self._register(info)
        self._info = info
        listener = await self.backend.listen(self._on_notify(queues)) if listen else None
        self._listener = listener
        log.info(
            "Worker %s started (queues=%s, concurrency=%d, %s)", self.worker_id,
            ",".join(queues) if queues else "all", concurrency,
            "LISTEN/NOTIFY" if listener else "polling",
        )  # fmt: skip
        tasks = [
            asyncio.create_task(self._ack_loop(), name="soniq-acks"),
            asyncio.create_task(self._heartbeat_loop(), name="soniq-heartbeat"),
            asyncio.create_task(self._cancel_loop(), name="soniq-cancels"),
        ]
        self._flow = FlowLimits(self.registry, queues, self.settings.poll_interval)
        if listen:  # long-running workers also sweep; a drain (run_once) just works
            tasks.append(asyncio.create_task(self._maintenance_loop(), name="soniq-maintenance"))
        if listener is not None:
            tasks.append(asyncio.create_task(self._relisten_loop(queues), name="soniq-relisten"))
        tasks += await self.events.start_loops(self.backend, self.settings)
        return tasks

    def _on_notify(self, queues: list[str] | None) -> Callable[[str], None]:
        wanted = set(queues) if queues else None

        def wake(queue: str) -> None:
            if queue.startswith(CANCEL_NOTICE):  # cancel_job() of a running job
                self._cancel_running(queue[len(CANCEL_NOTICE) :])
            elif wanted is None or queue in wanted:
                self._poke()

        return wake

    def _cancel_running(self, job_id: str) -> None:
        """Stop a running job of ours: an async handler's task is cancelled; a sync one
        cannot be interrupted, so its thread sees ``ctx.cancelled`` and returns."""
        if job_id in self._cancel_requested:
            return
        for job in self._ready:
            if job.id == job_id:  # claimed, not started: it ends cancelled without running
                self._ready.remove(job)
                self._give_back(job, Cancelled(_stopped_error(job_id, ran=False)))
                return
        for task, job in self._running.items():
            if job.id == job_id:
                self._cancel_requested.add(job_id)
                definition = self.registry.get(job.job_name)
                if definition is None or definition.is_async:
                    task.cancel()
                return

    async def _cancel_loop(self) -> None:
        """cancel_job() heard at the next heartbeat where no notification comes (SQLite,
        LISTEN unavailable) or one was missed; asks only while jobs run."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            ask = getattr(self.backend, "cancel_requests", None)  # absent: nothing to hear
            if not self._running or ask is None:
                continue
            try:
                for job_id in await ask(self.worker_id):
                    self._cancel_running(job_id)
            except Exception as exc:  # noqa: BLE001 - database away: next heartbeat
                log.warning("Checking for cancelled jobs failed: %s", exc)

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            try:
                if not await self.backend.heartbeat(self.worker_id):
                    log.warning("Worker %s was declared dead; re-registering", self.worker_id)
                    await self.backend.register_worker(self._info)
            except Exception as exc:  # noqa: BLE001
                log.warning("Heartbeat failed: %s", exc)
            await self._flush_throughput()

    async def _relisten_loop(self, queues: list[str] | None) -> None:
        """The LISTEN connection can drop (database restart, pg_terminate_backend): subscribe
        again, so wake-ups do not degrade to ``poll_interval`` for the rest of the run."""
        while True:
            await asyncio.sleep(self.settings.heartbeat_interval)
            listener = self._listener
            if listener is not None and listener.is_alive():
                continue
            if listener is not None:
                log.warning("LISTEN connection lost; subscribing again (polling meanwhile)")
                self._listener = None
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.close(), 2.0)
            try:
                self._listener = await self.backend.listen(self._on_notify(queues))
            except Exception as exc:  # noqa: BLE001 - database still away: try again later
                log.warning("Subscribing to new-job notifications failed: %s", exc)
            if self._listener is not None:
                log.info("LISTEN connection re-established")
                self._poke()  # jobs may have arrived while nobody was listening

    async def _maintenance_loop(self) -> None:
        """Recover jobs of dead workers and prune expired results, one leader at a time."""
        interval = self.settings.cleanup_interval
        with contextlib.suppress(Exception):
            await self._warn_if_no_scheduler()
        while True:
            try:
                lease = leading(self.backend, "maintenance", self.worker_id, interval * 3)
                async with lease as leader:
                    if leader:
                        await self._sweep()
            except Exception as exc:  # noqa: BLE001
                log.warning("Maintenance sweep failed: %s", exc)
            await asyncio.sleep(interval)

    async def _sweep(self) -> None:
        recovered = await self.backend.recover_stale(self.settings.heartbeat_timeout)
        pruned = await self.backend.prune()
        if recovered:
            log.warning("Recovered %d jobs from lost workers", recovered)
        log.debug("Pruned %d expired jobs", pruned)

    async def _warn_if_no_scheduler(self) -> None:
        """Periodic jobs fire only while a `soniq scheduler` leads: say so once if none does."""
        if self.settings.scheduler_suppress_warning:  # SONIQ_SCHEDULER_SUPPRESS_WARNING
            return
        if not any(d.periodic for d in self.registry.definitions()):
            return
        probe = f"probe-{self.worker_id}"
        if await self.backend.try_lead("scheduler", probe, 0.001):  # free: nobody leads
            await self.backend.release_lead("scheduler", probe)
            log.warning(
                "This app defines periodic jobs but no `soniq scheduler` has led recently; "
                "run `soniq scheduler` (one or more, they elect a leader) so they fire"
            )

    async def _shutdown(self, tasks: list[asyncio.Task[None]]) -> None:
        """Stop claiming, let running jobs finish within the grace period, requeue the rest."""
        self._stopping = True
        while self._ready:  # claimed ahead, never started: back to the queue unspent
            self._give_back(self._ready.popleft(), Requeue())
        if self._running and not self._force:
            await asyncio.wait(list(self._running), timeout=self._grace())
            await self._sync_grace()
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.wait(list(self._running))
        self._deadlines.close()  # every attempt has ended
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        listener, self._listener = self._listener, None  # the relisten loop may have swapped it
        await self._quietly(self._flush(), 10.0)
        await self._quietly(self._flush_throughput(), 5.0)
        await self._quietly(self.backend.deregister_worker(self.worker_id), 5.0)
        await self._quietly(self.backend.release_lead("maintenance", self.worker_id), 5.0)
        if listener is not None:
            await self._quietly(listener.close(), 5.0)
        log.info("Worker %s stopped after %d jobs", self.worker_id, self._processed)

    async def _sync_grace(self) -> None:
        """``sync_handler_grace_seconds`` more for sync handlers still running: a thread
        cannot be interrupted, so cancelling its job only abandons it mid-work."""
        extra = self.settings.sync_handler_grace_seconds
        sync = [t for t, j in self._running.items() if not _is_async(self.registry, j.job_name)]
        if extra and sync and not self._force and self._grace():
            await asyncio.wait(sync, timeout=extra)

    def _grace(self) -> float:
        """No grace when our own task was cancelled (embedding code wants us gone now)."""
        if sys.version_info >= (3, 11):
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                return 0.0
        return self.settings.shutdown_timeout

    @staticmethod
    async def _quietly(aw: Awaitable[Any], timeout: float) -> None:
        try:
            await asyncio.wait_for(aw, timeout)
        except Exception as exc:  # noqa: BLE001 - shutdown goes on
            log.warning("Shutdown step failed: %r", exc)

    @contextlib.contextmanager
    def _signal_handlers(self) -> Any:
        """SIGINT/SIGTERM: stop gracefully; a second signal cancels running jobs at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()
        # A loop has one handler per signal: several workers in one process (two Soniq
        # instances, two Worker objects) share it, and it stays until the last one ends.
        workers = _SIGNAL_WORKERS.setdefault(loop, [])
        installed: list[int] = []
        if not workers:
            for sig in (signal.SIGINT.value, signal.SIGTERM.value):
                try:
                    loop.add_signal_handler(sig, _dispatch_signal, loop, sig)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass
            _SIGNAL_INSTALLED[loop] = installed
        workers.append(self)
        try:
            yield
        finally:
            workers.remove(self)
            if not workers:
                del _SIGNAL_WORKERS[loop]
                for signum in _SIGNAL_INSTALLED.pop(loop, []):
                    loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        if self._stopping:
            log.warning("Second signal: cancelling running jobs now")
            self._force = True
            for task in list(self._running):
                task.cancel()
            return
        log.info("Received %s: finishing running jobs", signal.Signals(signum).name)
        self.stop()


_SIGNAL_WORKERS: dict[asyncio.AbstractEventLoop, list[Worker]] = {}
_SIGNAL_INSTALLED: dict[asyncio.AbstractEventLoop, list[int]] = {}


def _dispatch_signal(loop: asyncio.AbstractEventLoop, signum: int) -> None:
    for worker in list(_SIGNAL_WORKERS.get(loop, ())):
        worker._on_signal(signum)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _in_daemon_thread(
    call: Callable[[], Any], on_exit: Callable[[], Any] | None = None
) -> asyncio.Future[Any]:
    """Run a sync handler on its own daemon thread; ``on_exit`` runs when it ends.

    Not a ThreadPoolExecutor: Python joins pool threads at exit, so a sync job
    that outlives the shutdown grace period would keep the process alive. The
    worker's ``sync_handler_pool_size`` slots bound how many run at once.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    context = contextvars.copy_context()  # the job's log capture and trace span go along

    def target() -> None:
        try:
            result, error = context.run(call), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            result, error = None, exc
        if on_exit is not None:
            on_exit()
        with contextlib.suppress(RuntimeError):  # loop closed while the job ran: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, name="soniq-sync-job", daemon=True).start()
    return future


def _is_async(registry: JobRegistry, name: str) -> bool:
    definition = registry.get(name)
    return definition is None or definition.is_async


class _InvalidArguments(JobValidationError):
    """A claimed row's arguments fail its handler's ``validate=`` model (a producer that
    skipped the check: another service, ``enqueue_validation``): dead-lettered at once."""


def _validate_args(definition: JobDefinition, kwargs: dict[str, Any]) -> None:
    model = definition.args_model
    assert model is not None
    try:
        model.model_validate(kwargs)
    except Exception as exc:  # noqa: BLE001 - any model error, pydantic or custom
        error = _InvalidArguments(f"Invalid arguments for {definition.name}: {exc}")
        raise _Attempt(f"Invalid arguments: {exc}", None, error) from None


def _describe(exc: BaseException) -> str:
    return describe_error(exc)  # a SoniqError's message, not its framed str()


def _stopped_error(job_id: str, *, ran: bool = True) -> str:
    when = "while it ran" if ran else "before it started (it was claimed, waiting for a slot)"
    return (
        f"JobCancelledError: job {job_id} was cancelled by cancel_job() {when}; it is "
        "not retried (enqueue it again to run it)"
    )


def _too_many_snoozes(job: ClaimedJob, definition: JobDefinition) -> _Attempt:
    error = SnoozeLimitError(
        f"job {job.id} asked to snooze more than max_snoozes={definition.max_snoozes} times; "
        "raise @app.job(max_snoozes=...) or let the job finish or fail instead"
    )
    return _Attempt(_describe(error), None, error)


def _unknown_task(name: str) -> str:
    """The published package's words, which users' alerting may match on."""
    return f"Job {name} not registered."


def _dump_result(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, Snooze):  # returned rather than raised: the same snooze
        raise _Attempt(str(result), None, result)
    try:
        # Refused here, as a failed attempt, rather than failing the whole ack batch.
        return dumps_strict(result)
    except (TypeError, ValueError) as exc:
        error = TypeError(
            f"job returned a {type(result).__name__}, which is not JSON-serialisable ({exc}); "
            "return plain data (dict, list, str, numbers) or store it elsewhere"
        )
        raise _Attempt(_describe(error), None, error) from None
