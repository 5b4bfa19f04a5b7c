"""FastAPI (or any Starlette app): a lifespan that opens and closes Soniq, and a dependency.

Neither function imports FastAPI: they return what ``FastAPI(lifespan=...)`` and
``Depends(...)`` expect, so this module costs nothing to import.

Example::

    from fastapi import Depends, FastAPI
    from soniq import Soniq
    from soniq.integrations.fastapi import dependency, lifespan

    eq = Soniq(database_url="postgresql://localhost/myapp")
    app = FastAPI(lifespan=lifespan(eq))
    get_soniq = dependency(eq)

    @app.post("/users")
    async def create_user(email: str, soniq: Soniq = Depends(get_soniq)):
        return {"job_id": await soniq.enqueue(send_welcome, to=email)}
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soniq.app import Soniq


def lifespan(soniq_app: Soniq, *more: Soniq) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """``FastAPI(lifespan=lifespan(eq))``: initialise on start, close on stop.

    Initialising at start-up makes a wrong URL or a database without Soniq's
    tables stop the server at once, with the error that says how to fix it,
    instead of failing the first request. Several instances (one per tenant
    database) may be passed; they open in order and close in reverse.
    """
    apps = (soniq_app, *more)

    @asynccontextmanager
    async def _lifespan(_app: Any) -> AsyncIterator[None]:
        try:
            for app in apps:
                await app.ensure_initialized()
            yield
        finally:
            for app in reversed(apps):
                await app.close()

    return _lifespan


def dependency(soniq_app: Soniq) -> Callable[[], AsyncIterator[Soniq]]:
    """``Depends(dependency(eq))`` hands a route the (initialised) instance.

    Keep the returned function in a variable and use that one everywhere: tests
    can then swap the instance with ``app.dependency_overrides[get_soniq] = ...``.
    """

    async def get_soniq() -> AsyncIterator[Soniq]:
        await soniq_app.ensure_initialized()  # a no-op once open; covers apps without lifespan
        yield soniq_app

    return get_soniq
