"""When a worker claims, and how many jobs: the pacing rule of ``Worker._loop``.

A claim is one round trip and one transaction whatever its size, so the worker wants
few, full claims, without ever leaving a slot idle while jobs wait. The rule:

* **One claim at a time, for every free slot.** While a claim is out, slots that free
  up wait for its answer and go into the next claim together: the claim's own round
  trip is the batching window. Measured alternatives (bench/RESULTS.md, "Worker
  pacing"): two overlapping claims of half the slots each (+7% for one process, -18%
  for four processes on two cores, where eight claims fought over the same rows and
  CPU), and holding a freed slot back for one more round trip to fill bigger claims
  (-20% for 5 ms jobs in one process, for 33% fewer claims).
* **An empty answer is not repeated until something may have changed**: a NOTIFY, an
  outcome written, or ``idle_wait`` (``poll_interval``). A job finishing alone does not
  count. With more worker processes than cores, short answers thus never turn into a
  storm of claims.
* **A wake-up while a claim is out is not lost**: what it announced may have been
  committed after the claim looked, so an empty answer then claims again at once.
* **Claim ahead when jobs are quicker than a claim** (``claims_ahead``): while claims
  come back full and a job runs for less than a claim's round trip, the next claim
  (still one, of at most ``concurrency`` jobs) leaves as soon as the last one answered,
  before its jobs start, so the round trip overlaps their run. Jobs it brings that find
  no free slot wait in the worker, claimed, and start as slots free. Measured
  (bench/RESULTS.md, "Claiming ahead"): +11% to +35% for one process on no-op jobs;
  -9% to -24% in six runs of seven for four processes on two cores, where the cores are
  saturated and four claims in flight skip each other's rows; -7% on SQLite, whose
  claim runs on the worker's own connection thread behind the acks, so only backends
  with ``claim_ahead`` (PostgreSQL) do it. Slower jobs, an emptying queue and drains
  (``run_once``) never claim ahead.

Pure bookkeeping, no I/O: the worker asks ``plan`` what to do and reports back.
"""

from __future__ import annotations

import math


class ClaimPacer:
    """The claiming state of one worker loop (see the module docstring)."""

    def __init__(self) -> None:
        self.in_flight = False  # a claim was sent and its answer is not back yet
        self.pokes = 0  # wake-ups so far (see ``answered``)
        self._idle_until: float | None = None  # after an empty answer
        self._sent = (0.0, 0)  # when the claim out was sent, and for how many jobs
        self._full = False  # the last answer brought every job asked for
        self._claim_time = math.inf  # moving averages, in seconds (inf: none measured
        self._job_time = math.inf  # yet) of a claim's round trip and of a job's run

    def plan(self, free: int, now: float, ahead: int = 0) -> tuple[int, float | None]:
        """``(n, 0.0)``: claim ``n`` jobs now. ``(0, wait)``: wait to be woken, at most
        ``wait`` seconds (``None``: no limit), then ask again. ``ahead``: how many jobs
        the worker could hold ready beyond its free slots (see ``claims_ahead``)."""
        if self.in_flight:
            return 0, None  # the answer wakes the loop
        if ahead > 0 and self.claims_ahead:
            free = min(free + ahead, ahead)  # one claim still takes at most ``ahead``
        if free <= 0:
            return 0, None  # a job finishing wakes the loop
        if self._idle_until is not None:  # the last answer was empty
            if self._idle_until == math.inf:
                return 0, None
            if now < self._idle_until:
                return 0, self._idle_until - now
            self._idle_until = None
        self.in_flight = True
        self._sent = (now, free)
        return free, 0.0

    def answered(self, got: int, now: float, idle_wait: float | None, pokes: int) -> None:
        """The claim sent when ``self.pokes`` was ``pokes`` came back at ``now`` with
        ``got`` jobs. An empty answer makes the loop wait up to ``idle_wait`` (``None``:
        until woken), unless a wake-up came while it was out."""
        self.in_flight = False
        sent_at, asked = self._sent
        self._claim_time = _average(self._claim_time, now - sent_at)
        self._full = got >= asked
        if got == 0 and pokes == self.pokes:
            self._idle_until = math.inf if idle_wait is None else now + idle_wait

    def poke(self) -> None:
        """Something happened that may have made work available: claim when there is room."""
        self.pokes += 1
        self._idle_until = None

    def finished(self, seconds: float) -> None:
        """A job ran for ``seconds`` (its outcome is not written yet)."""
        self._job_time = _average(self._job_time, seconds)

    @property
    def claims_ahead(self) -> bool:
        """Whether the next claim goes out before slots are free: while the queue answers
        full claims and a job runs for less than a claim's round trip. The claim's jobs
        then wait in the worker (at most ``ahead`` of them) and start as slots free,
        instead of every slot waiting for a round trip after each batch."""
        return self._full and self._job_time < self._claim_time


def _average(average: float, newest: float) -> float:
    """An exponential moving average giving the newest measurement a weight of 0.2."""
    return newest if average == math.inf else average + (newest - average) * 0.2
