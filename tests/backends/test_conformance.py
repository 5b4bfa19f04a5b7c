"""The backend contract, once, for PostgreSQL, SQLite and memory (docs/CONTRACTS.md).

Every test runs three times through the ``soniq_app`` fixture; a behaviour is
done when all three pass. Tests go through the public ``Soniq`` API where one
exists and through the ``StorageBackend`` verbs (``app.backend``) otherwise.
Documented differences are asserted per backend, never skipped silently:
transactional enqueue (``connection=``) works on PostgreSQL only and raises
``ValueError`` elsewhere; wake-ups are instant with NOTIFY (PostgreSQL) or an
in-process callback (memory, SQLite through the same backend object), and
within ``poll_interval`` for SQLite writes from another backend object.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from soniq import JobContext, JobStatus, Soniq, task_ref
from soniq.app import STREAM_CHUNK
from soniq.backends import StorageBackend
from soniq.errors import JobNotFoundError, JobValidationError
from soniq.job import Ack, ClaimedJob, Done, Fail, NewJob, Requeue, Retry, Schedule, WorkerInfo
from soniq.leases import leading
from tests.backend_apps import AppFactory
from tests.helpers import wait_until

UTC = timezone.utc
STATS_KEYS = {"queue", "total", "queued", "processing", "done", "dead_letter", "cancelled"}


# --- helpers --------------------------------------------------------------------


def now() -> datetime:
    return datetime.now(UTC)


def wid() -> str:
    """A worker id (PostgreSQL stores worker ids as uuid)."""
    return str(uuid.uuid4())


def worker_info(worker_id: str | None = None, queues: list[str] | None = None) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id or wid(), hostname="conformance", pid=os.getpid(), queues=queues,
        concurrency=3,
    )  # fmt: skip


def register_noop(app: Soniq) -> Callable[..., Any]:
    @app.job(name="conf.noop")
    async def noop(n: int = 0) -> int:
        return n

    return noop


async def job(app: Soniq, job_id: str) -> dict[str, Any]:
    row = await app.get_job(job_id)
    assert row is not None, f"job {job_id} not found"
    return row


async def claim_one(app: Soniq, worker_id: str, queues: list[str] | None = None) -> ClaimedJob:
    [claimed] = await app.backend.claim(queues, worker_id, 1)
    return claimed


async def tick() -> None:
    """Let the clock move on, so that the next row gets a later timestamp."""
    start = now()
    await wait_until(lambda: now() > start, timeout=1, interval=0.001, message="clock tick")


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


# --- protocol and capabilities ----------------------------------------------------


async def test_backend_satisfies_the_protocol(
    soniq_app: Soniq, backend_target: tuple[str, str | None]
) -> None:
    backend = soniq_app.backend
    assert isinstance(backend, StorageBackend)
    assert backend.name == backend_target[0]
    # Documented difference: only PostgreSQL joins a caller's transaction.
    assert backend.supports_transactions is (backend.name == "postgres")
    # Workers claim ahead only where a claim is a round trip to a server (soniq/claiming.py).
    assert backend.claim_ahead is (backend.name == "postgres")


# --- enqueue shapes and options --------------------------------------------------------


async def test_enqueue_by_callable_task_name_and_task_ref(soniq_app: Soniq) -> None:
    app = soniq_app

    @app.job(name="conf.add")
    async def add(a: int, b: int) -> int:
        return a + b

    by_callable = await app.enqueue(add, a=1, b=2)
    by_name = await app.enqueue("conf.add", args={"a": 3, "b": 4})
    by_ref = await app.enqueue(task_ref("conf.add"), args={"a": 5, "b": 6})
    remote_ref = task_ref("billing.invoice", default_queue="billing", default_priority=7)
    remote = await app.enqueue(remote_ref, args={"order": 9})
    assert len({by_callable, by_name, by_ref, remote}) == 4
    for job_id, args in ((by_callable, {"a": 1, "b": 2}), (by_name, {"a": 3, "b": 4}),
                         (by_ref, {"a": 5, "b": 6})):  # fmt: skip
        row = await job(app, job_id)
        assert (row["job_name"], row["args"], row["queue"], row["priority"]) == (
            "conf.add", args, "default", 100,
        )  # fmt: skip
        assert (row["status"], row["attempts"], row["max_attempts"]) == ("queued", 0, 4)
        assert row["id"] == job_id and row["created_at"] is not None
    row = await job(app, remote)
    assert (row["job_name"], row["queue"], row["priority"]) == ("billing.invoice", "billing", 7)

    assert await app.run_worker(run_once=True, queues=["default"]) is True
    assert [await app.get_result(i) for i in (by_callable, by_name, by_ref)] == [3, 7, 11]
    assert (await job(app, remote))["status"] == "queued"  # other queue: untouched


async def test_enqueue_options_are_stored(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    when = now().replace(microsecond=123456) + timedelta(hours=1)
    jid = await app.enqueue(noop, n=1, priority=5, queue="urgent", scheduled_at=when)
    row = await job(app, jid)
    assert (row["priority"], row["queue"], row["scheduled_at"]) == (5, "urgent", when)
    assert row["scheduled_at"].utcoffset() == timedelta(0)

    naive = await app.enqueue(noop, n=2, scheduled_at=when.replace(tzinfo=None))
    assert (await job(app, naive))["scheduled_at"] == when  # naive is taken as UTC
    paris = timezone(timedelta(hours=2))
    aware = await app.enqueue(noop, n=3, scheduled_at=when.astimezone(paris))
    assert (await job(app, aware))["scheduled_at"] == when

    keyed = await app.enqueue(noop, n=4, dedup_key="order-4")
    assert (await job(app, keyed))["dedup_key"] == "order-4"
    unique = await app.enqueue(noop, n=5, unique=True)
    assert (await job(app, unique))["dedup_key"].startswith("conf.noop:")
    plain = await app.enqueue(noop, n=6)
    assert (await job(app, plain))["dedup_key"] is None

    later = await app.schedule(noop, 3600, n=7)
    assert (await job(app, later))["scheduled_at"] > now() + timedelta(seconds=3500)


async def test_enqueue_many(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    many = await app.enqueue_many(noop, [{"n": i} for i in range(5)], queue="bulk", priority=3)
    assert len(set(many)) == 5
    for i, job_id in enumerate(many):
        row = await job(app, job_id)
        assert (row["args"], row["queue"], row["priority"], row["status"]) == (
            {"n": i}, "bulk", 3, "queued",
        )  # fmt: skip
    dup = await app.enqueue_many(noop, [{"n": 1}, {"n": 1}, {"n": 2}], unique=True)
    assert dup[0] == dup[1] != dup[2]
    assert await app.enqueue_many("conf.noop", [{"n": 9}]) != []
    assert await app.enqueue_many(noop, []) == []
    assert len(await app.list_jobs(limit=100)) == 5 + 2 + 1


async def test_enqueue_many_long_batch(soniq_app: Soniq) -> None:
    """A batch longer than one chunk (PostgreSQL streams it into one COPY as it is
    built): rows, ids and order as for a short one, text that COPY's format treats as
    syntax kept as given, and a row refused in a late chunk leaves nothing written."""
    app = soniq_app

    @app.job(name="conf.texty")
    async def noop(n: int, text: str = "") -> None: ...

    size = STREAM_CHUNK * 3 + 7
    odd = 'tab\there\nnew\rline back\\slash \\N quote" é ☃'
    items = [{"n": i, "text": odd} if i % 50 == 0 else {"n": i} for i in range(size)]
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    ids = await app.enqueue_many(noop, items, queue="bulk\\q", scheduled_at=when)
    assert len(set(ids)) == size
    rows = [await job(app, job_id) for job_id in ids[:: STREAM_CHUNK - 1]]
    assert [r["args"] for r in rows] == items[:: STREAM_CHUNK - 1]
    assert {(r["queue"], r["scheduled_at"]) for r in rows} == {("bulk\\q", when)}
    listed = await app.list_jobs(limit=size + 1)
    assert sorted(j["id"] for j in listed) == sorted(ids)

    bad = [{"n": i} for i in range(size)]
    bad[STREAM_CHUNK * 2 + 3] = {"n": 1, "unknown": 2}
    with pytest.raises(JobValidationError) as info:
        await app.enqueue_many(noop, bad)
    assert info.value.context["index"] == STREAM_CHUNK * 2 + 3
    assert len(await app.list_jobs(limit=size + 1)) == size  # only the first batch
    again = await app.enqueue_many(noop, [{"n": i % 7} for i in range(size)], unique=True)
    assert len(set(again)) == 7


# --- dedup --------------------------------------------------------------------------


async def test_dedup_returns_the_live_job_until_it_is_done(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    first = await app.enqueue(noop, n=1, dedup_key="order-1")
    assert await app.enqueue(noop, n=2, dedup_key="order-1") == first  # queued: same id
    claimed = await claim_one(app, wid())
    assert claimed.id == first
    assert await app.enqueue(noop, n=3, dedup_key="order-1") == first  # processing: same id
    assert len(await app.list_jobs()) == 1
    await app.backend.ack([Ack(claimed, Done("1"))], result_ttl=60)
    again = await app.enqueue(noop, n=4, dedup_key="order-1")  # done: a new job
    assert again != first
    assert (await job(app, again))["args"] == {"n": 4}
    assert (await job(app, first))["status"] == "done"

    u1 = await app.enqueue(noop, n=5, unique=True)
    assert await app.enqueue(noop, n=5, unique=True) == u1
    assert await app.enqueue(noop, n=6, unique=True) != u1
    assert await app.cancel_job(u1) is True
    assert await app.enqueue(noop, n=5, unique=True) != u1  # a cancelled job frees the key


async def test_dedup_after_a_worker_finished_the_job(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    first = await app.enqueue(noop, n=1, unique=True)
    assert await app.run_worker(run_once=True) is True
    assert await app.get_result(first) == 1
    second = await app.enqueue(noop, n=1, unique=True)
    assert second != first and (await job(app, second))["status"] == "queued"


# --- priorities, queues, scheduled jobs ------------------------------------------------


async def test_claim_order_priority_then_run_time_and_queue_filter(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    t = now()
    low = await app.enqueue(noop, n=1, priority=500)
    high = await app.enqueue(noop, n=2, priority=1)
    mid_late = await app.enqueue(noop, n=3, priority=50, scheduled_at=t - timedelta(seconds=10))
    mid_early = await app.enqueue(noop, n=4, priority=50, scheduled_at=t - timedelta(seconds=20))
    other = await app.enqueue(noop, n=5, priority=1, queue="other")
    w = wid()
    order = [(await claim_one(app, w, ["default"])).id for _ in range(4)]
    assert order == [high, mid_early, mid_late, low]
    assert await app.backend.claim(["default"], w, 10) == []
    assert [c.id for c in await app.backend.claim(["nowhere"], w, 10)] == []
    assert [c.id for c in await app.backend.claim(["default", "other"], w, 10)] == [other]


async def test_claim_across_queues_and_limit(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    a = await app.enqueue(noop, n=1, priority=20, queue="a")
    b = await app.enqueue(noop, n=2, priority=10, queue="b")
    c = await app.enqueue(noop, n=3, priority=30, queue="c")
    w = wid()
    assert (await claim_one(app, w, ["a", "c"])).id == a  # b is not asked for
    batch = await app.backend.claim(None, w, 5)
    assert sorted(j.id for j in batch) == sorted([b, c])
    for claimed in batch:
        assert claimed.attempt == 1 and claimed.lease
        row = await job(app, claimed.id)
        assert (row["status"], row["attempts"], row["worker_id"]) == ("processing", 1, w)
        assert row["started_at"] is not None


async def test_worker_runs_jobs_in_priority_order(soniq_app: Soniq) -> None:
    app = soniq_app
    ran: list[int] = []

    @app.job(name="conf.record")
    async def record(n: int) -> None:
        ran.append(n)

    for n, priority in ((1, 300), (2, 10), (3, 200), (4, 1)):
        await app.enqueue(record, n=n, priority=priority)
    assert await app.run_worker(concurrency=1, run_once=True) is True
    assert ran == [4, 2, 3, 1]


async def test_worker_queue_filter(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    mine = await app.enqueue(noop, n=1, queue="mine")
    theirs = await app.enqueue(noop, n=2, queue="theirs")
    assert await app.run_worker(run_once=True, queues=["mine"]) is True
    assert (await job(app, mine))["status"] == "done"
    assert (await job(app, theirs))["status"] == "queued"


async def test_scheduled_job_is_not_claimed_until_due(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    jid = await app.enqueue(noop, n=1, scheduled_at=now() + timedelta(seconds=1))
    w = wid()
    assert await app.backend.claim(None, w, 10) == []
    assert await app.run_worker(run_once=True) is False
    assert (await job(app, jid))["status"] == "queued"

    async def claimable() -> list[ClaimedJob]:
        return await app.backend.claim(None, w, 10)

    [claimed] = await wait_until(claimable, timeout=5, message="scheduled job due")
    assert claimed.id == jid


# --- claim / complete / retry / dead letter through the worker -------------------------------


async def test_worker_completes_retries_and_dead_letters(soniq_app: Soniq) -> None:
    app = soniq_app
    attempts: list[int] = []
    contexts: list[JobContext] = []

    @app.job(name="conf.flaky", retries=2, queue="risky")
    async def flaky(order: int, ctx: JobContext) -> None:
        attempts.append(ctx.attempt)
        raise RuntimeError(f"boom {order}")

    @app.job(name="conf.greet")
    async def greet(who: str, ctx: JobContext) -> dict[str, Any]:
        contexts.append(ctx)
        return {"hello": who}

    bad = await app.enqueue(flaky, order=7)
    good = await app.enqueue(greet, who="ada")
    assert await app.run_worker(run_once=True) is True  # immediate retries included

    assert attempts == [1, 2, 3]
    done = await job(app, good)
    assert (done["status"], done["result"], done["attempts"]) == ("done", {"hello": "ada"}, 1)
    assert done["completed_at"] is not None
    assert await app.get_result(good) == {"hello": "ada"}
    [ctx] = contexts
    assert (ctx.job_id, ctx.job_name, ctx.attempt, ctx.max_attempts, ctx.queue) == (
        good, "conf.greet", 1, 4, "default",
    )  # fmt: skip

    status = await app.get_job_status(bad)
    assert status is not None
    assert (status["status"], status["attempts"], status["max_attempts"]) == ("dead_letter", 3, 3)
    assert status["last_error"] == "RuntimeError: boom 7"
    assert await app.get_result(bad) is None
    assert await app.backend.get_job(bad) is None  # left soniq_jobs
    dead = await app.dead_letter.get(bad)
    assert dead is not None and "boom 7" in (dead["traceback"] or "")
    assert (dead["queue"], dead["args"]) == ("risky", {"order": 7})
    assert ids(await app.list_jobs(status=JobStatus.DEAD_LETTER)) == [bad]


async def test_unknown_task_on_the_worker_is_dead_lettered(soniq_app: Soniq) -> None:
    app = soniq_app
    jid = await app.enqueue(task_ref("elsewhere.task"), args={})
    await app.run_worker(run_once=True)
    status = await app.get_job_status(jid)
    assert status is not None and status["status"] == "dead_letter"
    assert "elsewhere.task" in status["last_error"]


# --- claim / ack verbs ----------------------------------------------------------------------


async def test_ack_done_retry_fail_requeue(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    made = await app.enqueue_many(noop, [{"n": i} for i in range(4)], priority=9)
    w = wid()
    claimed = {c.id: c for c in await app.backend.claim(None, w, 10)}
    assert set(claimed) == set(made)
    c_done, c_retry, c_fail, c_requeue = (claimed[i] for i in made)
    run_at = now().replace(microsecond=0) + timedelta(hours=1)
    await app.backend.ack(
        [
            Ack(c_done, Done('{"ok": 1}')),
            Ack(c_retry, Retry(run_at, "ValueError: later")),
            Ack(c_fail, Fail("RuntimeError: bad", "Traceback: bad")),
            Ack(c_requeue, Requeue()),
        ],
        result_ttl=60,
    )

    done = await job(app, c_done.id)
    assert (done["status"], done["result"], done["attempts"]) == ("done", {"ok": 1}, 1)
    assert done["completed_at"] is not None

    retry = await job(app, c_retry.id)
    assert (retry["status"], retry["attempts"], retry["scheduled_at"]) == ("queued", 1, run_at)
    assert (retry["last_error"], retry["worker_id"]) == ("ValueError: later", None)

    assert await app.backend.get_job(c_fail.id) is None
    dead = await app.backend.dead_letter_get(c_fail.id)
    assert dead is not None
    assert (dead.id, dead.job_name, dead.args, dead.queue, dead.priority) == (
        c_fail.id, "conf.noop", {"n": 2}, "default", 9,
    )  # fmt: skip
    assert (dead.attempts, dead.max_attempts, dead.last_error, dead.traceback) == (
        1, 4, "RuntimeError: bad", "Traceback: bad",
    )  # fmt: skip
    assert dead.created_at == c_fail.created_at
    assert dead.dead_lettered_at is not None and dead.resurrection_count == 0
    assert (await job(app, c_fail.id))["status"] == "dead_letter"

    requeued = await job(app, c_requeue.id)
    assert (requeued["status"], requeued["attempts"], requeued["worker_id"]) == ("queued", 0, None)
    again = await claim_one(app, w)  # the retry is an hour away; the requeue is due now
    assert (again.id, again.attempt) == (c_requeue.id, 1)
    assert again.lease != c_requeue.lease


async def test_ack_done_with_zero_ttl_deletes_and_prune_removes_expired(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    await app.enqueue_many(noop, [{"n": 1}, {"n": 2}, {"n": 3}])
    w = wid()
    one, two, three = sorted(await app.backend.claim(None, w, 3), key=lambda c: c.args["n"])
    await app.backend.ack([Ack(one, Done("1"))], result_ttl=0)
    assert await app.get_job(one.id) is None
    await app.backend.ack([Ack(two, Done("2"))], result_ttl=0.3)
    await app.backend.ack([Ack(three, Done("3"))], result_ttl=3600)
    assert (await job(app, two.id))["status"] == "done"
    assert await app.backend.prune() == 0

    async def pruned() -> bool:
        return await app.backend.prune() == 1

    await wait_until(pruned, timeout=5, message="expired result pruned")
    assert await app.get_job(two.id) is None
    assert await app.get_result(three.id) == 3  # not expired: kept


async def test_ack_with_a_wrong_lease_is_ignored(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    jid = await app.enqueue(noop, n=1)
    claimed = await claim_one(app, wid())
    forged = dataclasses.replace(claimed, lease=str(uuid.uuid4()))
    await app.backend.ack(
        [Ack(forged, Done("1")), Ack(forged, Fail("x", None)), Ack(forged, Requeue())],
        result_ttl=60,
    )
    row = await job(app, jid)
    assert (row["status"], row["attempts"]) == ("processing", 1)
    assert await app.backend.dead_letter_get(jid) is None
    await app.backend.ack([Ack(claimed, Done("1"))], result_ttl=60)
    assert (await job(app, jid))["status"] == "done"
    await app.backend.ack([Ack(claimed, Retry(now(), "late"))], result_ttl=60)  # not processing
    assert (await job(app, jid))["status"] == "done"


async def test_late_ack_after_recovery_is_ignored(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    jid = await app.enqueue(noop, n=1)
    lost = await claim_one(app, wid())  # a worker that never registered: lost at once
    assert await app.backend.recover_stale(3600) == 1
    taker = worker_info()
    await app.backend.register_worker(taker)
    current = await claim_one(app, taker.id)
    assert (current.id, current.attempt) == (jid, 2) and current.lease != lost.lease
    await app.backend.ack([Ack(lost, Done('"late"'))], result_ttl=60)
    row = await job(app, jid)
    assert (row["status"], row["worker_id"]) == ("processing", taker.id)
    await app.backend.ack([Ack(current, Done('"mine"'))], result_ttl=60)
    assert await app.get_result(jid) == "mine"


async def test_result_ttl_zero_setting_deletes_finished_jobs(app_factory: AppFactory) -> None:
    app = await app_factory(result_ttl=0)
    noop = register_noop(app)
    jid = await app.enqueue(noop, n=5)
    assert await app.run_worker(run_once=True) is True
    assert await app.get_job(jid) is None
    assert await app.get_result(jid) is None
    assert await app.get_queue_stats() == []


# --- cancel, delete, list, stats ------------------------------------------------------------


async def test_cancel_delete_and_list(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    a = await app.enqueue(noop, n=1, queue="qa")
    await tick()
    b = await app.enqueue(noop, n=2, queue="qb")
    await tick()
    c = await app.enqueue(noop, n=3, queue="qa")

    assert ids(await app.list_jobs()) == [c, b, a]  # newest first
    assert ids(await app.list_jobs(queue="qa")) == [c, a]
    assert ids(await app.list_jobs(limit=2)) == [c, b]
    assert ids(await app.list_jobs(limit=2, offset=2)) == [a]
    assert await app.list_jobs(queue="nowhere") == []

    assert await app.cancel_job(a) is True
    cancelled = await job(app, a)
    assert cancelled["status"] == "cancelled"
    assert await app.cancel_job(a) is False  # no longer queued
    await claim_one(app, wid(), ["qb"])
    assert await app.cancel_job(b) is True  # a running job is asked to stop: its worker ends it
    running = await job(app, b)
    assert (running["status"], running["cancel_requested"]) == ("processing", True)
    assert ids(await app.list_jobs(status="cancelled")) == [a]
    assert ids(await app.list_jobs(status=JobStatus.PROCESSING)) == [b]
    assert ids(await app.list_jobs(status="queued", queue="qa")) == [c]
    assert await app.run_worker(run_once=True) is True
    assert (await job(app, a))["status"] == "cancelled"  # a cancelled job never runs

    assert await app.delete_job(a) is True
    assert await app.get_job(a) is None
    assert await app.delete_job(a) is False
    assert await app.delete_job(b) is True  # any status
    unknown = str(uuid.uuid4())
    assert await app.cancel_job(unknown) is False
    assert await app.cancel_job("not-a-uuid") is False
    assert await app.get_job("not-a-uuid") is None
    assert await app.get_job(c.upper()) is not None  # ids compare as UUIDs


async def test_queue_stats(soniq_app: Soniq) -> None:
    app = soniq_app
    assert await app.get_queue_stats() == []
    noop = register_noop(app)

    @app.job(name="conf.fail", retries=0, queue="b-queue")
    async def fail() -> None:
        raise RuntimeError("no")

    await app.enqueue(noop, n=1, queue="b-queue")
    await app.enqueue(fail)
    await app.run_worker(run_once=True)  # b-queue: one done, one dead letter
    await app.enqueue(noop, n=2, queue="c-queue")
    cancelled = await app.enqueue(noop, n=3, queue="c-queue")
    await app.cancel_job(cancelled)
    await app.enqueue(noop, n=4, queue="a-queue")
    await app.enqueue(noop, n=5, queue="a-queue")
    await claim_one(app, wid(), ["a-queue"])

    stats = await app.get_queue_stats()
    assert [s["queue"] for s in stats] == ["a-queue", "b-queue", "c-queue"]
    assert all(set(s) == STATS_KEYS for s in stats)
    assert stats == [
        {"queue": "a-queue", "total": 2, "queued": 1, "processing": 1, "done": 0,
         "dead_letter": 0, "cancelled": 0},
        {"queue": "b-queue", "total": 2, "queued": 0, "processing": 0, "done": 1,
         "dead_letter": 1, "cancelled": 0},
        {"queue": "c-queue", "total": 2, "queued": 1, "processing": 0, "done": 0,
         "dead_letter": 0, "cancelled": 1},
    ]  # fmt: skip


# --- dead letters ---------------------------------------------------------------------------


async def test_dead_letter_list_get_count_replay_purge(soniq_app: Soniq) -> None:
    app = soniq_app
    failing = {"on": True}

    @app.job(name="conf.charge", retries=0, queue="payments")
    async def charge(order: int) -> str:
        if failing["on"]:
            raise RuntimeError(f"declined {order}")
        return f"charged {order}"

    @app.job(name="conf.notify", retries=0, queue="emails")
    async def notify(user: int) -> None:
        raise ValueError(f"no address for {user}")

    dead_ids: list[str] = []
    for target, args in ((charge, {"order": 1}), (notify, {"user": 2}), (charge, {"order": 3})):
        dead_ids.append(await app.enqueue(target, args=args))
        await app.run_worker(run_once=True)
        await tick()
    c1, n2, c3 = dead_ids

    dl = app.dead_letter
    assert ids(await dl.list_jobs()) == [c3, n2, c1]  # newest first
    assert ids(await dl.list(queue="payments")) == [c3, c1]
    assert ids(await dl.list_jobs(task="conf.notify")) == [n2]
    assert ids(await dl.list_jobs(limit=1, offset=1)) == [n2]
    assert await dl.list_jobs(queue="payments", task="conf.notify") == []
    assert (await dl.count(), await dl.count(queue="payments"), await dl.count(task="x")) == (
        3, 2, 0,
    )  # fmt: skip

    row = await dl.get(c1)
    assert row is not None
    assert (row["job_name"], row["args"], row["queue"], row["attempts"]) == (
        "conf.charge", {"order": 1}, "payments", 1,
    )  # fmt: skip
    assert row["last_error"] == "RuntimeError: declined 1"
    assert row["resurrection_count"] == 0 and row["last_replayed_at"] is None
    assert await dl.get(str(uuid.uuid4())) is None

    failing["on"] = False
    new_id = await dl.replay(c1)
    assert new_id != c1
    fresh = await job(app, new_id)
    assert (fresh["job_name"], fresh["args"], fresh["queue"], fresh["status"]) == (
        "conf.charge", {"order": 1}, "payments", "queued",
    )  # fmt: skip
    assert (fresh["attempts"], fresh["max_attempts"]) == (0, 1)
    replayed = await dl.get(c1)
    assert replayed is not None  # the dead-letter row stays, as the record
    assert replayed["resurrection_count"] == 1 and replayed["last_replayed_at"] is not None
    second = await dl.replay(c1)
    assert second not in (new_id, c1)
    assert (await dl.get(c1) or {})["resurrection_count"] == 2
    with pytest.raises(JobNotFoundError):
        await dl.replay(str(uuid.uuid4()))
    assert await app.run_worker(run_once=True, queues=["payments"]) is True
    assert await app.get_result(new_id) == "charged 1"

    assert len(await dl.bulk_replay(queue="emails")) == 1
    assert await dl.purge(c1) == 1
    assert await dl.count() == 2
    with pytest.raises(ValueError):
        await dl.purge()  # nothing named: refuses to delete everything
    assert await dl.purge(queue="payments") == 1
    assert await dl.purge(all=True) == 1
    assert await dl.count() == 0 and await dl.list_jobs() == []


# --- workers and stale recovery -------------------------------------------------------------


async def test_worker_registration_heartbeat_and_deregistration(soniq_app: Soniq) -> None:
    backend = soniq_app.backend
    assert await backend.list_workers() == []
    info = worker_info(queues=["a", "b"])
    await backend.register_worker(info)
    other = worker_info()
    await backend.register_worker(other)
    rows = {w.id: w for w in await backend.list_workers()}
    assert set(rows) == {info.id, other.id}
    row = rows[info.id]
    assert (row.hostname, row.pid, row.queues, row.concurrency) == (
        "conformance", os.getpid(), ["a", "b"], 3,
    )  # fmt: skip
    assert rows[other.id].queues is None
    assert row.started_at is not None and row.last_heartbeat is not None
    await tick()
    assert await backend.heartbeat(info.id) is True
    [beat] = [w for w in await backend.list_workers() if w.id == info.id]
    assert beat.last_heartbeat is not None and beat.last_heartbeat > row.last_heartbeat
    assert beat.started_at == row.started_at
    await backend.deregister_worker(info.id)
    assert await backend.heartbeat(info.id) is False
    assert [w.id for w in await backend.list_workers()] == [other.id]
    await backend.deregister_worker(info.id)  # idempotent


async def test_recover_stale_requeues_or_dead_letters(soniq_app: Soniq) -> None:
    app = soniq_app
    backend = app.backend
    noop = register_noop(app)

    @app.job(name="conf.once", retries=0, queue="s2")
    async def once() -> None:
        pass

    silent, alive = worker_info(), worker_info()
    await backend.register_worker(silent)
    await backend.register_worker(alive)
    requeue_me = await app.enqueue(noop, n=1, queue="s1")
    bury_me = await app.enqueue(once)
    keep_me = await app.enqueue(noop, n=3, queue="a1")
    await claim_one(app, silent.id, ["s1"])
    await claim_one(app, silent.id, ["s2"])
    await claim_one(app, alive.id, ["a1"])
    assert await backend.recover_stale(3600) == 0  # everyone is fresh

    async def recovered() -> int:
        await backend.heartbeat(alive.id)
        return await backend.recover_stale(0.3)

    assert await wait_until(recovered, timeout=5, message="silent worker recovered") == 2
    assert [w.id for w in await backend.list_workers()] == [alive.id]
    assert await backend.heartbeat(silent.id) is False
    lost_error = f"worker {silent.id} was lost while running attempt 1"

    row = await job(app, requeue_me)
    assert (row["status"], row["worker_id"], row["attempts"]) == ("queued", None, 1)
    assert row["last_error"] == lost_error
    dead = await job(app, bury_me)
    assert (dead["status"], dead["last_error"]) == ("dead_letter", lost_error)
    assert (await job(app, keep_me))["status"] == "processing"
    again = await claim_one(app, alive.id, ["s1"])
    assert (again.id, again.attempt) == (requeue_me, 2)


async def test_continuous_worker_registers_and_deregisters(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    worker = asyncio.create_task(app.run_worker(concurrency=2))
    try:
        [info] = await wait_until(app.backend.list_workers, timeout=5, message="registration")
        assert info.concurrency == 2 and info.pid == os.getpid()
        jid = await app.enqueue(noop, n=1)

        async def finished() -> bool:
            return bool((await job(app, jid))["status"] == "done")

        await wait_until(finished, timeout=5, message="job done")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert await app.backend.list_workers() == []


async def test_cancelled_calls_leave_the_backend_usable(
    soniq_app: Soniq, app_factory: AppFactory
) -> None:
    """A worker's side loops are cancelled mid-call at shutdown: nothing may stay half open
    (on SQLite a cancelled BEGIN used to leave the connection inside a transaction)."""
    app = soniq_app
    noop = register_noop(app)
    for steps in range(6):
        call = asyncio.create_task(app.backend.heartbeat(wid()))
        for _ in range(steps):
            await asyncio.sleep(0)  # let the call reach its next await, then cancel it there
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    jid = await asyncio.wait_for(app.enqueue(noop, n=1), 5)
    assert (await claim_one(app, wid())).id == jid
    if app.backend.name != "memory":  # and the database is not left locked for others
        other = await app_factory()
        await asyncio.wait_for(other.enqueue(task_ref("conf.noop"), args={"n": 2}), 5)
        assert len(await app.list_jobs()) == 2


# --- leader lease ---------------------------------------------------------------------------


async def test_try_lead_and_release_lead(soniq_app: Soniq) -> None:
    backend = soniq_app.backend
    assert await backend.try_lead("maintenance", "a", 60) is True
    assert await backend.try_lead("maintenance", "b", 60) is False
    assert await backend.try_lead("maintenance", "a", 60) is True  # extend own lease
    assert await backend.try_lead("scheduler", "b", 60) is True  # roles are independent
    await backend.release_lead("maintenance", "b")  # not b's: no effect
    assert await backend.try_lead("maintenance", "b", 60) is False
    await backend.release_lead("maintenance", "a")
    assert await backend.try_lead("maintenance", "b", 0.3) is True
    assert await backend.try_lead("maintenance", "a", 60) is False

    async def a_takes_over() -> bool:
        return await backend.try_lead("maintenance", "a", 60)

    await wait_until(a_takes_over, timeout=5, message="expired lease taken over")
    assert await backend.try_lead("maintenance", "b", 60) is False


async def test_a_lease_is_kept_for_a_sweep_longer_than_its_ttl(soniq_app: Soniq) -> None:
    """``leading`` renews the lease while its body runs (a prune of a big backlog
    outlives the TTL): nobody else takes it meanwhile; afterwards it expires as usual."""
    backend, ttl = soniq_app.backend, 0.5
    async with leading(backend, "maintenance", "a", ttl) as leader:
        assert leader is True
        async with leading(backend, "maintenance", "b", ttl) as other:
            assert other is False
        held_until = time.monotonic() + ttl * 4  # four TTLs of a sweep
        while time.monotonic() < held_until:
            assert await backend.try_lead("maintenance", "b", ttl) is False
            await asyncio.sleep(ttl / 10)

    async def b_takes_over() -> bool:
        return await backend.try_lead("maintenance", "b", ttl)

    await wait_until(b_takes_over, timeout=5, message="the lease expired after the sweep")


async def test_a_sweep_cancelled_as_its_lease_renewer_stops_stays_cancelled(
    soniq_app: Soniq,
) -> None:
    """A worker's shutdown cancels its maintenance loop and waits for it. A cancellation
    that arrives while ``leading`` waits for its renewer to stop must end the sweep, not
    be taken for the renewer's own (the loop would sweep on, and the shutdown hang)."""
    went_on: list[str] = []

    async def sweep() -> None:
        me = asyncio.current_task()
        assert me is not None
        async with leading(soniq_app.backend, "maintenance", "a", 30) as leader:
            assert leader is True
            # Runs once the body is done, while leading's exit waits for the renewer.
            asyncio.get_running_loop().call_soon(me.cancel)
        went_on.append("after the lease")

    task = asyncio.create_task(sweep())
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=5)
    assert went_on == []


