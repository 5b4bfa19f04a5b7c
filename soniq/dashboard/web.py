"""The plumbing shared by pages and API: the guard middleware, endpoint wrappers, rendering.

``Guard`` runs before every route (static files included): it checks the
``Host`` header, decides what the caller may do (``security.assess``) and adds
the security headers. ``endpoint`` wraps a handler so that every expected
failure becomes the right status with a clear message (404, 409, 422, 401/403,
503), never a 500 for bad input.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from jinja2 import Environment
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soniq.dashboard import data, params, security
from soniq.errors import SoniqError

if TYPE_CHECKING:
    from soniq.app import Soniq

log = logging.getLogger("soniq.dashboard")

Handler = Callable[[Request], Awaitable[Response]]
OPEN_PATHS = ("/health", "/ready")
"""Probes: no data, so no Host check and no key (load balancers send neither)."""
PUBLIC_PATHS = ("/login", "/static/")
"""Reachable without the key (the login form and its stylesheet)."""
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    # same-origin, not no-referrer: under no-referrer Chromium sends "Origin: null" with
    # a form POST, which the cross-site check must refuse.
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


@dataclass(frozen=True)
class Context:
    """What every handler of one dashboard instance shares (no module-level state)."""

    soniq: Soniq
    policy: security.Policy
    templates: Environment


def route_path(scope: Scope) -> str:
    """The path inside the dashboard, without the prefix it is mounted under."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Guard:
    """ASGI middleware: Host check, read access, caller assessment, security headers."""

    def __init__(self, app: ASGIApp, policy: security.Policy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if path in OPEN_PATHS:
            await self.app(scope, receive, _with_headers(send))
            return
        request = Request(scope)
        try:
            security.check_host(self.policy, request.headers.get("host"))
            caller = self._assess(request)
            if not path.startswith(PUBLIC_PATHS):
                security.require_read(caller)
        except security.Denied as denied:
            login = f"{scope.get('root_path', '')}/login"
            await denied_response(path, denied, login)(scope, receive, _with_headers(send))
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, _with_headers(send))

    def _assess(self, request: Request) -> security.Caller:
        client = request.client.host if request.client else None
        key = security.presented_key(
            request.headers,
            request.query_params.get("api_key"),
            request.cookies.get(security.KEY_COOKIE),
        )
        loopback = security.is_loopback(client, request.headers)
        return security.assess(self.policy, loopback=loopback, presented=key)


def _with_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            present = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
            message["headers"] = [*message.get("headers", []), *extra]
        await send(message)

    return send_with_headers


def denied_response(path: str, denied: security.Denied, login: str) -> Response:
    if path.startswith("/api/") or denied.status == 400:
        return JSONResponse({"detail": denied.message}, status_code=denied.status)
    if denied.status == 401:
        # A browser without the key: point it at the login form.
        return PlainTextResponse(f"{denied.message}\nOr sign in at {login}", status_code=401)
    return PlainTextResponse(denied.message, status_code=denied.status)


def caller_of(request: Request) -> security.Caller:
    caller: security.Caller = request.state.caller
    return caller


def is_browser_write(request: Request) -> bool:
    """Sent by a browser (or with the login cookie): then it must carry the CSRF token."""
    headers = request.headers
    return (
        "origin" in headers
        or "sec-fetch-site" in headers
        or (security.KEY_COOKIE in request.cookies and not _explicit_key(request))
    )


def _explicit_key(request: Request) -> bool:
    return "authorization" in request.headers or "x-api-key" in request.headers


async def check_write(ctx: Context, request: Request, form_token: str | None = None) -> None:
    """Every write passes here: mode, key-or-loopback, same site, CSRF token for browsers."""
    security.require_write(ctx.policy, caller_of(request))
    security.check_same_site(request.headers)
    if is_browser_write(request):
        security.check_csrf(ctx.policy, form_token or request.headers.get(security.CSRF_HEADER))


# --- JSON -------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


class ApiResponse(JSONResponse):
    """JSON with datetimes as ISO 8601 (UTC)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, default=_json_default, separators=(",", ":")).encode()


def api_error(status: int, message: str) -> Response:
    return ApiResponse({"detail": message}, status_code=status)


def failure(exc: Exception) -> tuple[int, str] | None:
    """The status and message of an expected failure; ``None`` for a bug."""
    if isinstance(exc, security.Denied):
        return exc.status, exc.message
    if isinstance(exc, data.NotFound):
        return 404, str(exc)
    if isinstance(exc, data.Conflict):
        return 409, str(exc)
    if isinstance(exc, params.BadRequest):
        return 422, exc.message
    if isinstance(exc, SoniqError):
        return 503, f"{exc.message} (the dashboard could not reach Soniq's database)"
    return None


def api(handler: Handler) -> Handler:
    """Wrap an API handler: expected failures become JSON errors with their status."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            known = failure(exc)
            if known is None:
                log.exception("dashboard API error on %s", request.url.path)
                return api_error(500, "Internal error; the dashboard's log has the details.")
            return api_error(*known)

    return wrapped


async def json_body(request: Request) -> Any:
    """The request's JSON body (empty → ``{}``); anything unparsable is a 422."""
    raw = await request.body()
    if len(raw) > 1_000_000:
        raise params.BadRequest("the request body is larger than 1 MB")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise params.BadRequest("the request body is not valid JSON") from None


# --- HTML -------------------------------------------------------------------------


def prefix(request: Request) -> str:
    root: str = request.scope.get("root_path", "")
    return root.rstrip("/")


def render(ctx: Context, request: Request, name: str, status: int = 200, **values: Any) -> Response:
    caller = caller_of(request)
    template = ctx.templates.get_template(name)
    html = template.render(
        base=prefix(request), viewer=caller, csrf=ctx.policy.csrf_token,
        read_only=ctx.policy.read_only, key_configured=ctx.policy.key_configured,
        fragment=request.headers.get("x-soniq-fragment") == "1", request_path=request.url.path,
        backend=ctx.soniq.backend.name, database=describe_database(ctx.soniq.database_url),
        now=data.now(), **values,
    )  # fmt: skip
    return HTMLResponse(html, status_code=status)


def describe_database(url: str) -> str:
    """Host and database name only: credentials never reach a page."""
    if "://" not in url or url.startswith("sqlite"):
        return url.rsplit("/", 1)[-1] if "/" in url else url
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}/{parts.path.lstrip('/')}"


def page(ctx: Context) -> Callable[[Handler], Handler]:
    """Wrap a page handler: expected failures render the error page with their status."""

    def decorate(handler: Handler) -> Handler:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                known = failure(exc)
                if known is None:
                    log.exception("dashboard page error on %s", request.url.path)
                    known = (500, "Internal error; the dashboard's log has the details.")
                return render(ctx, request, "error.html", status=known[0], message=known[1])

        return wrapped

    return decorate


def query_string(values: dict[str, Any]) -> str:
    clean = {k: v for k, v in values.items() if v not in (None, "")}
    return f"?{urlencode(clean)}" if clean else ""
