"""The ``soniq`` command, run as a real subprocess against real PostgreSQL (and SQLite).

Each test checks the exit code, the key lines of output and the database state
afterwards. Long-running commands (worker, scheduler) are started with
``Popen``; their output is collected by a reader thread and waited on with a
deadline, never a fixed sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from soniq import Soniq
from soniq.cli._common import same_database
from soniq.discovery import discover_app
from soniq.errors import DiscoveryError
from soniq.job import WorkerInfo
from soniq.sql import migration_files
from soniq.testing.postgres import with_database as _with_db
from tests.helpers import FAST_SETTINGS, wait_until
from tests.processes import SoniqProcess
from tests.test_quickstart import JOBS_PY, SEED_URL
from tests.worker_support import connect

WORKER_ENV = {"SONIQ_POLL_INTERVAL": "0.2", "SONIQ_HEARTBEAT_INTERVAL": "0.5"}
ZERO_ID = "00000000-0000-0000-0000-000000000000"
MIGRATIONS = [name for name, _ in migration_files("postgres")]


# --- helpers ----------------------------------------------------------------------
def cli_env(url: str | None = None, **extra: str) -> dict[str, str]:
    """The test process's environment without any SONIQ_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env.pop("COLUMNS", None)
    if url is not None:
        env["SONIQ_DATABASE_URL"] = url
    env.update(extra)
    return env


