"""Prometheus metrics, one registry per ``Soniq`` instance (``app.metrics``).

A :class:`JobMetrics` subscriber counts what the enqueue path and the worker
emit; a side loop of the worker refreshes the queue gauges from the backend.
Nothing is global: two instances in one process never share a series.

Serve them with ``soniq worker --metrics-port 9464`` (or ``SONIQ_METRICS_PORT``),
or yourself::

    from prometheus_client import generate_latest
    body = generate_latest(app.metrics)

Requires ``pip install soniq[metrics]`` (``prometheus-client``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from soniq.errors import ConfigurationError, MissingExtraError
from soniq.events import Record, Subscriber
from soniq.job import Cancelled, ClaimedJob, Done, Fail, NewJob, Outcome, Retry, Snoozed

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from soniq.backends import StorageBackend
    from soniq.settings import SoniqSettings

log = logging.getLogger("soniq.metrics")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GAUGE_REFRESH_SECONDS = 5.0
JOB_LABELS = ("queue", "task")


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:  # pragma: no cover - exercised without the extra only
        raise MissingExtraError(
            "app.metrics needs the 'prometheus-client' package; install it with "
            "`pip install soniq[metrics]`"
        ) from None
    return prometheus_client


class JobMetrics(Subscriber):
    """The series of one instance, and the subscriber that keeps them."""

    def __init__(self) -> None:
        prom = _prometheus()
        self.registry: CollectorRegistry = prom.CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str) -> Any:
            return prom.Counter(name, doc, JOB_LABELS, registry=self.registry)

        self.enqueued = counter("soniq_jobs_enqueued", "Jobs enqueued.")
        self.started = counter("soniq_jobs_started", "Attempts started.")
        self.completed = counter("soniq_jobs_completed", "Jobs completed successfully.")
        self.failed = counter("soniq_jobs_failed", "Failed attempts (retried or not).")
        self.retried = counter("soniq_jobs_retried", "Failed attempts scheduled for a retry.")
        self.dead = counter("soniq_jobs_dead_lettered", "Jobs moved to the dead-letter table.")
        self.snoozed = counter("soniq_jobs_snoozed", "Attempts that snoozed (soniq.Snooze).")
        self.cancelled = counter("soniq_jobs_cancelled", "Running jobs stopped by cancel_job().")
        self.duration = prom.Histogram(
            "soniq_job_duration_seconds", "Attempt run time.", JOB_LABELS,
            buckets=DURATION_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.in_progress = prom.Gauge(
            "soniq_jobs_in_progress", "Attempts running now in this process.", JOB_LABELS,
            registry=self.registry,
        )  # fmt: skip
        self.depth = prom.Gauge(
            "soniq_queue_depth", "Jobs per queue and status (all workers).", ("queue", "status"),
            registry=self.registry,
        )  # fmt: skip
        self._children: dict[tuple[str, str], _Series] = {}
        self.oldest = prom.Gauge(
            "soniq_queue_oldest_age_seconds", "Age of the oldest due queued job.", ("queue",),
            registry=self.registry,
        )  # fmt: skip

    # --- events -----------------------------------------------------------------
    def _series(self, queue: str, task: str) -> _Series:
        """The labelled children of one (queue, task), looked up once: ``labels()`` costs
        more than the increment itself on the worker's hot path."""
        key = (queue, task)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = _Series(
                *(m.labels(queue, task) for m in (
                    self.enqueued, self.started, self.completed, self.failed, self.retried,
                    self.dead, self.duration, self.in_progress, self.snoozed, self.cancelled,
                ))
            )  # fmt: skip
        return found

    def on_enqueued(self, jobs: Sequence[NewJob]) -> Iterable[Record] | None:
        for job in jobs:
            self._series(job.queue, job.job_name).enqueued.inc()
        return None

    def on_started(self, job: ClaimedJob) -> Iterable[Record] | None:
        series = self._series(job.queue, job.job_name)
        series.started.inc()
        series.in_progress.inc()
        return None

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> None:
        series = self._series(job.queue, job.job_name)
        series.in_progress.dec()
        series.duration.observe(duration)
        if isinstance(outcome, Done):
            series.completed.inc()
        elif isinstance(outcome, Retry):
            series.failed.inc()
            series.retried.inc()
        elif isinstance(outcome, Fail):
            series.failed.inc()
            series.dead.inc()
        elif isinstance(outcome, Snoozed):
            series.snoozed.inc()
        elif isinstance(outcome, Cancelled):
            series.cancelled.inc()

    # --- gauges -------------------------------------------------------------------
    async def run(self, backend: StorageBackend, settings: SoniqSettings) -> None:
        """Refresh queue depth and age while the worker runs."""
        interval = min(GAUGE_REFRESH_SECONDS, settings.poll_interval)
        while True:
            try:
                await self.refresh_gauges(backend)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - gauges stay at their last value
                log.debug("Refreshing queue gauges failed: %r", exc)
            await asyncio.sleep(interval)

    async def refresh_gauges(self, backend: StorageBackend) -> None:
        stats = await backend.queue_stats()
        oldest = await backend.queue_oldest()
        self.depth.clear()
        self.oldest.clear()
        for s in stats:
            for status in ("queued", "processing", "done", "dead_letter", "cancelled"):
                self.depth.labels(s.queue, status).set(getattr(s, status))
            self.oldest.labels(s.queue).set(oldest.get(s.queue, 0.0))


class _Series(NamedTuple):
    enqueued: Any
    started: Any
    completed: Any
    failed: Any
    retried: Any
    dead: Any
    duration: Any
    in_progress: Any
    snoozed: Any
    cancelled: Any


def serve(registry: CollectorRegistry, port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``/metrics`` for ``registry`` on a daemon thread; returns the server."""
    prom = _prometheus()
    try:
        server, _thread = prom.start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigurationError(
            f"Cannot serve metrics on {host}:{port} ({exc}); choose a free port with "
            "--metrics-port or SONIQ_METRICS_PORT"
        ) from None
    return server


# The published docs' spelling (their going-to-production page); the class lives in
# soniq/observability.py with the other metrics sinks.
from soniq.observability import PrometheusMetricsSink  # noqa: E402

__all__ = ["JobMetrics", "PrometheusMetricsSink", "serve"]
