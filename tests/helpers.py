"""Test helpers: wait on conditions with a deadline, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.02,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` (sync or async) until truthy; fail with ``message`` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


def wait_until_sync(
    condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
    message: str = "condition",
) -> Any:  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


FAST_SETTINGS: dict[str, Any] = {
    "poll_interval": 0.2,
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 2.0,
    "cleanup_interval": 0.3,
    "error_retry_delay": 0.1,
    "shutdown_timeout": 5.0,
    "pool_min_size": 1,
    "log_level": "DEBUG",
}
