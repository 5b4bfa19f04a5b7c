"""Attempt timeouts: one timer per slot of deadlines, not one per attempt.

A worker arms a deadline for every attempt and disarms it when the attempt ends, for
short jobs thousands of times a second. With one ``loop.call_later`` per attempt, every
attempt put a timer on the event loop's heap, and every cancelled one stayed there until
the loop rebuilt the heap: with no-op jobs that was a fifth of the worker's own CPU per
job (``bench/worker_cost.py``; bench/RESULTS.md, "Issue 15, fifth pass").

Here a deadline is rounded up to the end of its slot, ``timeout / SLOTS_PER_TIMEOUT``
seconds wide (at least ``MIN_SLOT``). The attempts whose deadlines share a slot share
one timer, which fires once at the slot's end and cancels those still running. So an
attempt is cancelled at most one slot late (1% of its timeout, or 10 ms), the worker
keeps at most about ``SLOTS_PER_TIMEOUT`` timers per distinct timeout, and arming and
disarming an attempt is a set insertion and a removal.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

SLOTS_PER_TIMEOUT = 100
MIN_SLOT = 0.01

Slot = tuple[float, int]  # (slot width, index of the slot's end in widths)


class Deadline:
    """One attempt's deadline: ask whether it expired, disarm it when the attempt ends."""

    __slots__ = ("_owner", "_slot", "_task")

    def __init__(self, owner: Deadlines, task: asyncio.Task[Any], slot: Slot) -> None:
        self._owner, self._task, self._slot = owner, task, slot

    @property
    def expired(self) -> bool:
        """Whether the task was cancelled because the deadline passed."""
        return self._task in self._owner.expired

    def disarm(self) -> None:
        """The attempt ended: forget the deadline (and that it expired, if it did)."""
        owner = self._owner
        tasks = owner.slots.get(self._slot)
        if tasks is not None:
            tasks.discard(self._task)
        if owner.expired:
            owner.expired.discard(self._task)


class Deadlines:
    """The deadlines of one worker's attempts; timers go on the loop that arms them."""

    __slots__ = ("expired", "slots", "timers")

    def __init__(self) -> None:
        self.slots: dict[Slot, set[asyncio.Task[Any]]] = {}
        self.timers: dict[Slot, asyncio.TimerHandle] = {}  # one per slot, made with it
        self.expired: set[asyncio.Task[Any]] = set()  # cancelled by a deadline, not disarmed

    def arm(self, task: asyncio.Task[Any], timeout: float) -> Deadline:
        """Cancel ``task`` once ``timeout`` seconds (and at most one slot more) have passed."""
        loop = asyncio.get_running_loop()
        width = max(timeout / SLOTS_PER_TIMEOUT, MIN_SLOT)
        slot = (width, math.ceil((loop.time() + timeout) / width))
        tasks = self.slots.get(slot)
        if tasks is None:
            tasks = self.slots[slot] = set()
            self.timers[slot] = loop.call_at(slot[1] * width, self._expire, slot)
        tasks.add(task)
        return Deadline(self, task, slot)

    def close(self) -> None:
        """The worker stopped: cancel the slots' timers, which would otherwise keep the
        finished attempts' tasks until the slots end (up to a timeout later)."""
        for timer in self.timers.values():
            timer.cancel()
        self.timers.clear()
        self.slots.clear()
        self.expired.clear()

    def _expire(self, slot: Slot) -> None:
        self.timers.pop(slot, None)
        for task in self.slots.pop(slot, ()):
            if not task.done():
                self.expired.add(task)
                task.cancel()