def soniq(
    *args: str,
    url: str | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "soniq", *args],
        env=env if env is not None else cli_env(url),
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_concurrently(
    args: list[str], env: dict[str, str], cwd: Path, copies: int
) -> list[subprocess.CompletedProcess[str]]:
    """Start ``copies`` identical ``soniq`` processes at once and wait for all of them."""
    command = [sys.executable, "-m", "soniq", *args]
    procs = [
        subprocess.Popen(
            command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(copies)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        results.append(subprocess.CompletedProcess(command, proc.returncode, out, err))
    return results


def run_python(script: Path) -> subprocess.CompletedProcess[str]:
    """``python script`` from its directory, with no SONIQ_* variable set."""
    return subprocess.run(
        [sys.executable, script.name],
        cwd=script.parent,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_script(
    script: Path, args: list[str], env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """A failed command: the expected exit code, one ``error:`` message, no Python traceback."""
    assert result.returncode == code, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


@contextmanager
def running(
    args: list[str], env: dict[str, str], cwd: Path | None = None
) -> Iterator[SoniqProcess]:
    proc = SoniqProcess(args, env, cwd)
    try:
        yield proc
    finally:
        proc.kill()


async def fetch(url: str, sql: str, *args: Any) -> list[Any]:
    async with connect(url) as conn:
        return list(await conn.fetch(sql, *args))


async def fetchval(url: str, sql: str, *args: Any) -> Any:
    async with connect(url) as conn:
        return await conn.fetchval(sql, *args)


async def create_bare_database(url: str, admin_url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def write_module(directory: Path, name: str, source: str) -> None:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))


async def make_dead_letters(url: str) -> dict[str, list[str]]:
    """Two failing ``billing`` jobs and one failing ``emails`` job, dead-lettered for real."""
    app = Soniq(database_url=url, **FAST_SETTINGS)

    @app.job(name="cli.charge", retries=0, queue="billing")
    async def charge(order: int) -> None:
        raise RuntimeError(f"card declined for order {order}")

    @app.job(name="cli.notify", retries=0, queue="emails")
    async def notify(user: int) -> None:
        raise ValueError(f"no address for user {user}")

    try:
        billing = [await app.enqueue(charge, order=i) for i in range(2)]
        emails = [await app.enqueue(notify, user=1)]
        await app.run_worker(run_once=True)
        assert await app.dead_letter.count() == 3
    finally:
        await app.close()
    return {"billing": billing, "emails": emails}


# --- help, dashboard, URL agreement ---------------------------------------------------
COMMANDS = [
    ["setup"],
    ["migrate-status"],
    ["worker"],
    ["scheduler"],
    ["status"],
    ["inspect"],
    ["dashboard"],
    ["dead-letter", "list"],
    ["dead-letter", "show"],
    ["dead-letter", "replay"],
    ["dead-letter", "purge"],
]


def test_help_everywhere() -> None:
    top = ok(soniq("--help"))
    for name in (
        "setup",
        "migrate-status",
        "worker",
        "scheduler",
        "status",
        "inspect",
        "dead-letter",
        "dashboard",
    ):
        assert name in top
    ok(soniq("dead-letter", "--help"))
    for command in COMMANDS:
        out = ok(soniq(*command, "--help"))
        assert "--database-url" in out, command
    worker_help = ok(soniq("worker", "--help"))
    for flag in ("--concurrency", "--queues", "--run-once", "--jobs-modules"):
        assert flag in worker_help


def test_version() -> None:
    import soniq as package

    assert package.__version__ in ok(soniq("--version"))


def test_same_database_ignores_cosmetic_differences() -> None:
    base = "postgresql://app:secret@db.example.com:5432/shop"
    assert same_database(base, "postgresql://app:secret@DB.Example.COM/shop")
    assert same_database(base, "postgres://app@db.example.com/shop")
    assert same_database("postgresql://localhost/myapp", "postgresql://127.0.0.1:5432/myapp")
    assert not same_database(base, "postgresql://app@db.example.com/other")
    assert not same_database(base, "postgresql://app@db.example.com:6432/shop")
    assert not same_database(base, "postgresql://bob@db.example.com/shop")
    assert same_database("jobs.db", "sqlite:///jobs.db")
    assert not same_database("jobs.db", base)


async def test_database_url_must_agree_with_env(pg_url: str, tmp_path: Path) -> None:
    other = _with_db(pg_url, "somewhere_else")
    stderr = clean_error(soniq("status", "--database-url", other, url=pg_url, cwd=tmp_path), 2)
    assert "SONIQ_DATABASE_URL" in stderr and "somewhere_else" in stderr

    cosmetic = pg_url.replace("127.0.0.1", "LOCALHOST").replace(":5432/", "/")
    out = ok(soniq("status", "--database-url", cosmetic, url=pg_url, cwd=tmp_path))
    assert "connected" in out


async def test_password_is_masked_in_messages(tmp_path: Path) -> None:
    url = "postgresql://someone:hunter2@127.0.0.1:1/nowhere"
    stderr = clean_error(soniq("status", url=url, cwd=tmp_path))
    assert "hunter2" not in stderr
    assert "Cannot connect" in stderr


# --- setup and migrate-status ------------------------------------------------------
async def test_setup_creates_database_migrates_and_is_idempotent(
    empty_pg_url: str, tmp_path: Path
) -> None:
    result = soniq("setup", url=empty_pg_url, cwd=tmp_path)
    out = ok(result)
    assert "Created the database" in out
    assert "Applied migration 0001_initial" in out
    assert f"Schema is up to date in {empty_pg_url} ({len(MIGRATIONS)} applied now" in out
    assert "warning" not in result.stderr  # a database was named: not the built-in default
    assert await fetchval(empty_pg_url, "SELECT to_regclass('soniq_jobs') IS NOT NULL")
    applied = await fetch(empty_pg_url, "SELECT name FROM soniq_migrations ORDER BY name")
    assert [r["name"] for r in applied] == MIGRATIONS

    again = ok(soniq("setup", "--database-url", empty_pg_url, cwd=tmp_path))
    assert "nothing to do" in again and "Applied" not in again
    assert await fetchval(empty_pg_url, "SELECT count(*) FROM soniq_migrations") == len(MIGRATIONS)


async def test_two_setups_at_once_both_succeed_and_apply_once(
    empty_pg_url: str, tmp_path: Path
) -> None:
    results = run_concurrently(["setup"], cli_env(empty_pg_url), tmp_path, copies=2)
    for result in results:
        ok(result)
    outs = [r.stdout for r in results]
    assert sum("Applied migration 0001_initial" in out for out in outs) == 1
    rows = await fetch(empty_pg_url, "SELECT name FROM soniq_migrations ORDER BY name")
    assert [r["name"] for r in rows] == MIGRATIONS


async def test_migrate_status(pg_url: str, empty_pg_url: str, tmp_path: Path) -> None:
    out = ok(soniq("migrate-status", url=pg_url, cwd=tmp_path))
    assert "0001_initial" in out and "applied" in out and "0 pending" in out
    data = json.loads(ok(soniq("migrate-status", "--json", "--check", url=pg_url, cwd=tmp_path)))
    assert data[0]["name"] == "0001_initial" and data[0]["applied"] is True

    stderr = clean_error(soniq("migrate-status", url=empty_pg_url, cwd=tmp_path))
    assert stderr.startswith("error:") and "soniq setup" in stderr


async def test_missing_tables_say_run_setup(
    empty_pg_url: str, pg_admin_url: str, tmp_path: Path
) -> None:
    await create_bare_database(empty_pg_url, pg_admin_url)
    for command in (["status"], ["inspect"], ["dead-letter", "list"]):
        stderr = clean_error(soniq(*command, url=empty_pg_url, cwd=tmp_path))
        assert stderr.startswith("error:") and "soniq setup" in stderr, command
    out = ok(soniq("migrate-status", url=empty_pg_url, cwd=tmp_path))
    assert "pending" in out
    assert clean_error(soniq("migrate-status", "--check", url=empty_pg_url, cwd=tmp_path)) == ""


async def test_unreachable_database_is_one_clear_error(tmp_path: Path) -> None:
    url = "postgresql://postgres@127.0.0.1:1/soniq"
    for command in (["status"], ["setup"], ["dead-letter", "list"], ["inspect"]):
        stderr = clean_error(soniq(*command, url=url, cwd=tmp_path))
        assert stderr.startswith("error: Cannot connect to PostgreSQL"), command
        assert len(stderr.strip().splitlines()) == 1


# --- status and inspect ------------------------------------------------------------
async def seed_jobs_and_workers(url: str) -> dict[str, Any]:
    """Two queued jobs, one job held by a worker that stopped heartbeating, two workers."""
    app = Soniq(database_url=url, **FAST_SETTINGS)

    @app.job(name="cli.report", queue="reports")
    async def report(n: int) -> None: ...

    try:
        queued = [await app.enqueue(report, n=i) for i in range(3)]
        await app.ensure_initialized()
        backend = app.backend
        live = WorkerInfo(str(uuid.uuid4()), "live-host", 101, ["reports"], 2)
        dead = WorkerInfo(str(uuid.uuid4()), "dead-host", 202, None, 8)
        await backend.register_worker(live)
        await backend.register_worker(dead)
        [held] = await backend.claim(["reports"], dead.id, 1)
        old = datetime.now(timezone.utc) - timedelta(hours=2)
        async with connect(url) as conn:
            await conn.execute(
                "UPDATE soniq_workers SET last_heartbeat = $1, started_at = $1 WHERE id = $2",
                old,
                uuid.UUID(dead.id),
            )
        await app.scheduler.add(report, every=3600, args={"n": 7}, name="hourly-report")
    finally:
        await app.close()
    return {"queued": queued, "held": held.id, "live": live, "dead": dead}


async def test_status_shows_health_totals_queues_workers_and_jobs(
    pg_url: str, tmp_path: Path
) -> None:
    seeded = await seed_jobs_and_workers(pg_url)

    out = ok(soniq("status", url=pg_url, cwd=tmp_path))
    assert "connected" in out
    assert "up to date" in out
    assert "3 total - 2 queued, 1 processing" in out
    assert "1 active, 1 stale" in out
    assert "reports" in out

    verbose = ok(soniq("status", "--verbose", "--jobs", url=pg_url, cwd=tmp_path))
    assert "live-host" in verbose and "dead-host" in verbose and "stale" in verbose
    assert seeded["queued"][0] in verbose and "cli.report" in verbose

    data = json.loads(ok(soniq("status", "--json", "--jobs", url=pg_url, cwd=tmp_path)))
    assert data["totals"]["total"] == 3 and data["totals"]["processing"] == 1
    assert data["queues"][0]["queue"] == "reports"
    assert {w["hostname"]: w["stale"] for w in data["workers"]} == {
        "live-host": False,
        "dead-host": True,
    }
    assert len(data["recent_jobs"]) == 3


async def test_inspect_workers_stale_cleanup_and_schedules(pg_url: str, tmp_path: Path) -> None:
    seeded = await seed_jobs_and_workers(pg_url)

    out = ok(soniq("inspect", url=pg_url, cwd=tmp_path))
    assert "live-host" in out and "dead-host" in out and "reports" in out
    stale_only = ok(soniq("inspect", "--stale", url=pg_url, cwd=tmp_path))
    assert "dead-host" in stale_only and "live-host" not in stale_only

    env = cli_env(pg_url, SONIQ_HEARTBEAT_TIMEOUT="600")
    cleaned = ok(soniq("inspect", "--cleanup", "--schedules", env=env, cwd=tmp_path))
    assert "removed 1 stale workers, recovered 1 jobs" in cleaned
    assert "hourly-report" in cleaned and "cli.report" in cleaned and "every 1h" in cleaned
    hosts = await fetch(pg_url, "SELECT hostname FROM soniq_workers")
    assert [r["hostname"] for r in hosts] == ["live-host"]
    held = await fetch(
        pg_url, "SELECT status, worker_id FROM soniq_jobs WHERE id = $1", uuid.UUID(seeded["held"])
    )
    assert (held[0]["status"], held[0]["worker_id"]) == ("queued", None)

    data = json.loads(ok(soniq("inspect", "--json", "--schedules", url=pg_url, cwd=tmp_path)))
    assert [w["hostname"] for w in data["workers"]] == ["live-host"]
    assert data["schedules"][0]["name"] == "hourly-report"


# --- dead letters ------------------------------------------------------------------
async def test_dead_letter_list_and_show(pg_url: str, tmp_path: Path) -> None:
    made = await make_dead_letters(pg_url)
    some_id = made["billing"][0]

    out = ok(soniq("dead-letter", "list", url=pg_url, cwd=tmp_path))
    for job_id in made["billing"] + made["emails"]:
        assert job_id in out
    assert "card declined" in out and "of 3" in out
    billing = json.loads(
        ok(soniq("dead-letter", "list", "--queue", "billing", "--json", url=pg_url, cwd=tmp_path))
    )
    assert billing["total"] == 2
    assert {j["id"] for j in billing["jobs"]} == set(made["billing"])
    paged = json.loads(
        ok(
            soniq(
                "dead-letter",
                "list",
                "--limit",
                "1",
                "--offset",
                "1",
                "--json",
                url=pg_url,
                cwd=tmp_path,
            )
        )
    )
    assert len(paged["jobs"]) == 1 and paged["total"] == 3

    shown = ok(soniq("dead-letter", "show", some_id, url=pg_url, cwd=tmp_path))
    assert some_id in shown and "cli.charge" in shown and "Traceback" in shown
    assert "RuntimeError: card declined" in shown
    detail = json.loads(
        ok(soniq("dead-letter", "show", some_id, "--json", url=pg_url, cwd=tmp_path))
    )
    assert detail["id"] == some_id and detail["queue"] == "billing"

    stderr = clean_error(soniq("dead-letter", "show", ZERO_ID, url=pg_url, cwd=tmp_path))
    assert "No dead-letter job with id" in stderr


async def test_dead_letter_replay_by_id_and_unknown_id(pg_url: str, tmp_path: Path) -> None:
    made = await make_dead_letters(pg_url)
    dead_id = made["billing"][0]

    out = ok(soniq("dead-letter", "replay", dead_id, url=pg_url, cwd=tmp_path))
    assert f"Replayed {dead_id} as new job" in out
    queued = await fetch(
        pg_url, "SELECT id, job_name, args FROM soniq_jobs WHERE status = 'queued'"
    )
    assert len(queued) == 1 and queued[0]["job_name"] == "cli.charge"
    assert str(queued[0]["id"]) in out
    count = await fetchval(
        pg_url,
        "SELECT resurrection_count FROM soniq_dead_letter_jobs WHERE id = $1",
        uuid.UUID(dead_id),
    )
    assert count == 1

    stderr = clean_error(
        soniq("dead-letter", "replay", made["emails"][0], ZERO_ID, url=pg_url, cwd=tmp_path)
    )
    assert ZERO_ID in stderr and "No dead-letter job" in stderr
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_jobs") == 1  # nothing replayed

    usage = clean_error(
        soniq("dead-letter", "replay", "--queue", "billing", url=pg_url, cwd=tmp_path), 2
    )
    assert "--all" in usage


async def test_dead_letter_replay_all_with_filters(pg_url: str, tmp_path: Path) -> None:
    made = await make_dead_letters(pg_url)

    out = ok(
        soniq("dead-letter", "replay", "--all", "--queue", "billing", url=pg_url, cwd=tmp_path)
    )
    assert "Replayed 2 dead letters (queue=billing)" in out
    rows = await fetch(pg_url, "SELECT job_name, queue FROM soniq_jobs")
    assert sorted((r["job_name"], r["queue"]) for r in rows) == [("cli.charge", "billing")] * 2

    data = json.loads(
        ok(soniq("dead-letter", "replay", "--all", "--json", url=pg_url, cwd=tmp_path))
    )
    assert data["count"] == 3
    assert set(data["replayed"]) == set(made["billing"] + made["emails"])
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_jobs") == 5
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_dead_letter_jobs") == 3


async def test_dead_letter_purge_asks_first_and_honours_filters(
    pg_url: str, tmp_path: Path
) -> None:
    made = await make_dead_letters(pg_url)

    refused = soniq("dead-letter", "purge", "--all", url=pg_url, cwd=tmp_path, stdin="n\n")
    assert refused.returncode == 1 and "Purge 3 dead letters?" in refused.stderr
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_dead_letter_jobs") == 3

    out = ok(soniq("dead-letter", "purge", made["billing"][0], url=pg_url, cwd=tmp_path))
    assert "Purged 1 dead letter." in out
    missing = clean_error(soniq("dead-letter", "purge", ZERO_ID, url=pg_url, cwd=tmp_path))
    assert "No dead-letter job" in missing

    confirmed = ok(
        soniq(
            "dead-letter",
            "purge",
            "--all",
            "--task",
            "cli.notify",
            url=pg_url,
            cwd=tmp_path,
            stdin="y\n",
        )
    )
    assert "Purged 1 dead letter (task=cli.notify)." in confirmed
    left = await fetch(pg_url, "SELECT id FROM soniq_dead_letter_jobs")
    assert [str(r["id"]) for r in left] == [made["billing"][1]]

    data = json.loads(
        ok(soniq("dead-letter", "purge", "--all", "--yes", "--json", url=pg_url, cwd=tmp_path))
    )
    assert data == {"purged": 1}
    assert await fetchval(pg_url, "SELECT count(*) FROM soniq_dead_letter_jobs") == 0


# --- SQLite --------------------------------------------------------------------------
async def test_sqlite_setup_status_and_dead_letters(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    url = str(path)
    out = ok(soniq("setup", url=url, cwd=tmp_path))
    assert "Applied migration" in out and path.exists()
    assert "nothing to do" in ok(
        soniq("setup", "--database-url", f"sqlite:///{path}", url=url, cwd=tmp_path)
    )
    assert "0 pending" in ok(soniq("migrate-status", url=url, cwd=tmp_path))

    app = Soniq(database_url=url, **FAST_SETTINGS)

    @app.job(name="lite.fail", retries=0)
    async def fail() -> None:
        raise RuntimeError("sqlite says no")

    try:
        dead_id = await app.enqueue(fail)
        await app.run_worker(run_once=True)
    finally:
        await app.close()

    status = ok(soniq("status", url=url, cwd=tmp_path))
    assert "(sqlite) connected" in status and "1 dead letter" in status
    listed = json.loads(ok(soniq("dead-letter", "list", "--json", url=url, cwd=tmp_path)))
    assert [j["id"] for j in listed["jobs"]] == [dead_id]
    replayed = ok(soniq("dead-letter", "replay", dead_id, url=url, cwd=tmp_path))
    assert f"Replayed {dead_id}" in replayed
    assert "Purged 1" in ok(soniq("dead-letter", "purge", "--all", "--yes", url=url, cwd=tmp_path))
    assert "No workers registered" in ok(soniq("inspect", url=url, cwd=tmp_path))


# --- worker ----------------------------------------------------------------------------
async def test_quickstart_end_to_end(empty_pg_url: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(JOBS_PY.replace(SEED_URL, empty_pg_url))
    env = cli_env(empty_pg_url, SONIQ_JOBS_MODULES="jobs", **WORKER_ENV)
    ok(soniq("setup", env=env, cwd=tmp_path))

    with running(["worker", "--concurrency", "4"], env, tmp_path) as worker:
        worker.wait_for("worker starting")
        ok(run_python(tmp_path / "jobs.py"))
        worker.wait_for("Sending welcome email to dev@example.com")
        assert worker.stop(signal.SIGTERM) == 0

    out = worker.output
    assert "Traceback" not in out
    start = next(line for line in out.splitlines() if "worker starting" in line)
    import soniq as package

    assert package.__version__ in start and "queues=all" in start and "concurrency=4" in start
    assert empty_pg_url in start
    assert "worker stopped" in out
    rows = await fetch(empty_pg_url, "SELECT job_name, status FROM soniq_jobs")
    assert [(r["job_name"], r["status"]) for r in rows] == [("jobs.send_welcome", "done")]
    assert await fetchval(empty_pg_url, "SELECT count(*) FROM soniq_workers") == 0


JOBS_TWO_QUEUES = """
from soniq import Soniq

app = Soniq(database_url={url!r})

@app.job(name="q.alpha", queue="alpha")
def alpha(n: int):
    print(f"alpha ran {{n}}")

@app.job(name="q.beta", queue="beta")
def beta(n: int):
    print(f"beta ran {{n}}")
"""


async def test_worker_run_once_queues_and_settings_concurrency(pg_url: str, tmp_path: Path) -> None:
    write_module(tmp_path, "twoq", JOBS_TWO_QUEUES.format(url=pg_url))
    producer = Soniq(database_url=pg_url)

    @producer.job(name="q.alpha", queue="alpha")
    def alpha(n: int) -> None: ...

    @producer.job(name="q.beta", queue="beta")
    def beta(n: int) -> None: ...

    try:
        for i in range(3):
            await producer.enqueue(alpha, n=i)
            await producer.enqueue(beta, n=i)
    finally:
        await producer.close()

    env = cli_env(pg_url, SONIQ_CONCURRENCY="3", **WORKER_ENV)
    result = soniq(
        "worker", "--run-once", "--queues", "alpha", "--jobs-modules", "twoq", env=env, cwd=tmp_path
    )
    ok(result)
    assert result.stdout.count("alpha ran") == 3 and "beta ran" not in result.stdout
    assert "queues=alpha concurrency=3" in result.stderr
    assert "worker stopped" in result.stderr
    rows = await fetch(
        pg_url,
        "SELECT queue, status, count(*) AS n FROM soniq_jobs GROUP BY queue, status ORDER BY queue",
    )
    assert [(r["queue"], r["status"], r["n"]) for r in rows] == [
        ("alpha", "done", 3),
        ("beta", "queued", 3),
    ]


async def test_worker_warns_when_instance_url_differs(pg_url: str, tmp_path: Path) -> None:
    write_module(tmp_path, "twoq", JOBS_TWO_QUEUES.format(url=pg_url))
    elsewhere = "postgresql://other:topsecret@127.0.0.1:5432/not_this_one"
    env = cli_env(elsewhere, SONIQ_JOBS_MODULES="twoq", **WORKER_ENV)
    result = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    ok(result)
    assert "warning:" in result.stderr and "not_this_one" in result.stderr
    assert pg_url in result.stderr and "topsecret" not in result.stderr


@pytest.mark.parametrize(
    ("modules", "files", "expected"),
    [
        ("", {}, "SONIQ_JOBS_MODULES"),
        ("nosuchmodule", {}, "no such module"),
        ("jobs.py", {"jobs": "x = 1\n"}, "not a file path: 'jobs'"),
        (
            "broken",
            {"broken": "import json\nraise RuntimeError('boom at import')\n"},
            "boom at import",
        ),
        ("plain", {"plain": "VALUE = 1\n"}, "No Soniq instance with registered jobs"),
        (
            "empty_app",
            {"empty_app": "from soniq import Soniq\napp = Soniq()\n"},
            "without jobs: empty_app.app",
        ),
    ],
)
def test_worker_discovery_errors_are_clear(
    modules: str, files: dict[str, str], expected: str, tmp_path: Path
) -> None:
    for name, source in files.items():
        write_module(tmp_path, name, source)
    env = cli_env("postgresql://postgres@127.0.0.1:1/x", SONIQ_JOBS_MODULES=modules)
    result = soniq("worker", env=env, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error:"), result.stderr
    assert expected in result.stderr
    if modules == "broken":
        # the module's own traceback, then what to check
        assert "broken.py" in result.stderr and "Check" in result.stderr
        assert "importlib" not in result.stderr


MULTI = """
from soniq import Soniq

first = Soniq(database_url="postgresql://localhost/one")
second = Soniq(database_url="postgresql://localhost/two")

@first.job()
def a(): ...

@second.job()
def b(): ...
"""


def test_worker_refuses_several_instances(tmp_path: Path) -> None:
    write_module(tmp_path, "multi", MULTI)
    result = soniq("worker", "--jobs-modules", "multi", env=cli_env(), cwd=tmp_path)
    stderr = clean_error(result)
    assert "multi.first" in stderr and "multi.second" in stderr


LOOP_JOBS = """
import asyncio

from soniq import Soniq

app = Soniq({url!r})


@app.job(name="loop.where")
async def where() -> None:
    print("job ran on", type(asyncio.get_running_loop()).__module__.split(".")[0])
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uvloop does not support Windows")
@pytest.mark.parametrize(("switch", "expected"), [(None, "uvloop"), ("false", "asyncio")])
async def test_worker_runs_on_uvloop_unless_switched_off(
    switch: str | None, expected: str, tmp_path: Path
) -> None:
    """``soniq worker`` runs on uvloop when it is installed (the test extra installs it via
    soniq[speed]) and on asyncio's own loop with SONIQ_USE_UVLOOP=false; it says which."""
    url = str(tmp_path / "loop.db")
    write_module(tmp_path, "loopjobs", LOOP_JOBS.format(url=url))
    producer = Soniq(url)

    @producer.job(name="loop.where")
    async def where() -> None: ...

    try:
        await producer.enqueue(where)
    finally:
        await producer.close()
    extra = {"SONIQ_USE_UVLOOP": switch} if switch is not None else {}
    env = cli_env(SONIQ_JOBS_MODULES="loopjobs", **WORKER_ENV, **extra)
    result = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    ok(result)
    assert f"job ran on {expected}" in result.stdout
    reason = " (SONIQ_USE_UVLOOP is off)" if switch is not None else ""
    assert f"event loop: {expected}{reason}\n" in result.stderr


# --- discovery in-process ---------------------------------------------------------
@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".")])
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        del sys.modules[name]


def test_discover_app_from_cwd_and_shared_instance(module_dir: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    write_module(module_dir, f"core_{tag}", "from soniq import Soniq\napp = Soniq()\n")
    write_module(
        module_dir,
        f"jobs_a_{tag}",
        f"""
        from core_{tag} import app
        @app.job()
        def one(): ...
    """,
    )
    write_module(
        module_dir,
        f"jobs_b_{tag}",
        f"""
        from core_{tag} import app as soniq_app
        @soniq_app.job()
        def two(): ...
    """,
    )
    app = discover_app(f"jobs_a_{tag}, jobs_b_{tag}")
    assert sorted(app._get_job_registry().names()) == [f"jobs_a_{tag}.one", f"jobs_b_{tag}.two"]
    assert str(module_dir.resolve()) in sys.path


def test_discover_app_import_error_summarises_traceback(module_dir: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    write_module(module_dir, f"bad_{tag}", "import not_installed_dependency_xyz\n")
    with pytest.raises(DiscoveryError) as info:
        discover_app([f"bad_{tag}"])
    message = str(info.value)
    assert "No module named 'not_installed_dependency_xyz'" in message
    assert f"bad_{tag}.py" in message and "virtualenv" in message


# --- scheduler ---------------------------------------------------------------------
PERIODIC = """
from datetime import timedelta
from soniq import Soniq

app = Soniq(database_url={url!r})

@app.periodic(every=timedelta(seconds=1), name="tick.job")
async def tick():
    print("tick")
"""


async def test_scheduler_fires_periodic_jobs_and_stops_on_sigterm(
    pg_url: str, tmp_path: Path
) -> None:
    write_module(tmp_path, "periodic_jobs", PERIODIC.format(url=pg_url))
    env = cli_env(pg_url, SONIQ_JOBS_MODULES="periodic_jobs")
    with running(["scheduler", "--tick", "0.2"], env, tmp_path) as proc:
        proc.wait_for("scheduler starting")

        async def fired() -> bool:
            sql = "SELECT count(*) FROM soniq_jobs WHERE job_name = 'tick.job'"
            return bool(await fetchval(pg_url, sql))

        await wait_until(fired, timeout=20, interval=0.2, message="a scheduled tick.job")
        assert proc.stop(signal.SIGTERM) == 0
    assert "scheduler stopped" in proc.output
    assert "Traceback" not in proc.output
    names = await fetch(pg_url, "SELECT name FROM soniq_schedules")
    assert [r["name"] for r in names] == ["tick.job"]


async def test_console_script_imports_jobs_from_the_current_directory(
    pg_url: str, tmp_path: Path
) -> None:
    """The installed ``soniq`` script (unlike ``python -m``) does not put cwd on sys.path."""
    script = Path(sys.executable).with_name("soniq")
    if not script.exists():
        pytest.skip("the soniq console script is not installed next to this Python")
    write_module(tmp_path, "twoq", JOBS_TWO_QUEUES.format(url=pg_url))
    env = cli_env(pg_url, SONIQ_JOBS_MODULES="twoq", **WORKER_ENV)
    ok(run_script(script, ["worker", "--run-once"], env, tmp_path))


# --- settings from .env ----------------------------------------------------------------------
ENV_JOBS = """
from soniq import Soniq

app = Soniq()  # no URL, no settings: everything comes from ./.env

@app.job(name="envjobs.hello")
def hello(n: int):
    print(f"hello {n} from the .env worker")
"""

ENV_PRODUCER = """
import asyncio
import sys

from envjobs import app, hello


async def main() -> None:
    for n in sys.argv[1:]:
        await app.enqueue(hello, n=int(n))
    await app.close()


asyncio.run(main())
"""


def write_dotenv(directory: Path, **values: str) -> None:
    lines = [f"SONIQ_{key.upper()}={value}" for key, value in values.items()]
    (directory / ".env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def produce(cwd: Path, *numbers: int) -> None:
    command = [sys.executable, "produce.py", *map(str, numbers)]
    ok(subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=60))


async def test_dotenv_configures_the_cli(empty_pg_url: str, tmp_path: Path) -> None:
    """The CLI reads SONIQ_DATABASE_URL, SONIQ_JOBS_MODULES, SONIQ_LOG_LEVEL, SONIQ_CONCURRENCY
    and SONIQ_ENVIRONMENT from ./.env when the environment has none of them (SPEC §1)."""
    write_module(tmp_path, "envjobs", ENV_JOBS)
    (tmp_path / "produce.py").write_text(ENV_PRODUCER)
    database = urlsplit(empty_pg_url).path.lstrip("/")
    settings = {
        "database_url": empty_pg_url, "jobs_modules": "envjobs", "concurrency": "3",
        "environment": "staging", "poll_interval": "0.2",
    }  # fmt: skip
    write_dotenv(tmp_path, log_level="WARNING", **settings)
    env = cli_env()  # no SONIQ_* at all: only the .env speaks

    assert database in ok(soniq("setup", env=env, cwd=tmp_path))
    produce(tmp_path, 0, 1)
    quiet = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    ok(quiet)
    assert "hello 0 from the .env worker" in quiet.stdout and "hello 1" in quiet.stdout
    assert "worker starting" not in quiet.stderr  # SONIQ_LOG_LEVEL=WARNING from .env

    write_dotenv(tmp_path, log_level="INFO", **settings)
    produce(tmp_path, 2)
    chatty = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    ok(chatty)
    assert "hello 2 from the .env worker" in chatty.stdout
    start = next(line for line in chatty.stderr.splitlines() if "worker starting" in line)
    assert "concurrency=3" in start and "environment=staging" in start and database in start
    rows = await fetch(empty_pg_url, "SELECT status, count(*) AS n FROM soniq_jobs GROUP BY 1")
    assert [(r["status"], r["n"]) for r in rows] == [("done", 3)]

    # SONIQ_DATABASE_URL from .env takes part in the --database-url agreement check ...
    other = _with_db(empty_pg_url, "some_other_db")
    clash = soniq("status", "--database-url", other, env=env, cwd=tmp_path)
    assert clash.returncode == 2 and "SONIQ_DATABASE_URL" in clash.stderr, clash.stderr
    # ... and the real environment still beats .env.
    env_wins = soniq(
        "worker", "--run-once", env={**env, "SONIQ_JOBS_MODULES": "nosuch"}, cwd=tmp_path
    )
    assert env_wins.returncode == 1 and "nosuch" in env_wins.stderr, env_wins.stderr


BROKEN_BACKEND_JOBS = """
from soniq import Soniq


class RefusingBackend:
    name = "refusing"

    def reserve_capacity(self, concurrency):
        pass

    async def open(self):
        raise RuntimeError("backend refused to open")

    async def close(self):
        pass


app = Soniq(backend=RefusingBackend())

@app.job()
def noop():
    pass
"""


def test_dotenv_debug_shows_the_traceback(tmp_path: Path) -> None:
    write_module(tmp_path, "broken_backend", BROKEN_BACKEND_JOBS)
    env = cli_env(SONIQ_JOBS_MODULES="broken_backend")

    plain = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    message = clean_error(plain)
    assert "RuntimeError: backend refused to open" in message
    assert "SONIQ_DEBUG=1" in message  # says how to see more

    write_dotenv(tmp_path, debug="true")
    debug = soniq("worker", "--run-once", env=env, cwd=tmp_path)
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "RuntimeError: backend refused to open" in debug.stderr


def test_invalid_dotenv_setting_is_one_clear_error(tmp_path: Path) -> None:
    write_dotenv(tmp_path, concurrency="lots")
    message = clean_error(soniq("status", env=cli_env(), cwd=tmp_path))
    assert message.startswith("error:") and "concurrency (SONIQ_CONCURRENCY)" in message
    assert "(environment or .env)" in message


# --- lean install: the core never imports an extra's packages ---------------------------------
OPTIONAL_PACKAGES = (
    "starlette", "jinja2", "uvicorn", "httpx", "cryptography", "prometheus_client",
    "opentelemetry", "multipart", "python_multipart", "uvloop",
)  # fmt: skip

# Makes the extras' packages look not installed, the way a lean install sees them: every
# finder answers "no such module" for them (find_spec -> None, import -> ModuleNotFoundError).
BLOCK_OPTIONAL = f"""
import sys

OPTIONAL = {OPTIONAL_PACKAGES!r}


class NotInstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in OPTIONAL:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, attribute):
        return getattr(self.finder, attribute)


sys.meta_path[:] = [NotInstalled(finder) for finder in sys.meta_path]
"""

CORE_FLOW = """
import asyncio

from soniq import Soniq

app = Soniq("core.db", poll_interval=0.2)


@app.job(name="core.add")
async def add(a: int, b: int) -> int:
    return a + b


@app.job(name="core.fail", retries=0)
def fail() -> None:
    raise ValueError("dead on purpose")


async def main() -> None:
    await app.setup()
    done = await app.enqueue(add, a=1, b=2)
    dead = await app.enqueue(fail)
    await app.enqueue_many(add, [{"a": 3, "b": 4}])
    assert await app.run_worker(run_once=True)
    assert await app.get_result(done) == 3
    assert (await app.get_job_status(dead))["status"] == "dead_letter"
    await app.dead_letter.replay(dead)
    await app.scheduler.add(add, every=60, args={"a": 0, "b": 0}, name="core.tick")
    await app.close()


asyncio.run(main())
"""

LEAN_JOBS = """
from soniq import Soniq

app = Soniq("core.db")


@app.job(name="lean.hello")
def hello() -> None:
    print("hello from a lean install")
"""


def imported_by(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level packages in a ``-X importtime`` report (on stderr)."""
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def test_core_and_cli_import_no_extra_packages(tmp_path: Path) -> None:
    """``pip install soniq`` is enough for the core and the CLI: importing them loads none of
    the extras' packages when present, and the core flow and every core command work when
    they are absent (a sitecustomize blocker makes them absent)."""
    (tmp_path / "flow.py").write_text(CORE_FLOW)
    write_module(tmp_path, "lean_jobs", LEAN_JOBS)
    (tmp_path / "blocker").mkdir()
    (tmp_path / "blocker" / "sitecustomize.py").write_text(BLOCK_OPTIONAL)
    env = cli_env(SONIQ_JOBS_MODULES="lean_jobs")

    def run(args: list[str], blocked: bool) -> subprocess.CompletedProcess[str]:
        extra = {"PYTHONPATH": str(tmp_path / "blocker")} if blocked else {}
        return subprocess.run(
            [sys.executable, *args], cwd=tmp_path, env={**env, **extra},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    for args in (
        ["-c", "import soniq; soniq.Soniq; import soniq.settings, soniq.worker"],
        ["-m", "soniq", "--help"],
        ["-m", "soniq", "worker", "--help"],
    ):
        timed = run(["-X", "importtime", *args], blocked=False)
        assert timed.returncode == 0, timed.stderr[-2000:]
        assert not imported_by(timed) & set(OPTIONAL_PACKAGES), args

    assert "No module named 'httpx'" in run(["-c", "import httpx"], blocked=True).stderr
    ok(run(["flow.py"], blocked=True))
    for command in (
        ["--help"],
        ["setup", "--database-url", "core.db"],
        ["worker", "--run-once"],
        ["status", "--database-url", "core.db"],
        ["inspect", "--database-url", "core.db"],
        ["dead-letter", "list", "--database-url", "core.db"],
        ["migrate-status", "--database-url", "core.db"],
    ):
        result = run(["-m", "soniq", *command], blocked=True)
        ok(result)
        if command[0] == "worker":  # no soniq[speed]: asyncio's loop, and why
            assert "event loop: asyncio (uvloop is not installed;" in result.stderr
