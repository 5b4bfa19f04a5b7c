"""Outbound webhooks: job lifecycle events POSTed to your endpoints, signed, retried.

How an event travels:

1. The enqueue path and the worker emit lifecycle events (``soniq.events``).
   :class:`WebhookOutbox` turns the ones some endpoint wants into outbox rows,
   which the backend writes in the same transaction as the state change (the
   job row insert, or the ack batch) and fans out to every matching endpoint.
2. Workers claim due outbox rows and POST them with ``httpx``: a 2xx marks the
   delivery ``delivered``; a 5xx, 408, 429, timeout or connection error is
   retried with exponential backoff until ``max_attempts``, then ``failed``;
   any other answer fails at once. A retry keeps the same delivery id.
3. Every try is recorded: ``await app.webhooks.deliveries()``.

Each request carries the published package's headers (``X-Webhook-Event``,
``X-Webhook-Delivery``, ``X-Webhook-Timestamp``, ``X-Webhook-Signature:
sha256=<HMAC of the body>``) and Soniq's replay-resistant pair
(``X-Soniq-Timestamp``, ``X-Soniq-Signature: sha256=<HMAC of "<ts>.<body>">``);
signatures only when the endpoint has a secret. Check ours with
:func:`verify_signature`.

URLs that are not http(s), or whose host resolves to a loopback, private,
link-local or otherwise non-public address, are refused (SSRF), at ``register``
and again before each delivery, unless ``allow_private=True``.
Requires ``pip install soniq[webhooks]`` (``httpx``) on workers.
"""

from __future__ import annotations

import asyncio
import builtins
import enum
import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from soniq.errors import MissingExtraError, WebhookError
from soniq.events import (
    DeliveryResult,
    OutboxEvent,
    PendingDelivery,
    Record,
    Subscriber,
    Webhook,
    claimed_snapshot,
    guarded_loop,
)
from soniq.job import Cancelled, ClaimedJob, Done, Fail, NewJob, Outcome, Retry
from soniq.utils import canonical_id

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends import StorageBackend
    from soniq.settings import SoniqSettings

log = logging.getLogger("soniq.webhooks")

Resolver = Callable[[str, int], Awaitable[list[str]]]


class WebhookEvent(str, enum.Enum):
    """Event names, as the published package spells them (plus ``job.cancelled``)."""

    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_COMPLETED = "job.completed"
    JOB_FAILED = "job.failed"
    JOB_RETRIED = "job.retried"
    JOB_DEAD_LETTER = "job.dead_letter"
    JOB_RESURRECTED = "job.resurrected"
    JOB_CANCELLED = "job.cancelled"

    def __str__(self) -> str:
        return self.value


ALIASES = {"job.enqueued": "job.queued", "job.dead_lettered": "job.dead_letter"}
ALL_EVENTS = frozenset(e.value for e in WebhookEvent)
# job.cancelled is also an outcome: of a running job that cancel_job() stopped.
OUTCOME_EVENTS = frozenset(
    {"job.completed", "job.failed", "job.retried", "job.dead_letter", "job.cancelled"}
)
RETRY_STATUS = frozenset({408, 425, 429})


def normalize_events(events: Iterable[str | WebhookEvent] | None) -> list[str] | None:
    """Canonical event names (aliases resolved, sorted); ``None`` means every event."""
    if events is None:
        return None
    if isinstance(events, str):
        events = [events]
    names: set[str] = set()
    for event in events:
        name = str(event.value if isinstance(event, WebhookEvent) else event).strip()
        name = ALIASES.get(name, name)
        if name not in ALL_EVENTS:
            raise WebhookError(
                f"Unknown webhook event {name!r}; use one of {', '.join(sorted(ALL_EVENTS))} "
                "(or the aliases job.enqueued, job.dead_lettered), or events=None for all"
            )
        names.add(name)
    if not names:
        raise WebhookError("events= is empty; pass None for every event, or a list of names")
    return sorted(names)


# --- SSRF guard ---------------------------------------------------------------------


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the same lookup the HTTP client will make)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(address: str) -> bool:
    """False for loopback, private, link-local, multicast, reserved and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def check_url(url: str, *, allow_private: bool, resolve: Resolver = system_resolver) -> None:
    """Refuse a URL that is not http(s), or (unless ``allow_private``) not public."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(
            f"Webhook URL {url!r} must be an absolute http:// or https:// URL with a host"
        )
    if allow_private:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await resolve(parts.hostname, port)
    except OSError as exc:
        raise WebhookError(
            f"Cannot resolve the webhook host {parts.hostname!r} ({exc}); check the URL"
        ) from None
    private = [a for a in addresses if not is_public(a)]
    if private or not addresses:
        raise WebhookError(
            f"Webhook URL {url!r} resolves to a non-public address ({', '.join(private)}); "
            "refused to prevent SSRF. Pass allow_private=True if this target is intended"
        )


