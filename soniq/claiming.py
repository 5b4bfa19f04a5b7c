"""When a worker claims, and how many jobs: the pacing rule of ``Worker._loop``.

A claim is one round trip and one transaction whatever its size, so the worker wants
few, full claims; but a free slot left empty while jobs wait is lost throughput, and a
job enqueued into an idle worker should start at once. The rule, in order:

* **Idle** (nothing running, nothing being claimed): claim every free slot at once.
* **Backlog** (the last answer was as large as asked): keep the database busy while
  the previous batch runs. Up to ``MAX_IN_FLIGHT`` claims overlap, each asking for
  a share of the slots, so one batch is being claimed while another runs.
* **Few free slots while jobs run**: wait until a batch's worth is free, or until one
  claim round trip has passed since the first slot freed up. Claims are then never
  more frequent than they are slow, whatever the job length: short jobs get batches,
  long jobs lose at most one round trip per slot.
* **Empty answer**: wait for a wake-up (NOTIFY, a job finishing, an outcome written)
  or ``idle_wait``; an empty answer never triggers the next claim by itself. With
  more worker processes than cores this keeps short answers from becoming a storm of
  claims.

Pure bookkeeping, no I/O: the worker asks ``plan`` what to do and reports back.
"""

from __future__ import annotations

import math

# Claims of one worker awaiting their answer at once (backlog only).
MAX_IN_FLIGHT = 2
# Starting estimate of a claim's round trip, before the first one is measured (s).
FIRST_RTT = 0.001


class ClaimPacer:
    """The claiming state of one worker loop (see the module docstring)."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.in_flight = 0  # claims sent, answer not back yet
        self.reserved = 0  # slots those claims asked for
        self.backlog = False  # the last answer was full: more jobs are waiting
        self.rtt = FIRST_RTT  # moving average of a claim's round trip
        self._idle_until: float | None = None  # after an empty answer
        self._free_since: float | None = None  # first free slot while jobs run
        self.pokes = 0  # wake-ups so far (see ``answered``)

    def plan(self, free: int, running: int, now: float) -> tuple[int, float | None]:
        """``(n, 0.0)``: claim ``n`` jobs now. ``(0, wait)``: wait to be woken, at most
        ``wait`` seconds (``None``: no limit), then ask again."""
        avail = free - self.reserved
        if avail <= 0:
            self._free_since = None
            return 0, None
        if self._idle_until is not None:  # the last answer was empty
            if self._idle_until == math.inf:
                return 0, None
            if now < self._idle_until:
                return 0, self._idle_until - now
            self._idle_until = None
        batch = self._batch()
        if self.in_flight:
            if self.in_flight < MAX_IN_FLIGHT and self.backlog and avail >= batch:
                return self._take(batch)
            return 0, None  # the answer wakes the loop
        if not running or avail >= batch:
            return self._take(min(avail, batch))
        if self._free_since is None:
            self._free_since = now
        waited = now - self._free_since
        if waited >= self.rtt:
            return self._take(avail)
        return 0, self.rtt - waited

    def _batch(self) -> int:
        if not self.backlog:
            return self.concurrency
        return max(1, math.ceil(self.concurrency / MAX_IN_FLIGHT))

    def _take(self, n: int) -> tuple[int, float]:
        self.in_flight += 1
        self.reserved += n
        self._free_since = None
        return n, 0.0

    def answered(
        self,
        asked: int,
        got: int,
        sent: float,
        now: float,
        idle_wait: float | None,
        pokes: int,
    ) -> None:
        """A claim sent at ``sent`` (when ``self.pokes`` was ``pokes``) came back at
        ``now`` with ``got`` of ``asked`` jobs. An empty answer makes the loop wait up to
        ``idle_wait`` (``None``: until woken), unless a wake-up came while it was out:
        what that announced may have been committed after the claim looked."""
        self.in_flight -= 1
        self.reserved -= asked
        self.rtt = 0.8 * self.rtt + 0.2 * (now - sent)
        self.backlog = got >= asked
        if got == 0 and pokes == self.pokes:
            self._idle_until = math.inf if idle_wait is None else now + idle_wait

    def poke(self) -> None:
        """Something happened that may have made work available: claim when there is room."""
        self.pokes += 1
        self._idle_until = None
