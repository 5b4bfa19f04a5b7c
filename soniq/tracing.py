"""OpenTelemetry tracing: a trace started at enqueue continues in the worker.

With ``opentelemetry-api`` installed (``pip install soniq[otel]``) and a tracer
provider configured, ``enqueue`` records a PRODUCER span ``soniq.enqueue
<task>`` and stores its W3C trace context in the job's metadata; the worker
runs the handler inside a CONSUMER span ``soniq.job <task>`` whose parent is
that context, even in another process. A failed attempt sets the span's status
to ERROR with the error text. Spans the handler creates are children of the job
span (the span is the current context in the job's task, and in a sync job's
thread).

Without the package, or while no tracer provider is configured, the subscriber
stays out of every event and nothing is stored.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from soniq.events import META_KEY, Record, Subscriber, job_meta
from soniq.job import ClaimedJob, Done, NewJob, Outcome, Requeue, Snoozed
from soniq.serialization import dumps_strict

TRACER_NAME = "soniq"


def otel_available() -> bool:
    return importlib.util.find_spec("opentelemetry") is not None


def _configured(trace: Any) -> bool:
    """True once the application installed a real tracer provider (not the default proxy)."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


class Tracing(Subscriber):
    """Producer spans at enqueue, consumer spans around each attempt."""

    def __init__(self) -> None:
        from opentelemetry import context, propagate, trace

        self._trace, self._context, self._propagate = trace, context, propagate
        self._active = _configured(trace)
        self._open: dict[str, tuple[Any, Any]] = {}  # job id -> (span, context token)

    def wants(self, hook: str) -> bool:
        return self._active

    async def refresh(self, backend: Any) -> None:
        self._active = _configured(self._trace)

    def _tracer(self) -> Any:
        return self._trace.get_tracer(TRACER_NAME)

    # --- producer -------------------------------------------------------------------
    def prepare_enqueue(self, jobs: list[NewJob]) -> list[NewJob]:
        if not jobs:
            return jobs
        name = jobs[0].job_name if len({j.job_name for j in jobs}) == 1 else "batch"
        kind = self._trace.SpanKind.PRODUCER
        with self._tracer().start_as_current_span(f"soniq.enqueue {name}", kind=kind) as span:
            span.set_attribute("messaging.system", "soniq")
            span.set_attribute("messaging.batch.message_count", len(jobs))
            carrier: dict[str, str] = {}
            self._propagate.inject(carrier)
        if not carrier:
            return jobs
        return [_with_trace(j, carrier) for j in jobs]

    # --- consumer -------------------------------------------------------------------
    def on_started(self, job: ClaimedJob) -> Iterable[Record] | None:
        carrier = job_meta(job.args).get("trace")
        parent = self._propagate.extract(carrier) if isinstance(carrier, dict) else None
        span = self._tracer().start_span(
            f"soniq.job {job.job_name}", context=parent, kind=self._trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "soniq", "messaging.destination.name": job.queue,
                "messaging.message.id": job.id, "soniq.attempt": job.attempt,
            },
        )  # fmt: skip
        token = self._context.attach(self._trace.set_span_in_context(span))
        self._open[job.id] = (span, token)
        return None

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> None:
        opened = self._open.pop(job.id, None)
        if opened is None:
            return
        span, token = opened
        try:
            self._context.detach(token)
        finally:
            _settle(self._trace, span, outcome)


def _with_trace(job: NewJob, carrier: dict[str, str]) -> NewJob:
    meta = {**job_meta(job.args), "trace": dict(carrier)}
    args = {**job.args, META_KEY: meta}
    return replace(job, args=args, args_json=dumps_strict(args))


def _settle(trace: Any, span: Any, outcome: Outcome) -> None:
    if isinstance(outcome, Done):
        span.set_status(trace.Status(trace.StatusCode.OK))
    elif isinstance(outcome, (Requeue, Snoozed)):  # back in the queue: not an error
        span.set_attribute("soniq.requeued", True)
    else:
        error = getattr(outcome, "error", "failed")
        span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.add_event("exception", {"exception.message": error})
    span.end()
