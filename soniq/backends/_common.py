"""Pure helpers shared by the embedded backends (memory and SQLite).

Only logic that is genuinely identical in both lives here: time and id
normalisation, the transactional-enqueue refusal, queue-stats folding and the
in-process wake-up of workers that share the producer's process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from datetime import datetime, timezone
from typing import Any

from soniq.job import QueueStats

log = logging.getLogger("soniq.backends")

UTC = timezone.utc
LIVE_STATUSES = ("queued", "processing")
STATUS_KEYS = ("queued", "processing", "done", "cancelled", "dead_letter")
SCHEDULE_STATUSES = ("active", "paused")


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_utc(value: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken as UTC (as documented)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def maybe_utc(value: datetime | None) -> datetime | None:
    return to_utc(value) if value is not None else None


def normalize_id(value: str) -> str:
    """The canonical form of a UUID string, so ``ABC…`` finds ``abc…`` as on PostgreSQL.

    Ids come from users and URLs: anything that is not a UUID is returned
    unchanged and simply matches nothing.
    """
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return str(value)


def lost_worker_error(worker_id: str | None, attempt: int) -> str:
    """The ``last_error`` of a job whose worker disappeared (same text on every backend)."""
    return f"worker {worker_id or '?'} was lost while running attempt {attempt}"


def reject_connection(connection: Any, backend_name: str) -> None:
    """Refuse ``enqueue(..., connection=...)``: only PostgreSQL joins the caller's transaction."""
    if connection is not None:
        raise ValueError(
            "Transactional enqueue (connection=...) requires the PostgreSQL backend; "
            f"the {backend_name} backend cannot join your transaction. Enqueue without "
            "connection=, or use a postgresql:// database_url."
        )


def no_connections(backend_name: str) -> AbstractAsyncContextManager[Any]:
    """``backend.acquire()`` where there is no database connection to lend."""
    raise ValueError(
        f"backend.acquire() lends a PostgreSQL connection for transactional enqueue; the "
        f"{backend_name} backend has none. Use a postgresql:// database_url for that pattern."
    )


def check_schedule_status(status: str) -> None:
    """Reject a status the schema's CHECK constraint would refuse, before writing anything."""
    if status not in SCHEDULE_STATUSES:
        raise ValueError(f"schedule status must be 'active' or 'paused', not {status!r}")


def build_queue_stats(rows: Iterable[tuple[str, str, int]]) -> list[QueueStats]:
    """(queue, status, count) triples → one ``QueueStats`` per queue, sorted by queue."""
    counts: dict[str, dict[str, int]] = {}
    for queue, status, n in rows:
        per = counts.setdefault(queue, dict.fromkeys(STATUS_KEYS, 0))
        per[status] = per.get(status, 0) + int(n)
    return [
        QueueStats(
            queue=name,
            total=sum(per[k] for k in STATUS_KEYS),
            queued=per["queued"],
            processing=per["processing"],
            done=per["done"],
            cancelled=per["cancelled"],
            dead_letter=per["dead_letter"],
        )
        for name, per in sorted(counts.items())
    ]


class _Subscription:
    """One ``listen()`` callback, bound to the event loop that registered it."""

    def __init__(
        self,
        owner: InProcessListeners,
        callback: Callable[[str], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._owner = owner
        self.callback = callback
        self.loop = loop

    def is_alive(self) -> bool:
        return True  # in-process: nothing to lose

    async def close(self) -> None:
        self._owner.remove(self)


class InProcessListeners:
    """Wake workers that listen in this process when a producer here enqueues.

    A callback runs directly when the enqueue happens on the loop that
    subscribed, and through ``call_soon_threadsafe`` otherwise (a worker
    running its own loop in another thread). A raising callback is logged and
    never fails the enqueue.
    """

    def __init__(self) -> None:
        self._subs: list[_Subscription] = []
        self._mutex = threading.Lock()

    def add(self, callback: Callable[[str], None]) -> _Subscription:
        sub = _Subscription(self, callback, asyncio.get_running_loop())
        with self._mutex:
            self._subs.append(sub)
        return sub

    def remove(self, sub: _Subscription) -> None:
        with self._mutex:
            if sub in self._subs:
                self._subs.remove(sub)

    def notify(self, queues: Iterable[str]) -> None:
        names = sorted(set(queues))
        if not names:
            return
        with self._mutex:
            subs = list(self._subs)
        if not subs:
            return
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for sub in subs:
            for queue in names:
                self._deliver(sub, queue, current)

    @staticmethod
    def _deliver(sub: _Subscription, queue: str, current: asyncio.AbstractEventLoop | None) -> None:
        if sub.loop is current:
            try:
                sub.callback(queue)
            except Exception:
                log.exception("new-job listener raised; ignoring")
        elif not sub.loop.is_closed():
            sub.loop.call_soon_threadsafe(sub.callback, queue)
