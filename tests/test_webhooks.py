"""Webhooks end to end: a real HTTP receiver on 127.0.0.1, real PostgreSQL, real workers.

The receiver checks both header sets and both signatures on every request;
no test sends traffic anywhere but the loopback receiver it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import WebhookError
from soniq.events import Subscriber
from soniq.webhooks import (
    WebhookEvent,
    check_url,
    is_public,
    normalize_events,
    verify_signature,
)
from tests.helpers import FAST_SETTINGS, wait_until

SECRET = "whsec-test"


# --- a real receiver -------------------------------------------------------------------


class Receiver:
    """``ThreadingHTTPServer`` on 127.0.0.1 recording every POST; answers from ``statuses``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.statuses: list[int] = []  # consumed first, then 200
        self.hold = threading.Event()
        self.hold.set()  # cleared: requests wait (a worker killed mid-delivery)
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.requests.append({"headers": dict(self.headers), "body": body})
                receiver.hold.wait(30)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def events(self, job_id: str | None = None) -> list[str]:
        out = []
        for r in self.requests:
            body = json.loads(r["body"])
            if job_id is None or body["job"]["id"] == job_id:
                out.append(body["event"])
        return out

    def bodies(self, event: str) -> list[dict[str, Any]]:
        return [
            json.loads(r["body"]) for r in self.requests if json.loads(r["body"])["event"] == event
        ]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    r.thread.start()
    yield r
    r.hold.set()
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
async def hooked(pg_url: str) -> AsyncIterator[Soniq]:
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)
    app.webhooks.retry_delay = 0.05
    yield app
    await app.close()


@contextlib.asynccontextmanager
async def worker_running(app: Soniq, concurrency: int = 4) -> AsyncIterator[None]:
    await app.ensure_initialized()
    worker = app._make_worker()
    task = asyncio.create_task(worker.run(concurrency=concurrency))
    try:
        yield
    finally:
        worker.stop()
        await asyncio.wait_for(task, 20)


def check_signatures(request: dict[str, Any], secret: str = SECRET) -> None:
    headers, body = request["headers"], request["body"]
    assert headers["X-Webhook-Timestamp"] == headers["X-Soniq-Timestamp"]
    published = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Webhook-Signature"] == published
    assert verify_signature(
        body, headers["X-Soniq-Timestamp"], headers["X-Soniq-Signature"], secret
    )
    assert headers["X-Webhook-Delivery"] == json.loads(body)["delivery_id"]
    assert headers["X-Webhook-Event"] == json.loads(body)["event"]


# --- pure parts --------------------------------------------------------------------------


def test_verify_signature_checks_hmac_and_age() -> None:
    body, ts = b'{"event":"job.completed"}', str(int(time.time()))
    sig = "sha256=" + hmac.new(b"k", f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    assert verify_signature(body, ts, sig, "k")
    assert verify_signature(body.decode(), int(ts), sig.removeprefix("sha256="), "k")
    assert not verify_signature(body + b" ", ts, sig, "k")
    assert not verify_signature(body, ts, sig, "other")
    old = str(int(time.time()) - 301)
    old_sig = "sha256=" + hmac.new(b"k", f"{old}.".encode() + body, hashlib.sha256).hexdigest()
    assert not verify_signature(body, old, old_sig, "k")
    assert verify_signature(body, old, old_sig, "k", tolerance=600)
    assert not verify_signature(body, "yesterday", sig, "k")


def test_event_names_aliases_and_enum() -> None:
    assert normalize_events(None) is None
    assert normalize_events(["job.enqueued", "job.dead_lettered", WebhookEvent.JOB_FAILED]) == [
        "job.dead_letter", "job.failed", "job.queued",
    ]  # fmt: skip
    assert WebhookEvent.JOB_RESURRECTED.value == "job.resurrected"
    assert {e.value for e in WebhookEvent} >= {"job.cancelled", "job.started", "job.retried"}
    with pytest.raises(WebhookError, match="Unknown webhook event"):
        normalize_events(["job.exploded"])


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "::1", "fd00::1",
     "0.0.0.0", "::ffff:127.0.0.1", "224.0.0.1", "100.64.0.1"],
)  # fmt: skip
def test_non_public_addresses(address: str) -> None:
    assert not is_public(address)


