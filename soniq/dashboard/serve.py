"""``soniq dashboard``: serve one dashboard under uvicorn until SIGINT/SIGTERM.

The command binds 127.0.0.1 by default. Binding wider without an API key is
allowed (the reads are then open to whoever reaches the port, writes stay
loopback-only) but warned about at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import signal
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from soniq.app import Soniq

WILDCARDS = ("0.0.0.0", "::", "")


def binds_wider(host: str) -> bool:
    """True unless ``host`` is a loopback name or address."""
    if host in ("localhost",):
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return True


def exposure_warning(host: str, port: int, key_configured: bool) -> str | None:
    if not binds_wider(host) or key_configured:
        return None
    return (
        f"the dashboard listens on {host}:{port} without SONIQ_DASHBOARD_API_KEY: anyone who "
        "can reach that port can read every job and its arguments (writes stay limited to "
        "127.0.0.1). Set SONIQ_DASHBOARD_API_KEY, or keep the default --host 127.0.0.1."
    )


def serve(
    app: Soniq,
    *,
    host: str,
    port: int,
    read_only: bool,
    allowed_hosts: Iterable[str],
    warn: Callable[[str], None],
) -> None:
    """Run the dashboard of ``app`` on ``host:port``; closes ``app`` when the server stops."""
    import uvicorn

    from soniq.dashboard import create_dashboard_app

    hosts = [*allowed_hosts, *([] if host in WILDCARDS else [host])]
    warning = exposure_warning(host, port, bool(app.settings.dashboard_api_key))
    if warning:
        warn(warning)
    asgi = create_dashboard_app(app, read_only=read_only, allowed_hosts=hosts)
    # proxy_headers off: the client address is the real peer; a proxy in front is seen
    # through its Forwarded/X-Forwarded-For headers, which make a caller non-local.
    config = uvicorn.Config(
        asgi, host=host, port=port, proxy_headers=False, log_level=app.settings.log_level.lower()
    )

    async def run() -> None:
        try:
            await uvicorn.Server(config).serve()
        finally:
            await app.close()

    with _graceful_signals():
        asyncio.run(run())


@contextlib.contextmanager
def _graceful_signals() -> Iterator[None]:
    """Let a stop signal end the command normally (exit 0, pool closed).

    uvicorn handles SIGINT/SIGTERM itself, then re-raises the signal to the
    previous handler once the server has stopped; with the default handler that
    would kill the process before the pool is closed. Ours just lets it return.
    """
    stops = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _stopped) for sig in stops}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stopped(signum: int, frame: Any) -> None:
    """The server already shut down gracefully; nothing left to do."""
