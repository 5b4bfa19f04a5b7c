"""Leader leases held for the length of a sweep (maintenance, log pruning).

A lease has a time to live so that a leader that dies is replaced. A sweep can outlive
that time (pruning a big backlog of expired results runs in paced batches for minutes):
without renewal a second worker would take the free lease and start the same sweep over
the same rows. ``leading`` renews the lease while the sweep runs.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from soniq.utils import stop_task

if TYPE_CHECKING:
    from soniq.backends import StorageBackend


@contextlib.asynccontextmanager
async def leading(
    backend: StorageBackend, role: str, owner: str, ttl: float
) -> AsyncIterator[bool]:
    """Take ``role``'s lease for ``owner`` if it is free (or ``owner``'s already);
    yields whether it leads. While the body runs, the lease is renewed every third of
    ``ttl``; it is left to expire afterwards, as between sweeps."""
    if not await backend.try_lead(role, owner, ttl):
        yield False
        return
    renewer = asyncio.create_task(_renew(backend, role, owner, ttl))
    try:
        yield True
    finally:
        await stop_task(renewer)  # a cancellation of the sweep meanwhile still ends it


async def _renew(backend: StorageBackend, role: str, owner: str, ttl: float) -> None:
    while True:
        await asyncio.sleep(ttl / 3)
        with contextlib.suppress(Exception):  # the database away: the next renewal retries
            await backend.try_lead(role, owner, ttl)
