"""The worker's claim pacing rule (soniq/claiming.py), on a simulated clock."""

from __future__ import annotations

from soniq.claiming import ClaimPacer


def test_every_free_slot_is_claimed_at_once() -> None:
    assert ClaimPacer().plan(free=16, now=0.0) == (16, 0.0)


def test_one_claim_at_a_time() -> None:
    pacer = ClaimPacer()
    pacer.plan(free=16, now=0.0)
    assert pacer.plan(free=16, now=0.0) == (0, None)  # the answer wakes the loop
    pacer.answered(got=16, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=16, now=0.002) == (16, 0.0)


def test_no_free_slot_waits_for_a_job_to_finish() -> None:
    assert ClaimPacer().plan(free=0, now=0.0) == (0, None)


def test_an_empty_answer_waits_for_a_wake_up_or_the_poll_interval() -> None:
    pacer = ClaimPacer()
    pacer.plan(free=8, now=0.0)
    pacer.answered(got=0, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=8, now=1.0) == (0, 4.001)  # no claim storm
    assert pacer.plan(free=8, now=5.001) == (8, 0.0)  # the poll interval passed
    pacer.answered(got=0, now=5.002, idle_wait=5.0, pokes=pacer.pokes)
    pacer.poke()  # NOTIFY: a job was enqueued
    assert pacer.plan(free=8, now=5.003) == (8, 0.0)


def test_a_drain_waits_for_a_wake_up_without_a_deadline() -> None:
    pacer = ClaimPacer()
    pacer.plan(free=8, now=0.0)
    pacer.answered(got=0, now=0.001, idle_wait=None, pokes=pacer.pokes)
    assert pacer.plan(free=8, now=100.0) == (0, None)
    pacer.poke()
    assert pacer.plan(free=8, now=100.0) == (8, 0.0)


def test_a_wake_up_while_a_claim_is_out_is_not_lost() -> None:
    """An outcome written (or a NOTIFY) while the claim was on its way may concern rows
    the claim could not see yet: an empty answer then does not put the worker to sleep."""
    pacer = ClaimPacer()
    pacer.plan(free=2, now=0.0)
    pokes_at_send = pacer.pokes
    pacer.poke()
    pacer.answered(got=0, now=0.001, idle_wait=None, pokes=pokes_at_send)
    assert pacer.plan(free=2, now=0.002) == (2, 0.0)


def test_a_short_answer_claims_again_when_slots_free_up() -> None:
    pacer = ClaimPacer()
    pacer.plan(free=8, now=0.0)
    pacer.answered(got=3, now=0.001, idle_wait=5.0, pokes=pacer.pokes)
    assert pacer.plan(free=5, now=0.002) == (5, 0.0)
