"""The user documentation's Quickstart (docs/quickstart.md), steps 1-5, run word for word.

Each step runs as the user types it: shell commands through ``bash -c`` with this
environment's ``bin`` first on PATH (an activated virtualenv), ``jobs.py`` written exactly
as the page shows it. The one change: the page's ``postgresql://localhost/myapp`` is the
test's database. Where the page leaves the user stuck (``soniq setup`` without a URL sets
up Soniq's built-in default database, not ``myapp``), the test checks that the user is
told what to do, then does exactly that.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import soniq
from soniq.testing.postgres import admin_execute
from soniq.utils import mask_url
from tests.helpers import wait_until_sync

SEED_URL = "postgresql://localhost/myapp"

# Step 2, "Define a job".
JOBS_PY = """\
# jobs.py
import asyncio
from soniq import Soniq

app = Soniq(database_url="postgresql://localhost/myapp")

@app.job()
async def send_welcome(to: str):
    print(f"Sending welcome email to {to}")

if __name__ == "__main__":
    asyncio.run(app.enqueue(send_welcome, to="dev@example.com"))
"""

# Step 3, "Set up the database".
STEP_3 = "soniq setup"

# Step 4, "Start a worker".
STEP_4 = """\
SONIQ_DATABASE_URL="postgresql://localhost/myapp" \\
SONIQ_JOBS_MODULES="jobs" \\
soniq worker --concurrency 4
"""

# Step 5, "Enqueue a job" (in another terminal).
STEP_5 = "python jobs.py"

PRINTED = "Sending welcome email to dev@example.com"


def user_env(**extra: str) -> dict[str, str]:
    """A shell of someone who installed soniq in this virtualenv and set no SONIQ_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def sh(command: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=user_env(**extra),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"[exit {result.returncode}]\n{result.stdout}{result.stderr}"


def advised_setup(message: str, app_url: str) -> str:
    """The first `soniq setup --database-url ...` command a message tells the user to run."""
    found = re.search(r"`(soniq setup --database-url [^`]+)`", message)
    assert found, f"no `soniq setup --database-url ...` command in:\n{message}"
    # The message masks a password; the user types theirs in its place, as it says.
    return found.group(1).replace(mask_url(app_url), app_url)


@pytest.fixture
async def app_url(empty_pg_url: str, pg_admin_url: str) -> str:
    """The user's database: it exists (the PostgreSQL they already have), without Soniq's tables."""
    name = urlsplit(empty_pg_url).path.lstrip("/")
    await admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    return empty_pg_url


def test_seed_quickstart_word_for_word(app_url: str, tmp_path: Path) -> None:
    # 1. Install: `pip install soniq` put the `soniq` command on the PATH.
    installed = sh("soniq --version", tmp_path)
    assert installed.returncode == 0 and soniq.__version__ in installed.stdout, output(installed)

    # 2. Define a job.
    (tmp_path / "jobs.py").write_text(JOBS_PY.replace(SEED_URL, app_url), encoding="utf-8")

    # Running the producer too early: the error names the database and the fix.
    early = sh(STEP_5, tmp_path)
    said = output(early)
    assert early.returncode == 1 and "soniq.errors.SchemaMissingError: " in early.stderr, said
    assert f"Soniq's tables are missing in the database {mask_url(app_url)}:" in early.stderr, said
    assert shlex.split(advised_setup(early.stderr, app_url)) == [
        "soniq", "setup", "--database-url", app_url
    ]  # fmt: skip

    # 3. `soniq setup`, as written: no URL, so it sets up Soniq's built-in default database
    # and says so. PGPORT points that default at a port where nothing answers, so the test
    # never creates a `soniq` database on a shared server.
    setup = sh(STEP_3, tmp_path, PGPORT="1")
    said = output(setup)
    assert "Setting up postgresql://postgres@localhost/soniq (postgres)" in setup.stdout, said
    assert "warning: no database named" in setup.stderr, said
    assert "built-in default, postgresql://postgres@localhost/soniq" in setup.stderr, said
    assert "soniq setup --database-url <your URL>" in setup.stderr, said
    assert setup.returncode == 1 and "error: Cannot connect to PostgreSQL" in setup.stderr, said

    # 4. The worker on the app's database: Soniq's tables are not there yet. One clear
    # error that names the database and the exact command, no traceback.
    refused = sh(STEP_4, tmp_path)
    said = output(refused)
    assert refused.returncode == 1 and "Traceback" not in said, said
    error = next(line for line in refused.stderr.splitlines() if line.startswith("error: "))
    assert error.startswith("error: Soniq's tables are missing in the database "), said
    assert mask_url(app_url) in error, said
    fix = advised_setup(error, app_url)
    assert f"SONIQ_DATABASE_URL={shlex.quote(mask_url(app_url))} soniq setup" in error, said

    # ... the user runs the command they were given, twice (it is idempotent) ...
    first = sh(fix, tmp_path)
    assert first.returncode == 0, output(first)
    assert f"Schema is up to date in {mask_url(app_url)}" in first.stdout, output(first)
    assert "warning" not in first.stderr, output(first)
    again = sh(fix, tmp_path)
    assert again.returncode == 0 and "nothing to do" in again.stdout, output(again)

    # ... and step 4 as written now runs.
    log = tmp_path / "worker.log"
    with log.open("w") as sink:
        worker = subprocess.Popen(
            ["bash", "-c", STEP_4],
            cwd=tmp_path,
            env=user_env(),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # bash and soniq in one group, stopped together
        )
    try:
        wait_until_sync(lambda: "started (" in alive(worker, log), timeout=30,
                        message="the worker to start")  # fmt: skip

        # 5. Enqueue a job: the worker prints the line.
        enqueued = sh(STEP_5, tmp_path)
        assert enqueued.returncode == 0 and enqueued.stderr == "", output(enqueued)
        wait_until_sync(lambda: PRINTED in alive(worker, log), timeout=30,
                        message=f"{PRINTED!r} in the worker's output")  # fmt: skip
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(timeout=30)
    assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text()


def alive(worker: subprocess.Popen[bytes], log: Path) -> str:
    """The worker's output so far; fails at once if the worker exited."""
    text = log.read_text()
    assert worker.poll() is None, f"the worker exited {worker.returncode}:\n{text}"
    return text
