"""Sync producers: ``enqueue_sync`` / ``schedule_sync`` from threads with no event loop.

These tests are plain ``def`` functions on purpose: a sync producer's caller has no
loop. The app's backend then lives on the instance's private loop thread.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from soniq import Soniq
from soniq.errors import EnqueueError
from soniq.sync import SyncCallError
from tests.helpers import FAST_SETTINGS, wait_until_sync


def sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "soniq-sync-producer"]


@pytest.fixture
def pg_app(pg_url: str) -> Iterator[Soniq]:
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)
    yield app
    asyncio.run(app.close())


def test_enqueue_sync_from_many_threads_then_close_leaves_no_thread(pg_app: Soniq) -> None:
    before = len(sync_threads())

    @pg_app.job()
    def add(a: int, b: int) -> int:  # a sync handler, as Django/Flask code would write
        return a + b

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(lambda i: pg_app.enqueue_sync(add, a=i, b=1), range(40)))
    assert len(set(ids)) == 40
    assert len(sync_threads()) == before + 1  # one private loop, whatever the thread count

    later = pg_app.schedule_sync(add, 3600, a=1, b=2)
    job = pg_app._sync.run(pg_app.get_job(later))
    assert job is not None and job["scheduled_at"] > job["created_at"]

    asyncio.run(pg_app.close())  # closes the pool on the private loop and ends its thread
    wait_until_sync(lambda: len(sync_threads()) == before, message="private loop thread gone")

    async def run_and_check() -> list[int]:
        await pg_app.run_worker(run_once=True)
        return [(await pg_app.get_result(i)) for i in ids]

    assert asyncio.run(run_and_check()) == [i + 1 for i in range(40)]


def test_same_validation_as_enqueue(pg_app: Soniq) -> None:
    @pg_app.job()
    def greet(name: str) -> None: ...

    with pytest.raises(EnqueueError):
        pg_app.enqueue_sync(greet, nmae="typo")
    with pytest.raises(EnqueueError):
        pg_app.enqueue_sync("no.such.task")
    with pytest.raises(TypeError):
        pg_app.enqueue_sync(greet, args={"name": "x"}, name="y")


def test_transactional_on_a_sync_psycopg_connection(pg_app: Soniq, pg_url: str) -> None:
    ran: list[int] = []

    @pg_app.job()
    def ship(order_id: int) -> None:
        ran.append(order_id)

    with psycopg.connect(pg_url) as conn:
        conn.execute("CREATE TABLE orders (id integer PRIMARY KEY)")
        conn.commit()
        with conn.transaction():
            conn.execute("INSERT INTO orders VALUES (1)")
            kept = pg_app.enqueue_sync(ship, connection=conn, order_id=1)
        with pytest.raises(ZeroDivisionError), conn.transaction():
            conn.execute("INSERT INTO orders VALUES (2)")
            lost = pg_app.enqueue_sync(ship, connection=conn, order_id=2)
            1 / 0  # noqa: B018
        assert conn.execute("SELECT array_agg(id) FROM orders").fetchone() == ([1],)

    async def work() -> tuple[object, object]:
        await pg_app.run_worker(run_once=True)
        return await pg_app.get_job(kept), await pg_app.get_job(lost)

    kept_job, lost_job = asyncio.run(work())
    assert ran == [1] and lost_job is None
    assert kept_job is not None and kept_job["status"] == "done"  # type: ignore[index]


def test_called_inside_a_running_loop_is_refused_with_the_fix() -> None:
    app = Soniq(backend="memory")

    @app.job()
    async def noop() -> None: ...

    async def inside() -> None:
        with pytest.raises(SyncCallError, match=r"await app\.enqueue"):
            app.enqueue_sync(noop)

    before = len(sync_threads())
    asyncio.run(inside())
    assert len(sync_threads()) == before  # refused before any loop was started


def test_uses_the_loop_that_owns_the_app_when_one_runs(pg_url: str) -> None:
    """A FastAPI ``def`` route: uvicorn's loop holds the pool; no second pool, no thread."""
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @app.job()
    async def noop() -> None: ...

    loop = asyncio.new_event_loop()
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    try:
        asyncio.run_coroutine_threadsafe(app.ensure_initialized(), loop).result(10)
        before = len(sync_threads())
        job_id = app.enqueue_sync(noop)
        assert len(sync_threads()) == before  # ran on the app's own loop
        found = asyncio.run_coroutine_threadsafe(app.get_job(job_id), loop).result(10)
        assert found is not None
    finally:
        asyncio.run_coroutine_threadsafe(app.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        loop.close()


def test_memory_backend_and_garbage_collection_end_the_thread() -> None:
    before = len(sync_threads())
    app = Soniq(backend="memory")

    @app.job()
    def noop() -> None: ...

    job_id = app.enqueue_sync(noop)
    assert app._sync.run(app.get_job(job_id)) is not None
    assert len(sync_threads()) == before + 1
    del app, noop
    gc.collect()
    wait_until_sync(lambda: len(sync_threads()) == before, message="thread ended by finaliser")


def test_transactional_on_a_sync_sqlalchemy_session(pg_app: Soniq, pg_url: str) -> None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.orm import Session

    @pg_app.job()
    def ship(order_id: int) -> None: ...

    engine = create_engine(pg_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("CREATE TABLE orders (id integer PRIMARY KEY)"))
        with Session(engine) as session:
            kept = pg_app.enqueue_sync(ship, connection=session, order_id=1)  # before any SQL
            session.execute(text("INSERT INTO orders VALUES (1)"))
            session.commit()
        with Session(engine) as session:
            lost = pg_app.enqueue_sync(ship, connection=session, order_id=2)
            session.rollback()
    finally:
        engine.dispose()
    assert pg_app._sync.run(pg_app.get_job(kept)) is not None
    assert pg_app._sync.run(pg_app.get_job(lost)) is None


def test_flask_route(pg_app: Soniq) -> None:
    from flask import Flask, request

    @pg_app.job(queue="emails")
    def send_welcome(to: str) -> None: ...

    web = Flask(__name__)

    @web.post("/signup")
    def signup() -> dict[str, str]:
        return {"job_id": pg_app.enqueue_sync(send_welcome, to=request.form["email"])}

    response = web.test_client().post("/signup", data={"email": "ada@example.com"})
    job = pg_app._sync.run(pg_app.get_job(response.get_json()["job_id"]))
    assert job is not None and job["args"] == {"to": "ada@example.com"}
