"""The shop's tests, on the soniq.testing plugin: run with `pytest -p soniq.testing`."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import psycopg
import pytest
import pytest_asyncio
from shop import api, eq, send_welcome, sent

from soniq import Soniq, testing

# The app is module-level, like in most projects: its tests share one event loop.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(autouse=True, loop_scope="module")
async def started() -> AsyncIterator[None]:
    """The app's lifespan around each test: Soniq opens at start and closes at the end."""
    async with api.router.lifespan_context(api):
        yield


async def post_signup(email: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
        return await client.post("/signup", params={"email": email})


async def test_signup_queues_the_welcome_email() -> None:
    response = await post_signup("ada@example.com")
    job = await testing.assert_enqueued(eq, send_welcome, email="ada@example.com")
    assert job["id"] == response.json()["job_id"]
    [outcome] = await testing.drain(eq)
    assert outcome.ok and outcome.result == "welcome sent to ada@example.com"
    await testing.assert_not_enqueued(eq, send_welcome)


async def test_signup_inline() -> None:
    with testing.inline(eq) as run:
        await post_signup("grace@example.com")
    assert "grace@example.com" in sent
    assert [o.status for o in run.outcomes] == ["done"]


async def test_jobs_on_the_memory_fixture(soniq_app: Soniq) -> None:
    @soniq_app.job(retries=1)
    async def flaky(n: int) -> None:
        raise RuntimeError(f"boom {n}")

    await soniq_app.enqueue(flaky, n=1)
    outcomes = await testing.drain(soniq_app)
    assert [o.status for o in outcomes] == ["retry", "dead_letter"]


async def test_transactional_enqueue_on_a_real_database(soniq_pg_url: str) -> None:
    app = Soniq(database_url=soniq_pg_url)

    @app.job()
    async def ship(order_id: int) -> None: ...

    async with await psycopg.AsyncConnection.connect(soniq_pg_url) as conn:
        async with conn.transaction():
            await app.enqueue(ship, connection=conn, order_id=1)
        await conn.execute("BEGIN")
        await app.enqueue(ship, connection=conn, order_id=2)
        await conn.rollback()
    await testing.assert_enqueued(app, ship, order_id=1)
    await testing.assert_not_enqueued(app, ship, order_id=2)
    await app.close()