# --- schedules ------------------------------------------------------------------------------


async def test_schedules_upsert_get_list_status_delete(soniq_app: Soniq) -> None:
    backend = soniq_app.backend
    due = now().replace(microsecond=654321) + timedelta(hours=1)
    every = Schedule(
        name="conf.every", job_name="conf.noop", args={"n": 1}, queue="sched", priority=7,
        every_seconds=60.0, next_run_at=due,
    )  # fmt: skip
    stored = await backend.schedule_upsert(every)
    assert (stored.name, stored.job_name, stored.args, stored.queue, stored.priority) == (
        "conf.every", "conf.noop", {"n": 1}, "sched", 7,
    )  # fmt: skip
    assert (stored.every_seconds, stored.cron, stored.timezone, stored.status) == (
        60.0, None, "UTC", "active",
    )  # fmt: skip
    assert stored.next_run_at == due and stored.last_run_at is None
    assert stored.created_at is not None
    assert await backend.schedule_get("conf.every") == stored
    assert await backend.schedule_get("nope") is None
    cron = Schedule(name="a.cron", job_name="conf.noop", cron="*/5 * * * *",
                    timezone="Europe/Paris", next_run_at=due)  # fmt: skip
    await backend.schedule_upsert(cron)
    assert [s.name for s in await backend.schedule_list()] == ["a.cron", "conf.every"]

    assert await backend.schedule_set_status("conf.every", "paused") is True
    assert [s.name for s in await backend.schedule_list("paused")] == ["conf.every"]
    assert [s.name for s in await backend.schedule_list("active")] == ["a.cron"]
    paused = await backend.schedule_get("conf.every")
    assert paused is not None and paused.status == "paused" and paused.next_run_at == due
    rearm = due + timedelta(minutes=5)
    assert await backend.schedule_set_status("conf.every", "active", rearm) is True
    resumed = await backend.schedule_get("conf.every")
    assert resumed is not None and (resumed.status, resumed.next_run_at) == ("active", rearm)
    assert await backend.schedule_set_status("nope", "paused") is False

    await backend.schedule_set_status("conf.every", "paused")
    changed = dataclasses.replace(every, args={"n": 2}, status="active", next_run_at=due)
    updated = await backend.schedule_upsert(changed)  # definition replaced, status kept
    # Same timing: the stored due time stays (a re-sync never rewinds what a leader advanced).
    assert (updated.args, updated.status, updated.next_run_at) == ({"n": 2}, "paused", rearm)
    assert updated.created_at == stored.created_at
    retimed = dataclasses.replace(changed, every_seconds=120.0, next_run_at=due)
    assert (await backend.schedule_upsert(retimed)).next_run_at == due  # new timing: new due

    assert await backend.schedule_delete("conf.every") is True
    assert await backend.schedule_get("conf.every") is None
    assert await backend.schedule_delete("conf.every") is False
    assert [s.name for s in await backend.schedule_list()] == ["a.cron"]


