"""PostgreSQL for the tests: SONIQ_TEST_DATABASE_URL, else localhost:5432, else a throwaway server.

One template database per test session has the schema; every test gets a fresh
clone (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from soniq import Soniq
from soniq.backends.migrations_pg import apply_migrations
from soniq.errors import DatabaseUnavailableError
from soniq.testing.postgres import admin_execute, admin_url, with_database
from tests.helpers import FAST_SETTINGS

# "An app on each backend" (app_factory, soniq_app) for every test module.
pytest_plugins = ["tests.backend_apps"]


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """A URL with rights to create databases (points at the maintenance database):
    SONIQ_TEST_DATABASE_URL, else localhost:5432, else a throwaway server
    (soniq.testing.postgres, the same rule users' suites get from the plugin)."""
    try:
        return admin_url()
    except DatabaseUnavailableError as exc:
        pytest.fail(exc.message, pytrace=False)


@pytest.fixture(scope="session")
def pg_template(pg_admin_url: str) -> Iterator[str]:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    name = f"soniq_tpl_{worker}_{os.getpid()}"
    asyncio.run(admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}"'))
    asyncio.run(apply_migrations(with_database(pg_admin_url, name)))
    yield name
    asyncio.run(admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def pg_url(pg_admin_url: str, pg_template: str) -> AsyncIterator[str]:
    """A fresh database with Soniq's schema, dropped after the test."""
    name = f"soniq_t_{uuid.uuid4().hex[:12]}"
    await admin_execute(pg_admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{pg_template}"')
    yield with_database(pg_admin_url, name)
    await admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def empty_pg_url(pg_admin_url: str) -> AsyncIterator[str]:
    """A database name that does not exist yet (for `soniq setup` to create)."""
    name = f"soniq_e_{uuid.uuid4().hex[:12]}"
    yield with_database(pg_admin_url, name)
    await admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def app(pg_url: str) -> AsyncIterator[Soniq]:
    """A Soniq instance on a fresh database, with short intervals for tests."""
    instance = Soniq(database_url=pg_url, **FAST_SETTINGS)
    yield instance
    await instance.close()
