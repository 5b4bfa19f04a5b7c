"""``soniq setup`` adopts a database that the published ``soniq`` package created (COMPAT.md §17).

The published package is installed from PyPI into a throwaway virtualenv, once per
test session, and only *used*: its own ``setup()``, ``enqueue``, worker, scheduler
and webhooks make the database. Then our ``soniq setup`` converts it in place and our
worker, dead-letter service and scheduler carry on with what it held.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import uuid
import venv
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from soniq import Soniq
from soniq.errors import MigrationError
from soniq.testing.postgres import admin_execute, with_database
from tests.helpers import FAST_SETTINGS
from tests.test_cli import WORKER_ENV, cli_env, ok

PUBLISHED_VERSION = "0.0.3"

# Written against the published package's documented API (its README and guides).
MAKE_DATABASE = """
import asyncio, json, sys
from datetime import timedelta
from soniq import Soniq

app = Soniq(database_url=sys.argv[1])


@app.job(name="billing.send_invoice", queue="billing", priority=10)
async def send_invoice(order_id: int):
    return order_id


@app.job(name="ops.always_fails", retries=0, queue="ops")
async def always_fails(x: int):
    raise RuntimeError("boom")


async def main():
    await app.setup()
    made = {
        "now": await app.enqueue(send_invoice, order_id=1),
        "later": await app.enqueue(send_invoice, order_id=2, scheduled_at=timedelta(hours=2)),
        "stuck": await app.enqueue(send_invoice, order_id=3),
        "dead": await app.enqueue(always_fails, x=7),
    }
    await app.run_worker(run_once=True, queues=["ops"])
    await app.scheduler.add(send_invoice, cron="0 9 * * *", args={"order_id": 9})
    await app.scheduler.add(always_fails, every=timedelta(minutes=5), args={"x": 1})
    made["hook"] = await app.webhooks.register("https://example.com/hook", events=["job.failed"])
    made["secret_hook"] = await app.webhooks.register("https://example.com/s", secret="s3cret")
    await app.close()
    print(json.dumps(made))


asyncio.run(main())
"""

OUR_JOBS = """
from soniq import Soniq

app = Soniq(database_url={url!r})


@app.job(name="billing.send_invoice", queue="billing", priority=10)
async def send_invoice(order_id: int):
    print(f"invoice {{order_id}} sent by the new worker")
    return order_id


@app.job(name="ops.always_fails", retries=0, queue="ops")
async def always_fails(x: int):
    print(f"replayed {{x}}")
"""


@pytest.fixture(scope="session")
def published_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Python of a fresh virtualenv with the published package (from PyPI) in it."""
    where = tmp_path_factory.mktemp("published-soniq") / "venv"
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
         f"soniq[webhooks]=={PUBLISHED_VERSION}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if install.returncode != 0:
        pytest.fail(
            f"Installing soniq=={PUBLISHED_VERSION} from PyPI failed (this test needs network "
            f"access to PyPI):\n{install.stderr[-2000:]}",
            pytrace=False,
        )
    return python


