"""``soniq.features.dead_letter``: the published import path of the dead-letter API."""

from soniq.dead_letter import (
    DeadLetterFilter,
    DeadLetterJob,
    DeadLetterReason,
    DeadLetterService,
    DeadLetterStats,
)

__all__ = [
    "DeadLetterFilter",
    "DeadLetterJob",
    "DeadLetterReason",
    "DeadLetterService",
    "DeadLetterStats",
]
