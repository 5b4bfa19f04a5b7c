"""``Soniq``: the facade. It owns settings, registry, backend and hooks; methods delegate."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from soniq.backends import StorageBackend, make_backend
from soniq.core.middleware import Middleware
from soniq.core.registry import (
    DEFAULT_QUEUE,
    JobDefinition,
    JobRegistry,
    default_task_name,
    define_job,
    route_queue,
    tag_function,
)
from soniq.core.retry import RetryPolicy
from soniq.enqueue import EnqueueOptions, build_job, dependency_ids, job_chunks
from soniq.errors import JobRegistrationError
from soniq.events import EventBus, Record, emit_changes, feature, install_default_subscribers
from soniq.flow import DEFAULT_MAX_SNOOZES, QueueLimit, job_flow_options, parse_rate
from soniq.hooks import HOOK_EVENTS, adapt_hook
from soniq.job import JobStatus, NewJob
from soniq.migrations import MigrationSources, SetupReport
from soniq.observability import MetricsSink, SinkSubscriber
from soniq.plugin import CliExtensions, DashboardExtensions, PluginRegistry, install_plugins
from soniq.settings import SoniqSettings
from soniq.sync import SyncRunner
from soniq.types import QueueStatsList
from soniq.utils import mask_url

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from soniq.dead_letter import DeadLetterService
    from soniq.logs import JobLogs
    from soniq.scheduler import Scheduler
    from soniq.signing import Signing
    from soniq.webhooks import Webhooks

F = TypeVar("F", bound=Callable[..., Any])

# enqueue_many builds a batch longer than this in chunks of this many rows, so that
# PostgreSQL inserts one chunk while the next is built (bench/RESULTS.md, "Streamed
# bulk enqueue").
STREAM_CHUNK = 100


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
        retry_policy: RetryPolicy | None = None,
        metrics_sink: MetricsSink | None = None,
        plugins: Iterable[Any] | None = None,
        autoload_plugins: bool = False,
        **settings_overrides: Any,
    ) -> None:
        if database_url is not None:
            settings_overrides["database_url"] = database_url
        self.settings = SoniqSettings(**settings_overrides)
        self.database_url = self.settings.resolved_database_url()
        self.backend: StorageBackend = make_backend(self.database_url, backend, self.settings)
        self._registry = JobRegistry(self.settings.task_name_pattern)
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
        # The published package's surface (COMPAT.md): policy, sink, middleware, plugins.
        self._retry_policy = retry_policy
        self._metrics_sink: MetricsSink | None = None
        self._middleware: list[Middleware] = []
        self._closed = False
        self._plugins = PluginRegistry()
        self.cli = CliExtensions()
        self.dashboard = DashboardExtensions()
        self.migrations = MigrationSources()
        if metrics_sink is not None:
            self.metrics_sink = metrics_sink
        install_plugins(self, plugins, autoload_plugins)

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
                self._initialized, self._closed = True, False

    async def setup(self) -> SetupReport:
        """Create the database if needed, apply pending migrations (ours, then plugins'),
        initialise, and run plugins' ``on_startup``; what `soniq setup` does.

        Returns the number of migrations applied now, an ``int`` that also carries
        ``applied``, ``already_applied`` and ``database_created``.
        """
        report = await self.backend.migrate(self.migrations.files(self.backend.name))
        await self.ensure_initialized()
        await self._plugins.startup(self)
        return SetupReport(report)

    async def close(self) -> None:
        """Release the pool (plugins' ``on_shutdown`` first). Safe to call twice."""
        await self._plugins.shutdown(self)
        self._closed = True
        await self._sync.aclose()  # first: a pool held by the sync producers' loop closes there
        self._initialized = False
        await self.backend.close()

    async def __aenter__(self) -> Soniq:
        """Initialise now, so ``is_initialized`` is true (and a bad URL fails) at entry."""
        await self.ensure_initialized()
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
        queue: str = DEFAULT_QUEUE,
        unique: bool = False,
        retry_delay: float | list[float] = 0,
        retry_backoff: bool = False,
        retry_max_delay: float | None = None,
        timeout: float | None = None,
        validate: type[Any] | None = None,
        args_model: type[Any] | None = None,
        retry_jitter: bool = False,
        encrypt: bool = False,
        rate_limit: str | None = None,
        concurrency_key: Callable[[dict[str, Any]], Any] | None = None,
        max_concurrency_per_key: int | None = None,
        max_snoozes: int = DEFAULT_MAX_SNOOZES,
        **custom: Any,
    ) -> Callable[[F], F]:
        """Register a function as a job. Always called with parentheses: ``@app.job()``.

        ``max_retries=`` wins over ``retries=``. Any other keyword is kept in the job's
        config (``registry.get_job(name)[key]``), where a custom ``retry_policy`` reads it;
        a keyword that looks like a misspelled option is refused. ``queue`` defaults to
        the ``route_map`` entry of the longest matching name prefix, else ``"default"``.

        ``encrypt=True`` stores the job's arguments encrypted at rest (``app.signing``).
        ``rate_limit="10/s"`` allows at most 10 starts of this task in any sliding second,
        across every worker; ``concurrency_key=lambda args: args["tenant"]`` with
        ``max_concurrency_per_key=2`` runs at most 2 jobs per tenant at once. A job may
        ``raise Snooze(...)`` up to ``max_snoozes`` times.
        """
        options = dict(
            name=name, retries=retries if max_retries is None else max_retries,
            priority=priority, queue=queue, unique=unique, retry_delay=retry_delay,
            retry_backoff=retry_backoff, retry_max_delay=retry_max_delay, timeout=timeout,
            model=_one_of("validate", validate, "args_model", args_model),
            retry_jitter=retry_jitter, custom=custom,
        )  # fmt: skip
        flow = job_flow_options(
            rate_limit=rate_limit, concurrency_key=concurrency_key,
            max_concurrency_per_key=max_concurrency_per_key, max_snoozes=max_snoozes,
        )  # fmt: skip

        def decorator(func: F) -> F:
            definition = dataclasses.replace(self._define(func, **options), **flow)
            self._registry.register(definition)
            tag_function(func, definition)
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
        if args is None:  # the published spelling
            args = job_kwargs.pop("schedule_args", None)
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
        priority: int | None, queue: str, unique: bool,
        retry_delay: float | list[float], retry_backoff: bool, retry_max_delay: float | None,
        timeout: float | None, model: type[Any] | None, retry_jitter: bool = False,
        custom: dict[str, Any] | None = None,
    ) -> JobDefinition:  # fmt: skip
        """``define_job`` (soniq/core/registry.py) with this instance's defaults filled in."""
        settings = self.settings
        if queue is DEFAULT_QUEUE and settings.route_map:  # no queue= given: route it
            derived = name if name is not None else default_task_name(func)
            queue = route_queue(derived, settings.route_map)
        return define_job(
            func, name=name, queue=queue, unique=unique, retry_delay=retry_delay,
            max_retries=settings.max_retries if retries is None else retries,
            priority=settings.priority if priority is None else priority,
            retry_backoff=retry_backoff, retry_max_delay=retry_max_delay, timeout=timeout,
            args_model=model, retry_jitter=retry_jitter, custom=custom,
            pattern=settings.task_name_pattern,
        )  # fmt: skip

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
        scheduled_at: datetime | timedelta | float | None = None,
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
        scheduled_at: datetime | timedelta | float | None = None,
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
        args_list: Iterable[Mapping[str, Any]],
        *,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | timedelta | float | None = None,
        unique: bool | None = None,
        connection: Any = None,
    ) -> list[str]:
        """Enqueue one job per argument dict in one round trip; same validation and dedup.

        Returns the ids in input order. A refused row raises with its ``index`` in
        ``err.context`` and nothing of the batch is written: a long batch is checked as
        it streams into one statement, which the refusal aborts.
        """
        options = EnqueueOptions(priority, queue, scheduled_at, unique, None)
        warned = self._warned_unknown
        rows = args_list if isinstance(args_list, (list, tuple)) else list(args_list)
        size = STREAM_CHUNK if connection is None else max(len(rows), 1)
        chunks = job_chunks(self._registry, self.settings, target, rows, options, warned, size)
        first = next(chunks, [])  # the target, the options and the first rows, checked
        if len(first) == len(rows):
            return await self._insert(first, connection) if first else []
        await self.ensure_initialized()
        events = self.events
        await events.refresh(self.backend)
        if events.prepare:  # a hook rewrites the batch (signing, tracing): whole, first
            return await self._insert([*first, *itertools.chain.from_iterable(chunks)], None)
        # Written while the rest is built; what observers of job.enqueued record (metrics
        # count, webhooks queue deliveries) is gathered part by part and rides along.
        parts: Iterator[list[NewJob]] = itertools.chain([first], chunks)
        if not events.enqueued:
            return await self.backend.enqueue_chunks(parts)
        records: list[Record] = []
        return await self.backend.enqueue_chunks(_observed(parts, events, records), records)

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
        run_at: datetime | timedelta | float,
        *,
        args: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> str:
        """Enqueue to run at ``run_at`` (a UTC datetime, a ``timedelta`` or seconds from now)."""
        return await self.enqueue(target, args=args, scheduled_at=run_at, **kwargs)

    # --- sync producers (soniq/sync.py) --------------------------------------
    def enqueue_sync(
        self,
        target: Any,
        *,
        args: dict[str, Any] | None = None,
        priority: int | None = None,
        queue: str | None = None,
        scheduled_at: datetime | timedelta | float | None = None,
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
        self, target: Any, run_at: datetime | timedelta | float, *,
        args: dict[str, Any] | None = None, **kwargs: Any,
    ) -> str:  # fmt: skip
        """``schedule`` for code without an event loop (see ``enqueue_sync``)."""
        return self.enqueue_sync(target, args=args, scheduled_at=run_at, **kwargs)

    # --- inspect and manage -----------------------------------------------
    async def _reset(self) -> None:
        """Wipe jobs, dead letters and workers, keeping the pool: the published testing
        guide's per-test fixture (``await app._reset()``). Schedules and webhooks stay."""
        await self.ensure_initialized()
        await self.backend.reset()

    async def get_job(self, job_id: str) -> dict[str, Any] | None:
        """The job's full record; a dead-lettered job reports status ``dead_letter``."""
        await self.ensure_initialized()
        job = await self.backend.get_job(str(job_id))
        if job is not None:
            return job.to_dict()
        dead = await self.backend.dead_letter_get(str(job_id))
        return dead.as_job_dict() if dead is not None else None

    async def get_result(self, job_id: str, *, result_model: type[Any] | None = None) -> Any:
        """The return value of a completed job, else ``None``.

        ``result_model`` rebuilds the stored JSON as that type (a pydantic model, a
        dataclass, ...), as the published package did.
        """
        job = await self.get_job(job_id)
        if job is None or job["status"] != JobStatus.DONE.value:
            return None
        result = job.get("result")
        return result if result_model is None else rebuild(result_model, result)

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

    async def get_queue_stats(self) -> QueueStatsList:
        """One dict per queue (queue, total, queued, processing, done, dead_letter, cancelled).

        The list also answers ``stats["queued"]`` (summed over queues), the shape
        code written for the published package reads (soniq/types.py).
        """
        await self.ensure_initialized()
        return QueueStatsList(s.to_dict() for s in await self.backend.queue_stats())

    # --- workers -----------------------------------------------------------
    def _make_worker(self) -> Any:
        from soniq.worker import Worker

        return Worker(
            backend=self.backend, registry=self._registry, settings=self.settings,
            hooks=self.hooks, events=self.events, middleware=self._middleware,
            retry_policy=self._retry_policy,
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

    # --- the published package's surface (thin; the logic lives in its modules) -----
    @property
    def is_initialized(self) -> bool:
        """True once the backend is open (first use, ``ensure_initialized``, ``async with``)."""
        return self._initialized

    @property
    def is_closed(self) -> bool:
        """True after ``close()`` (until the next use reopens the instance)."""
        return self._closed

    @property
    def _job_registry(self) -> JobRegistry:
        """The published package's private name for :attr:`registry` (its tests use it)."""
        return self._registry

    @property
    def _backend(self) -> StorageBackend:
        """The published package's private name for :attr:`backend`."""
        return self.backend

    @property
    def retry_policy(self) -> RetryPolicy | None:
        """When failed jobs run again (soniq/core/retry.py); ``None``: each job's options."""
        return self._retry_policy

    @retry_policy.setter
    def retry_policy(self, policy: RetryPolicy | None) -> None:
        self._check_not_frozen("retry_policy")
        self._retry_policy = policy

    @property
    def metrics_sink(self) -> MetricsSink | None:
        """Where workers report job starts and ends (soniq/observability.py)."""
        return self._metrics_sink

    @metrics_sink.setter
    def metrics_sink(self, sink: MetricsSink | None) -> None:
        self._check_not_frozen("metrics_sink")
        old = self.events.find(SinkSubscriber)
        if old is not None:
            self.events.unsubscribe(old)
        self._metrics_sink = sink
        if sink is not None:
            self.events.subscribe(SinkSubscriber(sink))

    def _check_not_frozen(self, name: str) -> None:
        if self._initialized:
            from soniq.errors import AppFrozenError

            raise AppFrozenError(
                f"{name} cannot change after the instance is initialised; pass it to "
                f"Soniq({name}=...) or set it before the first enqueue or worker.",
                context={"setting": name},
            )

    def middleware(self, func: Middleware) -> Middleware:
        """Wrap every handler call: ``async def mw(ctx, call_next): return await call_next(ctx)``.

        The first registered is the outermost (soniq/core/middleware.py).
        """
        if not callable(func):
            raise JobRegistrationError(f"middleware must be callable, got {func!r}")
        self._middleware.append(func)
        return func

    @property
    def plugins(self) -> PluginRegistry:
        """The installed plugins, in install order (soniq/plugin.py)."""
        return self._plugins

    def use(self, plugin: Any) -> Any:
        """Install ``plugin`` (its ``install(app)`` runs now); returns it."""
        self._plugins.install(self, plugin)
        return plugin

    def __repr__(self) -> str:
        return f"Soniq(backend={self.backend.name!r}, url={mask_url(self.database_url)!r})"


def rebuild(model: type[Any], value: Any) -> Any:
    """``value`` (stored JSON) as ``model``: ``model_validate``, else keywords, else one value."""
    if value is None:
        return None
    validate = getattr(model, "model_validate", None)
    if callable(validate):
        return validate(value)
    return model(**value) if isinstance(value, dict) else model(value)


def _one_of(a_name: str, a: Any, b_name: str, b: Any) -> Any:
    if a is not None and b is not None and a != b:
        raise JobRegistrationError(f"{a_name}= and {b_name}= are aliases; pass only one")
    return a if a is not None else b


def _observed(
    parts: Iterator[list[NewJob]], events: EventBus, records: list[Record]
) -> Iterator[list[NewJob]]:
    """The parts of a streamed batch, each shown to the observers of job.enqueued as it
    is built; what they record joins ``records``, which the backend writes with it."""
    for part in parts:
        records.extend(events.emit_enqueued(part))
        yield part
