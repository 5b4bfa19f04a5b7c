"""In-memory backend: the SQLite backend on a private in-memory database.

Why not a hand-kept structure: every lifecycle rule (claim order, dedup, the
lease guard, dead-lettering, schedule compare-and-set) would then be written a
third time and drift from the two SQL dialects. Here memory *is* SQLite, so it
follows every rule by construction; only where the bytes live differs.

Each backend object gets its own named in-memory database. A "keeper"
connection holds it open for the object's lifetime, so ``close()`` followed by
``open()`` (an app used across two ``asyncio.run`` calls) finds its jobs again,
while two ``Soniq`` instances in one process never see each other's jobs.
"""

from __future__ import annotations

import sqlite3
import uuid
from typing import TYPE_CHECKING

from soniq.backends.sqlite import SQLiteBackend

if TYPE_CHECKING:
    from soniq.settings import SoniqSettings


class MemoryBackend(SQLiteBackend):
    """``StorageBackend`` kept in this process's memory; gone when the object is.

    Example::

        app = Soniq(backend="memory")
    """

    name = "memory"

    def __init__(self, settings: SoniqSettings | None = None) -> None:
        uri = f"file:soniq-memory-{uuid.uuid4().hex}?mode=memory&cache=shared"
        super().__init__(uri, settings)
        self._keeper = sqlite3.connect(uri, uri=True, check_same_thread=False)
