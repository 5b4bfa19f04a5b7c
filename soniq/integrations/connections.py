"""Whatever a user passes as ``connection=``, turned into something the PostgreSQL backend runs on.

Transactional enqueue writes the job row on the caller's connection, inside the
caller's transaction, so the job exists if and only if that transaction commits.
Users hold that connection in many shapes; this module is the one place that
knows them:

* **asyncpg** ``Connection`` (or a pool's connection proxy): used as is.
* **psycopg 3** ``AsyncConnection`` / ``Connection``: wrapped in a small executor
  that speaks the three calls the backend makes (``fetchval``, ``fetch``,
  ``execute``) and runs each statement in its psycopg form
  (:data:`soniq.sql.postgres_queries.PSYCOPG_STATEMENTS`). psycopg needs its own
  SQL path because its placeholders are ``%(name)s``, not asyncpg's ``$n``; the
  statements are derived from the asyncpg ones, so there is still one SQL text.
* **SQLAlchemy** ``AsyncSession`` / ``AsyncConnection`` (and the sync ``Session``
  / ``Connection`` for sync producers), on the asyncpg or the psycopg driver: the
  driver connection under SQLAlchemy's own transaction, which is begun first if
  SQLAlchemy has not yet sent ``BEGIN`` (its asyncpg adapter begins lazily, on the
  first statement: without this, a job enqueued before any ORM flush would commit
  on its own, outside the transaction).
* **Tortoise ORM** clients (``in_transaction()`` yields one): the driver
  connection taken through ``acquire_connection()``, which holds the client's lock,
  so the insert never interleaves with a concurrent query on the same transaction.
* **Django**'s ``connection`` (PostgreSQL, psycopg 3): the psycopg connection under
  it, inside whatever ``transaction.atomic()`` block is open. Django connections
  belong to their thread: :func:`unwrap_sync` runs in the caller's thread.

Optional libraries are never imported here: an object can only be, say, a psycopg
connection if psycopg is already imported, so ``sys.modules`` is asked instead.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from soniq.sql.postgres_queries import PSYCOPG_STATEMENTS

ACCEPTED = (
    "an asyncpg connection, a psycopg 3 AsyncConnection or Connection, a SQLAlchemy "
    "AsyncSession or AsyncConnection (asyncpg or psycopg driver; Session or Connection "
    "on psycopg with enqueue_sync), a Tortoise ORM client such as the one "
    "in_transaction() yields, or Django's connection (with enqueue_sync)"
)


def _module(name: str) -> Any:
    return sys.modules.get(name)


def _is_asyncpg(obj: Any) -> bool:
    asyncpg = _module("asyncpg")
    if asyncpg is None:
        return False
    return isinstance(obj, (asyncpg.Connection, asyncpg.pool.PoolConnectionProxy))


def _psycopg_kind(obj: Any) -> str | None:
    """``"async"`` or ``"sync"`` for a psycopg 3 connection, else ``None``."""
    psycopg = _module("psycopg")
    if psycopg is None:
        return None
    if isinstance(obj, psycopg.AsyncConnection):
        return "async"
    if isinstance(obj, psycopg.Connection):
        return "sync"
    return None


def _defined_in(obj: Any, package: str) -> bool:
    return any(c.__module__.split(".")[0] == package for c in type(obj).__mro__)


def unwrap_sync(obj: Any) -> Any:
    """The driver connection under a *sync* wrapper (Django, SQLAlchemy ``Session``).

    Called by ``enqueue_sync`` in the caller's own thread, where Django lets its
    connection be used and SQLAlchemy's session lives. Anything else is returned
    unchanged, for :func:`executor` to judge.
    """
    if obj is None or _is_asyncpg(obj) or _psycopg_kind(obj) is not None:
        return obj
    if _defined_in(obj, "django") and hasattr(obj, "ensure_connection"):
        return _django_driver(obj)
    sqlalchemy_orm = _module("sqlalchemy.orm")
    if sqlalchemy_orm is not None and isinstance(obj, sqlalchemy_orm.Session):
        obj = obj.connection()
    sqlalchemy = _module("sqlalchemy")
    if sqlalchemy is not None and isinstance(obj, sqlalchemy.engine.Connection):
        if not obj.in_transaction():
            obj.begin()  # as SQLAlchemy would on its own first statement
        return _driver_of(obj.connection.driver_connection)
    return obj


def _django_driver(wrapper: Any) -> Any:
    if getattr(wrapper, "vendor", None) != "postgresql":
        raise TypeError(
            f"Transactional enqueue needs PostgreSQL; this Django connection is "
            f"{getattr(wrapper, 'vendor', '?')!r}. Point DATABASES at PostgreSQL, or enqueue "
            "without connection=."
        )
    wrapper.ensure_connection()  # Django's own thread check happens here
    return _driver_of(wrapper.connection)


def _driver_of(driver: Any) -> Any:
    if _is_asyncpg(driver) or _psycopg_kind(driver) is not None:
        return driver
    raise TypeError(
        f"connection= found a {type(driver).__module__}.{type(driver).__qualname__} "
        "driver connection; Soniq writes through asyncpg or psycopg 3. Use one of those "
        "drivers (e.g. postgresql+asyncpg:// or postgresql+psycopg:// with SQLAlchemy)."
    )


@asynccontextmanager
async def executor(obj: Any) -> AsyncIterator[Any]:
    """Yield what the PostgreSQL backend can run the enqueue statements on, for ``obj``.

    Raises ``TypeError`` listing what is accepted when ``obj`` is none of it.
    """
    obj = unwrap_sync(obj) if not _defined_in(obj, "django") else obj
    if _is_asyncpg(obj):
        yield obj
        return
    kind = _psycopg_kind(obj)
    if kind is not None:
        yield PsycopgExecutor(obj, is_async=kind == "async")
        return
    if _defined_in(obj, "sqlalchemy"):
        yield await _sqlalchemy_async(obj)
        return
    if _defined_in(obj, "tortoise") and hasattr(obj, "acquire_connection"):
        async with obj.acquire_connection() as driver, executor(_driver_of(driver)) as ex:
            yield ex
        return
    if _defined_in(obj, "asyncpg") and hasattr(obj, "acquire"):
        raise TypeError(
            "connection= got an asyncpg pool; the job must go on the connection your "
            "transaction runs on: `async with pool.acquire() as conn, conn.transaction(): "
            "await app.enqueue(..., connection=conn)`."
        )
    if _defined_in(obj, "django"):
        raise TypeError(
            "Django's connection belongs to the thread that opened it: enqueue with "
            "app.enqueue_sync(..., connection=connection) from your view, not from async code."
        )
    raise TypeError(
        f"connection= got a {type(obj).__module__}.{type(obj).__qualname__}; it takes "
        f"{ACCEPTED}. Pass the connection (or session) your transaction runs on."
    )


async def _sqlalchemy_async(obj: Any) -> Any:
    ext = _module("sqlalchemy.ext.asyncio")
    if ext is None:  # a sync SQLAlchemy object unwrap_sync did not take: not a connection
        raise TypeError(
            f"connection= got a {type(obj).__qualname__}; it takes {ACCEPTED}. Pass the "
            "session or connection your transaction runs on."
        )
    if isinstance(obj, ext.AsyncSession):
        obj = await obj.connection()  # the session's transaction (begun if need be)
    if not isinstance(obj, ext.AsyncConnection):
        raise TypeError(
            f"connection= got a SQLAlchemy {type(obj).__qualname__}; it takes {ACCEPTED}. "
            "Pass the AsyncSession or AsyncConnection your transaction runs on."
        )
    raw = await obj.get_raw_connection()
    driver = _driver_of(raw.driver_connection)
    if not obj.in_transaction() or (_is_asyncpg(driver) and not driver.is_in_transaction()):
        # SQLAlchemy's asyncpg adapter sends BEGIN with its first statement: send one
        # through SQLAlchemy so the job lands inside the transaction it will commit.
        await obj.exec_driver_sql("SELECT 1")
    if _is_asyncpg(driver):
        return driver
    return PsycopgExecutor(driver, is_async=_psycopg_kind(driver) == "async")


class _Row(tuple[Any, ...]):
    """A result row readable by position and by column name, as asyncpg's ``Record`` is."""

    _names: dict[str, int]

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)


