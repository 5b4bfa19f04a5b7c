"""Query parameters and request bodies, checked before anything touches the database.

Everything a URL or a body carries is hostile until parsed here: a bad value
raises ``BadRequest`` (422, with what was wrong and what is accepted), never a
500 from deep inside a query.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from soniq.backends import JobCursor, JobQuery

STATUSES = ("queued", "processing", "done", "cancelled", "dead_letter")
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_OFFSET = 100_000
MAX_TEXT = 200
MAX_HOURS = 24 * 7
MAX_IDS = 10_000


class BadRequest(Exception):
    """A parameter or body the dashboard cannot accept (HTTP 422)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class JobListParams:
    """``/jobs`` and ``/api/jobs``: filters, page size and either a cursor or an offset."""

    queue: str | None
    status: str | None
    task: str | None
    search: str | None
    limit: int
    cursor: JobCursor | None
    offset: int | None

    def query(self) -> JobQuery:
        return JobQuery(
            queue=self.queue, status=self.status, task=self.task, search=self.search,
            after=self.cursor, limit=self.limit,
        )  # fmt: skip

    def filters(self) -> dict[str, str]:
        """The active filters, as they go back into links (next page, refresh)."""
        pairs = {"queue": self.queue, "status": self.status, "task": self.task, "q": self.search}
        return {k: v for k, v in pairs.items() if v}


def text(params: Mapping[str, str], name: str) -> str | None:
    """An optional short text filter; blank means absent."""
    value = params.get(name)
    if value is None or not value.strip():
        return None
    if len(value) > MAX_TEXT or "\x00" in value:
        raise BadRequest(f"{name} must be at most {MAX_TEXT} characters of text")
    return value.strip()


def integer(params: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number from {low} to {high}") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be from {low} to {high}, got {value}")
    return value


def status(params: Mapping[str, str]) -> str | None:
    value = text(params, "status")
    if value is not None and value not in STATUSES:
        raise BadRequest(f"status must be one of {', '.join(STATUSES)}; got {value!r}")
    return value


def job_list(params: Mapping[str, str]) -> JobListParams:
    cursor = decode_cursor(params.get("cursor"))
    offset = params.get("offset")
    skip = integer(params, "offset", 0, 0, MAX_OFFSET) if offset not in (None, "") else None
    if isinstance(cursor, int):  # a dead-letter page token: an offset in disguise
        cursor, skip = None, cursor
    return JobListParams(
        queue=text(params, "queue"), status=status(params), task=text(params, "task"),
        search=text(params, "q"), limit=integer(params, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        cursor=cursor, offset=skip,
    )  # fmt: skip


DEAD_PREFIX = "dlq:"


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """An opaque page token: the last row's ``created_at`` and ``id``."""
    return _b64(f"{created_at.astimezone(timezone.utc).isoformat()}|{job_id}")


def encode_offset(offset: int) -> str:
    """The page token of dead letters (a small table, paged by offset)."""
    return _b64(f"{DEAD_PREFIX}{offset}")


def _b64(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(token: str | None) -> JobCursor | int | None:
    """A token from ``encode_cursor`` (or ``encode_offset``, as an int); 422 otherwise."""
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        if raw.startswith(DEAD_PREFIX):
            return _bounded_offset(raw[len(DEAD_PREFIX) :])
        stamp, job_id = raw.split("|", 1)
        created = datetime.fromisoformat(stamp)
        job_uuid = uuid.UUID(job_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadRequest(
            "cursor is not one this dashboard issued; start again without it"
        ) from None
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return JobCursor(created_at=created, id=str(job_uuid))


def _bounded_offset(raw: str) -> int:
    offset = int(raw)
    if not 0 <= offset <= MAX_OFFSET:
        raise ValueError(raw)
    return offset


def job_id(value: str) -> str | None:
    """A path id as a canonical UUID string, or ``None`` when it cannot name a job."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def hours(params: Mapping[str, str], default: int = 24) -> int:
    return integer(params, "hours", default, 1, MAX_HOURS)


def selection(body: Any) -> dict[str, Any]:
    """A bulk body: ``{"ids": [...]}``, or ``{"queue": .., "task": ..}``, or ``{"all": true}``."""
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object: {"ids": [...]} or {"queue": "...", "task": "..."}')
    ids = body.get("ids")
    if ids is not None:
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise BadRequest('"ids" must be a list of job id strings')
        if len(ids) > MAX_IDS:
            raise BadRequest(f'"ids" may hold at most {MAX_IDS} ids per request')
        return {"ids": ids}
    found = {k: body.get(k) for k in ("queue", "task")}
    for name, value in found.items():
        if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_TEXT):
            raise BadRequest(f'"{name}" must be a non-empty string')
    if found["queue"] is None and found["task"] is None and body.get("all") is not True:
        raise BadRequest(
            'say which dead letters: {"ids": [...]}, {"queue": ..., "task": ...}, '
            'or {"all": true} for every one'
        )
    return {**found, "all": body.get("all") is True}
