"""Job logs: what a handler logs through ``logging`` is stored with its job.

A worker installs one :class:`JobLogCapture` subscriber. ``on_started`` puts a
buffer in a context variable of the job's own task (copied into the thread of
a sync handler), a ``logging.Handler`` on the root logger appends every record
emitted under that context, and ``on_finished`` hands the buffer to the worker,
which writes it in the same transaction as the job's outcome. Nothing is
written for a job that logged nothing.

Records at or above ``job_log_level`` (default ``INFO``) are kept even when the
root logger's level would drop them for the console: the root level is lowered
while a worker runs and the existing console handlers get a filter that keeps
their old threshold. A logger given its own, higher level still drops them.

Example::

    for record in await app.logs.job_logs(job_id):
        print(record["timestamp"], record["level"], record["message"])
"""

from __future__ import annotations

import contextvars
import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError
from soniq.events import JobLogEntry, Record, Subscriber
from soniq.job import ClaimedJob, Outcome
from soniq.utils import canonical_id

# The lease held by the worker that prunes orphaned job logs (and webhook deliveries).
LOG_PRUNE_ROLE = "observability-prune"

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends import StorageBackend
    from soniq.settings import SoniqSettings

MAX_RECORDS = 1000
SUMMARY_LIMIT = 10_000  # records get_error_summary reads at most
MAX_BYTES = 256 * 1024
TRUNCATED = "truncated: more than {records} records or {kib} KiB were logged; the rest is dropped"

# The capture of the job running in this context (a task, or a sync job's thread).
# Module-level by necessity (one variable for every context), but stateless itself:
# what it holds is per job, and each capture knows the subscriber that owns it.
_CURRENT: contextvars.ContextVar[_Capture | None] = contextvars.ContextVar(
    "soniq_job_log_capture", default=None
)


def parse_level(value: str | int) -> int:
    if isinstance(value, int):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ConfigurationError(
            f"Unknown job_log_level {value!r}; use DEBUG, INFO, WARNING, ERROR or CRITICAL "
            "(SONIQ_JOB_LOG_LEVEL)"
        )
    return level


