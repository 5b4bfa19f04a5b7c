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


def _trained(job_seconds: float, claim_seconds: float, got: int, asked: int) -> ClaimPacer:
    """A pacer whose last claim asked for ``asked`` jobs and got ``got``, after a claim
    round trip of ``claim_seconds`` and a job that ran ``job_seconds``."""
    pacer = ClaimPacer()
    assert pacer.plan(free=asked, now=0.0) == (asked, 0.0)
    pacer.answered(got=got, now=claim_seconds, idle_wait=5.0, pokes=pacer.pokes)
    pacer.finished(job_seconds)
    return pacer


def test_fast_jobs_and_full_claims_claim_ahead_of_free_slots() -> None:
    """Jobs that run for less than a claim's round trip: the next claim leaves while
    they run, for at most ``ahead`` jobs beyond the free slots."""
    pacer = _trained(job_seconds=0.0001, claim_seconds=0.002, got=8, asked=8)
    assert pacer.claims_ahead
    assert pacer.plan(free=0, now=0.003, ahead=8) == (8, 0.0)
    assert pacer.plan(free=0, now=0.003, ahead=8) == (0, None)  # still one claim at a time


def test_no_claim_ahead_for_slow_jobs_a_short_answer_or_a_drain() -> None:
    slow = _trained(job_seconds=0.005, claim_seconds=0.002, got=8, asked=8)
    assert not slow.claims_ahead
    assert slow.plan(free=0, now=0.003, ahead=8) == (0, None)
    short = _trained(job_seconds=0.0001, claim_seconds=0.002, got=3, asked=8)  # queue ran dry
    assert not short.claims_ahead
    assert short.plan(free=0, now=0.003, ahead=8) == (0, None)
    fast = _trained(job_seconds=0.0001, claim_seconds=0.002, got=8, asked=8)
    assert fast.plan(free=0, now=0.003, ahead=0) == (0, None)  # the worker allows none


def test_no_claim_ahead_before_a_job_has_run() -> None:
    pacer = ClaimPacer()
    pacer.plan(free=8, now=0.0)
    pacer.answered(got=8, now=0.002, idle_wait=5.0, pokes=pacer.pokes)
    assert not pacer.claims_ahead
    assert pacer.plan(free=0, now=0.003, ahead=8) == (0, None)


def test_claiming_ahead_follows_the_moving_averages() -> None:
    pacer = _trained(job_seconds=0.0001, claim_seconds=0.002, got=8, asked=8)
    for _ in range(20):  # the jobs became slow: the pacer stops claiming ahead
        pacer.finished(0.05)
    assert not pacer.claims_ahead
    for _ in range(20):
        pacer.finished(0.0001)
    assert pacer.claims_ahead
