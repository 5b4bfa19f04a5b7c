"""The pytest plugin: ``pytest -p soniq.testing`` (or ``pytest_plugins = ["soniq.testing"]``).

Fixtures:

* ``soniq_app``: a ``Soniq`` on the in-memory backend, closed after the test.
* ``soniq_pg_url``: the URL of a fresh PostgreSQL database with Soniq's schema,
  dropped after the test (see :mod:`soniq.testing.postgres` for where the server
  comes from).

They are plain (sync) fixtures, so they work with pytest-asyncio, anyio or no
async plugin at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from soniq.testing import postgres
from soniq.testing.helpers import make_app

if TYPE_CHECKING:
    from soniq.app import Soniq


@pytest.fixture
def soniq_app() -> Iterator[Soniq]:
    """An in-memory ``Soniq``; define jobs on it, enqueue, ``drain`` or ``inline``."""
    app = make_app()
    yield app
    postgres.run_sync(app.close())


@pytest.fixture(scope="session")
def soniq_pg_admin_url() -> str:
    """A URL whose user may create databases."""
    return postgres.admin_url()


@pytest.fixture(scope="session")
def soniq_pg_template(soniq_pg_admin_url: str) -> Iterator[str]:
    name = postgres.create_template(soniq_pg_admin_url)
    yield name
    postgres.drop(soniq_pg_admin_url, name)


@pytest.fixture
def soniq_pg_url(soniq_pg_admin_url: str, soniq_pg_template: str) -> Iterator[str]:
    """A fresh database with Soniq's schema: ``Soniq(database_url=soniq_pg_url)``."""
    name = postgres.clone(soniq_pg_admin_url, soniq_pg_template)
    yield postgres.with_database(soniq_pg_admin_url, name)
    postgres.drop(soniq_pg_admin_url, name)
