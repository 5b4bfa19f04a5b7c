"""Assemble the dashboard: a Starlette app with pages, ``/api``, static files and the guard.

Everything is built per call of ``build_app`` (templates, access policy, CSRF
secret): two dashboards in one process share nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from soniq import utils
from soniq.dashboard import api, data, pages, security
from soniq.dashboard.web import Context, Guard
from soniq.errors import SoniqError

NONE = "\u2013"
"""What a page shows for a missing time or duration (an en dash)."""

if TYPE_CHECKING:
    from soniq.app import Soniq


def build_app(
    soniq_app: Soniq,
    *,
    api_key: str | None,
    read_only: bool,
    allowed_hosts: Iterable[str] | None,
) -> Starlette:
    policy = security.make_policy(
        api_key=api_key or soniq_app.settings.dashboard_api_key,
        read_only=read_only,
        allowed_hosts=allowed_hosts,
    )
    ctx = Context(soniq=soniq_app, policy=policy, templates=templates())

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        # Standalone: fail at start if the database is unreachable. (Mounted apps get
        # no lifespan from Starlette; every handler initialises lazily instead.)
        await soniq_app.ensure_initialized()
        yield

    routes: list[BaseRoute] = [
        Mount("/static", app=StaticFiles(packages=[("soniq.dashboard", "static")]), name="static"),
        Mount("/api", routes=api.routes(ctx)),
        Route("/health", _health, methods=["GET"]),
        Route("/ready", _ready(ctx), methods=["GET"]),
        *pages.routes(ctx),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(Guard, policy=policy)], lifespan=lifespan)
    app.state.dashboard = ctx
    return app


async def _health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def _ready(ctx: Context) -> Any:
    async def ready(request: Request) -> Response:
        try:
            await data.health(ctx.soniq)
        except (SoniqError, OSError) as exc:
            return JSONResponse({"status": "unavailable", "detail": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    return ready


# --- templates ----------------------------------------------------------------------


def templates() -> Environment:
    """Jinja with autoescaping on: every value a page shows is escaped."""
    env = Environment(
        loader=PackageLoader("soniq.dashboard", "templates"),
        autoescape=select_autoescape(["html"], default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=fmt_time, ago=fmt_ago, duration=fmt_duration, pretty=pretty_json, compact=compact_json
    )
    return env


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return NONE
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def fmt_duration(seconds: float | None) -> str:
    return NONE if seconds is None else utils.fmt_duration(seconds)


def fmt_ago(value: datetime | None) -> str:
    if value is None:
        return NONE
    delta = (data.now() - value).total_seconds()
    return f"in {fmt_duration(-delta)}" if delta < 0 else f"{fmt_duration(delta)} ago"


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True)


def compact_json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(", ", ": "))