async def test_schedule_fire_is_compare_and_set(soniq_app: Soniq) -> None:
    app = soniq_app
    backend = app.backend
    noop = register_noop(app)
    due = now().replace(microsecond=111111) - timedelta(seconds=1)
    following = due + timedelta(minutes=1)
    schedule = Schedule(name="conf.tick", job_name="conf.noop", args={"n": 1},
                        every_seconds=60.0, next_run_at=due)  # fmt: skip
    created = await backend.schedule_upsert(schedule)

    first = app.build_job(noop, kwargs={"n": 1}, queue="sched")
    assert await backend.schedule_fire("conf.tick", due, following, first) is True
    fired = await job(app, first.id)
    assert (fired["job_name"], fired["args"], fired["queue"], fired["status"]) == (
        "conf.noop", {"n": 1}, "sched", "queued",
    )  # fmt: skip
    after = await backend.schedule_get("conf.tick")
    assert after is not None
    assert (after.last_run_at, after.next_run_at) == (due, following)
    assert after.created_at == created.created_at

    # A second leader racing on the same due time: nothing happens.
    late = app.build_job(noop, kwargs={"n": 1}, queue="sched")
    assert await backend.schedule_fire("conf.tick", due, following, late) is False
    assert await app.get_job(late.id) is None
    assert await backend.schedule_fire("nope", due, following, late) is False

    # Paused schedules do not fire; a resumed one fires at its stored time.
    await backend.schedule_set_status("conf.tick", "paused")
    assert await backend.schedule_fire("conf.tick", following, None, late) is False
    await backend.schedule_set_status("conf.tick", "active")
    assert await backend.schedule_fire("conf.tick", following, None, late) is True
    final = await backend.schedule_get("conf.tick")
    assert final is not None and (final.last_run_at, final.next_run_at) == (following, None)
    assert len(await app.list_jobs(queue="sched")) == 2


# --- documented differences ------------------------------------------------------------------


async def test_transactional_enqueue_postgres_only(soniq_app: Soniq) -> None:
    app = soniq_app
    noop = register_noop(app)
    if app.backend.name != "postgres":
        # Documented difference: only PostgreSQL can join the caller's transaction.
        assert app.backend.supports_transactions is False
        with pytest.raises(ValueError, match="PostgreSQL"):
            await app.enqueue(noop, n=1, connection=object())
        with pytest.raises(ValueError, match="PostgreSQL"):
            await app.enqueue_many(noop, [{"n": 1}], connection=object())
        with pytest.raises(ValueError, match="PostgreSQL"):
            await app.backend.enqueue([app.build_job(noop, kwargs={"n": 1})], connection=object())
        assert await app.list_jobs() == []
        return
    backend: Any = app.backend
    async with backend.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        rolled_back = await app.enqueue(noop, n=1, connection=conn)
        await tx.rollback()
        async with conn.transaction():
            committed = await app.enqueue(noop, n=2, connection=conn)
    assert await app.get_job(rolled_back) is None
    assert (await job(app, committed))["status"] == "queued"


async def test_continuous_worker_wakes_on_enqueue(app_factory: AppFactory) -> None:
    """NOTIFY (PostgreSQL) and in-process callbacks (memory, SQLite) wake an idle worker
    at once; SQLite writes from another backend object are seen within ``poll_interval``."""
    poll = 2.0
    app = await app_factory(poll_interval=poll)
    ran: dict[int, float] = {}

    @app.job(name="conf.ping")
    async def ping(n: int) -> None:
        ran[n] = time.monotonic()

    async def latency(producer: Soniq, n: int) -> float:
        start = time.monotonic()
        await producer.enqueue(task_ref("conf.ping"), args={"n": n})
        await wait_until(lambda: n in ran, timeout=poll + 5, interval=0.005, message=f"ping {n}")
        return ran[n] - start

    worker = asyncio.create_task(app.run_worker(concurrency=2))
    try:
        await latency(app, 0)  # warm-up: the loop and its subscription are running
        assert len(await app.backend.list_workers()) == 1
        assert await latency(app, 1) < poll / 2  # same process, same object: instant
        if app.backend.name == "postgres":  # NOTIFY crosses connections and processes
            other = await app_factory(poll_interval=poll)
            assert await latency(other, 2) < poll / 2
        elif app.backend.name == "sqlite":  # another backend object on the file: polled
            other = await app_factory(poll_interval=poll)
            assert await latency(other, 2) < poll + 1.0
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert await app.backend.list_workers() == []


