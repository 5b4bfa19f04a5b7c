"""The one seam features plug into: a stream of job lifecycle events.

The enqueue path and the worker emit each event once; webhooks, job logs,
metrics, tracing and signing are *subscribers*. Adding a feature adds a
subscriber, never a branch in the worker loop, and a lifecycle with no
subscriber costs one attribute check per event.

Events, in a job's life:

* ``prepare_enqueue(jobs) -> jobs`` — before the insert; may rewrite the rows
  (tracing stores the trace context, signing seals the arguments).
* ``on_enqueued(jobs)`` — the rows about to be inserted.
* ``on_started(job)`` — in the job's own task, just before the handler runs
  (so a subscriber can set context variables the handler sees).
* ``on_finished(job, outcome, duration)`` — in the same task, once the attempt
  has an outcome.
* ``on_changed(event, job)`` — a change made outside the worker (cancel, replay).

Handlers of ``on_enqueued`` / ``on_started`` / ``on_finished`` may return
*records* (:class:`OutboxEvent`, :class:`JobLogEntry`): the emitter writes them
with the state change the event describes, in the same backend call and
transaction (see docs/observability.md for the exact guarantee).

A subscriber that raises is logged and skipped: a feature never fails or
blocks a job.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from soniq.job import META_KEY as META_KEY  # the metadata key, re-exported for subscribers
from soniq.job import ClaimedJob, NewJob, Outcome
from soniq.serialization import dumps_strict

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends import StorageBackend
    from soniq.settings import SoniqSettings

log = logging.getLogger("soniq.events")
T = TypeVar("T")
S = TypeVar("S", bound="Subscriber")

"""Reserved argument key holding job metadata (trace context, sealed arguments).

The worker strips it before calling the handler, so handlers never see it.
"""

REFRESH_SECONDS = 5.0
"""How often subscribers re-read what they are interested in (e.g. registered webhooks)."""

HOOK_NAMES = ("prepare_enqueue", "on_enqueued", "on_started", "on_finished", "on_changed")


# --- records written with a state change ------------------------------------------


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """A webhook event, fanned out by the backend to every webhook that wants it.

    ``lease`` set: written only if the ack for that claim applied (a late ack
    from a worker that lost the job invents nothing). ``None``: always written.
    """

    event: str
    job_id: str | None  # None: a custom event (``send_webhook``) about no job
    payload_json: str
    lease: str | None = None


@dataclass(frozen=True, slots=True)
class JobLogEntry:
    """One log record emitted while a job ran."""

    job_id: str
    logged_at: datetime
    level: int
    logger: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "timestamp": self.logged_at,
            "level": logging.getLevelName(self.level),
            "logger": self.logger,
            "message": self.message,
        }


Record = OutboxEvent | JobLogEntry


# --- webhook rows (stored through the backend protocol) ---------------------------


@dataclass(frozen=True, slots=True)
class Webhook:
    id: str
    url: str
    events: list[str] | None
    secret: str | None
    allow_private: bool = False
    created_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "url": self.url,
            "events": self.events,
            "has_secret": self.secret is not None,
            "allow_private": self.allow_private,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    id: str
    webhook_id: str
    event: str
    job_id: str | None
    status: str
    attempts: int
    response_code: int | None
    error: str | None
    created_at: datetime | None
    delivered_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "webhook_id": self.webhook_id,
            "event": self.event,
            "job_id": self.job_id,
            "status": self.status,
            "attempts": self.attempts,
            "response_code": self.response_code,
            "error": self.error,
            "created_at": self.created_at,
            "delivered_at": self.delivered_at,
        }


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A delivery a worker holds (``attempts`` already counts this try)."""

    id: str
    webhook_id: str
    event: str
    payload_json: str
    created_at: datetime
    attempts: int
    url: str
    secret: str | None
    allow_private: bool


@dataclass(frozen=True, slots=True)
class DeliveryResult:
    """How one try went: ``status`` is ``delivered``, ``pending`` (retry at ``retry_at``) or
    ``failed``."""

    id: str
    status: str
    response_code: int | None
    error: str | None
    retry_at: datetime | None = None


