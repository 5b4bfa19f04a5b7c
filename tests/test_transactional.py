# ruff: noqa: SIM117 - the samples nest `async with` exactly as the seed pages do
"""Transactional enqueue (``connection=``) with Soniq's pool, the caller's pool and SQLAlchemy,
plus the seed's FastAPI route samples run as real ASGI apps against the test database."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import Integer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from soniq import Soniq
from tests.helpers import FAST_SETTINGS

ORDERS_DDL = """
CREATE TABLE orders (
    id          serial PRIMARY KEY,
    product_id  integer,
    quantity    integer CHECK (quantity IS NULL OR quantity > 0),
    total       numeric
)
"""


class Boom(Exception):
    pass


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    await conn.execute(ORDERS_DDL)
    yield conn
    await conn.close()


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    orders = await db.fetchval("SELECT count(*) FROM orders")
    jobs = await db.fetchval("SELECT count(*) FROM soniq_jobs")
    return int(orders), int(jobs)


def register_send_invoice(app: Soniq) -> Any:
    @app.job(name="billing.send_invoice", queue="invoices", max_retries=5)
    async def send_invoice(order_id: int) -> None: ...

    return send_invoice


# --- (a) Soniq's own pool ------------------------------------------------------------------------


async def test_soniq_pool_commit_and_rollback(app: Soniq, db: asyncpg.Connection) -> None:
    send_invoice = register_send_invoice(app)
    await app.ensure_initialized()
    async with app.backend.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", 1, 9.5)
        job_id = await app.enqueue(send_invoice, connection=conn, order_id=1)
        # Not visible outside the transaction before COMMIT.
        assert await counts(db) == (0, 0)
    assert await counts(db) == (1, 1)
    job = await app.get_job(job_id)
    assert job is not None and job["args"] == {"order_id": 1} and job["queue"] == "invoices"

    with pytest.raises(Boom):
        async with app.backend.acquire() as conn, conn.transaction():
            await conn.execute("INSERT INTO orders (id, total) VALUES ($1, $2)", 2, 1)
            rolled_back = await app.enqueue(send_invoice, connection=conn, order_id=2)
            raise Boom
    assert await counts(db) == (1, 1)
    assert await app.get_job(rolled_back) is None


async def test_committed_job_runs_rolled_back_never(app: Soniq, db: asyncpg.Connection) -> None:
    ran: list[int] = []

    @app.job()
    async def fulfil(order_id: int) -> None:
        ran.append(order_id)

    await app.ensure_initialized()
    async with app.backend.acquire() as conn, conn.transaction():
        await app.enqueue(fulfil, connection=conn, order_id=1)
    with pytest.raises(Boom):
        async with app.backend.acquire() as conn, conn.transaction():
            await app.enqueue(fulfil, connection=conn, order_id=2)
            raise Boom
    await app.run_worker(run_once=True)
    assert ran == [1]


# --- (b) the caller's own asyncpg pool -----------------------------------------------------------


async def test_own_asyncpg_pool(app: Soniq, db: asyncpg.Connection, pg_url: str) -> None:
    send_invoice = register_send_invoice(app)
    pool = await asyncpg.create_pool(pg_url, min_size=1, max_size=2)
    try:
        async with pool.acquire() as conn, conn.transaction():
            order_id = await conn.fetchval(
                "INSERT INTO orders (product_id, quantity) VALUES ($1, $2) RETURNING id", 7, 1
            )
            await app.enqueue(send_invoice, connection=conn, order_id=order_id)
        assert await counts(db) == (1, 1)
        with pytest.raises(Boom):
            async with pool.acquire() as conn, conn.transaction():
                order_id = await conn.fetchval(
                    "INSERT INTO orders (product_id, quantity) VALUES ($1, $2) RETURNING id", 8, 1
                )
                await app.enqueue(send_invoice, connection=conn, order_id=order_id)
                raise Boom
        assert await counts(db) == (1, 1)
    finally:
        await pool.close()
    # A producer that only ever passes its own connections never opens Soniq's pool.
    assert app.backend._pool is None  # type: ignore[attr-defined]


async def test_failed_statement_rolls_back_job(app: Soniq, db: asyncpg.Connection) -> None:
    send_invoice = register_send_invoice(app)
    await app.ensure_initialized()
    with pytest.raises(asyncpg.CheckViolationError):
        async with app.backend.acquire() as conn, conn.transaction():
            await app.enqueue(send_invoice, connection=conn, order_id=1)
            await conn.execute("INSERT INTO orders (product_id, quantity) VALUES (1, -1)")
    assert await counts(db) == (0, 0)


# --- (c) SQLAlchemy AsyncSession -----------------------------------------------------------------


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    product_id: Mapped[int | None] = mapped_column(Integer)
    quantity: Mapped[int | None] = mapped_column(Integer)


def sqlalchemy_url(pg_url: str) -> str:
    return pg_url.replace("postgresql://", "postgresql+asyncpg://", 1)


async def test_sqlalchemy_async_session(app: Soniq, db: asyncpg.Connection, pg_url: str) -> None:
    send_invoice = register_send_invoice(app)
    engine = create_async_engine(sqlalchemy_url(pg_url))
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with sessions() as session:
            async with session.begin():
                order = Order(product_id=1, quantity=2)
                session.add(order)
                await session.flush()
                raw_conn = await session.connection()
                asyncpg_conn = raw_conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
                assert isinstance(asyncpg_conn, asyncpg.Connection)
                job_id = await app.enqueue(send_invoice, connection=asyncpg_conn, order_id=order.id)
                assert await counts(db) == (0, 0)
            assert await counts(db) == (1, 1)
            assert (await app.get_job(job_id))["args"] == {"order_id": order.id}  # type: ignore[index]

        with pytest.raises(Boom):
            async with sessions() as session, session.begin():
                order = Order(product_id=3, quantity=4)
                session.add(order)
                await session.flush()
                raw_conn = await session.connection()
                asyncpg_conn = raw_conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
                await app.enqueue(send_invoice, connection=asyncpg_conn, order_id=order.id)
                raise Boom
        assert await counts(db) == (1, 1)

        # Also an explicit rollback() on the session, not only an exception.
        async with sessions() as session:
            await session.begin()
            session.add(Order(product_id=5, quantity=6))
            await session.flush()
            raw_conn = await session.connection()
            driver = raw_conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]
            await app.enqueue(send_invoice, connection=driver, order_id=99)
            await session.rollback()
        assert await counts(db) == (1, 1)
    finally:
        await engine.dispose()


# --- other backends ------------------------------------------------------------------------------


async def test_connection_rejected_on_memory_and_sqlite(tmp_path: Path) -> None:
    for app in (Soniq(backend="memory"), Soniq(str(tmp_path / "jobs.db"))):

        @app.job(name="j")
        async def job(x: int) -> None: ...

        with pytest.raises(ValueError, match="PostgreSQL"):
            await app.enqueue(job, connection=object(), x=1)
        with pytest.raises(ValueError, match="PostgreSQL"):
            await app.enqueue_many(job, [{"x": 1}], connection=object())
        with pytest.raises(ValueError, match="postgresql://"):
            app.backend.acquire()  # no connection to lend: a clear error, not AttributeError
        assert await app.list_jobs() == []
        await app.close()


# --- the seed's FastAPI samples ------------------------------------------------------------------


@asynccontextmanager
async def client_for(
    api: FastAPI, *, raise_errors: bool = True
) -> AsyncIterator[httpx.AsyncClient]:
    """httpx against the ASGI app, with its lifespan (startup/shutdown) run around it."""
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=raise_errors)
    async with api.router.lifespan_context(api):
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def transactional_guide_app(url: str) -> tuple[FastAPI, Soniq]:
    """guide-transactional-enqueue.md, "FastAPI route example" (URL adapted)."""
    eq = Soniq(database_url=url, **FAST_SETTINGS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await eq.close()

    app = FastAPI(lifespan=lifespan)

    async def get_order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    async def generate_and_send_invoice(order: dict[str, int]) -> None:
        sent.append(order["id"])

    sent: list[int] = []
    app.state.sent = sent

    @eq.job(queue="invoices", max_retries=5)
    async def send_invoice(order_id: int) -> None:
        order = await get_order(order_id)
        await generate_and_send_invoice(order)

    @app.post("/orders")
    async def create_order(product_id: int, quantity: int) -> dict[str, int]:
        await eq.ensure_initialized()
        async with eq.backend.acquire() as conn:
            async with conn.transaction():
                order_id = await conn.fetchval(
                    "INSERT INTO orders (product_id, quantity) VALUES ($1, $2) RETURNING id",
                    product_id,
                    quantity,
                )
                await eq.enqueue(send_invoice, connection=conn, order_id=order_id)

        return {"order_id": order_id}

    return app, eq


async def test_fastapi_transactional_route(db: asyncpg.Connection, pg_url: str) -> None:
    api, eq = transactional_guide_app(pg_url)
    async with client_for(api, raise_errors=False) as client:
        ok = await client.post("/orders", params={"product_id": 3, "quantity": 2})
        assert ok.status_code == 200
        order_id = ok.json()["order_id"]
        assert await counts(db) == (1, 1)
        bad = await client.post("/orders", params={"product_id": 3, "quantity": -1})
        assert bad.status_code == 500
        assert await counts(db) == (1, 1)
        job = (await eq.list_jobs())[0]
        assert job["args"] == {"order_id": order_id} and job["queue"] == "invoices"
        await eq.run_worker(run_once=True)
        assert api.state.sent == [order_id]
    # The lifespan closed Soniq's pool.
    assert eq.backend._pool is None  # type: ignore[attr-defined]


def own_pool_app(url: str) -> tuple[FastAPI, Soniq]:
    """guide-transactional-enqueue.md, "Pattern 2: Bring your own asyncpg pool"."""
    environ = {"DATABASE_URL": url}
    app = FastAPI()
    eq = Soniq(database_url=environ["DATABASE_URL"], **FAST_SETTINGS)
    state: dict[str, asyncpg.Pool] = {}

    @eq.job(name="billing.send_invoice")
    async def send_invoice(order_id: int) -> None: ...

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # on_event, as the guide uses it

        @app.on_event("startup")
        async def _on_startup() -> None:
            state["db_pool"] = await asyncpg.create_pool(environ["DATABASE_URL"])

        @app.on_event("shutdown")
        async def _on_shutdown() -> None:
            await state["db_pool"].close()
            await eq.close()

    @app.post("/orders")
    async def create_order(product_id: int, quantity: int) -> dict[str, int]:
        async with state["db_pool"].acquire() as conn, conn.transaction():
            order_id = await conn.fetchval(
                "INSERT INTO orders (product_id, quantity) VALUES ($1, $2) RETURNING id",
                product_id,
                quantity,
            )
            await eq.enqueue(send_invoice, connection=conn, order_id=order_id)
        return {"order_id": order_id}

    return app, eq


async def test_fastapi_own_pool_route(db: asyncpg.Connection, pg_url: str) -> None:
    api, eq = own_pool_app(pg_url)
    async with client_for(api, raise_errors=False) as client:
        ok = await client.post("/orders", params={"product_id": 1, "quantity": 1})
        assert ok.status_code == 200
        bad = await client.post("/orders", params={"product_id": 1, "quantity": 0})
        assert bad.status_code == 500
    assert await counts(db) == (1, 1)
    job = (await eq.list_jobs())[0]
    assert job["args"] == {"order_id": ok.json()["order_id"]}
    await eq.close()


def sqlalchemy_app(url: str) -> tuple[FastAPI, Soniq, Any]:
    """guide-transactional-enqueue.md, "Pattern 3: SQLAlchemy async" (get_db supplied)."""
    app = FastAPI()
    eq = Soniq(database_url=url, **FAST_SETTINGS)
    engine = create_async_engine(sqlalchemy_url(url))
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def get_db() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    @eq.job(name="billing.send_invoice")
    async def send_invoice(order_id: int) -> None: ...

    @app.post("/orders")
    async def create_order(
        product_id: int,
        quantity: int,
        db: AsyncSession = Depends(get_db),  # noqa: B008 - FastAPI idiom, as in the guide
    ) -> dict[str, int]:
        async with db.begin():
            order = Order(product_id=product_id, quantity=quantity)
            db.add(order)
            await db.flush()  # populate order.id without committing

            # Reach down to the raw asyncpg connection.
            raw_conn = await db.connection()
            asyncpg_conn = raw_conn.sync_connection.connection.driver_connection  # type: ignore[union-attr]

            await eq.enqueue(send_invoice, connection=asyncpg_conn, order_id=order.id)
            if quantity > 100:
                raise Boom("too many")  # a failure after the enqueue rolls both back
        # SQLAlchemy commits here. The job becomes visible to workers at the same moment.
        return {"order_id": order.id}

    return app, eq, engine


async def test_fastapi_sqlalchemy_route(db: asyncpg.Connection, pg_url: str) -> None:
    api, eq, engine = sqlalchemy_app(pg_url)
    try:
        async with client_for(api, raise_errors=False) as client:
            ok = await client.post("/orders", params={"product_id": 1, "quantity": 1})
            assert ok.status_code == 200, ok.text
            bad = await client.post("/orders", params={"product_id": 1, "quantity": 101})
            assert bad.status_code == 500
        assert await counts(db) == (1, 1)
        job = (await eq.list_jobs())[0]
        assert job["args"] == {"order_id": ok.json()["order_id"]}
    finally:
        await eq.close()
        await engine.dispose()


def fastapi_guide_app(url: str) -> tuple[FastAPI, Soniq, dict[str, list[Any]]]:
    """guide-fastapi.md, "Complete example" (undefined helpers stubbed)."""
    from types import SimpleNamespace

    calls: dict[str, list[Any]] = {"emails": [], "fulfilled": []}
    store: dict[str, int] = {"next": 0}

    async def save_user(name: str, email: str) -> Any:
        store["next"] += 1
        return SimpleNamespace(id=store["next"], name=name, email=email)

    async def get_user(user_id: int) -> Any:
        return SimpleNamespace(id=user_id, email=f"user{user_id}@example.com")

    async def send_email(to: str, template: str) -> None:
        calls["emails"].append((to, template))

    async def save_order(product_id: int, quantity: int) -> Any:
        store["next"] += 1
        return SimpleNamespace(id=store["next"])

    async def get_order(order_id: int) -> Any:
        return SimpleNamespace(id=order_id)

    async def fulfill(order: Any) -> None:
        calls["fulfilled"].append(order.id)

    eq = Soniq(database_url=url, **FAST_SETTINGS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await eq.close()

    app = FastAPI(lifespan=lifespan)

    @eq.job(queue="emails", max_retries=3, retry_delay=30)
    async def send_welcome(user_id: int) -> None:
        user = await get_user(user_id)
        await send_email(to=user.email, template="welcome")

    @eq.job(queue="default")
    async def process_order(order_id: int) -> None:
        order = await get_order(order_id)
        await fulfill(order)

    @app.post("/users")
    async def create_user(name: str, email: str) -> dict[str, int]:
        user = await save_user(name=name, email=email)
        await eq.enqueue(send_welcome, user_id=user.id)
        return {"id": user.id}

    @app.post("/orders")
    async def create_order(product_id: int, quantity: int) -> dict[str, int]:
        order = await save_order(product_id=product_id, quantity=quantity)
        await eq.enqueue(process_order, order_id=order.id)
        return {"order_id": order.id}

    return app, eq, calls


async def test_fastapi_guide_complete_example(pg_url: str) -> None:
    api, eq, calls = fastapi_guide_app(pg_url)
    async with client_for(api) as client:
        user = await client.post("/users", params={"name": "Ada", "email": "ada@example.com"})
        order = await client.post("/orders", params={"product_id": 1, "quantity": 2})
        assert user.status_code == order.status_code == 200
        jobs = {j["queue"]: j for j in await eq.list_jobs()}
        assert jobs["emails"]["args"] == {"user_id": user.json()["id"]}
        assert jobs["emails"]["max_attempts"] == 4
        assert jobs["default"]["args"] == {"order_id": order.json()["order_id"]}
        # The worker (normally `soniq worker` with SONIQ_JOBS_MODULES) runs both.
        await eq.run_worker(run_once=True)
        assert calls["emails"] == [(f"user{user.json()['id']}@example.com", "welcome")]
        assert calls["fulfilled"] == [order.json()["order_id"]]
        stats = {s["queue"]: s for s in await eq.get_queue_stats()}
        assert stats["emails"]["done"] == stats["default"]["done"] == 1
    assert eq.backend._pool is None  # type: ignore[attr-defined]


async def test_fastapi_borrowing_a_connection(db: asyncpg.Connection, pg_url: str) -> None:
    """guide-fastapi.md, "Borrowing a connection"."""
    eq = Soniq(database_url=pg_url, **FAST_SETTINGS)
    send_invoice = register_send_invoice(eq)
    order_id = 42
    await eq.ensure_initialized()
    async with eq.backend.acquire() as conn:
        async with conn.transaction():
            await conn.execute("INSERT INTO orders (id) VALUES ($1)", order_id)
            await eq.enqueue(send_invoice, connection=conn, order_id=order_id)
    assert await counts(db) == (1, 1)
    await eq.close()


async def test_multiple_instances_lifespan(pg_url: str, app: Soniq) -> None:
    """guide-fastapi.md, "Multiple instances": one lifespan closing two instances."""
    tenant_a = Soniq(database_url=pg_url, **FAST_SETTINGS)
    tenant_b = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await tenant_a.close()
        await tenant_b.close()

    api = FastAPI(lifespan=lifespan)

    @tenant_a.job(name="a.job")
    async def a_job() -> None: ...

    @api.post("/a")
    async def enqueue_a() -> dict[str, str]:
        return {"id": await tenant_a.enqueue(a_job)}

    async with client_for(api) as client:
        job_id = (await client.post("/a")).json()["id"]
        await tenant_b.ensure_initialized()
        assert (await tenant_b.get_job(job_id))["job_name"] == "a.job"  # type: ignore[index]
    assert tenant_a.backend._pool is None and tenant_b.backend._pool is None  # type: ignore[attr-defined]
