"""``soniq.testing``: inline, drain, assert_enqueued, make_app, wait_until, MemoryBackend,
and the pytest plugin (run on the examples' own tests, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from soniq import Soniq, task_ref, testing
from soniq.backends.memory import MemoryBackend
from soniq.testing.postgres import run_sync
from tests.helpers import FAST_SETTINGS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def mem() -> AsyncIterator[Soniq]:
    app = testing.make_app(**FAST_SETTINGS)
    yield app
    await app.close()


async def test_published_names() -> None:
    from soniq.testing.memory_backend import MemoryBackend as FromModule

    assert testing.MemoryBackend is MemoryBackend is FromModule
    app = testing.make_app(concurrency=2)
    assert app.backend.name == "memory" and app.settings.concurrency == 2
    other = testing.make_app()

    @app.job()
    async def noop() -> None: ...

    await app.enqueue(noop)
    assert len(await app.list_jobs()) == 1 and await other.list_jobs() == []  # isolated
    await app.close()
    await other.close()


async def test_wait_until_sync_and_async_predicates() -> None:
    calls = iter(range(10))
    assert await testing.wait_until(lambda: next(calls) == 3) is True

    async def ready() -> str:
        return "yes"

    assert await testing.wait_until(ready) == "yes"
    with pytest.raises(AssertionError, match="never"):
        await testing.wait_until(lambda: False, timeout=0.05, message="never")


async def test_drain_reports_every_attempt(mem: Soniq) -> None:
    @mem.job()
    async def add(a: int, b: int) -> int:
        return a + b

    @mem.job(retries=1)
    async def broken() -> None:
        raise ValueError("nope")

    ok = await mem.enqueue(add, a=1, b=2)
    bad = await mem.enqueue(broken)
    later = await mem.schedule(add, 3600, a=0, b=0)
    outcomes = await testing.drain(mem)
    by_job = {(o.job_id, o.attempt): o for o in outcomes}
    assert by_job[(ok, 1)].ok and by_job[(ok, 1)].result == 3
    assert by_job[(bad, 1)].status == "retry" and "ValueError: nope" in str(by_job[(bad, 1)].error)
    assert by_job[(bad, 2)].status == "dead_letter"
    assert all(o.job_id != later for o in outcomes)  # not due yet
    assert await testing.drain(mem) == []


async def test_inline_runs_at_enqueue_including_jobs_enqueued_by_jobs(mem: Soniq) -> None:
    seen: list[str] = []

    @mem.job()
    async def child(n: int) -> None:
        seen.append(f"child {n}")

    @mem.job()
    async def parent(n: int) -> None:
        seen.append(f"parent {n}")
        await mem.enqueue(child, n=n)
        seen.append(f"parent {n} after enqueue")

    with testing.inline(mem) as run:
        job_id = await mem.enqueue(parent, n=1)
        assert seen == ["parent 1", "child 1", "parent 1 after enqueue"]
    job = await mem.get_job(job_id)
    assert job is not None and job["status"] == "done"
    assert [o.job_name.rsplit(".", 1)[-1] for o in run.outcomes] == ["child", "parent"]

    await mem.enqueue(child, n=2)  # inline has ended: stays queued
    assert seen[-1] == "parent 1 after enqueue"
    await testing.assert_enqueued(mem, child, n=2)


def test_inline_with_enqueue_sync() -> None:
    app = testing.make_app()
    ran: list[int] = []

    @app.job()
    def work(n: int) -> None:
        ran.append(n)

    with testing.inline(app):
        app.enqueue_sync(work, n=5)
    assert ran == [5]
    run_sync(app.close())


async def test_assert_enqueued_by_function_name_and_task_ref(mem: Soniq) -> None:
    @mem.job(name="mail.send")
    async def send(to: str, subject: str) -> None: ...

    await mem.enqueue(send, to="a@example.com", subject="hi")
    job = await testing.assert_enqueued(mem, send, to="a@example.com")
    assert job["args"] == {"to": "a@example.com", "subject": "hi"}
    await testing.assert_enqueued(mem, "mail.send")
    await testing.assert_enqueued(mem, task_ref("mail.send"), subject="hi")
    await testing.assert_not_enqueued(mem, send, to="b@example.com")
    with pytest.raises(AssertionError) as info:
        await testing.assert_enqueued(mem, send, to="b@example.com")
    assert "mail.send" in str(info.value) and "a@example.com" in str(info.value)
    with pytest.raises(AssertionError, match="is queued"):
        await testing.assert_not_enqueued(mem, send)


async def test_inline_leaves_a_transactional_job_for_drain(app: Soniq, pg_url: str) -> None:
    """connection=: not visible until the caller commits, so inline cannot run it."""

    @app.job()
    async def ship(order_id: int) -> None: ...

    with testing.inline(app) as run:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn, conn.transaction():
            await app.enqueue(ship, connection=conn, order_id=1)
    assert run.outcomes == []
    [outcome] = await testing.drain(app)
    assert outcome.ok


def test_plugin_runs_the_examples_tests(pg_admin_url: str) -> None:
    """`pytest -p soniq.testing` on examples/shop: fixtures soniq_app and soniq_pg_url."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env.update(SONIQ_TEST_DATABASE_URL=pg_admin_url, PYTHONPATH=str(REPO / "examples" / "shop"))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "soniq.testing", "-p", "no:cacheprovider",
         "-q", "examples/shop"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout
