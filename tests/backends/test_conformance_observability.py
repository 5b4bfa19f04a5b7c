"""The observability verbs, once, for PostgreSQL, SQLite and memory.

Webhook endpoints and the delivery outbox (fan-out, lease guard, claim and
settle), job logs (write with the outcome, read, search, prune) and the queue
age gauge behave identically on every backend; each test runs three times
through the shared ``soniq_app`` fixture (tests/backend_apps.py).
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from datetime import datetime, timedelta, timezone

from soniq import Soniq
from soniq.events import DeliveryResult, JobLogEntry, OutboxEvent, Webhook
from soniq.job import Ack, ClaimedJob, Done, Fail

# The app-on-each-backend fixtures (soniq_app, app_factory) come from tests/backend_apps.py.
from tests.backends.test_conformance import claim_one, wid, worker_info

UTC = timezone.utc


def hook(events: list[str] | None = None, url: str = "http://127.0.0.1:9/h") -> Webhook:
    return Webhook(str(uuid.uuid4()), url, events, "s3cret", True)


def event(name: str, job_id: str, lease: str | None = None) -> OutboxEvent:
    return OutboxEvent(name, job_id, json.dumps({"job": {"id": job_id}}), lease)


def log(job_id: str, message: str, level: int = 20, at: datetime | None = None) -> JobLogEntry:
    return JobLogEntry(job_id, at or datetime.now(UTC), level, "tests.conf", message)


def register(app: Soniq) -> None:
    @app.job(name="obs.noop")
    async def noop(n: int = 0) -> None: ...


async def test_webhook_rows_round_trip(soniq_app: Soniq) -> None:
    b = soniq_app.backend
    all_events = await b.webhook_add(hook(None))
    some = await b.webhook_add(hook(["job.completed", "job.failed"], "https://x.example/h"))
    assert some.events == ["job.completed", "job.failed"] and some.allow_private is True
    assert some.secret == "s3cret" and some.created_at is not None
    assert all_events.created_at is not None and all_events.created_at.tzinfo is not None
    assert all_events.events is None
    assert [h.id for h in await b.webhook_list()] == [all_events.id, some.id]
    assert await b.webhook_remove(some.id) is True
    assert await b.webhook_remove(some.id) is False
    assert [h.id for h in await b.webhook_list()] == [all_events.id]


async def test_outbox_fans_out_to_matching_webhooks_with_the_enqueue(soniq_app: Soniq) -> None:
    app, b = soniq_app, soniq_app.backend
    register(app)
    every = await b.webhook_add(hook(None))
    failures = await b.webhook_add(hook(["job.failed"]))
    job = app.build_job("obs.noop", args={"n": 1}, unique=True)
    ids = await b.enqueue_observed([job], [event("job.queued", job.id)])
    assert ids == [job.id]
    [d] = await b.webhook_deliveries(None, 10)
    assert (d.webhook_id, d.event, d.job_id, d.status, d.attempts) == (
        every.id, "job.queued", job.id, "pending", 0,
    )  # fmt: skip
    assert await b.webhook_deliveries(failures.id, 10) == []
    # A duplicate (dedup) inserts no job, so it invents no event.
    dup = app.build_job("obs.noop", args={"n": 1}, unique=True)
    assert await b.enqueue_observed([dup], [event("job.queued", dup.id)]) == [job.id]
    assert len(await b.webhook_deliveries(None, 10)) == 1


async def test_outcome_events_need_the_ack_to_apply(soniq_app: Soniq) -> None:
    app, b = soniq_app, soniq_app.backend
    register(app)
    await b.webhook_add(hook(None))
    [job_id] = await app.backend.enqueue([app.build_job("obs.noop")])
    await b.register_worker(worker_info(worker := wid()))
    claimed = await claim_one(app, worker)
    stale = Ack(_with_lease(claimed, str(uuid.uuid4())), Done(None))
    logs = [log(job_id, "kept even when the ack is late")]
    await b.ack_observed(
        [stale], [event("job.completed", job_id, stale.job.lease), *logs], result_ttl=60
    )
    assert await b.webhook_deliveries(None, 10) == []
    assert [e.message for e in await b.job_logs(job_id)] == ["kept even when the ack is late"]
    ack = Ack(claimed, Fail("boom", None))
    events = [event("job.failed", job_id, claimed.lease), event("job.started", job_id)]
    await b.ack_observed([ack], events, result_ttl=60)
    assert sorted(d.event for d in await b.webhook_deliveries(None, 10)) == [
        "job.failed", "job.started",
    ]  # fmt: skip
    dead = await app.get_job(job_id)
    assert dead is not None and dead["status"] == "dead_letter"
    await b.ack_observed([], [event("job.started", job_id)], result_ttl=60)  # records only
    assert len(await b.webhook_deliveries(None, 10)) == 3


def _with_lease(claimed: ClaimedJob, lease: str) -> ClaimedJob:
    return dataclasses.replace(claimed, lease=lease)


async def test_deliveries_are_claimed_once_and_settled(soniq_app: Soniq) -> None:
    b = soniq_app.backend
    target = await b.webhook_add(hook(None))
    job_ids = [str(uuid.uuid4()) for _ in range(3)]
    await b.observe_write([event("job.cancelled", j) for j in job_ids])
    first = await b.webhook_claim(2, 30.0)
    second = await b.webhook_claim(10, 30.0)
    assert len(first) == 2 and len(second) == 1
    assert not {d.id for d in first} & {d.id for d in second}
    assert await b.webhook_claim(10, 30.0) == []  # all leased
    d = first[0]
    assert (d.webhook_id, d.url, d.secret, d.allow_private, d.attempts) == (
        target.id, target.url, "s3cret", True, 1,
    )  # fmt: skip
    assert d.created_at.tzinfo is not None and '"job"' in d.payload_json
    soon = datetime.now(UTC) - timedelta(seconds=1)
    await b.webhook_settle([
        DeliveryResult(first[0].id, "delivered", 200, None),
        DeliveryResult(first[1].id, "pending", 503, "HTTP 503", soon),
        DeliveryResult(second[0].id, "failed", 410, "HTTP 410 (not retried)"),
    ])  # fmt: skip
    rows = {r.id: r for r in await b.webhook_deliveries(target.id, 10)}
    assert rows[first[0].id].status == "delivered" and rows[first[0].id].delivered_at
    assert rows[first[1].id].status == "pending" and rows[first[1].id].response_code == 503
    assert rows[second[0].id].error == "HTTP 410 (not retried)"
    [again] = await b.webhook_claim(10, 30.0)  # the retry is due again, same delivery
    assert again.id == first[1].id and again.attempts == 2
    assert len(await b.webhook_deliveries(target.id, 1)) == 1
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    assert await b.webhook_delivery_counts(hour_ago) == {"delivered": 1, "pending": 1, "failed": 1}
    assert await b.webhook_delivery_counts(datetime.now(UTC) + timedelta(hours=1)) == {}
    await b.webhook_remove(target.id)
    assert await b.webhook_deliveries(None, 10) == []  # deliveries go with their endpoint


async def test_job_logs_read_search_and_prune(soniq_app: Soniq) -> None:
    app, b = soniq_app, soniq_app.backend
    register(app)
    [job_id] = await b.enqueue([app.build_job("obs.noop")])
    gone = str(uuid.uuid4())
    now = datetime.now(UTC)
    t0, t1, t2 = now - timedelta(hours=2), now - timedelta(minutes=10), now - timedelta(minutes=5)
    await b.observe_write([
        log(job_id, "Connecting to DB", 20, t0), log(job_id, "retry 50%_done", 30, t0),
        log(job_id, "connection LOST", 40, t1), log(gone, "orphan connection", 40, t2),
    ])  # fmt: skip
    assert [e.message for e in await b.job_logs(job_id)] == [
        "Connecting to DB", "retry 50%_done", "connection LOST",
    ]  # fmt: skip

    async def search(
        text: str, since: datetime, job: str | None = None, level: int = 0
    ) -> list[str]:
        found = await b.search_logs(text, job_id=job, min_level=level, since=since, limit=10)
        return [e.message for e in found]

    day, hour = now - timedelta(days=1), now - timedelta(hours=1)
    all_time = t0 - timedelta(seconds=1)
    assert await search("connect", day) == [
        "orphan connection",
        "connection LOST",
        "Connecting to DB",
    ]  # fmt: skip  - newest first, case-insensitive
    assert await search("connect", hour, job_id) == ["connection LOST"]
    assert await search("", all_time, job_id, level=30) == ["connection LOST", "retry 50%_done"]
    assert await search("50%_", all_time) == ["retry 50%_done"]  # wildcards are literal
    assert await search("0%_d0", all_time) == []
    limited = await b.search_logs("", job_id=None, min_level=0, since=all_time, limit=2)
    assert len(limited) == 2
    entry = (await b.job_logs(job_id))[0]
    assert entry.logged_at.tzinfo is not None and entry.logger == "tests.conf"
    assert abs((entry.logged_at - t0).total_seconds()) < 0.001
    assert await b.observability_prune() == 1
    assert await b.job_logs(gone) == [] and len(await b.job_logs(job_id)) == 3


async def test_queue_oldest_age(soniq_app: Soniq) -> None:
    app, b = soniq_app, soniq_app.backend
    register(app)
    assert await b.queue_oldest() == {}
    past = datetime.now(UTC) - timedelta(seconds=30)
    future = datetime.now(UTC) + timedelta(hours=1)
    await b.enqueue([
        app.build_job("obs.noop", scheduled_at=past), app.build_job("obs.noop", queue="q2"),
        app.build_job("obs.noop", queue="later", scheduled_at=future),
    ])  # fmt: skip
    ages = await b.queue_oldest()
    assert set(ages) == {"default", "q2"}
    assert 29 < ages["default"] < 90 and 0 <= ages["q2"] < 30
