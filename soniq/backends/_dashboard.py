"""Pure helpers behind the dashboard's read verbs, shared by the SQL backends.

Kept apart from ``_common`` so the dashboard's additions stay in one place:
how a search box's text becomes an id match or a ``LIKE`` pattern, and how a
bucket number becomes a ``ThroughputBucket``.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone

from soniq.backends import ThroughputBucket

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
LIKE_ESCAPE = "\\"


def search_terms(search: str | None) -> tuple[str | None, str | None]:
    """(id, text): a UUID searches by id exactly, anything else the arguments' text."""
    term = (search or "").strip()
    if not term:
        return None, None
    try:
        return str(uuid.UUID(term)), None
    except ValueError:
        return None, term


def like_pattern(text: str | None, *, ascii_json: bool) -> str | None:
    """``text`` as a ``LIKE`` pattern over the arguments' JSON text, taken literally.

    The text is JSON-escaped the way the backend stores it (a quote or backslash
    in a value is stored escaped; SQLite keeps ``\\u`` escapes, jsonb does not),
    so searching a value finds it; then ``%``, ``_`` and ``\\`` lose their LIKE meaning.
    """
    if text is None:
        return None
    stored = json.dumps(text, ensure_ascii=ascii_json)[1:-1]
    escaped = (
        stored.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def bucket(number: int, seconds: int, completed: int, failed: int) -> ThroughputBucket:
    """Bucket ``number`` of ``seconds`` each, counted from the Unix epoch (UTC)."""
    start = EPOCH + timedelta(seconds=int(number) * seconds)
    return ThroughputBucket(start=start, completed=int(completed), failed=int(failed))


SAMPLE_ROWS = 100_000
"""Rows a sampled estimate reads, whatever the table's size."""


def estimate_done(sample: dict[str, int], total: int) -> dict[str, int]:
    """Split an estimated ``total`` of done rows over queues in the sample's proportions."""
    seen = sum(sample.values())
    if seen == 0:
        return {}
    return {queue: round(total * n / seen) for queue, n in sample.items()}