async def test_ssrf_guard_refuses_private_targets_unless_allowed() -> None:
    async def resolves_to(addresses: list[str]) -> Any:
        async def resolve(host: str, port: int) -> list[str]:
            return addresses

        return resolve

    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://[::1]/x"):
        with pytest.raises(WebhookError, match="SSRF"):
            await check_url(url, allow_private=False)
    # A public name that resolves to a private address (DNS pointing inside) is refused too.
    inside = await resolves_to(["93.184.216.34", "10.0.0.5"])
    with pytest.raises(WebhookError, match=r"10\.0\.0\.5"):
        await check_url("https://hooks.example.com/x", allow_private=False, resolve=inside)
    await check_url("https://hooks.example.com/x", allow_private=False,
                    resolve=await resolves_to(["93.184.216.34"]))  # fmt: skip
    await check_url("http://127.0.0.1:9/x", allow_private=True)
    for bad in ("ftp://example.com/x", "file:///etc/passwd", "/relative", "http:///nohost"):
        with pytest.raises(WebhookError, match="http"):
            await check_url(bad, allow_private=True)


# --- registration ----------------------------------------------------------------------


async def test_register_list_remove(hooked: Soniq, receiver: Receiver) -> None:
    app = hooked
    with pytest.raises(WebhookError, match="allow_private=True"):
        await app.webhooks.register(receiver.url)
    assert await app.webhooks.list() == []

    hook_id = await app.webhooks.register(
        receiver.url, events=["job.enqueued"], secret=SECRET, allow_private=True
    )
    [listed] = await app.webhooks.list()
    assert listed["id"] == hook_id and listed["events"] == ["job.queued"]
    assert listed["has_secret"] is True and "secret" not in listed
    assert await app.webhooks.unregister(hook_id) is True
    assert await app.webhooks.remove(hook_id) is False
    assert await app.webhooks.remove("not-a-uuid") is False
    assert await app.webhooks.list() == []


async def test_instances_do_not_share_webhook_state(pg_url: str, tmp_path: Path) -> None:
    a = Soniq(database_url=pg_url, **FAST_SETTINGS)
    b = Soniq(database_url=str(tmp_path / "b.db"), **FAST_SETTINGS)
    try:
        await b.setup()
        await a.webhooks.register("http://127.0.0.1:9/a", allow_private=True)
        assert await b.webhooks.list() == []
        assert a.webhooks.outbox is not b.webhooks.outbox
        assert a.webhooks.outbox.wanted and not b.webhooks.outbox.wanted
    finally:
        await a.close()
        await b.close()


# --- delivery ----------------------------------------------------------------------------


async def test_every_event_of_a_successful_job_arrives_signed(
    hooked: Soniq, receiver: Receiver
) -> None:
    app = hooked

    @app.job(name="greet")
    async def greet(name: str) -> str:
        return f"hi {name}"

    hook_id = await app.webhooks.register(receiver.url, secret=SECRET, allow_private=True)
    job_id = await app.enqueue(greet, name="ada")
    async with worker_running(app):
        await wait_until(lambda: "job.completed" in receiver.events(job_id), message="completed")
        await wait_until(
            lambda: _all_delivered(app, hook_id, 3), message="deliveries recorded as delivered"
        )
    # Delivery order is not guaranteed (a batch is sent concurrently): compare as sets.
    assert sorted(receiver.events(job_id)) == ["job.completed", "job.queued", "job.started"]
    for request in receiver.requests:
        check_signatures(request)
    [completed] = receiver.bodies("job.completed")
    assert completed["job"]["id"] == job_id and completed["job"]["task"] == "greet"
    assert completed["job"]["status"] == "done" and completed["job"]["attempts"] == 1
    assert set(completed) == {"event", "delivery_id", "timestamp", "job"}
    deliveries = await app.webhooks.deliveries(hook_id)
    assert {d["event"] for d in deliveries} == {"job.queued", "job.started", "job.completed"}
    d = deliveries[0]
    assert set(d) >= {"id", "webhook_id", "event", "status", "attempts", "response_code", "error",
                      "created_at", "delivered_at"}  # fmt: skip
    assert d["status"] == "delivered" and d["response_code"] == 200 and d["attempts"] == 1


async def _all_delivered(app: Soniq, hook_id: str, n: int) -> bool:
    rows = await app.webhooks.deliveries(hook_id)
    return len(rows) == n and all(r["status"] == "delivered" for r in rows)


