"""A real dashboard under a real uvicorn, for HTTP and browser tests.

The server runs as a task on the test's own event loop (so it shares the
``Soniq`` instance, and with it the memory backend, with the test), listening
on a free TCP port on 127.0.0.1 — a loopback caller — and, when asked, on a
Unix socket too: a connection there has no peer address, so it stands for a
remote (non-loopback) caller without sending traffic anywhere but this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from soniq import Soniq
from soniq.dashboard import create_dashboard_app
from tests.helpers import wait_until


@dataclass
class Served:
    """A running dashboard: its base URL, the Unix socket path, and ready clients."""

    url: str
    uds: str
    asgi: Any

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """A loopback client (TCP from 127.0.0.1)."""
        return httpx.AsyncClient(base_url=self.url, timeout=10, **kwargs)

    def remote(self, **kwargs: Any) -> httpx.AsyncClient:
        """A non-loopback client: the Unix socket, where the server sees no peer address."""
        transport = httpx.AsyncHTTPTransport(uds=self.uds)
        return httpx.AsyncClient(
            base_url="http://127.0.0.1", transport=transport, timeout=10, **kwargs
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def serve(asgi: Any, uds: str) -> AsyncIterator[str]:
    """Run ``asgi`` under uvicorn on 127.0.0.1:<free port> and on ``uds``; yield the URL."""
    port = free_port()
    tcp = uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, log_level="warning",
                                        proxy_headers=False, lifespan="on"))  # fmt: skip
    unix = uvicorn.Server(uvicorn.Config(asgi, uds=uds, log_level="warning", lifespan="off"))
    tasks = [asyncio.create_task(s.serve()) for s in (tcp, unix)]
    try:
        await wait_until(lambda: tcp.started and unix.started, timeout=10, message="uvicorn")
        yield f"http://127.0.0.1:{port}"
    finally:
        for s in (tcp, unix):
            s.should_exit = True
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)


ServerFactory = Callable[..., Any]


@pytest.fixture
async def dashboard(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """``await dashboard(app, **create_dashboard_app options) -> Served`` (stopped afterwards)."""
    stack = contextlib.AsyncExitStack()
    counter = iter(range(100))

    async def start(app: Soniq, **options: Any) -> Served:
        asgi = options.pop("asgi", None) or create_dashboard_app(app, **options)
        uds = str(tmp_path / f"d{next(counter)}.sock")
        url = await stack.enter_async_context(serve(asgi, uds))
        return Served(url=url, uds=uds, asgi=asgi)

    async with stack:
        yield start


def register(app: Soniq) -> None:
    """The tasks the dashboard tests enqueue."""

    @app.job(name="dash.send")
    async def send(to: str = "") -> str:
        return f"sent to {to}"

    @app.job(name="dash.fail", retries=0)
    async def fail(n: int = 0) -> None:
        raise RuntimeError(f"boom {n}")