# --- signatures -------------------------------------------------------------------------


def _hmac_hex(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode(), data, hashlib.sha256).hexdigest()


def signature_headers(
    body: bytes, secret: str | None, event: str, delivery_id: str
) -> dict[str, str]:
    """Both header sets for one request (signatures only with a secret)."""
    ts = str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "soniq-webhooks",
        "X-Webhook-Event": event,
        "X-Webhook-Delivery": delivery_id,
        "X-Webhook-Timestamp": ts,
        "X-Soniq-Timestamp": ts,
    }
    if secret:
        headers["X-Webhook-Signature"] = "sha256=" + _hmac_hex(secret, body)
        headers["X-Soniq-Signature"] = "sha256=" + _hmac_hex(secret, ts.encode() + b"." + body)
    return headers


def verify_signature(
    body: bytes | str,
    timestamp: str | int,
    signature: str,
    secret: str,
    tolerance: float = 300,
) -> bool:
    """Check an ``X-Soniq-Signature`` in a receiver.

    True when ``signature`` (``sha256=<hex>`` or bare hex) is the HMAC-SHA256 of
    ``"<timestamp>.<body>"`` under ``secret`` and the timestamp is within
    ``tolerance`` seconds of now (so a captured request cannot be replayed later).

    Example::

        ok = verify_signature(await request.body(), request.headers["X-Soniq-Timestamp"],
                              request.headers["X-Soniq-Signature"], secret)
    """
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    if tolerance is not None and abs(time.time() - ts) > tolerance:
        return False
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = _hmac_hex(secret, str(ts).encode() + b"." + raw)
    given = str(signature).strip().removeprefix("sha256=")
    return hmac.compare_digest(expected, given)


# --- events -> outbox rows ----------------------------------------------------------------


def _payload(job: dict[str, Any]) -> str:
    return json.dumps({"timestamp": int(time.time()), "job": job}, default=str)


def _event(event: str, job: dict[str, Any], lease: str | None = None) -> OutboxEvent:
    return OutboxEvent(event=event, job_id=str(job["id"]), payload_json=_payload(job), lease=lease)


