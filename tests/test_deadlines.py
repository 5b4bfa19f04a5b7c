"""soniq.deadlines: attempt timeouts sharing one timer per slot (the worker's hot path).

The worker-level behaviour (a timed-out attempt fails with JobTimeoutError, a disabled
timeout never fires) is pinned in tests/test_worker.py; these pin the slot rules.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from soniq.deadlines import MIN_SLOT, Deadlines
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(30)


async def _sleeper() -> None:
    await asyncio.sleep(60)


async def test_an_attempt_is_cancelled_after_its_timeout_never_before() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_sleeper())
    started = time.monotonic()
    deadline = deadlines.arm(task, 0.05)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started >= 0.05
    assert deadline.expired
    deadline.disarm()
    assert not deadline.expired  # forgotten once disarmed: the set does not grow
    assert not deadlines.expired and not deadlines.slots


async def test_attempts_that_end_in_time_are_left_alone() -> None:
    deadlines = Deadlines()
    quick = asyncio.create_task(asyncio.sleep(0))
    slow = asyncio.create_task(_sleeper())
    armed_quick, armed_slow = deadlines.arm(quick, 0.05), deadlines.arm(slow, 0.05)
    await quick
    armed_quick.disarm()
    with pytest.raises(asyncio.CancelledError):
        await slow
    assert not armed_quick.expired and armed_slow.expired
    armed_slow.disarm()


async def test_a_disarmed_attempt_is_not_cancelled_when_its_slot_fires() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_sleeper())
    deadlines.arm(task, 0.02).disarm()
    await wait_until(lambda: not deadlines.timers, timeout=5, message="the slot's timer ran")
    await asyncio.sleep(0)  # a cancel would take effect at the task's next step
    assert not task.done()
    task.cancel()


async def test_attempts_in_one_slot_share_one_timer() -> None:
    """10,000 attempts armed within one slot's width: one slot, one timer."""
    deadlines = Deadlines()
    tasks = [asyncio.create_task(_sleeper()) for _ in range(10_000)]
    timeout = 100.0  # slots of 1 s: arming them all takes well under one
    armed = [deadlines.arm(t, timeout) for t in tasks]
    assert len(deadlines.slots) <= 2  # the run may straddle a slot boundary
    assert deadlines.timers.keys() == deadlines.slots.keys()
    for deadline in armed:
        deadline.disarm()
    assert all(not s for s in deadlines.slots.values())
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_slots_are_a_hundredth_of_the_timeout_and_at_least_10_ms() -> None:
    async def widths() -> list[float]:
        deadlines = Deadlines()
        task = asyncio.create_task(_sleeper())
        for timeout in (300.0, 0.5):
            deadlines.arm(task, timeout).disarm()
        task.cancel()
        return sorted({width for width, _ in deadlines.slots})

    assert asyncio.run(widths()) == [MIN_SLOT, 3.0]


async def test_close_cancels_the_slot_timers_and_forgets_the_attempts() -> None:
    deadlines = Deadlines()
    task = asyncio.create_task(_sleeper())
    deadlines.arm(task, 0.05)
    [timer] = deadlines.timers.values()
    deadlines.close()
    assert timer.cancelled()
    assert not deadlines.slots and not deadlines.timers
    task.cancel()
