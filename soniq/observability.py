"""Metrics sinks: the published package's pluggable metrics, on our event seam.

``Soniq(metrics_sink=...)`` (or ``app.metrics_sink = ...`` before first use) takes
any object with two async methods::

    async def record_job_start(*, job_id, job_name, queue, attempt) -> None
    async def record_job_end(*, job_id, job_name, queue, status, duration_s, error=None)

``status`` is ``done``, ``failed`` (will retry), ``dead_letter`` or ``snoozed``.
Only workers call a sink. ``PrometheusMetricsSink`` writes the published series
names; ``app.metrics`` (soniq/metrics.py) is our own per-instance registry and
keeps working beside it.

The sink is a subscriber of ``app.events`` like every other feature: its calls
run beside the job, never inside it, so a slow or raising sink is logged and
never changes a job's outcome (the published package failed the job instead).

Example::

    from soniq.observability import PrometheusMetricsSink

    app = Soniq(metrics_sink=PrometheusMetricsSink(prefix="billing"))
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, Protocol, runtime_checkable

from soniq.errors import MissingExtraError
from soniq.events import Record, Subscriber
from soniq.job import ClaimedJob, Done, Fail, Outcome, Retry, Snoozed

log = logging.getLogger("soniq.observability")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


@runtime_checkable
class MetricsSink(Protocol):
    """Where a worker reports each attempt's start and end."""

    async def record_job_start(
        self, *, job_id: str, job_name: str, queue: str, attempt: int
    ) -> None: ...

    async def record_job_end(
        self, *, job_id: str, job_name: str, queue: str, status: str, duration_s: float,
        error: str | None = None,
    ) -> None: ...  # fmt: skip


class NoopMetricsSink:
    """The default: records nothing."""

    async def record_job_start(
        self, *, job_id: str, job_name: str, queue: str, attempt: int
    ) -> None:
        return None

    async def record_job_end(
        self, *, job_id: str, job_name: str, queue: str, status: str, duration_s: float,
        error: str | None = None,
    ) -> None:  # fmt: skip
        return None


class PrometheusMetricsSink:
    """The published package's Prometheus series, with ``prefix`` (default ``soniq``).

    ``<prefix>_jobs_started_total{queue,job_name}``,
    ``<prefix>_jobs_completed_total{queue,job_name,status}``,
    ``<prefix>_job_duration_seconds{queue,job_name,status}`` (5 ms ... 600 s buckets) and
    ``<prefix>_jobs_in_progress{queue,job_name}``, in ``registry`` (default: the
    process-wide ``prometheus_client.REGISTRY``, as published). Needs ``soniq[metrics]``.
    """

    def __init__(self, *, registry: Any = None, prefix: str = "soniq") -> None:
        try:
            import prometheus_client as prom
        except ImportError:  # pragma: no cover - exercised without the extra only
            raise MissingExtraError(
                "PrometheusMetricsSink needs the 'prometheus-client' package; install it "
                "with `pip install soniq[metrics]`"
            ) from None
        reg = registry if registry is not None else prom.REGISTRY
        labels = ("queue", "job_name")
        self.registry = reg
        self.started = prom.Counter(
            f"{prefix}_jobs_started", "Job attempts started.", labels, registry=reg
        )
        self.completed = prom.Counter(
            f"{prefix}_jobs_completed", "Job attempts ended, by status.", (*labels, "status"),
            registry=reg,
        )  # fmt: skip
        self.duration = prom.Histogram(
            f"{prefix}_job_duration_seconds", "Job attempt duration.", (*labels, "status"),
            buckets=DURATION_BUCKETS, registry=reg,
        )  # fmt: skip
        self.in_progress = prom.Gauge(
            f"{prefix}_jobs_in_progress", "Job attempts running now.", labels, registry=reg
        )

    async def record_job_start(
        self, *, job_id: str, job_name: str, queue: str, attempt: int
    ) -> None:
        self.started.labels(queue, job_name).inc()
        self.in_progress.labels(queue, job_name).inc()

    async def record_job_end(
        self, *, job_id: str, job_name: str, queue: str, status: str, duration_s: float,
        error: str | None = None,
    ) -> None:  # fmt: skip
        self.completed.labels(queue, job_name, status).inc()
        self.duration.labels(queue, job_name, status).observe(duration_s)
        self.in_progress.labels(queue, job_name).dec()


def outcome_status(outcome: Outcome) -> tuple[str, str | None] | None:
    """The sink's ``(status, error)`` for an outcome; ``None`` for a shutdown requeue
    (no attempt was decided, so there is nothing to report)."""
    if isinstance(outcome, Done):
        return "done", None
    if isinstance(outcome, Retry):
        return "failed", outcome.error
    if isinstance(outcome, Fail):
        return "dead_letter", outcome.error
    if isinstance(outcome, Snoozed):
        return "snoozed", None
    error = getattr(outcome, "error", None)
    return ("failed", str(error)) if error is not None else None


class SinkSubscriber(Subscriber):
    """Feeds a ``MetricsSink`` from the worker's started/finished events.

    Event handlers are synchronous (they run on the job's path), so each sink
    call becomes a task; the set keeps them alive until done and logs failures.
    """

    def __init__(self, sink: MetricsSink) -> None:
        self.sink = sink
        self._pending: set[asyncio.Task[None]] = set()

    def on_started(self, job: ClaimedJob) -> Iterable[Record] | None:
        self._spawn(
            self.sink.record_job_start(
                job_id=job.id, job_name=job.job_name, queue=job.queue, attempt=job.attempt
            )
        )
        return None

    def on_finished(
        self, job: ClaimedJob, outcome: Outcome, duration: float
    ) -> Iterable[Record] | None:
        status = outcome_status(outcome)
        if status is not None:
            call = self.sink.record_job_end(
                job_id=job.id, job_name=job.job_name, queue=job.queue, status=status[0],
                duration_s=duration, error=status[1],
            )  # fmt: skip
            self._spawn(call)
        return None

    def _spawn(self, call: Awaitable[None]) -> None:
        task = asyncio.ensure_future(_logged(call))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)


async def _logged(call: Awaitable[None]) -> None:
    try:
        await call
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - a sink never fails a job
        log.warning("Metrics sink failed: %r", exc)


__all__ = [
    "MetricsSink",
    "NoopMetricsSink",
    "PrometheusMetricsSink",
    "SinkSubscriber",
    "outcome_status",
]