class WebhookOutbox(Subscriber):
    """Turns lifecycle events into outbox rows, and delivers them while a worker runs."""

    def __init__(self) -> None:
        self.wanted: frozenset[str] = frozenset()
        self.max_attempts = 5
        self.retry_delay = 2.0
        self.max_retry_delay = 3600.0
        self.timeout = 10.0
        self.batch_size = 20
        self.resolve: Resolver = system_resolver

    # --- interest -----------------------------------------------------------
    async def refresh(self, backend: StorageBackend) -> None:
        wanted: set[str] = set()
        for hook in await backend.webhook_list():
            wanted |= set(hook.events) if hook.events is not None else ALL_EVENTS
        self.wanted = frozenset(wanted)

    def wants(self, hook: str) -> bool:
        wanted = self.wanted
        if hook == "on_enqueued":
            return "job.queued" in wanted
        if hook == "on_started":
            return "job.started" in wanted
        if hook == "on_finished":
            return not wanted.isdisjoint(OUTCOME_EVENTS)
        if hook == "on_changed":
            return "job.cancelled" in wanted or "job.resurrected" in wanted
        return True

    # --- events ----------------------------------------------------------------
    def on_enqueued(self, jobs: Sequence[NewJob]) -> list[Record]:
        return [
            _event("job.queued", {
                "id": j.id, "task": j.job_name, "queue": j.queue, "status": "queued",
                "attempts": 0, "max_attempts": j.max_attempts, "error": None,
                "scheduled_at": j.scheduled_at.isoformat() if j.scheduled_at else None,
            })
            for j in jobs
        ]  # fmt: skip

    def on_started(self, job: ClaimedJob) -> list[Record]:
        return [_event("job.started", claimed_snapshot(job, "processing"))]

    def on_finished(self, job: ClaimedJob, outcome: Outcome, duration: float) -> list[Record]:
        held, wanted = job.lease, self.wanted
        if isinstance(outcome, Done):
            if "job.completed" not in wanted:  # the common case of failure-only webhooks
                return []
            done = claimed_snapshot(job, "done", duration_ms=round(duration * 1000, 3))
            return self._only([_event("job.completed", done, held)])
        if isinstance(outcome, Retry):
            retry_at = outcome.run_at.isoformat()
            info = claimed_snapshot(
                job, "queued", error=outcome.error, will_retry=True, retry_at=retry_at
            )
            return self._only([_event("job.failed", info, held), _event("job.retried", info, held)])
        if isinstance(outcome, Fail):
            info = claimed_snapshot(job, "dead_letter", error=outcome.error, will_retry=False)
            failed = _event("job.failed", info, held)
            return self._only([failed, _event("job.dead_letter", info, held)])
        if isinstance(outcome, Cancelled):  # cancel_job() of a running job (soniq/flow.py)
            info = claimed_snapshot(job, "cancelled", error=outcome.error, will_retry=False)
            return self._only([_event("job.cancelled", info, held)])
        return []

    def on_changed(self, event: str, job: dict[str, Any]) -> list[Record]:
        return self._only([_event(event, job)])

    def _only(self, events: list[OutboxEvent]) -> list[Record]:
        return [e for e in events if e.event in self.wanted]

    # --- delivery ------------------------------------------------------------------
    async def run(self, backend: StorageBackend, settings: SoniqSettings) -> None:
        """Deliver due outbox rows while the worker runs (idle, and no HTTP client, while
        no webhook is registered)."""
        interval = min(settings.poll_interval, 1.0)
        client: Any = None
        try:
            while True:
                sent = 0
                if self.wanted:
                    client = client or _httpx().AsyncClient(
                        timeout=self.timeout, follow_redirects=False
                    )
                    sent = await self.dispatch(backend, client)
                if not sent:
                    await asyncio.sleep(interval)
        finally:
            if client is not None:
                await client.aclose()

    async def dispatch(self, backend: StorageBackend, client: Any) -> int:
        """Deliver one batch of due rows; returns how many were tried."""
        batch = await backend.webhook_claim(self.batch_size, self.timeout + 5.0)
        if not batch:
            return 0
        results = await asyncio.gather(*(self.deliver(client, d) for d in batch))
        await backend.webhook_settle(results)
        return len(batch)

    async def deliver(self, client: Any, d: PendingDelivery) -> DeliveryResult:
        """One POST; never raises (every outcome becomes a recorded result)."""
        try:
            await check_url(d.url, allow_private=d.allow_private, resolve=self.resolve)
        except WebhookError as exc:
            return DeliveryResult(d.id, "failed", None, str(exc))
        body = _body(d)
        headers = signature_headers(body, d.secret, d.event, d.id)
        try:
            response = await client.post(d.url, content=body, headers=headers)
        except Exception as exc:  # noqa: BLE001 - timeouts, refused connections, TLS...
            return self._retry_or_fail(d, None, f"{type(exc).__name__}: {exc}")
        code = int(response.status_code)
        if 200 <= code < 300:
            return DeliveryResult(d.id, "delivered", code, None)
        if code >= 500 or code in RETRY_STATUS:
            return self._retry_or_fail(d, code, f"HTTP {code}")
        return DeliveryResult(d.id, "failed", code, f"HTTP {code} (not retried)")

    def _retry_or_fail(self, d: PendingDelivery, code: int | None, error: str) -> DeliveryResult:
        if d.attempts >= self.max_attempts:
            return DeliveryResult(d.id, "failed", code, f"{error}; gave up after {d.attempts}")
        delay = min(self.retry_delay * 2 ** (d.attempts - 1), self.max_retry_delay)
        retry_at = datetime.now(timezone.utc) + timedelta(seconds=delay)
        return DeliveryResult(d.id, "pending", code, error, retry_at)


def _body(d: PendingDelivery) -> bytes:
    stored = json.loads(d.payload_json)
    body = {
        "event": d.event, "delivery_id": d.id, "timestamp": stored.get("timestamp"),
        "job": stored.get("job"),
    }  # fmt: skip
    for key in ("data", "metadata"):  # send_webhook's custom events
        if key in stored:
            body[key] = stored[key]
    return json.dumps(body, separators=(",", ":"), default=str).encode()


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:  # pragma: no cover - exercised without the extra only
        raise MissingExtraError(
            "Delivering webhooks needs the 'httpx' package; install it with "
            "`pip install soniq[webhooks]`"
        ) from None
    return httpx


