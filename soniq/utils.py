"""Small rules that several layers share, each written once.

A leaf module (it imports nothing from soniq), so the app, the CLI, the
settings and every backend can use it without import cycles.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

UTC = timezone.utc


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC (as documented)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value if value.tzinfo is UTC else value.astimezone(UTC)


def maybe_utc(value: datetime | None) -> datetime | None:
    return to_utc(value) if value is not None else None


def split_csv(value: Any) -> Any:
    """``"a, b,,c"`` → ``["a", "b", "c"]`` (env vars and CLI options); other values as given."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def canonical_id(value: object) -> str | None:
    """The canonical text of a UUID (``ABC…`` finds ``abc…``); ``None`` when it is not one.

    Ids come from users and URLs: a malformed one matches nothing, on every backend.
    """
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def canonical_ids(values: Iterable[object]) -> list[str]:
    """Valid ids only, canonical, first occurrence kept."""
    return list(dict.fromkeys(i for i in map(canonical_id, values) if i is not None))


def mask_url(url: str) -> str:
    """The URL with its password replaced by ``***``, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def describe_target(url: str) -> str:
    """``host=… port=… database=…`` of a PostgreSQL URL, without credentials."""
    parts = urlsplit(url)
    database = (parts.path or "/").lstrip("/") or "(default)"
    return f"host={parts.hostname or 'localhost'} port={parts.port or 5432} database={database}"


def fmt_duration(seconds: float) -> str:
    """``42s``, ``3m 07s``, ``2h 05m``, ``3d 4h``: an age or a wait, for people (CLI, dashboard)."""
    total = max(0, int(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


async def stop_task(task: asyncio.Task[Any]) -> None:
    """Cancel ``task`` and wait until it has ended, whatever it raised.

    Waited for, never awaited under a caught CancelledError: that would also swallow a
    cancellation of the caller arriving meanwhile (a worker's shutdown cancelling its
    maintenance loop), and the caller would go on as if never cancelled.
    """
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved: how it failed on its way out is not news here