class _Capture:
    """One job's buffer, with the caps applied as records arrive."""

    __slots__ = ("bytes", "closed", "entries", "job_id", "owner")

    def __init__(self, owner: JobLogCapture, job_id: str) -> None:
        self.owner, self.job_id = owner, job_id
        self.entries: list[JobLogEntry] = []
        self.bytes = 0
        self.closed = False

    def add(self, record: logging.LogRecord) -> None:
        if self.closed:
            return
        message = _message(record)
        if len(self.entries) >= MAX_RECORDS or self.bytes + len(message) > MAX_BYTES:
            self.closed = True
            message = TRUNCATED.format(records=MAX_RECORDS, kib=MAX_BYTES // 1024)
            record = logging.makeLogRecord({"levelno": logging.WARNING, "name": "soniq.logs"})
        self.bytes += len(message)
        self.entries.append(
            JobLogEntry(
                job_id=self.job_id,
                logged_at=datetime.fromtimestamp(record.created, timezone.utc),
                level=record.levelno,
                logger=record.name,
                message=message,
            )
        )


def _message(record: logging.LogRecord) -> str:
    try:
        text = record.getMessage()
    except Exception as exc:  # noqa: BLE001 - a bad format string must not break the job
        text = f"{record.msg!r} (formatting failed: {exc!r})"
    if record.exc_info and record.exc_info[0] is not None:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    return text.replace("\x00", "\\x00")  # PostgreSQL text cannot hold NUL


class _Handler(logging.Handler):
    """Routes records emitted inside a job to that job's capture."""

    def __init__(self, owner: JobLogCapture) -> None:
        super().__init__(level=owner.level)
        self.owner = owner

    def emit(self, record: logging.LogRecord) -> None:
        capture = _CURRENT.get()
        if capture is not None and capture.owner is self.owner:
            capture.add(record)


class _KeepThreshold(logging.Filter):
    """Keeps a console handler at the root level it had before the worker lowered it."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


class JobLogCapture(Subscriber):
    """The worker side: capture per job, hand the records over with the outcome."""

    def __init__(self, level: int) -> None:
        self.level = level
        self._handler: _Handler | None = None
        self._lowered: tuple[int, list[tuple[logging.Handler, _KeepThreshold]]] | None = None

    def on_started(self, job: ClaimedJob) -> Iterable[Record] | None:
        if self._handler is None:
            self.install()
        _CURRENT.set(_Capture(self, job.id))
        return None

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> list[Record]:
        capture = _CURRENT.get()
        _CURRENT.set(None)
        if capture is None or capture.owner is not self:
            return []
        capture.closed = True
        return list(capture.entries)

    async def run(self, backend: StorageBackend, settings: SoniqSettings) -> None:
        """Install the logging handler for the worker's life; prune orphaned logs, one
        worker at a time (a lease): each sweep walks the whole logs table in windows."""
        import asyncio
        import uuid

        from soniq.leases import leading

        owner, interval = str(uuid.uuid4()), settings.cleanup_interval
        self.install()
        try:
            while True:
                await asyncio.sleep(interval)
                try:
                    async with leading(backend, LOG_PRUNE_ROLE, owner, interval * 3) as leader:
                        if leader:
                            await backend.observability_prune()
                except Exception as exc:  # noqa: BLE001 - next sweep retries
                    logging.getLogger("soniq.logs").debug("Pruning job logs failed: %r", exc)
        finally:
            self.uninstall()

    # --- the root logger --------------------------------------------------------
    def install(self) -> None:
        if self._handler is not None:
            return
        root = logging.getLogger()
        self._handler = _Handler(self)
        root.addHandler(self._handler)
        previous = root.getEffectiveLevel()
        if previous > self.level:
            others = [h for h in root.handlers if h is not self._handler]
            filters = [(h, _KeepThreshold(previous)) for h in others]
            for handler, keep in filters:
                handler.addFilter(keep)
            root.setLevel(self.level)
            self._lowered = (previous, filters)

    def uninstall(self) -> None:
        root = logging.getLogger()
        if self._handler is not None:
            root.removeHandler(self._handler)
            self._handler = None
        lowered, self._lowered = self._lowered, None
        if lowered is None:
            return
        heir = next((h.owner for h in root.handlers if isinstance(h, _Handler)), None)
        if heir is not None and heir._lowered is None:
            heir._lowered = lowered  # another instance's worker still captures: it restores
            return
        previous, filters = lowered
        for handler, keep in filters:
            handler.removeFilter(keep)
        if root.level <= self.level:
            root.setLevel(previous)


class JobLogs:
    """``app.logs``: read the records jobs logged.

    Example::

        hits = await app.logs.search_logs("timeout", level="WARNING", hours=6)
    """

    def __init__(self, app: Soniq) -> None:
        self._app = app

    async def job_logs(self, job_id: str) -> list[dict[str, Any]]:
        """Every record of one job, in the order it was logged."""
        canonical = canonical_id(job_id)
        if canonical is None:
            return []
        await self._app.ensure_initialized()
        return [e.to_dict() for e in await self._app.backend.job_logs(canonical)]

    async def search_logs(
        self,
        query: str,
        job_id: str | None = None,
        level: str | int | None = None,
        hours: float = 24,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """Records whose message contains ``query`` (case-insensitive), newest first.

        ``level`` is a minimum (``"WARNING"`` finds warnings and worse).
        """
        if limit < 0 or hours < 0:
            raise ValueError("hours and limit must be 0 or more; pass e.g. hours=24, limit=100")
        canonical = canonical_id(job_id) if job_id is not None else None
        if job_id is not None and canonical is None:
            return []
        await self._app.ensure_initialized()
        since = datetime.now(timezone.utc) - timedelta(hours=hours)
        entries = await self._app.backend.search_logs(
            str(query), job_id=canonical, min_level=parse_level(level or 0), since=since,
            limit=limit,
        )  # fmt: skip
        return [e.to_dict() for e in entries]

    async def get_error_summary(self, hours: float = 24) -> dict[str, Any]:
        """ERROR-and-worse records of the last ``hours`` (the published package's helper):
        ``total``, counts ``by_logger`` and the ten most frequent first lines."""
        records = await self.search_logs("", level="ERROR", hours=hours, limit=SUMMARY_LIMIT)
        lines = Counter(r["message"].splitlines()[0] if r["message"] else "" for r in records)
        return {
            "hours": hours,
            "total": len(records),
            "by_logger": dict(Counter(r["logger"] for r in records)),
            "top_messages": [{"message": m, "count": n} for m, n in lines.most_common(10)],
        }
