"""OpenTelemetry: the enqueue's producer span is the parent of the worker's job span,
in one process and across two.

OpenTelemetry's tracer provider is process-global and can be set once, so every
part that configures one runs in a subprocess with an in-memory exporter and
prints its finished spans as JSON: the test process itself never traces, and no
other test sees trace context in its jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from soniq import Soniq
from tests.helpers import FAST_SETTINGS

PRELUDE = """
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
app = Soniq(database_url=sys.argv[1], poll_interval=0.2)

@app.job(name="traced.ok")
async def ok(n: int) -> int:
    with trace.get_tracer("user").start_as_current_span("inside the handler"):
        return n

@app.job(name="traced.bad", retries=0)
def bad() -> None:  # sync: the span travels into the handler's thread too
    with trace.get_tracer("user").start_as_current_span("inside sync"):
        raise RuntimeError("kaput")

def dump(extra):
    spans = [
        {"name": s.name, "kind": s.kind.name, "trace": s.context.trace_id,
         "span": s.context.span_id, "parent": s.parent.span_id if s.parent else None,
         "status": s.status.status_code.name, "description": s.status.description,
         "attributes": dict(s.attributes or {})}
        for s in exporter.get_finished_spans()
    ]
    print(json.dumps({"spans": spans, **extra}))
"""

BOTH = (
    PRELUDE
    + """
async def main():
    with trace.get_tracer("web").start_as_current_span("POST /orders"):
        ok_id = await app.enqueue(ok, n=5)
        await app.enqueue(bad)
    stored = await app.backend.get_job(ok_id)  # the row as stored
    public = await app.get_job(ok_id)  # what users see: their arguments only
    await app.run_worker(run_once=True)
    result = await app.get_result(ok_id)
    await app.close()
    dump({"ok_id": ok_id, "stored_args": stored.args, "public_args": public["args"],
          "result": result})

asyncio.run(main())
"""
)

PRODUCER = (
    PRELUDE
    + """
async def main():
    await app.enqueue(ok, n=1)
    await app.close()
    dump({})

asyncio.run(main())
"""
)

WORKER = (
    PRELUDE
    + """
async def main():
    await app.run_worker(run_once=True)
    await app.close()
    dump({})

asyncio.run(main())
"""
)


def run_script(tmp_path: Path, name: str, code: str, pg_url: str) -> dict[str, Any]:
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    done = subprocess.run(
        [sys.executable, str(script), pg_url], capture_output=True, text=True, env=env, timeout=90
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def test_job_span_is_a_child_of_the_enqueue_span(pg_url: str, tmp_path: Path) -> None:
    out = run_script(tmp_path, "both", BOTH, pg_url)
    assert "traceparent" in json.dumps(out["stored_args"])  # stored with the job
    assert out["public_args"] == {"n": 5}  # get_job shows the handler's arguments only
    assert out["result"] == 5  # the handler never saw the metadata
    spans = by_name(out["spans"])
    request = spans["POST /orders"]
    enqueue, job = spans["soniq.enqueue traced.ok"], spans["soniq.job traced.ok"]
    assert (enqueue["kind"], job["kind"]) == ("PRODUCER", "CONSUMER")
    assert enqueue["parent"] == request["span"]
    assert job["parent"] == enqueue["span"] and job["trace"] == request["trace"]
    assert job["attributes"]["messaging.message.id"] == out["ok_id"]
    assert job["status"] == "OK"
    assert spans["inside the handler"]["parent"] == job["span"]
    failed = spans["soniq.job traced.bad"]
    assert failed["status"] == "ERROR" and "kaput" in failed["description"]
    assert spans["inside sync"]["parent"] == failed["span"]


def test_the_trace_continues_in_another_process(pg_url: str, tmp_path: Path) -> None:
    produced = by_name(run_script(tmp_path, "producer", PRODUCER, pg_url)["spans"])
    consumed = by_name(run_script(tmp_path, "worker", WORKER, pg_url)["spans"])
    enqueue, job = produced["soniq.enqueue traced.ok"], consumed["soniq.job traced.ok"]
    assert job["trace"] == enqueue["trace"] and job["parent"] == enqueue["span"]


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
