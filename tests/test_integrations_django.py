"""The Django project in tests/django_project, driven as a user would, in subprocesses.

``manage.py migrate`` creates its table; a sync view enqueues with
``app.enqueue_sync(..., connection=connection)`` inside ``transaction.atomic()``;
one request commits, one raises after enqueueing. Then ``soniq worker --run-once``
runs the committed job. Nothing of the rolled-back request is left.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg

PROJECT = Path(__file__).parent / "django_project"


def run(args: list[str], url: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SONIQ_", "DJANGO_"))}
    env.update(DATABASE_URL=url, SONIQ_DATABASE_URL=url, SONIQ_JOBS_MODULES="shop.jobs",
               PYTHONPATH=str(PROJECT))  # fmt: skip
    proc = subprocess.run(
        [sys.executable, *args], cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, f"{args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


async def test_django_view_commit_and_rollback(pg_url: str) -> None:
    run(["manage.py", "migrate", "--noinput"], pg_url)
    out = json.loads(run(["exercise.py"], pg_url).strip().splitlines()[-1])
    assert out["declined_status"] == 500
    order_id, job_id = out["ok"]["order_id"], out["ok"]["job_id"]

    conn = await asyncpg.connect(pg_url)
    try:
        orders = await conn.fetch("SELECT id FROM shop_order")
        jobs = await conn.fetch("SELECT id::text, args::text FROM soniq_jobs")
        assert [r["id"] for r in orders] == [order_id]  # the declined order rolled back...
        assert [r["id"] for r in jobs] == [job_id]  # ...and took its job with it
        assert json.loads(jobs[0]["args"]) == {"order_id": order_id}

        run(["-m", "soniq", "worker", "--run-once"], pg_url)
        row = await conn.fetchrow(
            "SELECT status, result::text FROM soniq_jobs WHERE id = $1::uuid", job_id
        )
        assert row["status"] == "done"
        assert json.loads(row["result"]) == f"invoice for order {order_id}"
    finally:
        await conn.close()
