"""Shapes of values the public API returns, for type checkers and for code written
against the published ``soniq`` package.

``get_queue_stats()`` returns one dict per queue (the seeds' shape). The published
package returned one aggregate dict of six counts; :class:`QueueStatsList` serves
both: it *is* the list of per-queue dicts, and indexing it with a count's name
answers the total over every queue.

Example::

    stats = await app.get_queue_stats()
    for row in stats:                     # per queue
        print(row["queue"], row["queued"])
    print(stats["queued"])                # all queues together
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, SupportsIndex, TypedDict, cast, overload

COUNT_KEYS = ("total", "queued", "processing", "done", "dead_letter", "cancelled")


class QueueStats(TypedDict):
    """The six counts of the published package's aggregate queue statistics."""

    total: int
    queued: int
    processing: int
    done: int
    dead_letter: int
    cancelled: int


class QueueStatsRow(QueueStats):
    """One queue's counts, as ``get_queue_stats()`` lists them."""

    queue: str


class QueueStatsList(list[dict[str, Any]]):
    """Per-queue count dicts (sorted by queue) that also answer ``stats["queued"]``.

    Iteration, ``len`` and ``== []`` behave as the list they are; a string key
    (``stats["done"]``, ``.get``, ``.keys()``, ``.items()``) reads the totals
    summed over the queues, 0 when there are none.
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        super().__init__(dict(row) for row in rows)

    def totals(self) -> QueueStats:
        """The six counts summed over every queue."""
        return cast(QueueStats, self._sums())

    def _sums(self) -> dict[str, int]:
        return {key: sum(int(row.get(key, 0) or 0) for row in self) for key in COUNT_KEYS}

    @overload
    def __getitem__(self, key: SupportsIndex) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, key: slice) -> list[dict[str, Any]]: ...

    @overload
    def __getitem__(self, key: str) -> int: ...

    def __getitem__(self, key: SupportsIndex | slice | str) -> Any:
        if isinstance(key, str):
            totals = self._sums()
            if key not in totals:
                raise KeyError(key)
            return totals[key]
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        """``totals().get(key, default)``."""
        totals = self._sums()
        return totals.get(key, default)

    def keys(self) -> Iterator[str]:
        return iter(COUNT_KEYS)

    def items(self) -> Iterator[tuple[str, int]]:
        totals = self._sums()
        return iter(totals.items())

    def values(self) -> Iterator[int]:
        totals = self._sums()
        return iter(totals.values())

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str):
            return item in COUNT_KEYS
        return super().__contains__(item)


__all__ = ["COUNT_KEYS", "QueueStats", "QueueStatsList", "QueueStatsRow"]