class Webhooks:
    """``app.webhooks``: register endpoints and read what was delivered.

    Example::

        hook_id = await app.webhooks.register(
            "https://example.com/hooks/soniq", events=["job.failed"], secret="s3cret"
        )
        for d in await app.webhooks.deliveries(hook_id):
            print(d["event"], d["status"], d["response_code"])
    """

    def __init__(self, app: Soniq, outbox: WebhookOutbox) -> None:
        self._app = app
        self.outbox = outbox
        self._sender: asyncio.Task[None] | None = None

    # Delivery tuning, read by the workers of this instance.
    @property
    def max_attempts(self) -> int:
        return self.outbox.max_attempts

    @max_attempts.setter
    def max_attempts(self, value: int) -> None:
        self.outbox.max_attempts = int(value)

    @property
    def retry_delay(self) -> float:
        return self.outbox.retry_delay

    @retry_delay.setter
    def retry_delay(self, value: float) -> None:
        self.outbox.retry_delay = float(value)

    async def register(
        self,
        url: str,
        events: Iterable[str | WebhookEvent] | None = None,
        secret: str | None = None,
        *,
        allow_private: bool = False,
        **extra: Any,
    ) -> str:
        """Register an endpoint for ``events`` (None = all); returns its id.

        ``**extra`` accepts the published package's other options, which have no
        effect here (delivery tuning is per instance: ``max_attempts``, ``retry_delay``).
        """
        if extra:
            log.warning("Webhook options %s have no effect in Soniq; ignored", sorted(extra))
        names = normalize_events(events)
        await check_url(url, allow_private=allow_private, resolve=self.outbox.resolve)
        await self._app.ensure_initialized()
        hook = Webhook(str(uuid.uuid4()), url, names, secret or None, bool(allow_private))
        stored = await self._app.backend.webhook_add(hook)
        await self._refresh()
        return stored.id

    async def list(self) -> list[dict[str, Any]]:
        """Registered endpoints (secrets are never returned, only ``has_secret``)."""
        await self._app.ensure_initialized()
        return [h.to_dict() for h in await self._app.backend.webhook_list()]

    async def remove(self, webhook_id: str) -> bool:
        """Delete an endpoint and its delivery history; ``False`` if unknown."""
        canonical = canonical_id(webhook_id)
        if canonical is None:
            return False
        await self._app.ensure_initialized()
        removed = await self._app.backend.webhook_remove(canonical)
        await self._refresh()
        return removed

    unregister = remove

    async def deliveries(
        self, webhook_id: str | None = None, limit: int = 100
    ) -> builtins.list[dict[str, Any]]:
        """Deliveries newest first (status ``pending``, ``delivered`` or ``failed``)."""
        canonical = canonical_id(webhook_id) if webhook_id is not None else None
        if webhook_id is not None and canonical is None:
            return []
        await self._app.ensure_initialized()
        rows = await self._app.backend.webhook_deliveries(canonical, max(int(limit), 0))
        return [d.to_dict() for d in rows]

    async def deliver_pending(self) -> int:
        """Deliver what is due now from this process (workers do this continuously)."""
        await self._app.ensure_initialized()
        httpx = _httpx()
        total = 0
        async with httpx.AsyncClient(timeout=self.outbox.timeout) as client:
            while sent := await self.outbox.dispatch(self._app.backend, client):
                total += sent
        return total

    # --- the published package's sender API ------------------------------------------
    async def start(self) -> None:
        """Also deliver from this process (workers always do); for processes without one."""
        if self._sender is None or self._sender.done():
            await self._app.ensure_initialized()
            await self._refresh()
            loop = guarded_loop(self.outbox, self._app.backend, self._app.settings)
            self._sender = asyncio.create_task(loop, name="soniq-webhooks")

    async def stop(self) -> None:
        """Stop delivering from this process (what is queued stays for the workers)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)

    async def send_webhook(
        self,
        event: str | WebhookEvent,
        data: dict[str, Any],
        metadata: dict[str, Any] | None = None,
    ) -> None:
        """Queue a custom event for every endpoint that wants ``event`` (outbox, retried).

        The body carries ``data`` and ``metadata`` next to the usual keys; ``job`` is
        ``data["job"]`` when given. Unlike the published package, it is never dropped for
        want of ``start()``: any worker delivers it.
        """
        name = str(event.value if isinstance(event, WebhookEvent) else event)
        name = ALIASES.get(name, name)
        payload = {
            "timestamp": int(time.time()), "job": data.get("job"), "data": data,
            "metadata": metadata,
        }  # fmt: skip
        job_id = canonical_id(data.get("job_id") or (data.get("job") or {}).get("id"))
        record = OutboxEvent(name, job_id, json.dumps(payload, default=str))
        await self._app.ensure_initialized()
        await self._app.backend.observe_write([record])

    async def get_delivery_stats(self, hours: float = 24) -> dict[str, Any]:
        """Deliveries created in the last ``hours``: counts per status and the success rate."""
        await self._app.ensure_initialized()
        since = datetime.now(timezone.utc) - timedelta(hours=hours)
        counts = await self._app.backend.webhook_delivery_counts(since)
        stats: dict[str, Any] = {s: counts.get(s, 0) for s in ("pending", "delivered", "failed")}
        stats["total"] = sum(counts.values())
        settled = stats["delivered"] + stats["failed"]
        stats["success_rate"] = stats["delivered"] / settled if settled else None
        return stats

    async def _refresh(self) -> None:
        await self._app.events.refresh(self._app.backend, force=True)
