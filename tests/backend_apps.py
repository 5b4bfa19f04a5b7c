"""One fixture for "an app on each backend" (a pytest plugin, loaded by conftest).

``app_factory`` builds ready ``Soniq`` instances on this test's store, once per
backend (postgres, sqlite, memory); ``soniq_app`` is the first such instance.
Every test that states backend behaviour takes one of these, so a rule is
checked on all three backends by the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from tests.helpers import FAST_SETTINGS

BACKENDS = ["postgres", "sqlite", "memory"]
AppFactory = Callable[..., Awaitable[Soniq]]


@pytest.fixture(params=BACKENDS)
def backend_target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str | None]:
    """(backend kind, database url); only the postgres run asks for a database.

    A sync fixture, so the session-scoped PostgreSQL fixtures start outside the
    test's event loop.
    """
    kind: str = request.param
    if kind == "postgres":
        return kind, str(request.getfixturevalue("pg_url"))
    if kind == "sqlite":
        return kind, str(tmp_path / "t.db")
    return kind, None


@pytest.fixture
async def app_factory(backend_target: tuple[str, str | None]) -> AsyncIterator[AppFactory]:
    """Build ready ``Soniq`` instances on this test's store; all are closed afterwards."""
    kind, url = backend_target
    created: list[Soniq] = []

    async def make(**overrides: Any) -> Soniq:
        settings = {**FAST_SETTINGS, **overrides}
        if kind == "memory":
            app = Soniq(backend="memory", **settings)
        else:
            app = Soniq(database_url=url, **settings)
        created.append(app)
        await app.ensure_initialized()
        return app

    yield make
    for app in created:
        await app.close()


@pytest.fixture
async def soniq_app(app_factory: AppFactory) -> Soniq:
    return await app_factory()
