"""Managing jobs: get_job, get_result, get_job_status, cancel, delete, list, stats."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from soniq import JobStatus, Soniq

STATS_KEYS = ["queue", "total", "queued", "processing", "done", "dead_letter", "cancelled"]


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


def later() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


async def test_get_job_full_record(app: Soniq) -> None:
    @app.job(name="m.add", queue="math", priority=5, retries=2)
    async def add(a: int, b: int) -> int:
        return a + b

    job_id = await app.enqueue(add, a=2, b=3)
    job = await app.get_job(job_id)
    assert job is not None
    assert job["id"] == job_id
    assert job["job_name"] == "m.add"
    assert job["args"] == {"a": 2, "b": 3}
    assert (job["queue"], job["priority"], job["status"]) == ("math", 5, "queued")
    assert (job["attempts"], job["max_attempts"]) == (0, 3)
    assert job["result"] is None and job["last_error"] is None
    for key in ("scheduled_at", "created_at", "updated_at"):
        assert isinstance(job[key], datetime) and job[key].tzinfo is not None
    assert await app.get_result(job_id) is None  # not completed yet

    await app.run_worker(run_once=True)
    done = await app.get_job(job_id)
    assert done is not None
    assert (done["status"], done["result"], done["attempts"]) == ("done", 5, 1)
    assert done["completed_at"] is not None and done["started_at"] is not None
    assert await app.get_result(job_id) == 5


async def test_get_job_unknown_and_malformed_ids(app: Soniq) -> None:
    assert await app.get_job(str(uuid.uuid4())) is None
    assert await app.get_job("not-a-uuid") is None
    assert await app.get_result("not-a-uuid") is None
    assert await app.get_job_status(str(uuid.uuid4())) is None
    assert await app.cancel_job("not-a-uuid") is False
    assert await app.delete_job("not-a-uuid") is False


async def test_get_result_values(app: Soniq) -> None:
    @app.job()
    async def returns(value: Any) -> Any:
        return value

    values: list[Any] = [0, "", [], {"nested": [1, {"x": None}]}, "text", 1.5, False]
    ids = [await app.enqueue(returns, value=v) for v in values]
    none_id = await app.enqueue(returns, value=None)
    await app.run_worker(run_once=True)
    assert [await app.get_result(i) for i in ids] == values
    assert await app.get_result(none_id) is None
    assert (await app.get_job_status(none_id))["status"] == "done"  # type: ignore[index]


async def test_get_job_status_shape(app: Soniq) -> None:
    @app.job()
    async def add(a: int, b: int) -> int:
        return a + b

    job_id = await app.enqueue(add, a=2, b=3)
    await app.run_worker(run_once=True)
    status = await app.get_job_status(job_id)
    assert status is not None
    assert status["status"] == "done" and status["status"] == JobStatus.DONE
    assert status["result"] == 5
    assert status["job_name"].endswith("add")


async def test_dead_letter_status(app: Soniq) -> None:
    @app.job(retries=0, queue="fragile")
    async def broken(x: int) -> None:
        raise ValueError(f"bad {x}")

    job_id = await app.enqueue(broken, x=1)
    await app.run_worker(run_once=True)
    status = await app.get_job_status(job_id)
    assert status is not None
    assert status["status"] == "dead_letter"
    assert "bad 1" in status["last_error"]
    assert status["args"] == {"x": 1} and status["queue"] == "fragile"
    assert await app.get_result(job_id) is None
    assert status["result"] is None
    live = await app.get_job(await app.enqueue(broken, x=2))
    assert live is not None and set(live) <= set(status)  # same keys as a live record
    await app.delete_job(live["id"])
    assert [j["id"] for j in await app.list_jobs(status="dead_letter")] == [job_id]
    assert [j["id"] for j in await app.list_jobs(status=JobStatus.DEAD_LETTER)] == [job_id]
    assert await app.list_jobs() == []  # gone from soniq_jobs


async def test_cancel_queued_and_running(app: Soniq) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    ran: list[str] = []

    @app.job()
    async def block() -> None:
        started.set()
        await release.wait()

    @app.job()
    async def marker(tag: str) -> None:
        ran.append(tag)

    cancelled = await app.enqueue(marker, tag="cancelled")
    assert await app.cancel_job(cancelled) is True
    assert await app.cancel_job(cancelled) is False  # already cancelled
    job = await app.get_job(cancelled)
    assert job is not None and job["status"] == "cancelled"

    scheduled = await app.enqueue(marker, tag="scheduled", scheduled_at=later())
    assert await app.cancel_job(scheduled) is True  # a delayed job is queued too

    running = await app.enqueue(block)
    worker = asyncio.create_task(app.run_worker(run_once=True))
    await asyncio.wait_for(started.wait(), 5)
    assert await app.cancel_job(running) is True  # processing: its worker stops it
    await asyncio.wait_for(worker, 10)  # heard at the worker's next heartbeat
    release.set()
    assert (await app.get_job(running))["status"] == "cancelled"  # type: ignore[index]
    assert await app.cancel_job(running) is False  # finished: nothing to cancel
    assert ran == []  # the cancelled jobs never ran
    await app.run_worker(run_once=True)
    assert ran == []


async def test_delete_job(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job(n: int) -> int:
        return n

    queued = await app.enqueue(job, n=1)
    done = await app.enqueue(job, n=2)
    await app.run_worker(run_once=True)
    queued_again = await app.enqueue(job, n=3, scheduled_at=later())
    assert await app.delete_job(done) is True
    assert await app.delete_job(done) is False
    assert await app.delete_job(queued_again) is True
    assert await app.get_job(done) is None
    remaining = {str(r["id"]) for r in await db.fetch("SELECT id FROM soniq_jobs")}
    assert remaining == {queued}


async def test_list_jobs_filters_and_pagination(app: Soniq) -> None:
    @app.job()
    async def job(n: int) -> None: ...

    a_ids = [await app.enqueue(job, n=i, queue="a", scheduled_at=later()) for i in range(5)]
    b_ids = [await app.enqueue(job, n=i, queue="b", scheduled_at=later()) for i in range(3)]
    assert await app.cancel_job(b_ids[0])

    all_jobs = await app.list_jobs()
    assert len(all_jobs) == 8
    # Newest first.
    created = [j["created_at"] for j in all_jobs]
    assert created == sorted(created, reverse=True)

    assert {j["id"] for j in await app.list_jobs(queue="a")} == set(a_ids)
    assert [j["id"] for j in await app.list_jobs(status="cancelled")] == [b_ids[0]]
    assert [j["id"] for j in await app.list_jobs(status=JobStatus.CANCELLED)] == [b_ids[0]]
    assert {j["id"] for j in await app.list_jobs(queue="b", status="queued")} == set(b_ids[1:])
    assert await app.list_jobs(queue="nope") == []
    assert await app.list_jobs(status="done") == []

    page1 = await app.list_jobs(queue="a", limit=2)
    page2 = await app.list_jobs(queue="a", limit=2, offset=2)
    page3 = await app.list_jobs(queue="a", limit=2, offset=4)
    assert [len(p) for p in (page1, page2, page3)] == [2, 2, 1]
    assert {j["id"] for j in page1 + page2 + page3} == set(a_ids)
    assert await app.list_jobs(limit=100, offset=8) == []
    assert all(isinstance(j, dict) for j in all_jobs)


async def test_list_jobs_default_limit(app: Soniq) -> None:
    @app.job()
    async def job(n: int) -> None: ...

    await app.enqueue_many(job, [{"n": i} for i in range(105)])
    assert len(await app.list_jobs()) == 100
    assert len(await app.list_jobs(limit=200)) == 105


async def test_queue_stats_empty(app: Soniq) -> None:
    assert await app.get_queue_stats() == []


async def test_queue_stats(app: Soniq) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job(queue="zeta", retries=0)
    async def fail() -> None:
        raise RuntimeError("x")

    @app.job()
    async def ok(n: int) -> int:
        return n

    @app.job(queue="alpha")
    async def hold() -> None:
        started.set()
        await release.wait()

    for n in range(3):
        await app.enqueue(ok, n=n)  # default: 3 done
    await app.enqueue(fail)  # zeta: 1 dead letter
    await app.run_worker(run_once=True)
    await app.enqueue(ok, n=9, scheduled_at=later())  # default: 1 queued
    cancelled = await app.enqueue(ok, n=10, queue="zeta", scheduled_at=later())
    await app.cancel_job(cancelled)  # zeta: 1 cancelled
    await app.enqueue(hold)  # alpha: 1 processing
    worker = asyncio.create_task(app.run_worker(run_once=True, queues=["alpha"]))
    await asyncio.wait_for(started.wait(), 5)
    try:
        stats = await app.get_queue_stats()
    finally:
        release.set()
        await asyncio.wait_for(worker, 10)

    assert [s["queue"] for s in stats] == ["alpha", "default", "zeta"]
    for s in stats:
        assert list(s) == STATS_KEYS
        assert s["total"] == sum(s[k] for k in STATS_KEYS[2:])
    by_queue = {s["queue"]: s for s in stats}
    assert by_queue["alpha"] == dict(
        queue="alpha", total=1, queued=0, processing=1, done=0, dead_letter=0, cancelled=0
    )
    assert by_queue["default"] == dict(
        queue="default", total=4, queued=1, processing=0, done=3, dead_letter=0, cancelled=0
    )
    assert by_queue["zeta"] == dict(
        queue="zeta", total=2, queued=0, processing=0, done=0, dead_letter=1, cancelled=1
    )
