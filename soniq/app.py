"""``Soniq``: the facade. It owns settings, registry, backend and hooks; methods delegate."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from soniq.backends import MigrationReport, StorageBackend, make_backend
from soniq.core.registry import (
    JobDefinition,
    JobRegistry,
    argument_names,
    default_task_name,
    find_context_param,
    handler_signature,
)
from soniq.enqueue import EnqueueOptions, build_job, build_jobs, check_priority, dependency_ids
from soniq.errors import JobRegistrationError
from soniq.events import EventBus, emit_changes, feature, install_default_subscribers
from soniq.flow import DEFAULT_MAX_SNOOZES, QueueLimit, job_flow_options, parse_rate
from soniq.hooks import HOOK_EVENTS, adapt_hook
from soniq.job import JobContext, JobStatus, NewJob
from soniq.settings import SoniqSettings
from soniq.sync import SyncRunner
from soniq.utils import mask_url

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from soniq.dead_letter import DeadLetterService
    from soniq.logs import JobLogs
    from soniq.scheduler import Scheduler
    from soniq.signing import Signing
    from soniq.webhooks import Webhooks

F = TypeVar("F", bound=Callable[..., Any])


class Soniq:
    """One isolated Soniq instance: its own settings, pool, registry and hooks.

    Example::

        app = Soniq(database_url="postgresql://localhost/myapp")

        @app.job(retries=5, queue="emails")
        async def send_welcome(to: str) -> None: ...

        job_id = await app.enqueue(send_welcome, to="dev@example.com")
    """

    def __init__(
        self,
        database_url: str | None = None,
        backend: StorageBackend | str | None = None,
        **settings_overrides: Any,
    ) -> None:
        if database_url is not None:
            settings_overrides["database_url"] = database_url
        self.settings = SoniqSettings(**settings_overrides)
        self.database_url = self.settings.resolved_database_url()
        self.backend: StorageBackend = make_backend(self.database_url, backend, self.settings)
        self._registry = JobRegistry()
        self.hooks: dict[str, list[Callable[..., Any]]] = {e: [] for e in HOOK_EVENTS}
        self._init_lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._initialized = False
        self._dead_letter: DeadLetterService | None = None
        self._scheduler: Scheduler | None = None
        self._sync = SyncRunner(self)  # enqueue_sync/schedule_sync; no thread until used
        self._warned_unknown: set[str] = set()  # enqueue_validation='warn': once per name
        # The one seam webhooks, logs, metrics, tracing and signing plug into.
        self.events = EventBus()
        self._features: dict[str, Any] = install_default_subscribers(self)

    # --- lifecycle ---------------------------------------------------------
    async def ensure_initialized(self) -> None:
        """Open the backend (the pool is otherwise created lazily on first use)."""
        loop = asyncio.get_running_loop()
        if self._initialized and self._loop is loop:
            return
        if self._init_lock is None or self._loop is not loop:
            # First use, or a new event loop (a second asyncio.run()): the lock and the
            # pool of an earlier loop cannot be used here; the backend reopens.
            self._init_lock, self._loop, self._initialized = asyncio.Lock(), loop, False
        async with self._init_lock:
            if not self._initialized:
                await self.backend.open()
                self._initialized = True

    async def setup(self) -> MigrationReport:
        """Create the database if needed and apply pending migrations (what `soniq setup` does)."""
        return await self.backend.migrate()

    async def close(self) -> None:
        """Release the pool. Safe to call twice."""
        await self._sync.aclose()  # first: a pool held by the sync producers' loop closes there
        self._initialized = False
        await self.backend.close()

    async def __aenter__(self) -> Soniq:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- defining jobs -----------------------------------------------------
    def job(
        self,
        *,
        name: str | None = None,
        retries: int | None = None,
        max_retries: int | None = None,
        priority: int | None = None,
        queue: str = "default",
        unique: bool = False,
        retry_delay: float | list[float] = 0,
        retry_backoff: bool = False,
        retry_max_delay: float | None = None,
        timeout: float | None = None,
        validate: type[Any] | None = None,
        args_model: type[Any] | None = None,
        encrypt: bool = False,
        rate_limit: str | None = None,
        concurrency_key: Callable[[dict[str, Any]], Any] | None = None,
        max_concurrency_per_key: int | None = None,
        max_snoozes: int = DEFAULT_MAX_SNOOZES,
    ) -> Callable[[F], F]:
        """Register a function as a job. Always called with parentheses: ``@app.job()``.

        ``encrypt=True`` stores the job's arguments encrypted at rest (``app.signing``).
        ``rate_limit="10/s"`` allows at most 10 starts of this task in any sliding second,
        across every worker; ``concurrency_key=lambda args: args["tenant"]`` with
        ``max_concurrency_per_key=2`` runs at most 2 jobs per tenant at once. A job may
        ``raise Snooze(...)`` up to ``max_snoozes`` times.
        """
        options = dict(
            name=name, retries=_one_of("retries", retries, "max_retries", max_retries),
            priority=priority, queue=queue, unique=unique, retry_delay=retry_delay,
            retry_backoff=retry_backoff, retry_max_delay=retry_max_delay, timeout=timeout,
            model=_one_of("validate", validate, "args_model", args_model),
        )  # fmt: skip
        flow = job_flow_options(
            rate_limit=rate_limit, concurrency_key=concurrency_key,
            max_concurrency_per_key=max_concurrency_per_key, max_snoozes=max_snoozes,
        )  # fmt: skip

        def decorator(func: F) -> F:
            definition = dataclasses.replace(self._define(func, **options), **flow)
            self._registry.register(definition)
            if encrypt:
                from soniq.signing import encrypt_task

                encrypt_task(self, definition.name)
            return func

        return decorator

    def periodic(
        self,
        *,
        cron: Any = None,
        every: timedelta | float | None = None,
        timezone: str = "UTC",
        args: dict[str, Any] | None = None,
        **job_kwargs: Any,
    ) -> Callable[[F], F]:
        """Register a job and stamp a recurring schedule on it (fired by `soniq scheduler`).

        Example::

            @app.periodic(cron=daily().at("09:00"), name="reports.daily", timezone="Europe/Paris")
            async def daily_report(): ...
        """
        from soniq.schedules import normalize_schedule, zone

        cron_expr, every_seconds = normalize_schedule(cron=cron, every=every)
        zone(timezone)  # an unknown zone fails here, at definition time
        register = self.job(**job_kwargs)

        def decorator(func: F) -> F:
            register(func)
            definition = self._registry.for_function(func)
            assert definition is not None
            stamp = {
                "cron": cron_expr, "every": every_seconds, "timezone": timezone,
                "args": dict(args or {}),
            }  # fmt: skip
            self._registry.register(dataclasses.replace(definition, periodic=stamp))
            return func

        return decorator

    def _define(
        self, func: Callable[..., Any], *, name: str | None, retries: int | None,
        priority: int | None, queue: str, unique: bool, retry_delay: float | list[float],
        retry_backoff: bool, retry_max_delay: float | None, timeout: float | None,
        model: type[Any] | None,
    ) -> JobDefinition:  # fmt: skip
        if not callable(func):
            raise JobRegistrationError(f"@app.job() decorates functions, not {func!r}")
        _check_job_options(retries, priority, queue, retry_delay, retry_max_delay, timeout)
        context_param = find_context_param(func, JobContext)
        signature = handler_signature(func, context_param)
        return JobDefinition(
            name=name or default_task_name(func),
            func=func,
            is_async=inspect.iscoroutinefunction(func),
            max_retries=self.settings.max_retries if retries is None else retries,
            priority=self.settings.priority if priority is None else priority,
            queue=queue,
            unique=unique,
            retry_delay=(
                list(retry_delay) if isinstance(retry_delay, (list, tuple)) else retry_delay
            ),
            retry_backoff=retry_backoff,
            retry_max_delay=retry_max_delay,
            timeout=timeout,
            args_model=model,
            context_param=context_param,
            signature=signature,
            arg_names=argument_names(signature),
        )

    @property
    def registry(self) -> JobRegistry:
        """The jobs this instance knows (what the worker, scheduler and dashboard look up)."""
        return self._registry

    def _get_job_registry(self) -> JobRegistry:
        """The documented spelling (Hooks page) of :attr:`registry`."""
        return self._registry

    # --- hooks -------------------------------------------------------------
    def before_job(self, func: F) -> F:
        """Run ``func`` before every job: ``(job_name, job_id, attempt)`` or ``(ctx)``."""
        return self._add_hook("before_job", func)

    def after_job(self, func: F) -> F:
        """Run ``func`` after every success: ``(job_name, job_id, duration_ms)`` or ``(ctx)``."""
        return self._add_hook("after_job", func)

    def on_error(self, func: F) -> F:
        """Run ``func`` on failure: ``(job_name, job_id, error, attempt)`` or ``(ctx, exc)``."""
        return self._add_hook("on_error", func)

    def _add_hook(self, event: str, func: F) -> F:
        adapt_hook(event, func)  # a hook that fits neither style fails here, not in a worker
        self.hooks[event].append(func)
        return func

    # --- enqueue -----------------------------------------------------------
    def build_job(
        self,
        target: Any,
        *,
        args: Mapping[str, Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | float | None = None,
        unique: bool | None = None,
        dedup_key: str | None = None,
        depends_on: Iterable[str] | None = None,
    ) -> NewJob:
        """Validate an enqueue and return the row it would write, writing nothing.

        The scheduler builds each run's job this way, so a schedule gets exactly
        the checks (task name, arguments, options) an enqueue gets.
        """
        deps = dependency_ids(depends_on)
        options = EnqueueOptions(priority, queue, scheduled_at, unique, dedup_key, deps)
        return build_job(
            self._registry, self.settings, target, args, kwargs or {}, options, self._warned_unknown
        )

    async def enqueue(
        self,
        target: Any,
        *,
        args: dict[str, Any] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | float | None = None,
        unique: bool | None = None,
        dedup_key: str | None = None,
        connection: Any = None,
        depends_on: Iterable[str] | None = None,
        **func_kwargs: Any,
    ) -> str:
        """Enqueue one job; returns its id (or, for a duplicate, the existing job's id).

        ``depends_on=[id, ...]``: the job runs only once every one of those jobs is
        ``done``; if one is cancelled or dead-lettered, this job is cancelled too, with
        an error naming it (docs/lifecycle.md, Dependencies).
        """
        job = self.build_job(
            target, args=args, kwargs=func_kwargs, priority=priority, queue=queue,
            scheduled_at=scheduled_at, unique=unique, dedup_key=dedup_key,
            depends_on=depends_on,
        )  # fmt: skip
        ids = await self._insert([job], connection)
        return ids[0]

    async def enqueue_many(
        self,
        target: Any,
        items: Iterable[Mapping[str, Any]],
        *,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | None = None,
        unique: bool | None = None,
        connection: Any = None,
    ) -> list[str]:
        """Enqueue one job per argument dict in one round trip; same validation and dedup."""
        options = EnqueueOptions(priority, queue, scheduled_at, unique, None)
        warned = self._warned_unknown
        jobs = build_jobs(self._registry, self.settings, target, items, options, warned)
        return await self._insert(jobs, connection) if jobs else []

    async def _insert(self, jobs: list[NewJob], connection: Any) -> list[str]:
        if connection is None:
            await self.ensure_initialized()
        events = self.events
        await events.refresh(self.backend)  # a read at most every few seconds
        if events.prepare:
            jobs = events.emit_prepare(jobs)
        records = events.emit_enqueued(jobs) if events.enqueued else None
        if records:  # written in the same transaction as the jobs
            return await self.backend.enqueue_observed(jobs, records, connection=connection)
        return await self.backend.enqueue(jobs, connection=connection)

    async def schedule(
        self,
        target: Any,
        run_at: datetime | float,
        *,
        args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Enqueue to run at ``run_at`` (a UTC datetime, or seconds from now)."""
        return await self.enqueue(target, args=args, scheduled_at=run_at, **kwargs)

    # --- sync producers (soniq/sync.py) --------------------------------------
    def enqueue_sync(
        self,
        target: Any,
        *,
        args: dict[str, Any] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | float | None = None,
        unique: bool | None = None,
        dedup_key: str | None = None,
        connection: Any = None,
        **func_kwargs: Any,
    ) -> str:
        """``enqueue`` for code without an event loop: Django and Flask views, threads, scripts.

        Same arguments, validation and result. ``connection=`` also takes a sync
        psycopg 3 connection, a SQLAlchemy ``Session`` on psycopg, or Django's
        ``connection`` inside ``transaction.atomic()``. Example::

            with transaction.atomic():
                order = Order.objects.create(total=42)
                app.enqueue_sync(send_invoice, connection=connection, order_id=order.id)
        """
        conn = self._sync.prepare_connection(connection)
        return self._sync.run(self.enqueue(
            target, args=args, priority=priority, queue=queue, scheduled_at=scheduled_at,
            unique=unique, dedup_key=dedup_key, connection=conn, **func_kwargs,
        ))  # fmt: skip

    def schedule_sync(
        self, target: Any, run_at: datetime | float, *, args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:  # fmt: skip
        """``schedule`` for code without an event loop (see ``enqueue_sync``)."""
        return self.enqueue_sync(target, args=args, scheduled_at=run_at, **kwargs)

    # --- inspect and manage -----------------------------------------------
    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's full record; a dead-lettered job reports status ``dead_letter``."""
        await self.ensure_initialized()
        job = await self.backend.get_job(str(job_id))
        if job is not None:
            return job.to_dict()
        dead = await self.backend.dead_letter_get(str(job_id))
        return dead.as_job_dict() if dead is not None else None

    async def get_result(self, job_id: str) -> Any:
        """The return value of a completed job, else ``None``."""
        job = await self.get_job(job_id)
        if job is None or job["status"] != JobStatus.DONE.value:
            return None
        return job.get("result")

    async def get_job_status(self, job_id: str) -> dict[str, Any] | None:
        """``{"status": ..., "result": ..., "job_name": ..., ...}`` or ``None``."""
        return await self.get_job(job_id)

    async def cancel_job(self, job_id: str) -> bool:
        """Cancel a job; ``False`` if it already finished (or is unknown).

        A queued job is cancelled at once. A running job is asked to stop: its worker
        hears it at once on PostgreSQL (NOTIFY), else at its next heartbeat; an async
        handler's task is cancelled, a sync handler sees ``ctx.cancelled`` set. It then
        ends ``cancelled`` and is never retried.
        """
        await self.ensure_initialized()
        before = await self.backend.get_job(str(job_id))
        cancelled = await self.backend.cancel_job(str(job_id))
        if cancelled and before is not None and before.status == JobStatus.QUEUED.value:
            # A running job's event comes from its worker, with the outcome.
            await emit_changes(self, "job.cancelled", {str(job_id): None})
        return cancelled

    async def queue_limits(
        self, queue: str, *, max_concurrency: int | None = None, rate: str | None = None
    ) -> QueueLimit | None:
        """Limit a queue for every worker, everywhere; stored in the database.

        Example::

            await app.queue_limits("emails", max_concurrency=5, rate="100/m")

        ``max_concurrency``: at most this many of the queue's jobs run at once.
        ``rate``: at most N starts in any sliding window (``"10/s"``, ``"100/m"``,
        ``"5/h"``). The call replaces the queue's limits; with neither, it lifts them
        (returns ``None``). Workers see a change within one ``poll_interval``.
        """
        parsed = parse_rate(rate) if rate is not None else None
        limit = QueueLimit(
            queue, max_concurrency, parsed.count if parsed else None,
            parsed.seconds if parsed else None,
        )  # fmt: skip
        await self.ensure_initialized()
        return await self.backend.queue_limit_set(limit)

    async def delete_job(self, job_id: str) -> bool:
        await self.ensure_initialized()
        return await self.backend.delete_job(str(job_id))

    async def list_jobs(
        self,
        queue: str | None = None,
        status: str | JobStatus | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        await self.ensure_initialized()
        status_value = status.value if isinstance(status, JobStatus) else status
        if status_value == JobStatus.DEAD_LETTER.value:
            dead = await self.backend.dead_letter_list(
                queue=queue, task=None, limit=limit, offset=offset
            )
            return [d.as_job_dict() for d in dead]
        jobs = await self.backend.list_jobs(
            queue=queue, status=status_value, limit=limit, offset=offset
        )
        return [j.to_dict() for j in jobs]

    async def get_queue_stats(self) -> list[dict[str, Any]]:
        """One dict per queue (queue, total, queued, processing, done, dead_letter, cancelled)."""
        await self.ensure_initialized()
        return [s.to_dict() for s in await self.backend.queue_stats()]

    # --- workers -----------------------------------------------------------
    def _make_worker(self) -> Any:
        from soniq.worker import Worker

        return Worker(
            backend=self.backend, registry=self._registry, settings=self.settings,
            hooks=self.hooks, events=self.events,
        )  # fmt: skip

    async def run_worker(
        self,
        concurrency: int | None = None,
        run_once: bool = False,
        queues: list[str] | None = None,
    ) -> bool:
        """Run a worker in this process (default concurrency: the ``concurrency`` setting, 4)."""
        slots = self.settings.concurrency if concurrency is None else concurrency
        worker = self._make_worker()
        # Before the pool opens: the worker sizes it for its concurrency (or refuses
        # an explicit pool_max_size that is too small) while that can still apply.
        worker._check_capacity(slots)
        await self.ensure_initialized()
        return bool(await worker.run(concurrency=slots, run_once=run_once, queues=queues))

    # --- services ----------------------------------------------------------
    @property
    def dead_letter(self) -> DeadLetterService:
        if self._dead_letter is None:
            from soniq.dead_letter import DeadLetterService

            self._dead_letter = DeadLetterService(self)
        return self._dead_letter

    @property
    def scheduler(self) -> Scheduler:
        if self._scheduler is None:
            from soniq.scheduler import Scheduler

            self._scheduler = Scheduler(self)
        return self._scheduler

    # --- observability (soniq/events.py): thin delegates to the features ---------
    @property
    def webhooks(self) -> Webhooks:
        """Outbound webhooks for job events: ``await app.webhooks.register(url)``."""
        from soniq.webhooks import Webhooks

        return feature(self, "webhooks", lambda: Webhooks(self, self._features["outbox"]))

    @property
    def signing(self) -> Signing:
        """Encryption and signatures (``SONIQ_SIGNING_KEY``): ``await app.signing.encrypt(s)``."""
        from soniq.signing import Signing

        return feature(self, "signing", lambda: Signing(self.settings))

    @property
    def logs(self) -> JobLogs:
        """What jobs logged: ``await app.logs.search_logs("timeout")``."""
        from soniq.logs import JobLogs

        return feature(self, "logs", lambda: JobLogs(self))

    @property
    def metrics(self) -> CollectorRegistry:
        """This instance's Prometheus registry (``prometheus_client.CollectorRegistry``)."""
        from soniq.metrics import JobMetrics

        return feature(self, "metrics", lambda: self.events.subscribe(JobMetrics())).registry

    def __repr__(self) -> str:
        return f"Soniq(backend={self.backend.name!r}, url={mask_url(self.database_url)!r})"


def _one_of(a_name: str, a: Any, b_name: str, b: Any) -> Any:
    if a is not None and b is not None and a != b:
        raise JobRegistrationError(f"{a_name}= and {b_name}= are aliases; pass only one")
    return a if a is not None else b


def _check_job_options(
    retries: int | None, priority: int | None, queue: str, retry_delay: Any,
    retry_max_delay: float | None, timeout: float | None,
) -> None:  # fmt: skip
    if retries is not None and (not isinstance(retries, int) or retries < 0):
        raise JobRegistrationError(f"retries must be an int >= 0, got {retries!r}")
    if priority is not None:
        try:
            check_priority(priority)
        except ValueError as exc:
            raise JobRegistrationError(str(exc)) from None
    if not isinstance(queue, str) or not queue:
        raise JobRegistrationError(f"queue must be a non-empty string, got {queue!r}")
    delays = retry_delay if isinstance(retry_delay, (list, tuple)) else [retry_delay]
    if not all(isinstance(d, (int, float)) and d >= 0 for d in delays):
        raise JobRegistrationError(
            f"retry_delay must be seconds >= 0 or a list of them, got {retry_delay!r}"
        )
    for label, value in (("retry_max_delay", retry_max_delay), ("timeout", timeout)):
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise JobRegistrationError(f"{label} must be seconds >= 0, got {value!r}")