async def test_failure_retry_dead_letter_replay_and_cancel_events(
    hooked: Soniq, receiver: Receiver
) -> None:
    app = hooked

    @app.job(retries=1)
    async def flaky() -> None:
        raise RuntimeError("boom")

    @app.job()
    async def later() -> None: ...

    events = ["job.failed", "job.retried", "job.dead_lettered", "job.resurrected", "job.cancelled"]
    await app.webhooks.register(receiver.url, events=events, secret=SECRET, allow_private=True)
    job_id = await app.enqueue(flaky)
    async with worker_running(app):
        await wait_until(lambda: "job.dead_letter" in receiver.events(job_id), message="dead")
        new_id = await app.dead_letter.replay(job_id)
        await wait_until(lambda: "job.resurrected" in receiver.events(new_id), message="replay")
    cancel_id = await app.schedule(later, 3600)
    assert await app.cancel_job(cancel_id)
    async with worker_running(app):  # any worker delivers what the outbox holds
        await wait_until(lambda: receiver.events(cancel_id) == ["job.cancelled"], message="cancel")

    assert sorted(receiver.events(job_id)) == sorted(
        ["job.failed", "job.retried", "job.failed", "job.dead_letter"]
    )
    mine = [b for b in receiver.bodies("job.failed") if b["job"]["id"] == job_id]
    first, second = sorted(mine, key=lambda b: b["job"]["attempts"])
    assert first["job"]["will_retry"] is True and "boom" in first["job"]["error"]
    assert second["job"]["will_retry"] is False and second["job"]["attempts"] == 2
    [resurrected] = [b for b in receiver.bodies("job.resurrected") if b["job"]["id"] == new_id]
    assert resurrected["job"]["replayed_from"] == job_id
    for request in receiver.requests:
        check_signatures(request)


async def test_a_500_is_retried_with_the_same_delivery_id(
    hooked: Soniq, receiver: Receiver
) -> None:
    app = hooked

    @app.job()
    async def noop() -> None: ...

    receiver.statuses = [500, 503]
    hook_id = await app.webhooks.register(
        receiver.url, events=["job.completed"], secret=SECRET, allow_private=True
    )
    job_id = await app.enqueue(noop)
    async with worker_running(app):
        await wait_until(lambda: _all_delivered(app, hook_id, 1), message="delivered after retries")
    assert len(receiver.requests) == 3
    ids = {r["headers"]["X-Webhook-Delivery"] for r in receiver.requests}
    assert len(ids) == 1
    [d] = await app.webhooks.deliveries(hook_id)
    assert d["attempts"] == 3 and d["response_code"] == 200 and d["error"] is None
    assert receiver.events(job_id) == ["job.completed"] * 3


async def test_a_dead_receiver_never_blocks_the_job_and_fails_after_max_attempts(
    hooked: Soniq, receiver: Receiver
) -> None:
    app = hooked
    app.webhooks.max_attempts = 2
    port = receiver.server.server_address[1]
    receiver.server.shutdown()
    receiver.server.server_close()  # nothing listens there any more

    @app.job()
    async def work() -> str:
        return "done anyway"

    hook_id = await app.webhooks.register(f"http://127.0.0.1:{port}/gone", allow_private=True)
    job_id = await app.enqueue(work)
    async with worker_running(app):
        await wait_until(lambda: _status(app, job_id, "done"), message="job done")
        await wait_until(
            lambda: _statuses(app, hook_id, {"failed"}), timeout=15, message="deliveries failed"
        )
    failed = await app.webhooks.deliveries(hook_id)
    assert all(d["attempts"] == 2 and d["response_code"] is None for d in failed)
    assert all("gave up after 2" in d["error"] for d in failed)


async def _status(app: Soniq, job_id: str, status: str) -> bool:
    job = await app.get_job(job_id)
    return job is not None and job["status"] == status


async def _statuses(app: Soniq, hook_id: str, wanted: set[str]) -> bool:
    rows = await app.webhooks.deliveries(hook_id)
    return bool(rows) and {r["status"] for r in rows} <= wanted


async def test_a_raising_subscriber_never_fails_a_job(hooked: Soniq) -> None:
    app = hooked

    class Broken(Subscriber):
        def on_started(self, job: Any) -> None:
            raise RuntimeError("subscriber bug")

        def on_finished(self, job: Any, outcome: Any, duration: float) -> None:
            raise RuntimeError("subscriber bug")

        def on_enqueued(self, jobs: Any) -> None:
            raise RuntimeError("subscriber bug")

    app.events.subscribe(Broken())

    @app.job()
    async def fine() -> int:
        return 7

    job_id = await app.enqueue(fine)
    await app.run_worker(run_once=True)
    assert await app.get_result(job_id) == 7


async def test_records_that_cannot_be_written_never_hold_the_outcome_back(hooked: Soniq) -> None:
    from soniq.events import OutboxEvent

    app = hooked

    class Poison(Subscriber):
        def on_finished(self, job: Any, outcome: Any, duration: float) -> list[OutboxEvent]:
            return [OutboxEvent("job.completed", "not-a-uuid", "{}", None)]

    app.events.subscribe(Poison())

    @app.job()
    async def fine() -> int:
        return 8

    job_id = await app.enqueue(fine)
    await asyncio.wait_for(app.run_worker(run_once=True), 10)
    assert await app.get_result(job_id) == 8


