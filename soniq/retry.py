"""When to run a failed job again. Pure: attempt number and options in, delay out."""

from __future__ import annotations

from collections.abc import Sequence


def retry_delay_seconds(
    attempt: int,
    retry_delay: float | Sequence[float],
    retry_backoff: bool,
    retry_max_delay: float | None,
) -> float:
    """Delay before retry number ``attempt`` (the attempt that just failed, from 1).

    A list gives per-attempt delays (its last entry repeats); backoff doubles the
    delay per attempt, from 1 s when ``retry_delay`` is 0 (1, 2, 4, 8 ... as the
    tutorial shows: doubling nothing would be no backoff at all); ``retry_max_delay``
    caps the result.
    """
    n = max(attempt, 1)
    if isinstance(retry_delay, (int, float)):
        base = float(retry_delay) or (1.0 if retry_backoff else 0.0)
    else:
        base = float(retry_delay[min(n, len(retry_delay)) - 1]) if retry_delay else 0.0
    delay = base * (2 ** (n - 1)) if retry_backoff else base
    if retry_max_delay is not None:
        delay = min(delay, float(retry_max_delay))
    return max(delay, 0.0)
