"""Helpers shared by the backend implementations (input rules are in ``checked``).

Queue-stats folding, the lost-worker error text, and the in-process wake-up of
workers that share the producer's process (SQLite and memory have no NOTIFY).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any

from soniq.job import QueueStats
from soniq.utils import canonical_id

log = logging.getLogger("soniq.backends")

STATUS_KEYS = ("queued", "processing", "done", "cancelled", "dead_letter")

# The ``last_error`` of a job whose worker disappeared, as a printf/format()
# template (worker id, attempt) that each dialect's recovery statement fills in.
LOST_WORKER_ERROR = "worker %s was lost while running attempt %s"


def normalize_id(value: str) -> str:
    """The canonical form of a UUID string, or the value unchanged (then it matches nothing)."""
    return canonical_id(value) or str(value)


def no_connections(backend_name: str) -> AbstractAsyncContextManager[Any]:
    """``backend.acquire()`` where there is no database connection to lend."""
    raise ValueError(
        f"backend.acquire() lends a PostgreSQL connection for transactional enqueue; the "
        f"{backend_name} backend has none. Use a postgresql:// database_url for that pattern."
    )


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


def decode_args(text: str) -> tuple[dict[str, Any], str | None]:
    """A claimed row's arguments: (kwargs, None), or ({}, why they cannot be kwargs).

    A row written by hand or by another producer may hold anything; the backends
    dead-letter such a job with this reason at claim, so a worker never stalls on it.
    """
    try:
        args = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return {}, f"SerializationError: the job's arguments cannot be decoded ({exc!r:.200})"
    if not isinstance(args, dict):
        return {}, (
            "SerializationError: the job's arguments are a JSON "
            f"{type(args).__name__}, not an object of keyword arguments"
        )
    return args, None


def read_args(text: str) -> Any:
    """Stored arguments for a read (get_job, lists, dead letters): what ``decode_args``
    refuses is shown rather than failing the read."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return {"undecodable_arguments": text[:1000]}


async def paced_batches(step: Callable[[], Awaitable[tuple[int, bool]]], pause: float) -> int:
    """Run ``step`` (one batch, its own transaction: rows removed, whether more may
    remain) until it says no more, sleeping ``pause`` times as long as each batch took:
    no transaction spans batches, so claims and acks interleave with a long prune.
    Returns the rows removed."""
    total = 0
    while True:
        started = time.monotonic()
        removed, more = await step()
        total += removed
        if not more:
            return total
        await asyncio.sleep(pause * (time.monotonic() - started))
