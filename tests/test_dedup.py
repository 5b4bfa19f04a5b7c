"""Deduplication (SPEC §2): enforced by the database across connections, processes, rollbacks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from soniq import Soniq
from tests.helpers import FAST_SETTINGS, wait_until


class Boom(Exception):
    pass


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def live_count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM soniq_jobs"))


def register(app: Soniq) -> Any:
    @app.job(name="users.sync_user", unique=True)
    async def sync_user(user_id: int) -> None: ...

    return sync_user


@pytest.fixture
async def instances(pg_url: str) -> AsyncIterator[list[Soniq]]:
    apps = [Soniq(pg_url, **FAST_SETTINGS) for _ in range(20)]
    for a in apps:
        register(a)
    await asyncio.gather(*(a.ensure_initialized() for a in apps))
    yield apps
    await asyncio.gather(*(a.close() for a in apps))


async def test_seed_unique_example(app: Soniq, db: asyncpg.Connection) -> None:
    sync_user = register(app)
    first = await app.enqueue(sync_user, user_id=42)
    second = await app.enqueue(sync_user, user_id=42)
    third = await app.enqueue(sync_user, user_id=99)
    assert first == second != third
    assert await live_count(db) == 2
    custom = await app.enqueue(sync_user, user_id=42, dedup_key="sync-user-42")
    assert custom != first  # a custom key replaces the args hash
    assert await app.enqueue(sync_user, user_id=7, dedup_key="sync-user-42") == custom
    assert await live_count(db) == 3


async def test_concurrent_duplicates_from_many_pools(
    instances: list[Soniq], db: asyncpg.Connection
) -> None:
    start = asyncio.Event()

    async def one(app: Soniq) -> str:
        await start.wait()
        return await app.enqueue("users.sync_user", args={"user_id": 1})

    tasks = [asyncio.create_task(one(a)) for a in instances]
    await asyncio.sleep(0)
    start.set()
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 1
    assert await live_count(db) == 1
    assert str(await db.fetchval("SELECT id FROM soniq_jobs")) == ids[0]


async def test_concurrent_duplicates_dedup_key_in_transactions(
    instances: list[Soniq], db: asyncpg.Connection
) -> None:
    """Each producer enqueues inside its own transaction on its own connection."""
    start = asyncio.Event()

    async def one(app: Soniq, n: int) -> str:
        await start.wait()
        async with app.backend.acquire() as conn, conn.transaction():
            return await app.enqueue(
                "users.sync_user", args={"user_id": n}, dedup_key="nightly-sync", connection=conn
            )

    tasks = [asyncio.create_task(one(a, n)) for n, a in enumerate(instances)]
    await asyncio.sleep(0)
    start.set()
    ids = await asyncio.gather(*tasks)
    assert len(set(ids)) == 1
    assert await live_count(db) == 1


async def test_concurrent_enqueue_many_duplicates(
    instances: list[Soniq], db: asyncpg.Connection
) -> None:
    items = [{"user_id": n} for n in range(10)]
    results = await asyncio.gather(
        *(a.enqueue_many("users.sync_user", list(reversed(items)) if i % 2 else items)
          for i, a in enumerate(instances))
    )  # fmt: skip
    by_user: dict[int, set[str]] = {}
    for i, ids in enumerate(results):
        order = list(reversed(items)) if i % 2 else items
        for item, job_id in zip(order, ids, strict=True):
            by_user.setdefault(item["user_id"], set()).add(job_id)
    assert all(len(v) == 1 for v in by_user.values())
    assert await live_count(db) == 10


async def test_rolled_back_duplicate_does_not_suppress(app: Soniq, db: asyncpg.Connection) -> None:
    sync_user = register(app)
    await app.ensure_initialized()
    with pytest.raises(Boom):
        async with app.backend.acquire() as conn, conn.transaction():
            rolled = await app.enqueue(sync_user, connection=conn, user_id=5)
            # Within the transaction the duplicate sees its own uncommitted job.
            assert await app.enqueue(sync_user, connection=conn, user_id=5) == rolled
            raise Boom
    later = await app.enqueue(sync_user, user_id=5)
    assert later != rolled
    assert await live_count(db) == 1


async def test_duplicate_waits_for_open_transaction(app: Soniq, db: asyncpg.Connection) -> None:
    """A second producer blocks on the first's uncommitted key, then follows its outcome."""
    sync_user = register(app)
    await app.ensure_initialized()

    # Outcome 1: the first transaction rolls back → the waiting duplicate inserts.
    async with app.backend.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        first = await app.enqueue(sync_user, connection=conn, user_id=1)
        waiting = asyncio.create_task(app.enqueue(sync_user, user_id=1))
        await wait_until(_blocked_on_lock(db), timeout=5, message="duplicate waiting on lock")
        assert not waiting.done()
        await tx.rollback()
        second = await asyncio.wait_for(waiting, 5)
    assert second != first
    assert await live_count(db) == 1

    # Outcome 2: the first transaction commits → the waiting duplicate returns its id.
    async with app.backend.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        third = await app.enqueue(sync_user, connection=conn, user_id=2)
        waiting = asyncio.create_task(app.enqueue(sync_user, user_id=2))
        await wait_until(_blocked_on_lock(db), timeout=5, message="duplicate waiting on lock")
        await tx.commit()
        assert await asyncio.wait_for(waiting, 5) == third
    assert await live_count(db) == 2


def _blocked_on_lock(db: asyncpg.Connection) -> Any:
    async def check() -> bool:
        n = await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        return bool(n)

    return check


async def test_same_key_after_done_cancel_dead(app: Soniq, db: asyncpg.Connection) -> None:
    calls: list[int] = []

    @app.job(unique=True, retries=0)
    async def job(n: int) -> None:
        calls.append(n)
        if n < 0:
            raise RuntimeError("fail")

    done_first = await app.enqueue(job, n=1)
    await app.run_worker(run_once=True)
    assert (await app.get_job(done_first))["status"] == "done"  # type: ignore[index]
    again = await app.enqueue(job, n=1)
    assert again != done_first
    assert (await app.get_job(again))["status"] == "queued"  # type: ignore[index]

    cancelled = await app.enqueue(job, n=2)
    assert await app.cancel_job(cancelled)
    assert await app.enqueue(job, n=2) != cancelled

    dead = await app.enqueue(job, n=-1)
    await app.run_worker(run_once=True)
    assert (await app.get_job_status(dead))["status"] == "dead_letter"  # type: ignore[index]
    assert await app.enqueue(job, n=-1) != dead


async def test_processing_job_still_dedups(app: Soniq, db: asyncpg.Connection) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    @app.job(unique=True)
    async def slow(n: int) -> None:
        started.set()
        await release.wait()

    first = await app.enqueue(slow, n=1)
    worker = asyncio.create_task(app.run_worker(run_once=True))
    await asyncio.wait_for(started.wait(), 5)
    assert (await app.get_job(first))["status"] == "processing"  # type: ignore[index]
    assert await app.enqueue(slow, n=1) == first
    release.set()
    await asyncio.wait_for(worker, 10)
    assert await app.enqueue(slow, n=1) != first
