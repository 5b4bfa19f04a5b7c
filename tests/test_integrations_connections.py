"""``connection=`` on every stack: asyncpg, psycopg 3 (async and sync), SQLAlchemy
(AsyncSession / AsyncConnection on asyncpg and on psycopg) and Tortoise (asyncpg, psycopg).

For each: the job is enqueued *before* the business row (so a lazily begun
transaction would show), invisible until commit, then run by a real worker; on
rollback neither the row nor the job exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import asyncpg
import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from soniq import Soniq

ORDERS_DDL = "CREATE TABLE orders (id integer PRIMARY KEY)"
Insert = Callable[[int], Awaitable[Any]]
Stack = Callable[[str], AbstractAsyncContextManager[tuple[Any, Insert]]]


class Boom(Exception):
    pass


@asynccontextmanager
async def via_asyncpg(url: str) -> AsyncIterator[tuple[Any, Insert]]:
    conn = await asyncpg.connect(url)
    try:
        async with conn.transaction():
            yield conn, lambda i: conn.execute("INSERT INTO orders VALUES ($1)", i)
    finally:
        await conn.close()


@asynccontextmanager
async def via_psycopg(url: str) -> AsyncIterator[tuple[Any, Insert]]:
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        yield conn, lambda i: conn.execute("INSERT INTO orders VALUES (%s)", (i,))


@asynccontextmanager
async def via_psycopg_sync(url: str) -> AsyncIterator[tuple[Any, Insert]]:
    with psycopg.connect(url) as conn, conn.transaction():

        async def insert(i: int) -> None:
            conn.execute("INSERT INTO orders VALUES (%s)", (i,))

        yield conn, insert


def _sa_url(url: str, driver: str) -> str:
    return url.replace("postgresql://", f"postgresql+{driver}://", 1)


def via_sqlalchemy(driver: str, *, session: bool) -> Stack:
    @asynccontextmanager
    async def stack(url: str) -> AsyncIterator[tuple[Any, Insert]]:
        engine = create_async_engine(_sa_url(url, driver))
        try:
            if session:
                async with AsyncSession(engine) as s, s.begin():
                    yield s, lambda i: s.execute(text("INSERT INTO orders VALUES (:i)"), {"i": i})
            else:
                async with engine.begin() as c:
                    yield c, lambda i: c.execute(text("INSERT INTO orders VALUES (:i)"), {"i": i})
        finally:
            await engine.dispose()

    return stack


def via_tortoise(scheme: str) -> Stack:
    @asynccontextmanager
    async def stack(url: str) -> AsyncIterator[tuple[Any, Insert]]:
        from tortoise import Tortoise
        from tortoise.transactions import in_transaction

        await Tortoise.init(db_url=url.replace("postgresql://", f"{scheme}://", 1),
                            modules={"models": ["tests.tortoise_models"]})  # fmt: skip
        try:
            async with in_transaction() as conn:
                # Raw SQL in the driver's own style: Tortoise binds a model's
                # executor to the first backend it met, and this module meets two.
                mark = "$1" if scheme == "asyncpg" else "%s"
                yield conn, lambda i: conn.execute_query(f"INSERT INTO orders VALUES ({mark})", [i])
        finally:
            await Tortoise.close_connections()

    return stack


STACKS: dict[str, Stack] = {
    "asyncpg": via_asyncpg,
    "psycopg": via_psycopg,
    "psycopg-sync": via_psycopg_sync,
    "sqlalchemy-session-asyncpg": via_sqlalchemy("asyncpg", session=True),
    "sqlalchemy-connection-asyncpg": via_sqlalchemy("asyncpg", session=False),
    "sqlalchemy-session-psycopg": via_sqlalchemy("psycopg", session=True),
    "sqlalchemy-connection-psycopg": via_sqlalchemy("psycopg", session=False),
    "tortoise-asyncpg": via_tortoise("asyncpg"),
    "tortoise-psycopg": via_tortoise("psycopg"),
}


async def counts(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        orders = await conn.fetchval("SELECT count(*) FROM orders")
        jobs = await conn.fetchval("SELECT count(*) FROM soniq_jobs")
        return int(orders), int(jobs)
    finally:
        await conn.close()


@pytest.mark.parametrize("name", list(STACKS))
async def test_commit_runs_rollback_leaves_nothing(app: Soniq, pg_url: str, name: str) -> None:
    stack = STACKS[name]
    ran: list[int] = []

    @app.job()
    async def fulfil(order_id: int) -> None:
        ran.append(order_id)

    admin = await asyncpg.connect(pg_url)
    await admin.execute(ORDERS_DDL)
    await admin.close()

    async with stack(pg_url) as (conn, insert):
        job_id = await app.enqueue(fulfil, connection=conn, order_id=1)
        more = await app.enqueue_many(fulfil, [{"order_id": 2}], connection=conn)
        await insert(1)
        assert await counts(pg_url) == (0, 0)  # nothing visible before COMMIT
    assert await counts(pg_url) == (1, 2)

    with pytest.raises(Boom):
        async with stack(pg_url) as (conn, insert):
            lost = await app.enqueue(fulfil, connection=conn, order_id=3)
            await insert(3)
            raise Boom
    assert await counts(pg_url) == (1, 2)
    assert await app.get_job(lost) is None

    await app.run_worker(run_once=True)
    assert sorted(ran) == [1, 2]
    for jid in (job_id, *more):
        job = await app.get_job(jid)
        assert job is not None and job["status"] == "done"


async def test_dedup_and_schedule_on_psycopg(app: Soniq, pg_url: str) -> None:
    """The duplicate-settling statement and a scheduled time take the psycopg path too."""

    @app.job()
    async def sync_user(user_id: int) -> None: ...

    async with await psycopg.AsyncConnection.connect(pg_url) as conn, conn.transaction():
        first = await app.enqueue(sync_user, connection=conn, user_id=1, dedup_key="u1")
        again = await app.enqueue(sync_user, connection=conn, user_id=1, dedup_key="u1")
        later = await app.schedule(sync_user, 3600, connection=conn, user_id=2)
    assert first == again
    job = await app.get_job(later)
    assert job is not None and job["scheduled_at"] > job["created_at"]


async def test_psycopg_row_factory_of_the_caller_does_not_matter(app: Soniq, pg_url: str) -> None:
    from psycopg.rows import dict_row

    @app.job()
    async def noop() -> None: ...

    async with await psycopg.AsyncConnection.connect(pg_url, row_factory=dict_row) as conn:
        job_id = await app.enqueue(noop, connection=conn)
        await conn.commit()
    assert await app.get_job(job_id) is not None


@pytest.mark.parametrize("bad", [object(), "postgresql://x", 42])
async def test_anything_else_is_a_type_error_listing_what_is_accepted(app: Soniq, bad: Any) -> None:
    @app.job()
    async def noop() -> None: ...

    with pytest.raises(TypeError) as info:
        await app.enqueue(noop, connection=bad)
    message = str(info.value)
    for accepted in ("asyncpg", "psycopg 3", "AsyncSession", "Tortoise", "Django"):
        assert accepted in message
    assert message.endswith("Pass the connection (or session) your transaction runs on.")


async def test_an_asyncpg_pool_is_not_a_connection(app: Soniq, pg_url: str) -> None:
    @app.job()
    async def noop() -> None: ...

    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=1)
    try:
        with pytest.raises(TypeError, match=r"asyncpg pool.*pool\.acquire\(\)"):
            await app.enqueue(noop, connection=pool)
    finally:
        await pool.close()


async def test_non_postgres_backend_still_says_value_error() -> None:
    app = Soniq(backend="memory")

    @app.job()
    async def noop() -> None: ...

    with pytest.raises(ValueError, match="PostgreSQL"):
        await app.enqueue(noop, connection=object())
    await app.close()
