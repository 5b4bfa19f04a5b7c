"""Testing helpers for your own test suite, and a pytest plugin (``pytest -p soniq.testing``).

Example::

    from soniq import testing

    async def test_signup_sends_welcome(soniq_app):
        @soniq_app.job()
        async def send_welcome(to: str): ...

        await soniq_app.enqueue(send_welcome, to="a@example.com")
        await testing.assert_enqueued(soniq_app, send_welcome, to="a@example.com")
        [outcome] = await testing.drain(soniq_app)
        assert outcome.ok

* ``inline(app)`` runs each job as it is enqueued; ``drain(app)`` runs what is due
  and returns the outcomes; ``assert_enqueued`` / ``assert_not_enqueued`` look at
  the queue.
* The published package's ``make_app``, ``wait_until`` and ``MemoryBackend``.
* Fixtures ``soniq_app`` (memory) and ``soniq_pg_url`` (a fresh PostgreSQL database).
"""

from __future__ import annotations

from soniq.backends.memory import MemoryBackend
from soniq.testing.helpers import (
    InlineRun,
    JobOutcome,
    assert_enqueued,
    assert_not_enqueued,
    drain,
    inline,
    make_app,
    task_name,
    wait_until,
)

try:  # the fixtures need pytest; the helpers do not
    import pytest  # noqa: F401
except ImportError:  # pragma: no cover
    pass
else:
    from soniq.testing.plugin import (  # noqa: F401 - found here by `pytest -p soniq.testing`
        soniq_app,
        soniq_pg_admin_url,
        soniq_pg_template,
        soniq_pg_url,
    )

__all__ = [
    "InlineRun",
    "JobOutcome",
    "MemoryBackend",
    "assert_enqueued",
    "assert_not_enqueued",
    "drain",
    "inline",
    "make_app",
    "task_name",
    "wait_until",
]