class PsycopgExecutor:
    """asyncpg's ``fetchval`` / ``fetch`` / ``execute`` on a psycopg 3 connection.

    Statements are looked up in ``PSYCOPG_STATEMENTS``; arguments become
    ``p1..pn``. A fresh plain cursor per statement: the caller's ``row_factory`` or
    ``cursor_factory`` (dict rows, Django's client-side binding) does not apply to
    Soniq's statements. A sync connection runs in a worker thread, so the event loop
    never blocks on it.
    """

    def __init__(self, conn: Any, *, is_async: bool) -> None:
        self.conn = conn
        self.is_async = is_async

    async def fetchval(self, sql: str, *args: Any) -> Any:
        rows, _ = await self._run(sql, args)
        return rows[0][0] if rows else None

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        rows, _ = await self._run(sql, args)
        return rows[0] if rows else None

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows, _ = await self._run(sql, args)
        return rows

    async def execute(self, sql: str, *args: Any) -> str:
        _, status = await self._run(sql, args)
        return status

    async def _run(self, sql: str, args: Sequence[Any]) -> tuple[list[_Row], str]:
        statement = PSYCOPG_STATEMENTS.get(sql)
        if statement is None:  # pragma: no cover - a new statement without its psycopg form
            raise RuntimeError(
                "Soniq ran a statement on a psycopg connection that has no psycopg form; "
                "add it to PSYCOPG_STATEMENTS in soniq/sql/postgres_queries.py"
            )
        params = {f"p{i}": value for i, value in enumerate(args, start=1)}
        if self.is_async:
            return await self._run_async(statement, params)
        return await asyncio.to_thread(self._run_sync, statement, params)

    async def _run_async(self, statement: str, params: dict[str, Any]) -> tuple[list[_Row], str]:
        import psycopg

        async with psycopg.AsyncCursor(self.conn, row_factory=psycopg.rows.tuple_row) as cur:
            await cur.execute(statement, params)
            rows = await cur.fetchall() if cur.description else []
            return _rows(cur.description, rows), cur.statusmessage or ""

    def _run_sync(self, statement: str, params: dict[str, Any]) -> tuple[list[_Row], str]:
        import psycopg

        with psycopg.Cursor(self.conn, row_factory=psycopg.rows.tuple_row) as cur:
            cur.execute(statement, params)
            rows = cur.fetchall() if cur.description else []
            return _rows(cur.description, rows), cur.statusmessage or ""


def _rows(description: Any, rows: Sequence[Any]) -> list[_Row]:
    names = {col.name: i for i, col in enumerate(description or ())}
    out = []
    for row in rows:
        r = _Row(row)
        r._names = names
        out.append(r)
    return out