# --- subscribers ----------------------------------------------------------------


class Subscriber:
    """Base class: override the events you observe; the rest cost nothing.

    ``wants(hook)`` may change over time (no webhook registered → the webhook
    subscriber drops out of ``on_finished``); the bus re-reads it on
    ``refresh``. ``run`` is a side loop for the life of a worker (delivery,
    gauges); it is cancelled when the worker stops.
    """

    def wants(self, hook: str) -> bool:
        """Whether to receive ``hook`` now (only asked for hooks the class overrides)."""
        return True

    async def refresh(self, backend: StorageBackend) -> None:
        """Re-read what this subscriber is interested in (called at most every few seconds)."""

    def prepare_enqueue(self, jobs: list[NewJob]) -> list[NewJob]:
        return jobs

    def on_enqueued(self, jobs: Sequence[NewJob]) -> Iterable[Record] | None:
        return None

    def on_started(self, job: ClaimedJob) -> Iterable[Record] | None:
        return None

    def on_finished(
        self, job: ClaimedJob, outcome: Outcome, duration: float
    ) -> Iterable[Record] | None:
        return None

    def on_changed(self, event: str, job: dict[str, Any]) -> Iterable[Record] | None:
        return None

    async def run(self, backend: StorageBackend, settings: SoniqSettings) -> None:
        """A side loop while a worker runs (override); returns at once by default."""


def _overrides(sub: Subscriber, hook: str) -> bool:
    """True when ``sub``'s class defines ``hook`` itself (not the no-op base method)."""
    return getattr(type(sub), hook, None) is not getattr(Subscriber, hook, None)


