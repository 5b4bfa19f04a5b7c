"""``TaskRef``: enqueue a job by name, typed, without importing the consumer's code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class TaskRef:
    """A typed stub for a task that another service implements.

    Example::

        send_invoice = task_ref("billing.send_invoice", InvoiceArgs, default_queue="billing")
        await app.enqueue(send_invoice, args={"order_id": 42})
    """

    name: str
    args_model: type[Any] | None = None
    default_queue: str | None = None
    default_priority: int | None = None


def task_ref(
    name: str,
    args_model: type[Any] | None = None,
    *,
    default_queue: str | None = None,
    default_priority: int | None = None,
) -> TaskRef:
    """Build a :class:`TaskRef`; ``args_model`` (pydantic) validates ``args=`` at enqueue."""
    if not isinstance(name, str) or not name.strip():
        raise TypeError("task_ref(name, ...) needs a non-empty task name string")
    return TaskRef(name, args_model, default_queue, default_priority)
