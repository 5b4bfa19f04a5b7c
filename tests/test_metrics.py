"""Prometheus metrics: per-instance registries, the counted events, and a real scrape of
``soniq worker --metrics-port`` running as a subprocess."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from soniq import Soniq
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import SoniqProcess


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_counts_in_process_and_instances_do_not_share_series(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)
    other = Soniq(backend="memory")
    assert isinstance(app.metrics, CollectorRegistry)
    assert app.metrics is app.metrics and app.metrics is not other.metrics

    @app.job(name="m.ok", queue="fast")
    async def ok() -> None: ...

    @app.job(name="m.bad", retries=1)
    async def bad() -> None:
        raise ValueError("nope")

    try:
        await app.enqueue_many(ok, [{}, {}, {}])
        await app.enqueue(bad)
        await app.run_worker(run_once=True)
        text = generate_latest(app.metrics).decode()
        fast, dflt = {"queue": "fast", "task": "m.ok"}, {"queue": "default", "task": "m.bad"}
        assert value(text, "soniq_jobs_enqueued_total", **fast) == 3
        assert value(text, "soniq_jobs_started_total", **fast) == 3
        assert value(text, "soniq_jobs_completed_total", **fast) == 3
        assert value(text, "soniq_jobs_started_total", **dflt) == 2
        assert value(text, "soniq_jobs_failed_total", **dflt) == 2
        assert value(text, "soniq_jobs_retried_total", **dflt) == 1
        assert value(text, "soniq_jobs_dead_lettered_total", **dflt) == 1
        assert value(text, "soniq_job_duration_seconds_count", **fast) == 3
        assert value(text, "soniq_jobs_in_progress", **fast) == 0
        other_text = generate_latest(other.metrics).decode()
        assert value(other_text, "soniq_jobs_enqueued_total", **fast) == 0
    finally:
        await app.close()
        await other.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


JOBS = """
from soniq import Soniq

app = Soniq()

@app.job(name="scrape.ok")
async def ok(n: int) -> int:
    return n

@app.job(name="scrape.fail", retries=0)
async def fail() -> None:
    raise RuntimeError("always")
"""


async def test_worker_metrics_port_serves_the_counts(pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "scrape_jobs.py").write_text(JOBS)
    port = free_port()
    env = {**os.environ, "SONIQ_DATABASE_URL": pg_url, "SONIQ_JOBS_MODULES": "scrape_jobs",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}", "SONIQ_POLL_INTERVAL": "0.2",
           "SONIQ_METRICS_PORT": str(port)}  # fmt: skip
    producer = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @producer.job(name="scrape.ok")
    async def ok(n: int) -> int:
        return n

    @producer.job(name="scrape.fail", retries=0)
    async def fail() -> None: ...

    proc = SoniqProcess(["worker", "--concurrency", "2"], env=env, cwd=tmp_path)
    try:
        proc.wait_for("metrics on")
        await producer.enqueue_many(ok, [{"n": i} for i in range(5)])
        await producer.enqueue(fail)
        url = f"http://127.0.0.1:{port}/metrics"

        async def scraped() -> str | None:
            async with httpx.AsyncClient() as client:
                text = (await client.get(url)).text
            done = value(text, "soniq_jobs_completed_total", queue="default", task="scrape.ok")
            dead = value(
                text, "soniq_jobs_dead_lettered_total", queue="default", task="scrape.fail"
            )
            depth = value(text, "soniq_queue_depth", queue="default", status="dead_letter")
            return text if (done, dead, depth) == (5, 1, 1) else None

        text = await wait_until(scraped, timeout=30, message=f"counts on {url}")
        assert value(text, "soniq_jobs_failed_total", queue="default", task="scrape.fail") == 1
        assert value(text, "soniq_queue_depth", queue="default", status="queued") == 0
        assert ("soniq_queue_oldest_age_seconds", (("queue", "default"),)) in samples(text)
    finally:
        proc.stop()
        await producer.close()
    assert proc.proc.returncode == 0, proc.output


def test_a_taken_metrics_port_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "scrape_jobs.py").write_text(JOBS)
        env = {**os.environ, "SONIQ_DATABASE_URL": str(tmp_path / "x.db"),
               "SONIQ_JOBS_MODULES": "scrape_jobs",
               "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}"}  # fmt: skip
        import subprocess

        done = subprocess.run(
            [sys.executable, "-m", "soniq", "worker", "--metrics-port", str(port), "--run-once"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode != 0
    assert "--metrics-port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("port", ["0", "70000"])
def test_metrics_port_out_of_range_is_refused(port: str) -> None:
    from click.testing import CliRunner

    from soniq.cli import main

    result = CliRunner().invoke(main, ["worker", "--metrics-port", port])
    assert result.exit_code != 0 and "--metrics-port" in result.output