class EventBus:
    """The subscribers of one ``Soniq`` instance, pre-sorted per event.

    ``started``/``finished``/... are plain lists of bound methods, rebuilt when
    subscribers change or refresh; emitters check them for emptiness first.
    """

    def __init__(self) -> None:
        self._subs: list[Subscriber] = []
        self.prepare: list[Callable[[list[NewJob]], list[NewJob]]] = []
        self.enqueued: list[Callable[[Sequence[NewJob]], Iterable[Record] | None]] = []
        self.started: list[Callable[[ClaimedJob], Iterable[Record] | None]] = []
        self.finished: list[Callable[[ClaimedJob, Outcome, float], Iterable[Record] | None]] = []
        self.changed: list[Callable[[str, dict[str, Any]], Iterable[Record] | None]] = []
        self._next_refresh = 0.0
        self.unseal: Callable[[str], dict[str, Any]] | None = None

    # --- membership ---------------------------------------------------------
    def subscribe(self, subscriber: S) -> S:
        """Add a subscriber (idempotent). Example: ``app.events.subscribe(MySubscriber())``."""
        if subscriber not in self._subs:
            self._subs.append(subscriber)
            self.rebuild()
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        if subscriber in self._subs:
            self._subs.remove(subscriber)
            self.rebuild()

    @property
    def subscribers(self) -> list[Subscriber]:
        return list(self._subs)

    def find(self, kind: type[Any]) -> Any:
        """The subscriber of class ``kind``, or None."""
        return next((s for s in self._subs if isinstance(s, kind)), None)

    def rebuild(self) -> None:
        """Re-sort bound methods per event from each subscriber's current ``wants``."""

        def bound(hook: str) -> list[Any]:
            out = []
            for sub in self._subs:
                if not _overrides(sub, hook):
                    continue
                try:
                    if sub.wants(hook):
                        out.append(getattr(sub, hook))
                except Exception as exc:  # noqa: BLE001 - a broken subscriber is left out
                    log.warning("Subscriber %r failed in wants(): %r", sub, exc)
            return out

        self.prepare = bound("prepare_enqueue")
        self.enqueued = bound("on_enqueued")
        self.started = bound("on_started")
        self.finished = bound("on_finished")
        self.changed = bound("on_changed")

    async def refresh(self, backend: StorageBackend, *, force: bool = False) -> None:
        """Let subscribers re-read their interest, at most every ``REFRESH_SECONDS``."""
        now = time.monotonic()
        if not force and now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_SECONDS
        for sub in list(self._subs):
            try:
                await sub.refresh(backend)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the last known interest
                log.debug("Subscriber %r could not refresh: %r", sub, exc)
        self.rebuild()

    def invalidate(self) -> None:
        """Make the next ``refresh`` re-read now (after a webhook was registered or removed)."""
        self._next_refresh = 0.0

    # --- emitting -------------------------------------------------------------
    def emit_prepare(self, jobs: list[NewJob]) -> list[NewJob]:
        """Let subscribers rewrite the rows. Unlike the other events, an error here fails
        the enqueue: a half-applied rewrite (arguments left unsealed) must not be stored."""
        for fn in self.prepare:
            jobs = fn(jobs)
        return jobs

    def emit_enqueued(self, jobs: Sequence[NewJob]) -> list[Record]:
        return _collect(self.enqueued, "on_enqueued", jobs)

    def emit_started(self, job: ClaimedJob) -> list[Record]:
        return _collect(self.started, "on_started", job)

    def emit_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> list[Record]:
        return _collect(self.finished, "on_finished", job, outcome, duration)

    def emit_changed(self, event: str, job: dict[str, Any]) -> list[Record]:
        return _collect(self.changed, "on_changed", event, job)

    # --- worker life ------------------------------------------------------------
    async def start_loops(
        self, backend: StorageBackend, settings: SoniqSettings
    ) -> list[asyncio.Task[None]]:
        """Refresh interest now, then start the refresher and each subscriber's side loop;
        the worker cancels them when it stops."""
        await self.refresh(backend, force=True)
        tasks = [asyncio.create_task(self._refresh_loop(backend), name="soniq-events-refresh")]
        tasks += [
            asyncio.create_task(guarded_loop(sub, backend, settings), name=f"soniq-{_name(sub)}")
            for sub in self._subs
            if _overrides(sub, "run")
        ]
        return tasks

    async def _refresh_loop(self, backend: StorageBackend) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh(backend)

    # --- job arguments ------------------------------------------------------------
    def open_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """The handler's arguments: metadata stripped, sealed arguments decrypted."""
        meta = args.get(META_KEY)
        kwargs = {k: v for k, v in args.items() if k != META_KEY}
        if isinstance(meta, dict) and "sealed" in meta:
            if self.unseal is None:
                from soniq.errors import SigningError

                raise SigningError(
                    "this job's arguments are encrypted but no signing key is configured; "
                    "set SONIQ_SIGNING_KEY to the producer's key"
                )
            kwargs.update(self.unseal(str(meta["sealed"])))
        return kwargs


def with_meta(job: NewJob, key: str, value: Any) -> NewJob:
    """``job`` with ``value`` stored under ``__soniq__[key]`` in its arguments."""
    meta = dict(job.args.get(META_KEY) or {})
    meta[key] = value
    args = {**job.args, META_KEY: meta}
    return replace(job, args=args, args_json=dumps_strict(args))


def claimed_snapshot(job: ClaimedJob, status: str, **extra: Any) -> dict[str, Any]:
    """What an event says of a claimed job (webhook payloads, ``on_changed``)."""
    return {
        "id": job.id, "task": job.job_name, "queue": job.queue, "status": status,
        "attempts": job.attempt, "max_attempts": job.max_attempts, "error": None, **extra,
    }  # fmt: skip


def job_meta(args: dict[str, Any]) -> dict[str, Any]:
    meta = args.get(META_KEY)
    return meta if isinstance(meta, dict) else {}


def _collect(fns: Sequence[Callable[..., Any]], hook: str, *event: Any) -> list[Record]:
    records: list[Record] = []
    for fn in fns:
        try:
            out = fn(*event)
            if out:
                records.extend(out)
        except Exception as exc:  # noqa: BLE001 - features never fail a job
            _warn(hook, fn, exc)
    return records


