"""Soniq: background jobs for Python, powered by the PostgreSQL you already have.

Example::

    from soniq import Soniq

    app = Soniq(database_url="postgresql://localhost/myapp")

    @app.job()
    async def send_welcome(to: str) -> None:
        print(f"Sending welcome email to {to}")
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec

from soniq.app import Soniq
from soniq.job import JobContext, JobStatus, Snooze
from soniq.schedules import cron, daily, every, monthly, weekly
from soniq.task_ref import TaskRef, task_ref

try:
    __version__ = version("soniq")
except PackageNotFoundError:  # pragma: no cover - running from a checkout
    __version__ = "0.0.0"

# The published package's flag: can the dashboard run here? Looked up, not imported,
# so `import soniq` stays lean.
DASHBOARD_AVAILABLE: bool = all(find_spec(name) is not None for name in ("starlette", "jinja2"))

__all__ = [
    "DASHBOARD_AVAILABLE",
    "JobContext",
    "JobStatus",
    "Snooze",
    "Soniq",
    "TaskRef",
    "__version__",
    "cron",
    "daily",
    "every",
    "monthly",
    "task_ref",
    "weekly",
]