async def test_a_late_ack_invents_no_completion_event(hooked: Soniq, receiver: Receiver) -> None:
    """An outcome whose claim was lost (recovered elsewhere) writes no outbox row."""
    from soniq.job import Ack, Done
    from soniq.webhooks import WebhookOutbox

    app = hooked
    await app.webhooks.register(receiver.url, events=["job.completed"], allow_private=True)

    @app.job()
    async def noop() -> None: ...

    job_id = await app.enqueue(noop)
    [claimed] = await app.backend.claim(None, "00000000-0000-0000-0000-000000000001", 1)
    stale = type(claimed)(**{**_fields(claimed), "lease": "00000000-0000-0000-0000-00000000dead"})
    outbox: WebhookOutbox = app.webhooks.outbox
    records = outbox.on_finished(stale, Done(None), 0.01)
    await app.backend.ack_observed([Ack(stale, Done(None))], records, result_ttl=60)
    assert await app.webhooks.deliveries() == []
    records = outbox.on_finished(claimed, Done(None), 0.01)
    await app.backend.ack_observed([Ack(claimed, Done(None))], records, result_ttl=60)
    [d] = await app.webhooks.deliveries()
    assert d["event"] == "job.completed" and d["job_id"] == job_id


def _fields(obj: Any) -> dict[str, Any]:
    return {f: getattr(obj, f) for f in obj.__dataclass_fields__}


# --- a worker process killed between the state change and the delivery ------------------

JOBS_MODULE = """
from soniq import Soniq

app = Soniq()
app.webhooks.outbox.timeout = 1.0  # the delivery lease is timeout + 5 s

@app.job(name="hooks.noop")
async def noop() -> str:
    return "ok"
"""


async def test_a_sigkilled_worker_mid_delivery_still_delivers(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    (tmp_path / "hook_jobs.py").write_text(JOBS_MODULE)
    env = {**os.environ, "SONIQ_DATABASE_URL": pg_url, "SONIQ_JOBS_MODULES": "hook_jobs",
           "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.getcwd()}",
           "SONIQ_POLL_INTERVAL": "0.2"}  # fmt: skip
    app = Soniq(database_url=pg_url, **FAST_SETTINGS)

    @app.job(name="hooks.noop")
    async def noop() -> str:
        return "ok"

    try:
        hook_id = await app.webhooks.register(
            receiver.url, events=["job.completed"], secret=SECRET, allow_private=True
        )
        job_id = await app.enqueue(noop)
        receiver.hold.clear()  # the first delivery hangs: the worker is mid-delivery
        proc = subprocess.Popen(
            [sys.executable, "-m", "soniq", "worker"], env=env, cwd=tmp_path,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            await wait_until(lambda: len(receiver.requests) == 1, timeout=30, message="1st try")
            assert await _status(app, job_id, "done")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        receiver.hold.set()
        async with worker_running(app):  # another worker: the outbox row is still there
            await wait_until(lambda: _all_delivered(app, hook_id, 1), timeout=30, message="again")
        assert receiver.events(job_id) == ["job.completed", "job.completed"]
        assert len({r["headers"]["X-Webhook-Delivery"] for r in receiver.requests}) == 1
    finally:
        await app.close()


# --- the published package's webhook API -------------------------------------------------


async def test_published_sender_api(hooked: Soniq, receiver: Receiver) -> None:
    """start()/stop() deliver from a process without a worker; send_webhook queues a custom
    event; get_delivery_stats counts; register() accepts the published extra options."""
    from soniq.features.webhooks import WebhookEvent as PublishedEvent

    assert PublishedEvent is WebhookEvent
    app = hooked
    receiver.statuses = [410]  # the first delivery fails for good (a 4xx is not retried)
    hook_id = await app.webhooks.register(
        receiver.url, secret=SECRET, allow_private=True, description="ignored", max_retries=9
    )
    await app.webhooks.send_webhook(WebhookEvent.JOB_COMPLETED, {"job_id": "x", "n": 1})
    await app.webhooks.send_webhook("deploy.finished", {"version": "1.2"}, metadata={"by": "ci"})
    await app.webhooks.start()
    try:
        await wait_until(lambda: _statuses(app, hook_id, {"delivered", "failed"}), message="sent")
    finally:
        await app.webhooks.stop()
    bodies = {json.loads(r["body"])["event"]: json.loads(r["body"]) for r in receiver.requests}
    assert bodies["deploy.finished"]["data"] == {"version": "1.2"}
    assert bodies["deploy.finished"]["metadata"] == {"by": "ci"}
    assert bodies["job.completed"]["data"]["n"] == 1
    for request in receiver.requests:
        check_signatures(request)
    stats = await app.webhooks.get_delivery_stats(hours=1)
    assert stats["total"] == 2 and stats["delivered"] == 1 and stats["failed"] == 1
    assert stats["pending"] == 0 and stats["success_rate"] == 0.5
    assert (await app.webhooks.get_delivery_stats(hours=0))["total"] == 0