def _warn(hook: str, fn: Any, exc: BaseException) -> None:
    log.warning("Subscriber %s.%s raised %r; ignored", _name(fn), hook, exc)


def _name(obj: Any) -> str:
    owner = getattr(obj, "__self__", obj)
    return type(owner).__name__


async def guarded_loop(sub: Subscriber, backend: StorageBackend, settings: SoniqSettings) -> None:
    """A subscriber's side loop, restarted after a crash: a feature never stops a worker."""
    while True:
        try:
            await sub.run(backend, settings)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001
            log.warning("Subscriber %s loop failed (%r); restarting", _name(sub), exc)
            await asyncio.sleep(max(settings.error_retry_delay, 0.1))


def split_records(
    records: Sequence[Record], held: set[str] | None = None, inserted: set[str] | None = None
) -> tuple[list[JobLogEntry], list[OutboxEvent]]:
    """Logs and outbox events to write, for the backends.

    ``held``: job ids whose ack applied (events with a lease need theirs there).
    ``inserted``: job ids an enqueue really inserted (events of others are dropped).
    """
    logs: list[JobLogEntry] = []
    outbox: list[OutboxEvent] = []
    for r in records:
        if isinstance(r, JobLogEntry):
            logs.append(r)
        elif _applies(r, held, inserted):
            outbox.append(r)
    return logs, outbox


def _applies(event: OutboxEvent, held: set[str] | None, inserted: set[str] | None) -> bool:
    if event.lease is not None and held is not None and event.job_id not in held:
        return False
    return inserted is None or event.job_id in inserted


def needs_lease_check(records: Sequence[Record]) -> bool:
    return any(isinstance(r, OutboxEvent) and r.lease is not None for r in records)


def like_contains(text: str) -> str:
    """A LIKE pattern matching ``text`` anywhere, its wildcards escaped with a backslash."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


# --- wiring for the Soniq facade --------------------------------------------------------


def feature(app: Soniq, name: str, factory: Callable[[], T]) -> T:
    """The app's feature object ``name``, created on first access (one per instance)."""
    features: dict[str, Any] = app._features
    if name not in features:
        features[name] = factory()
    found: T = features[name]
    return found


def install_default_subscribers(app: Soniq) -> dict[str, Any]:
    """The subscribers every instance has; each costs nothing until it has work.

    Webhooks learn from the database whether any endpoint is registered; job
    logs capture only inside a worker (``job_logs`` setting); tracing only once
    an OpenTelemetry tracer provider is configured.
    """
    from soniq.tracing import Tracing, otel_available
    from soniq.webhooks import WebhookOutbox

    features: dict[str, Any] = {"outbox": app.events.subscribe(WebhookOutbox())}
    if app.settings.job_logs:
        from soniq.logs import JobLogCapture, parse_level

        app.events.subscribe(JobLogCapture(parse_level(app.settings.job_log_level)))
    if otel_available():
        app.events.subscribe(Tracing())
    app.events.unseal = lambda token: app.signing.open_args(token)
    return features


async def emit_changes(
    app: Soniq, event: str, jobs: Mapping[str, Mapping[str, Any] | None]
) -> None:
    """Emit ``event`` for changes made outside the worker (cancel, replay) and write the
    records. After the change's own transaction: a crash in between loses the event.
    Never raises: the change itself already happened."""
    bus = app.events
    try:
        await bus.refresh(app.backend)
        if not bus.changed:
            return
        records: list[Record] = []
        for job_id, extra in jobs.items():
            row = await app.backend.get_job(job_id)
            if row is not None:
                snapshot = {
                    "id": row.id, "task": row.job_name, "queue": row.queue, "status": row.status,
                    "attempts": row.attempts, "max_attempts": row.max_attempts,
                    "error": row.last_error, **(extra or {}),
                }  # fmt: skip
                records += bus.emit_changed(event, snapshot)
        if records:
            await app.backend.observe_write(records)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - features never fail the operation
        log.warning("Recording %s events failed: %r", event, exc)
