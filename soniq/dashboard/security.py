"""Who may read and who may write: the dashboard's whole access policy in one place.

The rules (docs/dashboard.md explains them for users):

- The ``Host`` header must name a host this dashboard serves (loopback names,
  the bound host, ``allowed_hosts``), else 400 for every request: a DNS
  rebinding page cannot talk to a dashboard on 127.0.0.1 under its own name.
- A *loopback caller* connected from 127.0.0.0/8 or ::1 and carries no proxy
  header (``Forwarded``, ``X-Forwarded-For``, ``X-Real-IP``): a reverse proxy on
  the same host forwards internet traffic from 127.0.0.1, and that traffic must
  not count as local.
- Reads: a loopback caller always; anyone else needs the key when one is
  configured, and needs nothing when none is (so bind 127.0.0.1 by default).
- Writes: never in read-only mode; otherwise the key or a loopback caller, and
  never cross-site: an ``Origin`` or ``Sec-Fetch-Site`` that is not this site is
  refused, and an HTML form must carry the CSRF token of this dashboard.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from soniq.errors import ConfigurationError

PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-real-ip", "x-forwarded-host")
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
SAME_SITE_FETCH = frozenset({"same-origin", "none"})
KEY_COOKIE = "soniq_dashboard_key"
CSRF_HEADER = "x-soniq-csrf"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


class Denied(Exception):
    """A request the policy refuses: ``status`` (400/401/403) and a message saying what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Policy:
    """The access rules of one dashboard instance (built once by ``create_dashboard_app``)."""

    api_key: str | None
    read_only: bool
    allowed_hosts: frozenset[str]
    allow_any_host: bool = False
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    @property
    def key_configured(self) -> bool:
        return bool(self.api_key)


@dataclass(frozen=True)
class Caller:
    """What the policy concluded about one request."""

    loopback: bool
    has_key: bool
    can_read: bool
    can_write: bool


def write_switch(environ: Mapping[str, str]) -> bool | None:
    """``SONIQ_DASHBOARD_WRITE_ENABLED``: False forces read-only, True/unset follow the rules."""
    raw = environ.get("SONIQ_DASHBOARD_WRITE_ENABLED", "").strip().lower()
    if not raw:
        return None
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ConfigurationError(
        f"SONIQ_DASHBOARD_WRITE_ENABLED={raw!r} is not a yes/no value; "
        "set it to true or false (or unset it)"
    )


def make_policy(
    *,
    api_key: str | None,
    read_only: bool,
    allowed_hosts: Iterable[str] | None,
    environ: Mapping[str, str] | None = None,
) -> Policy:
    """Combine the arguments with the ``SONIQ_DASHBOARD_*`` environment into a ``Policy``."""
    env = os.environ if environ is None else environ
    hosts = {h.strip().lower() for h in (allowed_hosts or ()) if h.strip()}
    hosts |= {h.strip().lower() for h in env.get("SONIQ_DASHBOARD_ALLOWED_HOSTS", "").split(",")}
    hosts.discard("")
    return Policy(
        api_key=api_key or None,
        read_only=read_only or write_switch(env) is False,
        allowed_hosts=frozenset(hosts | LOOPBACK_NAMES) - {"*"},
        allow_any_host="*" in hosts,
    )


def host_name(host_header: str) -> str:
    """``example.com:6161`` → ``example.com``; ``[::1]:80`` → ``[::1]``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def check_host(policy: Policy, host_header: str | None) -> None:
    """Refuse a ``Host`` this dashboard does not serve (DNS rebinding)."""
    if policy.allow_any_host:
        return
    name = host_name(host_header or "")
    if name in policy.allowed_hosts:
        return
    raise Denied(
        400,
        f"Host {name or '(none)'!r} is not served by this dashboard. Open it as "
        "http://127.0.0.1:<port>, or allow the name with "
        "create_dashboard_app(..., allowed_hosts=[...]) / SONIQ_DASHBOARD_ALLOWED_HOSTS.",
    )


def is_loopback(client_host: str | None, headers: Mapping[str, str]) -> bool:
    """A direct connection from this machine, not relayed by a proxy."""
    if client_host is None or any(h in headers for h in PROXY_HEADERS):
        return False
    try:
        return ipaddress.ip_address(client_host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def presented_key(headers: Mapping[str, str], query_key: str | None, cookie: str | None) -> str:
    """The key a request carries: bearer, ``X-API-Key``, ``?api_key=`` or the login cookie."""
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return headers.get("x-api-key") or query_key or cookie or ""


def key_matches(policy: Policy, presented: str) -> bool:
    """Constant-time comparison, so response times leak nothing about the key."""
    if not policy.api_key or not presented:
        return False
    return hmac.compare_digest(presented.encode(), policy.api_key.encode())


def assess(policy: Policy, *, loopback: bool, presented: str) -> Caller:
    """Decide what this caller may do (before any cross-site check of a write)."""
    has_key = key_matches(policy, presented)
    can_read = loopback or has_key or not policy.key_configured
    can_write = not policy.read_only and (loopback or has_key)
    return Caller(loopback=loopback, has_key=has_key, can_read=can_read, can_write=can_write)


def require_read(caller: Caller) -> None:
    if not caller.can_read:
        raise Denied(
            401,
            "Invalid or missing API key. Send it as `Authorization: Bearer <key>` or "
            "`X-API-Key: <key>` (the key is SONIQ_DASHBOARD_API_KEY), or open the dashboard "
            "from 127.0.0.1.",
        )


def require_write(policy: Policy, caller: Caller) -> None:
    if policy.read_only:
        raise Denied(
            403,
            "This dashboard is read-only (read_only=True or SONIQ_DASHBOARD_WRITE_ENABLED=false); "
            "use the soniq CLI, or start the dashboard without read-only mode.",
        )
    if not caller.can_write:
        raise Denied(
            403,
            "Writes need the API key (`Authorization: Bearer <key>`, SONIQ_DASHBOARD_API_KEY) "
            "or a direct connection from 127.0.0.1 (not through a proxy).",
        )


def check_same_site(headers: Mapping[str, str]) -> None:
    """Refuse a write a page of another site made the browser send (CSRF)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in SAME_SITE_FETCH:
        raise Denied(403, _cross_site(f"Sec-Fetch-Site: {fetch_site}"))
    origin = headers.get("origin")
    if origin is None:
        return  # not a browser (scripts, curl): the key/loopback rule decides
    origin_host = urlsplit(origin).netloc.lower() if origin != "null" else "null"
    if origin_host != headers.get("host", "").lower():
        raise Denied(403, _cross_site(f"Origin: {origin}"))


def _cross_site(what: str) -> str:
    return (
        f"Cross-site write refused ({what}). Use the dashboard's own pages, or call the "
        "API from a script (no Origin header) with the API key."
    )


def check_csrf(policy: Policy, token: str | None) -> None:
    """An HTML form write must echo this dashboard's token (a field or ``X-Soniq-CSRF``)."""
    if token and hmac.compare_digest(token.encode(), policy.csrf_token.encode()):
        return
    raise Denied(403, "The form's security token is missing or stale; reload the page and retry.")


__all__ = [
    "CSRF_HEADER",
    "KEY_COOKIE",
    "Caller",
    "Denied",
    "Policy",
    "assess",
    "check_csrf",
    "check_host",
    "check_same_site",
    "is_loopback",
    "make_policy",
    "presented_key",
    "require_read",
    "require_write",
    "write_switch",
]
