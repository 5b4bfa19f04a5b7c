"""Retry policies: when (and whether) a failed job runs again.

The worker asks the instance's policy after every failed attempt that still has
attempts left (``max_attempts`` always bounds the total). ``None`` means "give
up now": the job moves to the dead letters at once.

``ExponentialBackoff`` is the default and reads the job's own options
(``retry_delay``, ``retry_backoff``, ``retry_max_delay``, ``retry_jitter``) from
``job_meta``, so a custom policy can handle some cases and defer to it::

    class NoRetryOnValueError:
        def __init__(self) -> None:
            self.default = ExponentialBackoff()

        def delay_for(self, *, attempt, job_meta, exc):
            if "ValueError" in str(exc):
                return None                      # dead-letter at once
            return self.default.delay_for(attempt=attempt, job_meta=job_meta, exc=exc)

    app = Soniq(retry_policy=NoRetryOnValueError())

``exc`` is a ``RuntimeError`` whose text is the failed attempt's rendered
traceback (the original exception object stays in the worker).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from soniq.retry import retry_delay_seconds


@runtime_checkable
class RetryPolicy(Protocol):
    """``delay_for(*, attempt, job_meta, exc) -> seconds | None`` (None: dead-letter now)."""

    def delay_for(
        self, *, attempt: int, job_meta: dict[str, Any], exc: BaseException
    ) -> float | None: ...


class ExponentialBackoff:
    """The job's own retry options: fixed, per-attempt list, or doubling from ``retry_delay``.

    With ``retry_backoff`` and ``retry_jitter=True`` on the job, the delay is drawn
    uniformly from ``[d/2, d]`` after capping, so retries of many jobs that failed
    together spread out. Each policy object has its own random source.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self._random = random.Random(seed)

    def delay_for(
        self, *, attempt: int, job_meta: Mapping[str, Any], exc: BaseException
    ) -> float | None:
        backoff = bool(job_meta.get("retry_backoff", False))
        delay = retry_delay_seconds(
            attempt,
            job_meta.get("retry_delay", 0) or 0,
            backoff,
            job_meta.get("retry_max_delay"),
        )
        if backoff and job_meta.get("retry_jitter") and delay > 0:
            delay = self._random.uniform(delay / 2, delay)
        return delay


__all__ = ["ExponentialBackoff", "RetryPolicy"]