@pytest.fixture
async def published_db(
    pg_admin_url: str, published_python: Path, tmp_path: Path
) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A database made by the published package: (url, ids of what it holds)."""
    name = f"soniq_pub_{uuid.uuid4().hex[:10]}"
    await admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(pg_admin_url, name)
    script = tmp_path / "make_database.py"
    script.write_text(MAKE_DATABASE)
    made = subprocess.run(
        [str(published_python), str(script), url],
        cwd=tmp_path, env=cli_env(SONIQ_SECRET_KEY=""), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-3000:]
    ids: dict[str, str] = json.loads(made.stdout.strip().splitlines()[-1])
    # A job whose worker crashed mid-run: the published schema has it in 'processing'.
    stuck = f"UPDATE soniq_jobs SET status = 'processing' WHERE id = '{ids['stuck']}'"
    await admin_execute(url, stuck)
    yield url, ids
    await admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _rows(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


async def test_setup_adopts_a_published_database(
    published_db: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, ids = published_db
    env = cli_env(url, **WORKER_ENV)
    out = ok(subprocess.run(
        [sys.executable, "-m", "soniq", "setup"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    ))  # fmt: skip
    assert "Applied migration 0000_adopt_published" in out
    assert "Adopted a database of the published soniq package" in out
    assert "Database setup completed" in out

    jobs = {str(r["id"]): r for r in await _rows(url, "SELECT * FROM soniq_jobs")}
    assert {ids["now"], ids["later"], ids["stuck"]} <= set(jobs)
    assert all(jobs[ids[k]]["status"] == "queued" for k in ("now", "later", "stuck"))
    assert jobs[ids["now"]]["queue"] == "billing" and jobs[ids["now"]]["priority"] == 10
    assert jobs[ids["later"]]["scheduled_at"] > jobs[ids["now"]]["scheduled_at"]
    dead = await _rows(url, "SELECT * FROM soniq_dead_letter_jobs")
    assert [str(d["id"]) for d in dead] == [ids["dead"]]
    assert "RuntimeError: boom" in dead[0]["last_error"] and "\n" not in dead[0]["last_error"]
    assert "Traceback" in (dead[0]["traceback"] or "")
    schedules = {r["name"]: r for r in await _rows(url, "SELECT * FROM soniq_schedules")}
    assert schedules["billing.send_invoice"]["cron"] == "0 9 * * *"
    assert schedules["ops.always_fails"]["every_seconds"] == 300
    hooks = await _rows(url, "SELECT url, events, secret FROM soniq_webhooks")
    assert [(h["url"], h["events"], h["secret"]) for h in hooks] == [
        ("https://example.com/hook", ["job.failed"], None)
    ]  # the one with an (encrypted) secret is reported, not copied
    kept = await _rows(
        url, "SELECT count(*) AS n FROM soniq_published.soniq_jobs"
    )  # the originals stay, out of the way
    assert kept[0]["n"] == 3

    again = ok(subprocess.run(
        [sys.executable, "-m", "soniq", "setup"], cwd=tmp_path, env=env, capture_output=True,
        text=True, timeout=120,
    ))  # fmt: skip
    assert "nothing to do" in again

    # Our worker runs what the published producers queued, our API reads the rest.
    (tmp_path / "jobs.py").write_text(textwrap.dedent(OUR_JOBS.format(url=url)))
    ran = ok(subprocess.run(
        [sys.executable, "-m", "soniq", "worker", "--run-once"], cwd=tmp_path,
        env={**env, "SONIQ_JOBS_MODULES": "jobs"}, capture_output=True, text=True, timeout=120,
    ))  # fmt: skip
    assert "invoice 1 sent by the new worker" in ran and "invoice 3 sent" in ran
    assert "invoice 2" not in ran  # scheduled two hours ahead
    app = Soniq(database_url=url, **FAST_SETTINGS)
    record = await app.dead_letter.get_dead_letter_job(ids["dead"])
    assert record is not None and record.dead_letter_reason == "max_retries_exceeded"
    new_id = await app.dead_letter.replay(ids["dead"], new_queue="ops")
    job = await app.get_job(new_id)
    assert job is not None and job["status"] == "queued" and job["args"] == {"x": 7}
    assert {s.name for s in await app.scheduler.list()} == {
        "billing.send_invoice", "ops.always_fails",
    }  # fmt: skip
    await app.close()


async def test_an_earlier_adoption_schema_is_refused_and_nothing_changes(
    published_db: tuple[str, dict[str, str]],
) -> None:
    url, _ = published_db
    await admin_execute(url, "CREATE SCHEMA soniq_published")
    app = Soniq(database_url=url, **FAST_SETTINGS)
    with pytest.raises(MigrationError) as info:
        await app.setup()
    assert "soniq_published" in info.value.message
    assert any("DROP SCHEMA soniq_published CASCADE" in s for s in info.value.suggestions)
    await app.close()
    # Untouched: still the published schema, none of ours.
    tables = {r["t"] for r in await _rows(url, "SELECT tablename AS t FROM pg_tables "
                                                "WHERE schemaname = 'public'")}  # fmt: skip
    assert "soniq_recurring_jobs" in tables and "soniq_schedules" not in tables
    versions = await _rows(url, "SELECT version FROM soniq_migrations ORDER BY version")
    assert [r["version"] for r in versions][:1] == ["0001"]
