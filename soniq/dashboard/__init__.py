"""The web dashboard: ``create_dashboard_app(app)`` and ``soniq dashboard``.

Example::

    from fastapi import FastAPI
    from soniq import Soniq
    from soniq.dashboard import create_dashboard_app

    jobs = Soniq(database_url="postgresql://localhost/myapp")
    web = FastAPI()
    web.mount("/admin/queue", create_dashboard_app(jobs, allowed_hosts=["admin.example.com"]))

Starlette, Jinja2 and uvicorn come with ``pip install 'soniq[dashboard]'``; they
are imported only when a dashboard is created, so ``import soniq`` stays lean.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soniq.app import Soniq


def create_dashboard_app(
    app: Soniq,
    *,
    api_key: str | None = None,
    read_only: bool = False,
    allowed_hosts: Iterable[str] | None = None,
) -> Any:
    """The dashboard of ``app`` as an ASGI application, mountable under any prefix.

    ``api_key`` (default: ``SONIQ_DASHBOARD_API_KEY``) lets remote callers in;
    without it only loopback callers may write. ``read_only=True`` hides and
    refuses every write. ``allowed_hosts`` are the host names (besides
    localhost) the dashboard answers to; ``["*"]`` turns the Host check off.
    """
    try:
        from soniq.dashboard.app import build_app
    except ImportError as exc:
        raise ImportError(
            f"The Soniq dashboard needs {exc.name or 'its web dependencies'}: "
            "install them with `pip install 'soniq[dashboard]'`."
        ) from exc
    return build_app(app, api_key=api_key, read_only=read_only, allowed_hosts=allowed_hosts)


__all__ = ["create_dashboard_app"]
