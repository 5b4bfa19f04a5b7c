"""The ``soniq`` command as the published package's users and scripts call it (COMPAT.md §16),
run as real subprocesses against PostgreSQL."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import asyncpg

from tests.helpers import wait_until_sync
from tests.test_cli import WORKER_ENV, clean_error, cli_env, ok, write_module

JOBS = """
from soniq import Soniq

app = Soniq(database_url={url!r})


@app.job(name="compat.hello", retries=0)
def hello(name: str):
    print(f"hello {{name}}")


@app.job(name="compat.fail", retries=0)
def fail(n: int):
    raise RuntimeError(f"failed {{n}}")
"""
EXTRA = """
from jobs import app


@app.job(name="compat.extra")
def extra():
    print("extra ran")
"""


def cli(
    *args: str, cwd: Path, env: dict[str, str], stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    """``python -m soniq.cli.main``: the published module path."""
    return subprocess.run(
        [sys.executable, "-m", "soniq.cli.main", *args],
        env=env, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


async def sql(url: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(query))
    finally:
        await conn.close()


def test_help_names_the_soniq_cli(tmp_path: Path) -> None:
    out = ok(cli("--help", cwd=tmp_path, env=cli_env()))
    assert "Soniq CLI" in out
    worker_help = ok(cli("worker", "--help", cwd=tmp_path, env=cli_env()))
    assert "all queues" in worker_help and "--log-level" in worker_help
    assert "--check-interval" in ok(cli("scheduler", "--help", cwd=tmp_path, env=cli_env()))


def test_worker_without_jobs_modules_says_so(tmp_path: Path) -> None:
    result = cli("worker", "--run-once", cwd=tmp_path, env=cli_env())
    message = clean_error(result)
    assert "SONIQ_JOBS_MODULES is not set" in message


async def test_worker_modules_merge_instance_line_and_url_conflict(
    pg_url: str, tmp_path: Path
) -> None:
    write_module(tmp_path, "jobs", JOBS.format(url=pg_url))
    write_module(tmp_path, "extra_jobs", EXTRA)
    env = cli_env(SONIQ_JOBS_MODULES="jobs", **WORKER_ENV)
    produced = subprocess.run(
        [sys.executable, "-c",
         "import asyncio, jobs\n"
         "async def main():\n"
         "    await jobs.app.enqueue('compat.hello', args={'name': 'ada'})\n"
         "    await jobs.app.enqueue('compat.extra', args={})\n"
         "    await jobs.app.close()\n"
         "import extra_jobs\n"
         "asyncio.run(main())\n"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    # --jobs-modules adds to SONIQ_JOBS_MODULES (env first), it does not replace it.
    ran = ok(cli("worker", "--run-once", "--jobs-modules", "extra_jobs", cwd=tmp_path, env=env))
    assert "hello ada" in ran and "extra ran" in ran
    assert f"Using job-module instance: {pg_url}" in ran
    other = pg_url.rsplit("/", 1)[0] + "/some_other_database"
    conflict = clean_error(
        cli("worker", "--run-once", "--database-url", other, cwd=tmp_path, env=env), code=2
    )
    assert "--database-url" in conflict and "conflicts" in conflict


async def test_dead_letter_published_commands(pg_url: str, tmp_path: Path) -> None:
    write_module(tmp_path, "jobs", JOBS.format(url=pg_url))
    env = cli_env(pg_url, SONIQ_JOBS_MODULES="jobs", **WORKER_ENV)
    produced = subprocess.run(
        [sys.executable, "-c",
         "import asyncio, jobs\n"
         "async def main():\n"
         "    await jobs.app.enqueue_many('compat.fail', [{'n': i} for i in range(6)])\n"
         "    await jobs.app.enqueue('compat.hello', args={'name': 'x'}, queue='other')\n"
         "    await jobs.app.close()\n"
         "asyncio.run(main())\n"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    ok(cli("worker", "--run-once", "--queues", "default", cwd=tmp_path, env=env))

    listed = json.loads(ok(cli("dead-letter", "list", "--filter", "compat.fail", "--json",
                               cwd=tmp_path, env=env)))  # fmt: skip
    assert listed["total"] == 6
    dry = ok(cli("dead-letter", "replay", "--all", "--dry-run", cwd=tmp_path, env=env))
    assert "Would replay 6 dead letters" in dry and "... and 1 more" in dry
    refused = cli("dead-letter", "replay", "--all", cwd=tmp_path, env=env)  # 6 >= 5: asks
    assert refused.returncode != 0 and "Replay 6 dead letters?" in refused.stderr
    assert len(await sql(pg_url, "SELECT 1 FROM soniq_jobs WHERE status = 'queued'")) == 1

    out_csv = tmp_path / "dead.csv"
    exported = ok(cli("dead-letter", "export", "--output", str(out_csv), cwd=tmp_path, env=env))
    assert "Exported 6 dead letters" in exported
    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    assert len(rows) == 6 and {r["dead_letter_reason"] for r in rows} == {"max_retries_exceeded"}
    out_json = tmp_path / "dead.json"
    ok(cli("dead-letter", "export", "--format", "json", "-o", str(out_json), cwd=tmp_path, env=env))
    assert len(json.loads(out_json.read_text())) == 6

    first = listed["jobs"][0]["id"]
    ok(cli("dead-letter", "delete", first, cwd=tmp_path, env=env))
    replayed = ok(cli("dead-letter", "replay", "--all", "--yes", cwd=tmp_path, env=env))
    assert "Replayed 5 dead letters" in replayed
    kept = ok(cli("dead-letter", "cleanup", "--days", "30", cwd=tmp_path, env=env))
    assert "Deleted 0 dead letters older than 30 days" in kept
    gone = ok(cli("dead-letter", "cleanup", "--days", "0", cwd=tmp_path, env=env))
    assert "Deleted 5 dead letters" in gone


async def test_setup_prints_the_published_phrase_every_time(
    empty_pg_url: str, tmp_path: Path
) -> None:
    env = cli_env(empty_pg_url)
    assert "Database setup completed" in ok(cli("setup", cwd=tmp_path, env=env))
    assert "Database setup completed" in ok(cli("setup", cwd=tmp_path, env=env))


async def test_status_jobs_and_inspect_schedule_summary(pg_url: str, tmp_path: Path) -> None:
    env = cli_env(pg_url)
    status_help = ok(cli("status", "--help", cwd=tmp_path, env=env))
    assert "default: 10" in status_help
    inspected = ok(cli("inspect", cwd=tmp_path, env=env))
    assert "Recurring Schedules: 0 active, 0 paused" in inspected


def test_scheduler_runs_without_jobs_modules(pg_url: str, tmp_path: Path) -> None:
    env = cli_env(pg_url, **WORKER_ENV)
    proc = subprocess.Popen(
        [sys.executable, "-m", "soniq.cli.main", "scheduler", "--check-interval", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert proc.stderr is not None

        def started() -> bool:
            lines.append(proc.stderr.readline() if proc.stderr else "")
            # The leader line comes after the signal handlers are in place.
            return "is now the leader" in lines[-1] or proc.poll() is not None

        wait_until_sync(started, timeout=30, message="the scheduler leads")
        assert proc.poll() is None, "".join(lines)
        assert any("SONIQ_JOBS_MODULES is not set" in line for line in lines)
        assert any("tick=1s" in line for line in lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
