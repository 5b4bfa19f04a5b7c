"""OpenTelemetry: the enqueue's producer span is the parent of the worker's job span,
in one process and across two (an in-memory exporter in each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from soniq import Soniq
from tests.helpers import FAST_SETTINGS

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process-wide tracer provider can be set once: one provider, cleared per test."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


async def test_job_span_is_a_child_of_the_enqueue_span(
    pg_url: str, spans: InMemorySpanExporter
) -> None:
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)
    inner: list[str] = []

    @app.job(name="traced.ok")
    async def ok(n: int) -> int:
        with trace.get_tracer("user").start_as_current_span("inside the handler"):
            inner.append("ran")
        return n

    @app.job(name="traced.bad", retries=0)
    def bad() -> None:  # sync: the span travels into the handler's thread too
        with trace.get_tracer("user").start_as_current_span("inside sync"):
            raise RuntimeError("kaput")

    try:
        with trace.get_tracer("web").start_as_current_span("POST /orders") as request:
            ok_id = await app.enqueue(ok, n=5)
            bad_id = await app.enqueue(bad)
        stored = await app.get_job(ok_id)
        assert stored is not None and "traceparent" in json.dumps(stored["args"])
        await app.run_worker(run_once=True)
        assert await app.get_result(ok_id) == 5  # the handler never saw the metadata
    finally:
        await app.close()

    by_name = {s.name: s for s in spans.get_finished_spans()}
    enqueue, job = by_name["soniq.enqueue traced.ok"], by_name["soniq.job traced.ok"]
    assert enqueue.kind == SpanKind.PRODUCER and job.kind == SpanKind.CONSUMER
    assert enqueue.parent is not None
    assert enqueue.parent.span_id == request.get_span_context().span_id
    assert job.parent is not None and job.parent.span_id == enqueue.context.span_id
    assert job.context.trace_id == request.get_span_context().trace_id
    assert job.attributes is not None and job.attributes["messaging.message.id"] == ok_id
    assert job.status.status_code == StatusCode.OK
    handler_span = by_name["inside the handler"]
    assert handler_span.parent is not None and handler_span.parent.span_id == job.context.span_id
    failed = by_name["soniq.job traced.bad"]
    assert failed.status.status_code == StatusCode.ERROR
    assert "kaput" in str(failed.status.description)
    sync_span = by_name["inside sync"]
    assert sync_span.parent is not None and sync_span.parent.span_id == failed.context.span_id
    assert bad_id


WORKER = """
import asyncio, json, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from soniq import Soniq

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

app = Soniq(database_url=sys.argv[1])

@app.job(name="traced.remote")
async def remote(n: int) -> int:
    return n

async def main() -> None:
    await app.run_worker(run_once=True)
    await app.close()

asyncio.run(main())
print(json.dumps([
    {"name": s.name, "trace": s.context.trace_id, "parent": s.parent.span_id if s.parent else None}
    for s in exporter.get_finished_spans()
]))
"""


async def test_the_trace_continues_in_another_process(
    pg_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @app.job(name="traced.remote")
    async def remote(n: int) -> int:
        return n

    try:
        await app.enqueue(remote, n=1)
    finally:
        await app.close()
    [enqueue] = [s for s in spans.get_finished_spans() if s.name == "soniq.enqueue traced.remote"]

    script = tmp_path / "traced_worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, str(script), pg_url], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    [job] = [
        s for s in json.loads(done.stdout.splitlines()[-1]) if s["name"].startswith("soniq.job")
    ]
    assert job["trace"] == enqueue.context.trace_id
    assert job["parent"] == enqueue.context.span_id


async def test_without_a_configured_provider_nothing_is_stored(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default (proxy) provider: no span, no metadata in the job's arguments."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @app.job(name="untraced")
    async def plain(n: int) -> None: ...

    try:
        job_id = await app.enqueue(plain, n=1)
        stored = await app.get_job(job_id)
        assert stored is not None and stored["args"] == {"n": 1}
    finally:
        await app.close()
