"""A PostgreSQL for users' tests: one template database per session, a fresh clone per test.

Where the server comes from, in order: ``SONIQ_TEST_DATABASE_URL`` (a URL whose user
may create databases), a server on localhost:5432 that user ``postgres`` reaches
without a password, else a throwaway server started from the ``pgserver`` package
and deleted at exit. Cloning a template (``CREATE DATABASE ... TEMPLATE``) takes
milliseconds, so every test gets its own database with Soniq's schema.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
import warnings
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from soniq.errors import DatabaseUnavailableError

T = TypeVar("T")
LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh loop in a fresh thread.

    Fixtures are sync (they must work with any async test plugin, or none), and the
    thread calling them may already run an event loop.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="soniq-testing")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    value: T = box["value"]
    return value


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _reachable(url: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


async def admin_execute(url: str, sql: str) -> None:
    """Run one statement on its own connection (``CREATE DATABASE`` and ``DROP DATABASE``
    cannot run inside a transaction or on a pool that holds the database open)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def admin_url() -> str:
    """A URL allowed to create databases, found or started as the module doc says.

    Raises ``DatabaseUnavailableError`` saying what to set when there is none to be had.
    """
    explicit = os.environ.get("SONIQ_TEST_DATABASE_URL")
    if explicit:
        return explicit
    if run_sync(_reachable(LOCAL_URL)):
        return LOCAL_URL
    return _start_throwaway_server()


def _no_server(why: str) -> DatabaseUnavailableError:
    return DatabaseUnavailableError(
        f"No PostgreSQL for the tests: nothing answers on localhost:5432 and {why}. Set "
        "SONIQ_TEST_DATABASE_URL to a PostgreSQL URL whose user may create databases (for "
        "example postgresql://postgres@localhost:5432/postgres), or start a server on "
        "localhost:5432 that user postgres can reach without a password."
    )


def _start_throwaway_server() -> str:
    """A private PostgreSQL from ``pgserver`` (binaries in its wheel), deleted at exit."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns while pgserver loads when XDG_RUNTIME_DIR is unset (most
            # containers and CI runners) and falls back to /tmp, which is fine here.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise _no_server("pgserver is not installed (`pip install pgserver`)") from None
    if os.geteuid() == 0 and shutil.which("useradd") is None:
        # postgres refuses to run as root: pgserver then runs it as a system user
        # "pgserver", which it creates with useradd.
        raise _no_server("the throwaway server cannot start as root without `useradd`")
    try:
        server = get_server(tempfile.mkdtemp(prefix="soniq-pg-"), cleanup_mode="delete")
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        why = f"the throwaway server (pgserver) did not start ({type(exc).__name__}: {exc})"
        raise _no_server(why) from None
    return str(server.get_uri())


def create_template(admin: str) -> str:
    """A database with Soniq's schema, to clone per test; returns its name."""
    from soniq.backends.migrations_pg import apply_migrations

    name = f"soniq_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    run_sync(apply_migrations(with_database(admin, name)))
    return name


def clone(admin: str, template: str) -> str:
    name = f"soniq_t_{uuid.uuid4().hex[:12]}"
    run_sync(admin_execute(admin, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    return name


def drop(admin: str, name: str) -> None:
    run_sync(admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
