"""PostgreSQL for the tests: SONIQ_TEST_DATABASE_URL, else localhost:5432, else a throwaway server.

One template database per test session has the schema; every test gets a fresh
clone (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from typing import NoReturn
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from soniq import Soniq
from soniq.backends.migrations_pg import apply_migrations
from tests.helpers import FAST_SETTINGS

# "An app on each backend" (app_factory, soniq_app) for every test module.
pytest_plugins = ["tests.backend_apps"]

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
        return False
    await conn.close()
    return True


def _no_server(why: str) -> NoReturn:
    pytest.fail(
        f"No PostgreSQL for the tests: nothing answers on localhost:5432 and {why}. Set "
        "SONIQ_TEST_DATABASE_URL to a PostgreSQL URL whose user may create databases (for "
        "example postgresql://postgres@localhost:5432/postgres), or start a server on "
        "localhost:5432 that user postgres can reach without a password.",
        pytrace=False,
    )


def _start_throwaway_server() -> str:
    """A private PostgreSQL from ``pgserver`` (binaries in its wheel), deleted at exit."""
    with warnings.catch_warnings():
        # platformdirs warns while pgserver loads when XDG_RUNTIME_DIR is unset (most
        # containers and CI runners) and falls back to a directory under /tmp, which is
        # fine here; the suite turns warnings into errors, so keep this one out.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import get_server

    if os.geteuid() == 0 and shutil.which("useradd") is None:
        # postgres refuses to run as root: pgserver then runs it as a system user
        # "pgserver", which it creates with useradd.
        _no_server("the throwaway server cannot start as root without `useradd`")
    try:
        server = get_server(tempfile.mkdtemp(prefix="soniq-pg-"), cleanup_mode="delete")
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        _no_server(f"the throwaway server (pgserver) did not start ({type(exc).__name__}: {exc})")
    return str(server.get_uri())


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL with rights to create databases (points at the maintenance database)."""
    explicit = os.environ.get("SONIQ_TEST_DATABASE_URL")
    if explicit:
        return explicit
    if asyncio.run(_reachable(LOCAL_URL)):
        return LOCAL_URL
    return _start_throwaway_server()


async def _admin(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"soniq_tpl_{worker}_{os.getpid()}"
    asyncio.run(_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(apply_migrations(_with_db(pg_admin_url, name)))
    yield name
    asyncio.run(_admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_url(pg_admin_url: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh database with Soniq's schema, dropped after the test."""
    name = f"soniq_t_{uuid.uuid4().hex[:12]}"
    await _admin(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield _with_db(pg_admin_url, name)
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database name that does not exist yet (for `soniq setup` to create)."""
    name = f"soniq_e_{uuid.uuid4().hex[:12]}"
    yield _with_db(pg_admin_url, name)
    await _admin(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def app(pg_url: str) -> AsyncIterator[Soniq]:
    """A Soniq instance on a fresh database, with short intervals for tests."""
    instance = Soniq(database_url=pg_url, **FAST_SETTINGS)
    yield instance
    await instance.close()