# =====================================================================================
# The storage verbs, one by one (app.backend: what every feature sees through the
# protocol, input rules included). Worker ids are UUIDs: PostgreSQL stores them so.
# =====================================================================================

W1 = "00000000-0000-4000-8000-0000000000a1"
W2 = "00000000-0000-4000-8000-0000000000a2"
GHOST = "00000000-0000-4000-8000-00000000dead"


@pytest.fixture
def backend(soniq_app: Soniq) -> StorageBackend:
    return soniq_app.backend


def new_job(
    name: str = "tasks.work",
    *,
    queue: str = "default",
    priority: int = 100,
    scheduled_at: datetime | None = None,
    dedup_key: str | None = None,
    args: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> NewJob:
    args = args if args is not None else {"n": 1}
    return NewJob(
        id=str(uuid.uuid4()), job_name=name, args=args, args_json=json.dumps(args),
        queue=queue, priority=priority, max_attempts=max_attempts,
        scheduled_at=scheduled_at, dedup_key=dedup_key,
    )  # fmt: skip


async def take_one(backend: StorageBackend, worker: str = W1) -> ClaimedJob:
    [claimed] = await backend.claim(None, worker, 1)
    return claimed


def assert_utc(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --- protocol and producing ----------------------------------------------------


async def test_enqueue_stores_a_queued_row(backend: StorageBackend) -> None:
    before = now()
    job = new_job(args={"to": "a@b.c", "n": [1, 2]}, priority=7, queue="mail")
    assert await backend.enqueue([job]) == [job.id]
    row = await backend.get_job(job.id)
    assert row is not None
    assert (row.job_name, row.args, row.queue, row.priority) == (job.job_name, job.args, "mail", 7)
    assert (row.status, row.attempts, row.max_attempts) == ("queued", 0, 3)
    for stamp in (row.scheduled_at, row.created_at, row.updated_at):
        assert_utc(stamp)
        assert stamp is not None and before <= stamp <= now()
    assert row.worker_id is None and row.result is None


async def test_enqueue_keeps_scheduled_at_and_converts_to_utc(backend: StorageBackend) -> None:
    later = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    job = new_job(scheduled_at=later)
    await backend.enqueue([job])
    row = await backend.get_job(job.id)
    assert row is not None and row.scheduled_at == later
    assert_utc(row.scheduled_at)


async def test_dedup_within_one_batch(backend: StorageBackend) -> None:
    a, b, c = new_job(dedup_key="x"), new_job(dedup_key="x"), new_job()
    assert await backend.enqueue([a, b, c]) == [a.id, a.id, c.id]
    assert len(await backend.list_jobs(queue=None, status=None, limit=10, offset=0)) == 2


# --- claiming ------------------------------------------------------------------


async def test_claim_marks_processing(backend: StorageBackend) -> None:
    job = new_job()
    await backend.enqueue([job])
    claimed = await take_one(backend, W1)
    assert (claimed.id, claimed.attempt, claimed.max_attempts) == (job.id, 1, 3)
    assert claimed.args == job.args and claimed.priority == 100 and claimed.lease
    assert_utc(claimed.scheduled_at)
    assert_utc(claimed.created_at)
    row = await backend.get_job(job.id)
    assert row is not None
    assert (row.status, row.attempts, row.worker_id) == ("processing", 1, W1)
    assert_utc(row.started_at)
    assert await backend.claim(None, W2, 10) == []


async def test_claim_order_priority_then_run_time_then_age(backend: StorageBackend) -> None:
    t = now()
    late_low = new_job(priority=50, scheduled_at=t - timedelta(seconds=1))
    early_low = new_job(priority=50, scheduled_at=t - timedelta(seconds=5))
    high = new_job(priority=10, scheduled_at=t - timedelta(seconds=1))
    same_a = new_job(priority=200, scheduled_at=t - timedelta(seconds=9))
    await backend.enqueue([late_low, early_low, high, same_a])
    same_b = new_job(priority=200, scheduled_at=t - timedelta(seconds=9))
    await backend.enqueue([same_b])
    order = [j.id for j in await backend.claim(None, W1, 10)]
    assert order == [high.id, early_low.id, late_low.id, same_a.id, same_b.id]


async def test_claim_skips_future_and_respects_limit(backend: StorageBackend) -> None:
    future = new_job(priority=1, scheduled_at=now() + timedelta(hours=1))
    due = [new_job(priority=500) for _ in range(3)]
    await backend.enqueue([future, *due])
    first = await backend.claim(None, W1, 2)
    assert len(first) == 2 and future.id not in {j.id for j in first}
    assert [j.id for j in await backend.claim(None, W1, 5)] == [
        j.id for j in due if j.id not in {c.id for c in first}
    ]
    assert await backend.claim(None, W1, 5) == []


async def test_claim_becomes_due(backend: StorageBackend) -> None:
    soon = new_job(scheduled_at=now() + timedelta(milliseconds=150))
    await backend.enqueue([soon])
    assert await backend.claim(None, W1, 1) == []
    claimed = await wait_until(lambda: backend.claim(None, W1, 1), timeout=5, message="due job")
    assert claimed[0].id == soon.id


async def test_claim_filters_queues(backend: StorageBackend) -> None:
    a = new_job(queue="a", priority=30)
    b = new_job(queue="b", priority=20)
    c = new_job(queue="c", priority=10)
    await backend.enqueue([a, b, c])
    assert [j.id for j in await backend.claim(["a"], W1, 10)] == [a.id]
    assert [j.id for j in await backend.claim(["a", "b", "c"], W1, 1)] == [c.id]
    assert [j.id for j in await backend.claim(["b", "zzz"], W1, 10)] == [b.id]


async def test_claim_merges_several_queues_in_order(backend: StorageBackend) -> None:
    jobs = [new_job(queue=q, priority=p) for q, p in [("a", 3), ("b", 1), ("a", 2), ("b", 4)]]
    await backend.enqueue(jobs)
    claimed = await backend.claim(["a", "b"], W1, 3)
    assert [j.priority for j in claimed] == [1, 2, 3]


async def test_concurrent_claims_are_disjoint(backend: StorageBackend) -> None:
    jobs = [new_job() for _ in range(50)]
    await backend.enqueue(jobs)
    batches = await asyncio.gather(*(backend.claim(None, str(uuid.uuid4()), 7) for i in range(10)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 50


# --- acks ------------------------------------------------------------------------


async def test_ack_done_keeps_result_until_ttl(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await take_one(backend)
    before = now()
    await backend.ack([Ack(job, Done(json.dumps({"ok": True})))], result_ttl=300)
    row = await backend.get_job(job.id)
    assert row is not None and row.status == "done" and row.result == {"ok": True}
    assert row.completed_at is not None and row.completed_at >= before
    assert_utc(row.completed_at)
    assert await backend.prune() == 0


async def test_ack_done_with_zero_ttl_deletes(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await take_one(backend)
    await backend.ack([Ack(job, Done(None))], result_ttl=0)
    assert await backend.get_job(job.id) is None


async def test_prune_deletes_expired_done_rows(backend: StorageBackend) -> None:
    await backend.enqueue([new_job(), new_job()])
    short, long = await backend.claim(None, W1, 2)
    await backend.ack([Ack(short, Done("1"))], result_ttl=0.05)
    await backend.ack([Ack(long, Done("2"))], result_ttl=300)
    await wait_until(lambda: backend.prune(), timeout=5, message="expired row pruned")
    assert await backend.get_job(short.id) is None
    assert await backend.get_job(long.id) is not None


async def test_ack_retry(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await take_one(backend)
    run_at = now() + timedelta(hours=1)
    await backend.ack([Ack(job, Retry(run_at, "boom"))], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None
    assert (row.status, row.attempts, row.last_error) == ("queued", 1, "boom")
    assert row.scheduled_at == run_at and row.worker_id is None
    assert await backend.claim(None, W1, 1) == []


async def test_ack_retry_due_now_is_claimed_again(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await take_one(backend)
    await backend.ack([Ack(job, Retry(now(), "boom"))], result_ttl=60)
    again = await take_one(backend)
    assert (again.id, again.attempt) == (job.id, 2)
    assert again.lease != job.lease


async def test_ack_requeue_gives_the_attempt_back(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await take_one(backend)
    await backend.ack([Ack(job, Requeue())], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None and (row.status, row.attempts) == ("queued", 0)
    again = await take_one(backend)
    assert again.attempt == 1
    later = now() + timedelta(minutes=5)
    await backend.ack([Ack(again, Requeue(later))], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None and row.scheduled_at == later


async def test_ack_fail_moves_to_dead_letters(backend: StorageBackend) -> None:
    job = new_job(args={"k": "v"}, queue="q1", priority=9, max_attempts=1)
    await backend.enqueue([job])
    claimed = await take_one(backend)
    before = now()
    await backend.ack([Ack(claimed, Fail("kaput", "Traceback ..."))], result_ttl=60)
    assert await backend.get_job(job.id) is None
    dead = await backend.dead_letter_get(job.id)
    assert dead is not None
    assert (dead.job_name, dead.args, dead.queue, dead.priority) == (
        job.job_name, {"k": "v"}, "q1", 9,
    )  # fmt: skip
    assert (dead.attempts, dead.max_attempts, dead.last_error) == (1, 1, "kaput")
    assert dead.traceback == "Traceback ..." and dead.resurrection_count == 0
    assert dead.dead_lettered_at is not None and dead.dead_lettered_at >= before
    assert_utc(dead.dead_lettered_at)
    assert_utc(dead.created_at)


async def test_mixed_ack_batch(backend: StorageBackend) -> None:
    await backend.enqueue([new_job() for _ in range(4)])
    a, b, c, d = await backend.claim(None, W1, 4)
    await backend.ack(
        [Ack(a, Done("1")), Ack(b, Retry(now(), "e")), Ack(c, Fail("f", None)), Ack(d, Requeue())],
        result_ttl=60,
    )
    statuses = {j.id: j.status for j in await backend.list_jobs(
        queue=None, status=None, limit=10, offset=0)}  # fmt: skip
    assert statuses == {a.id: "done", b.id: "queued", d.id: "queued"}
    assert await backend.dead_letter_count(queue=None, task=None) == 1


# --- workers, recovery, leader leases ----------------------------------------


async def test_worker_registration_and_heartbeat(backend: StorageBackend) -> None:
    info = worker_info(queues=["a", "b"])
    await backend.register_worker(info)
    [row] = await backend.list_workers()
    assert (row.id, row.hostname, row.pid, row.queues, row.concurrency) == (
        info.id, "conformance", os.getpid(), ["a", "b"], 3,
    )  # fmt: skip
    assert_utc(row.started_at)
    assert_utc(row.last_heartbeat)
    assert await backend.heartbeat(info.id) is True
    await backend.register_worker(info)  # idempotent
    [again] = await backend.list_workers()
    assert again.started_at == row.started_at
    await backend.deregister_worker(info.id)
    assert await backend.heartbeat(info.id) is False
    assert await backend.list_workers() == []


async def test_recover_stale_requeues_jobs_of_missing_workers(backend: StorageBackend) -> None:
    alive = worker_info()
    await backend.register_worker(alive)
    await backend.enqueue([new_job(), new_job()])
    [mine] = await backend.claim(None, alive.id, 1)
    [lost] = await backend.claim(None, GHOST, 1)
    assert await backend.recover_stale(3600) == 1
    row = await backend.get_job(lost.id)
    assert row is not None and (row.status, row.worker_id) == ("queued", None)
    assert row.last_error == f"worker {GHOST} was lost while running attempt 1"
    kept = await backend.get_job(mine.id)
    assert kept is not None and kept.status == "processing"
    await backend.ack([Ack(lost, Done(None))], result_ttl=60)  # late ack: ignored
    row = await backend.get_job(lost.id)
    assert row is not None and row.status == "queued"


async def test_recover_stale_removes_silent_workers(backend: StorageBackend) -> None:
    silent = worker_info()
    await backend.register_worker(silent)
    await backend.enqueue([new_job()])
    job = await take_one(backend, silent.id)
    assert await backend.recover_stale(3600) == 0

    async def recovered() -> bool:
        return await backend.recover_stale(0.05) == 1

    await wait_until(recovered, timeout=5, message="silent worker recovered")
    assert await backend.list_workers() == []
    assert await backend.heartbeat(silent.id) is False
    row = await backend.get_job(job.id)
    assert row is not None and row.status == "queued"


async def test_recover_stale_dead_letters_last_attempt(backend: StorageBackend) -> None:
    await backend.enqueue([new_job(max_attempts=1)])
    job = await take_one(backend, GHOST)
    assert await backend.recover_stale(3600) == 1
    assert await backend.get_job(job.id) is None
    dead = await backend.dead_letter_get(job.id)
    assert dead is not None and dead.traceback is None
    assert dead.last_error == f"worker {GHOST} was lost while running attempt 1"


async def test_leader_lease(backend: StorageBackend) -> None:
    assert await backend.try_lead("maintenance", "a", 60) is True
    assert await backend.try_lead("maintenance", "b", 60) is False
    assert await backend.try_lead("maintenance", "a", 60) is True
    assert await backend.try_lead("scheduler", "b", 60) is True
    await backend.release_lead("maintenance", "b")  # not b's: no effect
    assert await backend.try_lead("maintenance", "b", 60) is False
    await backend.release_lead("maintenance", "a")
    assert await backend.try_lead("maintenance", "b", 0.05) is True
    await wait_until(
        lambda: backend.try_lead("maintenance", "a", 60), timeout=5, message="expired lease"
    )
    assert await backend.try_lead("maintenance", "b", 60) is False


async def test_listen_wakes_a_waiting_worker(backend: StorageBackend) -> None:
    woke = asyncio.Event()
    listener = await backend.listen(lambda _queue: woke.set())
    assert listener is not None
    try:
        waiter = asyncio.create_task(woke.wait())
        await backend.enqueue([new_job()])
        await asyncio.wait_for(waiter, timeout=2)
    finally:
        await listener.close()


# --- reads and management -----------------------------------------------------


async def test_get_job_unknown_malformed_and_uppercase(backend: StorageBackend) -> None:
    job = new_job()
    await backend.enqueue([job])
    assert await backend.get_job(str(uuid.uuid4())) is None
    assert await backend.get_job("not-a-uuid") is None
    found = await backend.get_job(job.id.upper())
    assert found is not None and found.id == job.id


async def test_list_jobs_newest_first_with_filters(backend: StorageBackend) -> None:
    jobs = [new_job(queue="a" if i % 2 else "b") for i in range(5)]
    for job in jobs:
        await backend.enqueue([job])
        await tick()
    listed = await backend.list_jobs(queue=None, status=None, limit=10, offset=0)
    assert [j.id for j in listed] == [j.id for j in reversed(jobs)]
    page = await backend.list_jobs(queue=None, status=None, limit=2, offset=1)
    assert [j.id for j in page] == [jobs[3].id, jobs[2].id]
    only_a = await backend.list_jobs(queue="a", status=None, limit=10, offset=0)
    assert {j.id for j in only_a} == {jobs[1].id, jobs[3].id}
    await take_one(backend)
    processing = await backend.list_jobs(queue=None, status="processing", limit=10, offset=0)
    assert len(processing) == 1


async def test_cancel_and_delete(backend: StorageBackend) -> None:
    queued, running = new_job(priority=500), new_job(priority=1)
    await backend.enqueue([queued, running])
    await take_one(backend)
    assert await backend.cancel_job(running.id) is True  # asked; its worker ends it cancelled
    asked = await backend.get_job(running.id)
    assert asked is not None and (asked.status, asked.cancel_requested) == ("processing", True)
    assert await backend.cancel_job(queued.id) is True
    assert await backend.cancel_job(queued.id) is False
    row = await backend.get_job(queued.id)
    assert row is not None and row.status == "cancelled"
    assert await backend.claim(None, W1, 10) == []
    assert await backend.prune() == 0  # cancelled rows stay until deleted
    assert await backend.delete_job(queued.id) is True
    assert await backend.delete_job(queued.id) is False
    assert await backend.delete_job("nonsense") is False


async def test_queue_stats_counts_every_status(backend: StorageBackend) -> None:
    assert await backend.queue_stats() == []
    await backend.enqueue([new_job(queue="b") for _ in range(4)])
    await backend.enqueue([new_job(queue="a", max_attempts=1)])
    first = await backend.claim(["b"], W1, 2)
    await backend.ack([Ack(first[0], Done(None))], result_ttl=60)
    [doomed] = await backend.claim(["a"], W1, 1)
    await backend.ack([Ack(doomed, Fail("x", None))], result_ttl=60)
    [cancel] = await backend.list_jobs(queue="b", status="queued", limit=1, offset=0)
    await backend.cancel_job(cancel.id)
    stats = [s.to_dict() for s in await backend.queue_stats()]
    assert stats == [
        {"queue": "a", "total": 1, "queued": 0, "processing": 0, "done": 0,
         "dead_letter": 1, "cancelled": 0},
        {"queue": "b", "total": 4, "queued": 1, "processing": 1, "done": 1,
         "dead_letter": 0, "cancelled": 1},
    ]  # fmt: skip


# --- dead letters ------------------------------------------------------------------


async def bury(backend: StorageBackend, *jobs: NewJob) -> list[str]:
    """Enqueue and dead-letter ``jobs`` one by one (so dead_lettered_at increases)."""
    for job in jobs:
        await backend.enqueue([job])
        [claimed] = await backend.claim([job.queue], W1, 1)
        await backend.ack([Ack(claimed, Fail(f"error {job.job_name}", None))], result_ttl=60)
        await tick()
    return [j.id for j in jobs]


async def test_dead_letter_list_count_and_filters(backend: StorageBackend) -> None:
    ids = await bury(
        backend, new_job("t1", queue="a"), new_job("t2", queue="a"), new_job("t1", queue="b")
    )
    listed = await backend.dead_letter_list(queue=None, task=None, limit=10, offset=0)
    assert [d.id for d in listed] == list(reversed(ids))
    assert [d.id for d in await backend.dead_letter_list(
        queue=None, task=None, limit=1, offset=1)] == [ids[1]]  # fmt: skip
    assert await backend.dead_letter_count(queue="a", task=None) == 2
    assert await backend.dead_letter_count(queue=None, task="t1") == 2
    assert await backend.dead_letter_count(queue="a", task="t1") == 1
    by_task = await backend.dead_letter_list(queue=None, task="t2", limit=10, offset=0)
    assert [d.id for d in by_task] == [ids[1]]
    assert await backend.dead_letter_get("missing") is None


async def test_dead_letter_replay(backend: StorageBackend) -> None:
    [dead_id] = await bury(backend, new_job(args={"x": 1}, priority=5, queue="q", max_attempts=2))
    unknown = str(uuid.uuid4())
    replayed = await backend.dead_letter_replay([dead_id, unknown])
    assert list(replayed) == [dead_id]
    new_id = replayed[dead_id]
    assert new_id != dead_id
    fresh = await backend.get_job(new_id)
    assert fresh is not None
    assert (fresh.status, fresh.attempts, fresh.max_attempts) == ("queued", 0, 2)
    assert (fresh.args, fresh.queue, fresh.priority) == ({"x": 1}, "q", 5)
    dead = await backend.dead_letter_get(dead_id)
    assert dead is not None and dead.resurrection_count == 1
    assert_utc(dead.last_replayed_at)
    await backend.dead_letter_replay([dead_id])
    dead = await backend.dead_letter_get(dead_id)
    assert dead is not None and dead.resurrection_count == 2
    claimed = await backend.claim(["q"], W1, 10)
    assert len(claimed) == 2


async def test_dead_letter_purge(backend: StorageBackend) -> None:
    ids = await bury(
        backend, new_job("t1", queue="a"), new_job("t2", queue="a"),
        new_job("t1", queue="b"), new_job("t3", queue="c"),
    )  # fmt: skip
    assert await backend.dead_letter_purge(job_ids=[ids[0], "junk"], queue=None, task=None) == 1
    assert await backend.dead_letter_purge(job_ids=None, queue="b", task=None) == 1
    assert await backend.dead_letter_purge(job_ids=None, queue=None, task="t2") == 1
    assert await backend.dead_letter_count(queue=None, task=None) == 1
    assert await backend.dead_letter_purge(job_ids=None, queue=None, task=None) == 1
    assert await backend.dead_letter_count(queue=None, task=None) == 0


# --- schedules ---------------------------------------------------------------------


def a_schedule(name: str = "nightly", **changes: Any) -> Schedule:
    base: dict[str, Any] = {
        "name": name, "job_name": "tasks.report", "args": {"full": True}, "queue": "reports",
        "priority": 50, "cron": "0 3 * * *", "timezone": "Europe/Paris",
        "next_run_at": datetime(2030, 1, 1, 2, 0, tzinfo=UTC),
    }  # fmt: skip
    base.update(changes)
    return Schedule(**base)


async def test_schedule_upsert_get_list(backend: StorageBackend) -> None:
    stored = await backend.schedule_upsert(a_schedule())
    assert (stored.name, stored.args, stored.cron, stored.status) == (
        "nightly", {"full": True}, "0 3 * * *", "active",
    )  # fmt: skip
    assert stored.timezone == "Europe/Paris" and stored.every_seconds is None
    assert stored.next_run_at == datetime(2030, 1, 1, 2, 0, tzinfo=UTC)
    assert_utc(stored.created_at)
    assert await backend.schedule_get("nightly") == stored
    assert await backend.schedule_get("nope") is None
    await backend.schedule_upsert(a_schedule("every", cron=None, every_seconds=30.0))
    assert [s.name for s in await backend.schedule_list()] == ["every", "nightly"]


async def test_schedule_upsert_keeps_status_last_run_and_created(backend: StorageBackend) -> None:
    first = await backend.schedule_upsert(a_schedule())
    due = first.next_run_at
    assert due is not None
    nxt = due + timedelta(days=1)
    assert await backend.schedule_fire("nightly", due, nxt, new_job("tasks.report"))
    assert await backend.schedule_set_status("nightly", "paused")
    updated = await backend.schedule_upsert(
        a_schedule(cron="0 4 * * *", args={"full": False}, status="active", next_run_at=None)
    )
    assert (updated.cron, updated.args, updated.next_run_at) == ("0 4 * * *", {"full": False}, None)
    assert (updated.status, updated.last_run_at, updated.created_at) == (
        "paused", due, first.created_at,
    )  # fmt: skip


async def test_schedule_status_and_delete(backend: StorageBackend) -> None:
    await backend.schedule_upsert(a_schedule("a"))
    await backend.schedule_upsert(a_schedule("b"))
    assert await backend.schedule_set_status("a", "paused") is True
    assert await backend.schedule_set_status("missing", "paused") is False
    assert [s.name for s in await backend.schedule_list("paused")] == ["a"]
    assert [s.name for s in await backend.schedule_list("active")] == ["b"]
    with pytest.raises(ValueError, match="active"):
        await backend.schedule_set_status("a", "sleeping")
    assert await backend.schedule_delete("a") is True
    assert await backend.schedule_delete("a") is False
    assert [s.name for s in await backend.schedule_list()] == ["b"]


async def test_schedule_resume_can_rearm(backend: StorageBackend) -> None:
    await backend.schedule_upsert(a_schedule())
    await backend.schedule_set_status("nightly", "paused")
    rearm = datetime(2030, 6, 1, tzinfo=UTC)
    assert await backend.schedule_set_status("nightly", "active", rearm)
    got = await backend.schedule_get("nightly")
    assert got is not None and (got.status, got.next_run_at) == ("active", rearm)


# --- input rules (soniq.backends.checked): the same answer on every backend ----------


async def test_claim_is_fifo_on_equal_priority_and_run_time(backend: StorageBackend) -> None:
    at = now() - timedelta(seconds=5)
    batch = [new_job(args={"n": i}, scheduled_at=at) for i in range(6)]
    await backend.enqueue(batch)  # one statement: one now(), one scheduled_at
    later = new_job(args={"n": 6}, scheduled_at=at)
    await backend.enqueue([later])
    order = [c.id for c in await backend.claim(None, W1, 3)]
    order += [c.id for c in await backend.claim(["default", "other"], W1, 10)]
    assert order == [j.id for j in [*batch, later]]


async def test_empty_batches_are_no_ops(backend: StorageBackend) -> None:
    assert await backend.enqueue([]) == []
    await backend.ack([], result_ttl=60)
    assert await backend.claim(None, W1, 0) == []
    assert await backend.dead_letter_replay([]) == {}
    assert await backend.dead_letter_purge(job_ids=[], queue=None, task=None) == 0
    if backend.supports_transactions:
        async with backend.acquire() as conn:
            assert await backend.enqueue([], connection=conn) == []
    assert await backend.list_jobs(queue=None, status=None, limit=10, offset=0) == []


async def test_an_empty_queue_list_means_every_queue(backend: StorageBackend) -> None:
    jobs = [new_job(queue="a"), new_job(queue="b")]
    await backend.enqueue(jobs)
    assert {c.id for c in await backend.claim([], W1, 10)} == {j.id for j in jobs}


async def test_malformed_ids_match_nothing(backend: StorageBackend) -> None:
    [dead_id] = await bury(backend, new_job())
    junk = ["", "junk", "1234", "'; DROP TABLE soniq_jobs; --"]
    for bad in junk:
        assert await backend.get_job(bad) is None
        assert await backend.dead_letter_get(bad) is None
        assert await backend.cancel_job(bad) is False
        assert await backend.delete_job(bad) is False
    assert await backend.dead_letter_replay(junk) == {}
    replayed = await backend.dead_letter_replay([*junk, dead_id.upper(), dead_id])
    assert list(replayed) == [dead_id]  # canonical, once
    assert await backend.dead_letter_purge(job_ids=junk, queue=None, task=None) == 0
    assert await backend.dead_letter_purge(job_ids=[dead_id.upper()], queue=None, task=None) == 1


async def test_negative_page_bounds_are_refused(backend: StorageBackend) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        await backend.list_jobs(queue=None, status=None, limit=-1, offset=0)
    with pytest.raises(ValueError, match="non-negative"):
        await backend.dead_letter_list(queue=None, task=None, limit=10, offset=-5)


async def test_invalid_schedule_status_is_a_value_error(backend: StorageBackend) -> None:
    with pytest.raises(ValueError, match="'active' or 'paused'"):
        await backend.schedule_upsert(a_schedule(status="sleeping"))
    assert await backend.schedule_get("nightly") is None
    await backend.schedule_upsert(a_schedule())
    with pytest.raises(ValueError, match="'active' or 'paused'"):
        await backend.schedule_set_status("nightly", "PAUSED")
    got = await backend.schedule_get("nightly")
    assert got is not None and got.status == "active"


async def test_naive_and_offset_times_are_stored_as_utc(backend: StorageBackend) -> None:
    naive = datetime(2030, 1, 1, 2, 0)
    stored = await backend.schedule_upsert(a_schedule(next_run_at=naive))
    assert stored.next_run_at == naive.replace(tzinfo=UTC)
    assert_utc(stored.next_run_at)
    plus2 = timezone(timedelta(hours=2))
    rearm = datetime(2030, 6, 1, 14, 0, tzinfo=plus2)
    await backend.schedule_set_status("nightly", "paused")
    assert await backend.schedule_set_status("nightly", "active", rearm.replace(tzinfo=None))
    got = await backend.schedule_get("nightly")
    assert got is not None and got.next_run_at == datetime(2030, 6, 1, 14, 0, tzinfo=UTC)
    fired = new_job(scheduled_at=datetime(2031, 1, 1, 12, 0, tzinfo=plus2))
    assert await backend.schedule_fire("nightly", datetime(2030, 6, 1, 14, 0), None, fired)
    row = await backend.get_job(fired.id)
    assert row is not None and row.scheduled_at == datetime(2031, 1, 1, 10, 0, tzinfo=UTC)
    assert_utc(row.scheduled_at)


async def test_lease_and_timeout_lengths_must_be_positive(backend: StorageBackend) -> None:
    with pytest.raises(ValueError, match="ttl"):
        await backend.try_lead("maintenance", W1, 0)
    with pytest.raises(ValueError, match="heartbeat_timeout"):
        await backend.recover_stale(-1)


async def test_schedule_upsert_with_unchanged_timing_keeps_the_stored_due_time(
    backend: StorageBackend,
) -> None:
    first = await backend.schedule_upsert(a_schedule())
    due = first.next_run_at
    assert due is not None
    advanced = due + timedelta(days=1)
    assert await backend.schedule_fire("nightly", due, advanced, new_job("tasks.report"))
    # A re-sync computes an earlier due time: same timing, so the stored one stays.
    again = await backend.schedule_upsert(a_schedule(args={"full": False}, next_run_at=due))
    assert (again.next_run_at, again.args) == (advanced, {"full": False})
    # A stored schedule with no due time takes the given one.
    await backend.schedule_upsert(a_schedule("bare", next_run_at=None))
    armed = await backend.schedule_upsert(a_schedule("bare", next_run_at=due))
    assert armed.next_run_at == due
    # New timing: the given due time wins.
    moved = await backend.schedule_upsert(a_schedule(cron="0 5 * * *", next_run_at=due))
    assert moved.next_run_at == due


async def test_reset_wipes_runtime_state_and_keeps_definitions(soniq_app: Soniq) -> None:
    """``app._reset()``, as the published testing guide's fixtures call it."""
    app = soniq_app
    noop = register_noop(app)

    @app.job(name="conf.doomed", retries=0)
    async def doomed() -> None:
        raise RuntimeError("no")

    await app.enqueue(noop, n=1)
    dead = await app.enqueue(doomed)
    await app.run_worker(run_once=True)
    assert await app.backend.dead_letter_get(dead) is not None
    await app.backend.register_worker(worker_info())
    await app.backend.schedule_upsert(a_schedule())
    await app.enqueue(noop, n=2)

    await app._reset()

    assert await app.list_jobs(limit=100) == []
    assert await app.backend.dead_letter_count(queue=None, task=None) == 0
    assert await app.backend.list_workers() == []
    assert await app.backend.schedule_get("nightly") is not None  # definitions stay
    again = await app.enqueue(noop, n=3)  # the pool and schema are still there
    assert await app.run_worker(run_once=True) is True
    assert await app.get_result(again) == 3
