"""The worker's claim pacing rule (soniq/claiming.py), on a simulated clock."""

from __future__ import annotations

import math

from soniq.claiming import FIRST_RTT, MAX_IN_FLIGHT, ClaimPacer


def test_an_idle_worker_claims_every_free_slot_at_once() -> None:
    pacer = ClaimPacer(16)
    assert pacer.plan(free=16, running=0, now=0.0) == (16, 0.0)
    assert pacer.plan(free=16, running=0, now=0.0) == (0, None)  # the answer wakes the loop


def test_a_backlog_overlaps_claims_of_a_share_each() -> None:
    pacer = ClaimPacer(16)
    pacer.plan(free=16, running=0, now=0.0)
    pacer.answered(16, 16, sent=0.0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)  # full: a backlog
    share = math.ceil(16 / MAX_IN_FLIGHT)
    assert pacer.plan(free=16, running=0, now=0.002) == (share, 0.0)
    assert pacer.plan(free=16, running=0, now=0.002) == (16 - share, 0.0)
    assert pacer.in_flight == MAX_IN_FLIGHT
    assert pacer.plan(free=16, running=0, now=0.002) == (0, None)  # never a third


def test_a_short_answer_ends_the_overlap() -> None:
    pacer = ClaimPacer(16)
    pacer.plan(free=16, running=0, now=0.0)
    pacer.answered(16, 3, sent=0.0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert not pacer.backlog
    assert pacer.plan(free=13, running=3, now=0.002) == (0, FIRST_RTT * 0.8 + 0.0002)
    pacer.plan(free=16, running=0, now=0.003)
    assert pacer.plan(free=16, running=0, now=0.003) == (0, None)  # one claim at a time


def test_few_free_slots_wait_one_round_trip_then_are_claimed() -> None:
    pacer = ClaimPacer(64)
    pacer.plan(free=64, running=0, now=0.0)
    pacer.answered(
        64, 64, sent=0.0, now=0.002, idle_wait=5.0, pokes=pacer.pokes
    )  # rtt moves toward 2 ms
    rtt = pacer.rtt
    n, wait = pacer.plan(free=1, running=63, now=1.0)
    assert n == 0 and wait is not None and math.isclose(wait, rtt)
    assert pacer.plan(free=2, running=62, now=1.0 + rtt / 2)[0] == 0  # still lingering
    assert pacer.plan(free=3, running=61, now=1.0 + rtt) == (3, 0.0)  # one rtt since the first


def test_a_batch_worth_of_free_slots_is_claimed_without_lingering() -> None:
    pacer = ClaimPacer(64)
    pacer.plan(free=64, running=0, now=0.0)
    pacer.answered(64, 64, sent=0.0, now=0.002, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=32, running=32, now=1.0) == (32, 0.0)


def test_an_empty_answer_waits_for_a_wake_up_or_the_poll_interval() -> None:
    pacer = ClaimPacer(8)
    pacer.plan(free=8, running=0, now=0.0)
    pacer.answered(8, 0, sent=0.0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=8, running=0, now=1.0) == (0, 4.001)  # no claim storm
    assert pacer.plan(free=8, running=0, now=5.001) == (8, 0.0)  # the poll interval passed
    pacer.answered(8, 0, sent=5.001, now=5.002, idle_wait=5.0, pokes=pacer.pokes)
    pacer.poke()  # NOTIFY: a job was enqueued
    assert pacer.plan(free=8, running=0, now=5.003) == (8, 0.0)


def test_a_drain_waits_for_a_wake_up_without_a_deadline() -> None:
    pacer = ClaimPacer(8)
    pacer.plan(free=8, running=0, now=0.0)
    pacer.answered(8, 0, sent=0.0, now=0.001, idle_wait=None, pokes=pacer.pokes)
    assert pacer.plan(free=8, running=0, now=100.0) == (0, None)
    pacer.poke()
    assert pacer.plan(free=8, running=0, now=100.0) == (8, 0.0)


def test_slots_reserved_by_a_claim_in_flight_are_not_claimed_twice() -> None:
    pacer = ClaimPacer(4)
    assert pacer.plan(free=4, running=0, now=0.0) == (4, 0.0)
    assert pacer.reserved == 4
    pacer.answered(4, 4, sent=0.0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.reserved == 0 and pacer.in_flight == 0


def test_concurrency_one_claims_one_at_a_time() -> None:
    pacer = ClaimPacer(1)
    pacer.plan(free=1, running=0, now=0.0)
    pacer.answered(1, 1, sent=0.0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=0, running=1, now=0.002) == (0, None)
    assert pacer.plan(free=1, running=0, now=0.003) == (1, 0.0)
    assert pacer.plan(free=1, running=0, now=0.003) == (0, None)


def test_a_wake_up_while_a_claim_is_out_is_not_lost() -> None:
    """An outcome written (or a NOTIFY) while the claim was on its way may concern rows
    the claim could not see yet: an empty answer then does not put the worker to sleep."""
    pacer = ClaimPacer(2)
    pacer.plan(free=2, running=0, now=0.0)
    pokes_at_send = pacer.pokes
    pacer.poke()
    pacer.answered(2, 0, sent=0.0, now=0.001, idle_wait=None, pokes=pokes_at_send)
    assert pacer.plan(free=2, running=0, now=0.002) == (2, 0.0)
