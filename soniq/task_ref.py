"""``TaskRef``: enqueue a job by name, typed, without importing the consumer's code."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from soniq.core.registry import check_task_name


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

    def with_default_queue(self, queue: str) -> TaskRef:
        """A copy routed to ``queue`` by default (this ref is frozen and stays as it is).

        Example::

            urgent_invoice = send_invoice.with_default_queue("billing-urgent")
        """
        return dataclasses.replace(self, default_queue=queue)


def task_ref(
    name: str,
    args_model: type[Any] | None = None,
    *,
    default_queue: str | None = None,
    default_priority: int | None = None,
    pattern: str | None = None,
) -> TaskRef:
    """Build a :class:`TaskRef`; ``args_model`` (pydantic) validates ``args=`` at enqueue.

    ``name`` must fully match ``pattern`` (default: dotted lowercase words, the
    ``task_name_pattern`` setting's default), checked here so a typo fails where
    the ref is written: ``InvalidTaskNameError`` (``SONIQ_INVALID_TASK_NAME``).
    ``name=`` and ``args_model=`` may be passed by keyword, as the published
    package requires.
    """
    return TaskRef(check_task_name(name, pattern), args_model, default_queue, default_priority)
