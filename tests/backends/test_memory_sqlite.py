"""Backend-level tests of every verb, for the memory and SQLite backends.

The same test runs on both (the ``backend`` fixture is parametrised); the
SQLite-only tests at the end cover migrations, exact time round trips and
claiming from several processes on one file.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from soniq.backends import StorageBackend
from soniq.backends.memory import MemoryBackend
from soniq.backends.sqlite import SQLiteBackend, split_statements
from soniq.job import (
    Ack,
    ClaimedJob,
    Done,
    Fail,
    NewJob,
    Requeue,
    Retry,
    Schedule,
    WorkerInfo,
)
from soniq.settings import SoniqSettings
from tests.helpers import wait_until

UTC = timezone.utc
REPO_ROOT = Path(__file__).resolve().parents[2]


def now() -> datetime:
    return datetime.now(UTC)


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


def worker_info(worker_id: str | None = None, queues: list[str] | None = None) -> WorkerInfo:
    return WorkerInfo(
        id=worker_id or str(uuid.uuid4()), hostname="host", pid=os.getpid(),
        queues=queues, concurrency=4,
    )  # fmt: skip


def make(kind: str, path: Path) -> StorageBackend:
    settings = SoniqSettings()
    if kind == "memory":
        return MemoryBackend(settings)
    return SQLiteBackend(str(path), settings)


@pytest.fixture(params=["memory", "sqlite"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    instance = make(request.param, tmp_path / "soniq.db")
    await instance.open()
    yield instance
    await instance.close()


async def claim_one(backend: StorageBackend, worker: str = "w1") -> ClaimedJob:
    [job] = await backend.claim(None, worker, 1)
    return job


async def tick() -> None:
    """Let the clock move on, so that rows written next get a later timestamp."""
    start = now()
    await wait_until(lambda: now() > start, timeout=1, interval=0.001, message="clock tick")


def assert_utc(value: datetime | None) -> None:
    assert value is not None and value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# --- protocol and producing ----------------------------------------------------


async def test_satisfies_protocol(backend: StorageBackend) -> None:
    assert isinstance(backend, StorageBackend)
    assert backend.supports_transactions is False
    assert backend.name in ("memory", "sqlite")


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


async def test_enqueue_with_connection_is_refused(backend: StorageBackend) -> None:
    with pytest.raises(ValueError, match=r"^Transactional enqueue \(connection=\.\.\.\) requires"):
        await backend.enqueue([new_job()], connection=object())
    assert await backend.list_jobs(queue=None, status=None, limit=10, offset=0) == []


async def test_dedup_returns_the_live_job_id(backend: StorageBackend) -> None:
    first = new_job(dedup_key="k")
    assert await backend.enqueue([first]) == [first.id]
    dup, other = new_job(dedup_key="k"), new_job(dedup_key="other")
    assert await backend.enqueue([dup, other]) == [first.id, other.id]
    assert await backend.get_job(dup.id) is None
    # Still deduplicated while processing; free again once done.
    claimed = await backend.claim(None, "w1", 10)
    assert await backend.enqueue([new_job(dedup_key="k")]) == [first.id]
    await backend.ack([Ack(j, Done(None)) for j in claimed], result_ttl=60)
    again = new_job(dedup_key="k")
    assert await backend.enqueue([again]) == [again.id]


async def test_dedup_within_one_batch(backend: StorageBackend) -> None:
    a, b, c = new_job(dedup_key="x"), new_job(dedup_key="x"), new_job()
    assert await backend.enqueue([a, b, c]) == [a.id, a.id, c.id]
    assert len(await backend.list_jobs(queue=None, status=None, limit=10, offset=0)) == 2


async def test_cancelled_job_frees_its_dedup_key(backend: StorageBackend) -> None:
    a = new_job(dedup_key="x")
    await backend.enqueue([a])
    assert await backend.cancel_job(a.id)
    b = new_job(dedup_key="x")
    assert await backend.enqueue([b]) == [b.id]


# --- claiming ------------------------------------------------------------------


async def test_claim_marks_processing(backend: StorageBackend) -> None:
    job = new_job()
    await backend.enqueue([job])
    claimed = await claim_one(backend, "worker-1")
    assert (claimed.id, claimed.attempt, claimed.max_attempts) == (job.id, 1, 3)
    assert claimed.args == job.args and claimed.priority == 100 and claimed.lease
    assert_utc(claimed.scheduled_at)
    assert_utc(claimed.created_at)
    row = await backend.get_job(job.id)
    assert row is not None
    assert (row.status, row.attempts, row.worker_id) == ("processing", 1, "worker-1")
    assert_utc(row.started_at)
    assert await backend.claim(None, "worker-2", 10) == []


async def test_claim_order_priority_then_run_time_then_age(backend: StorageBackend) -> None:
    t = now()
    late_low = new_job(priority=50, scheduled_at=t - timedelta(seconds=1))
    early_low = new_job(priority=50, scheduled_at=t - timedelta(seconds=5))
    high = new_job(priority=10, scheduled_at=t - timedelta(seconds=1))
    same_a = new_job(priority=200, scheduled_at=t - timedelta(seconds=9))
    await backend.enqueue([late_low, early_low, high, same_a])
    same_b = new_job(priority=200, scheduled_at=t - timedelta(seconds=9))
    await backend.enqueue([same_b])
    order = [j.id for j in await backend.claim(None, "w", 10)]
    assert order == [high.id, early_low.id, late_low.id, same_a.id, same_b.id]


async def test_claim_skips_future_and_respects_limit(backend: StorageBackend) -> None:
    future = new_job(priority=1, scheduled_at=now() + timedelta(hours=1))
    due = [new_job(priority=500) for _ in range(3)]
    await backend.enqueue([future, *due])
    first = await backend.claim(None, "w", 2)
    assert len(first) == 2 and future.id not in {j.id for j in first}
    assert [j.id for j in await backend.claim(None, "w", 5)] == [
        j.id for j in due if j.id not in {c.id for c in first}
    ]
    assert await backend.claim(None, "w", 5) == []


async def test_claim_becomes_due(backend: StorageBackend) -> None:
    soon = new_job(scheduled_at=now() + timedelta(milliseconds=150))
    await backend.enqueue([soon])
    assert await backend.claim(None, "w", 1) == []
    claimed = await wait_until(lambda: backend.claim(None, "w", 1), timeout=5, message="due job")
    assert claimed[0].id == soon.id


async def test_claim_filters_queues(backend: StorageBackend) -> None:
    a = new_job(queue="a", priority=30)
    b = new_job(queue="b", priority=20)
    c = new_job(queue="c", priority=10)
    await backend.enqueue([a, b, c])
    assert [j.id for j in await backend.claim(["a"], "w", 10)] == [a.id]
    assert [j.id for j in await backend.claim(["a", "b", "c"], "w", 1)] == [c.id]
    assert [j.id for j in await backend.claim(["b", "zzz"], "w", 10)] == [b.id]


async def test_claim_merges_several_queues_in_order(backend: StorageBackend) -> None:
    jobs = [new_job(queue=q, priority=p) for q, p in [("a", 3), ("b", 1), ("a", 2), ("b", 4)]]
    await backend.enqueue(jobs)
    claimed = await backend.claim(["a", "b"], "w", 3)
    assert [j.priority for j in claimed] == [1, 2, 3]


async def test_concurrent_claims_are_disjoint(backend: StorageBackend) -> None:
    jobs = [new_job() for _ in range(50)]
    await backend.enqueue(jobs)
    batches = await asyncio.gather(*(backend.claim(None, f"w{i}", 7) for i in range(10)))
    ids = [j.id for batch in batches for j in batch]
    assert len(ids) == len(set(ids)) == 50


async def test_concurrent_claims_from_two_objects_on_one_file(tmp_path: Path) -> None:
    one, two = (SQLiteBackend(str(tmp_path / "shared.db"), SoniqSettings()) for _ in range(2))
    try:
        await one.open()
        await two.open()
        await one.enqueue([new_job() for _ in range(200)])
        claims = [b.claim(None, "w", 3) for b in (one, two) for _ in range(40)]
        ids = [j.id for batch in await asyncio.gather(*claims) for j in batch]
        assert len(ids) == len(set(ids)) == 200
    finally:
        await one.close()
        await two.close()


# --- acks ------------------------------------------------------------------------


async def test_ack_done_keeps_result_until_ttl(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    before = now()
    await backend.ack([Ack(job, Done(json.dumps({"ok": True})))], result_ttl=300)
    row = await backend.get_job(job.id)
    assert row is not None and row.status == "done" and row.result == {"ok": True}
    assert row.completed_at is not None and row.completed_at >= before
    assert_utc(row.completed_at)
    assert await backend.prune() == 0


async def test_ack_done_with_zero_ttl_deletes(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    await backend.ack([Ack(job, Done(None))], result_ttl=0)
    assert await backend.get_job(job.id) is None


async def test_prune_deletes_expired_done_rows(backend: StorageBackend) -> None:
    await backend.enqueue([new_job(), new_job()])
    short, long = await backend.claim(None, "w", 2)
    await backend.ack([Ack(short, Done("1"))], result_ttl=0.05)
    await backend.ack([Ack(long, Done("2"))], result_ttl=300)
    await wait_until(lambda: backend.prune(), timeout=5, message="expired row pruned")
    assert await backend.get_job(short.id) is None
    assert await backend.get_job(long.id) is not None


async def test_ack_with_stale_lease_is_ignored(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    forged = ClaimedJob(
        id=job.id, job_name=job.job_name, args=job.args, queue=job.queue,
        attempt=job.attempt, max_attempts=job.max_attempts, lease=str(uuid.uuid4()),
    )  # fmt: skip
    for outcome in (Done(None), Retry(now(), "x"), Fail("x", None), Requeue()):
        await backend.ack([Ack(forged, outcome)], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None and row.status == "processing"
    assert await backend.dead_letter_get(job.id) is None


async def test_ack_retry(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    run_at = now() + timedelta(hours=1)
    await backend.ack([Ack(job, Retry(run_at, "boom"))], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None
    assert (row.status, row.attempts, row.last_error) == ("queued", 1, "boom")
    assert row.scheduled_at == run_at and row.worker_id is None
    assert await backend.claim(None, "w", 1) == []


async def test_ack_retry_due_now_is_claimed_again(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    await backend.ack([Ack(job, Retry(now(), "boom"))], result_ttl=60)
    again = await claim_one(backend)
    assert (again.id, again.attempt) == (job.id, 2)
    assert again.lease != job.lease


async def test_ack_requeue_gives_the_attempt_back(backend: StorageBackend) -> None:
    await backend.enqueue([new_job()])
    job = await claim_one(backend)
    await backend.ack([Ack(job, Requeue())], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None and (row.status, row.attempts) == ("queued", 0)
    again = await claim_one(backend)
    assert again.attempt == 1
    later = now() + timedelta(minutes=5)
    await backend.ack([Ack(again, Requeue(later))], result_ttl=60)
    row = await backend.get_job(job.id)
    assert row is not None and row.scheduled_at == later


async def test_ack_fail_moves_to_dead_letters(backend: StorageBackend) -> None:
    job = new_job(args={"k": "v"}, queue="q1", priority=9, max_attempts=1)
    await backend.enqueue([job])
    claimed = await claim_one(backend)
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
    a, b, c, d = await backend.claim(None, "w", 4)
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
        info.id, "host", os.getpid(), ["a", "b"], 4,
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
    [lost] = await backend.claim(None, "ghost", 1)
    assert await backend.recover_stale(3600) == 1
    row = await backend.get_job(lost.id)
    assert row is not None and (row.status, row.worker_id) == ("queued", None)
    assert row.last_error == "worker ghost was lost while running attempt 1"
    kept = await backend.get_job(mine.id)
    assert kept is not None and kept.status == "processing"
    await backend.ack([Ack(lost, Done(None))], result_ttl=60)  # late ack: ignored
    row = await backend.get_job(lost.id)
    assert row is not None and row.status == "queued"


async def test_recover_stale_removes_silent_workers(backend: StorageBackend) -> None:
    silent = worker_info()
    await backend.register_worker(silent)
    await backend.enqueue([new_job()])
    job = await claim_one(backend, silent.id)
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
    job = await claim_one(backend, "ghost")
    assert await backend.recover_stale(3600) == 1
    assert await backend.get_job(job.id) is None
    dead = await backend.dead_letter_get(job.id)
    assert dead is not None and dead.traceback is None
    assert dead.last_error == "worker ghost was lost while running attempt 1"


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


async def test_listen_wakes_on_enqueue(backend: StorageBackend) -> None:
    seen: list[str] = []
    listener = await backend.listen(seen.append)
    assert listener is not None
    await backend.enqueue([new_job(queue="emails"), new_job(queue="emails"), new_job(queue="x")])
    assert sorted(seen) == ["emails", "x"]
    await listener.close()
    await backend.enqueue([new_job(queue="emails")])
    assert sorted(seen) == ["emails", "x"]


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
    await claim_one(backend)
    processing = await backend.list_jobs(queue=None, status="processing", limit=10, offset=0)
    assert len(processing) == 1


async def test_cancel_and_delete(backend: StorageBackend) -> None:
    queued, running = new_job(priority=500), new_job(priority=1)
    await backend.enqueue([queued, running])
    await claim_one(backend)
    assert await backend.cancel_job(running.id) is False
    assert await backend.cancel_job(queued.id) is True
    assert await backend.cancel_job(queued.id) is False
    row = await backend.get_job(queued.id)
    assert row is not None and row.status == "cancelled"
    assert await backend.claim(None, "w", 10) == []
    assert await backend.prune() == 0  # cancelled rows stay until deleted
    assert await backend.delete_job(queued.id) is True
    assert await backend.delete_job(queued.id) is False
    assert await backend.delete_job("nonsense") is False


async def test_queue_stats(backend: StorageBackend) -> None:
    assert await backend.queue_stats() == []
    await backend.enqueue([new_job(queue="b") for _ in range(4)])
    await backend.enqueue([new_job(queue="a", max_attempts=1)])
    first = await backend.claim(["b"], "w", 2)
    await backend.ack([Ack(first[0], Done(None))], result_ttl=60)
    [doomed] = await backend.claim(["a"], "w", 1)
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
        [claimed] = await backend.claim([job.queue], "w", 1)
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
    claimed = await backend.claim(["q"], "w", 10)
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


async def test_schedule_fire_is_compare_and_set(backend: StorageBackend) -> None:
    stored = await backend.schedule_upsert(a_schedule())
    due = stored.next_run_at
    assert due is not None
    nxt = due + timedelta(days=1)
    wrong = due - timedelta(seconds=1)
    assert await backend.schedule_fire("nightly", wrong, nxt, new_job("tasks.report")) is False
    job = new_job("tasks.report", queue="reports")
    assert await backend.schedule_fire("nightly", due, nxt, job) is True
    assert await backend.get_job(job.id) is not None
    assert await backend.schedule_fire("nightly", due, nxt, new_job("tasks.report")) is False
    after = await backend.schedule_get("nightly")
    assert after is not None and (after.last_run_at, after.next_run_at) == (due, nxt)
    assert await backend.schedule_set_status("nightly", "paused")
    assert await backend.schedule_fire("nightly", nxt, None, new_job("tasks.report")) is False
    assert await backend.schedule_fire("missing", nxt, None, new_job("tasks.report")) is False
    assert len(await backend.list_jobs(queue=None, status=None, limit=10, offset=0)) == 1


async def test_schedule_resume_can_rearm(backend: StorageBackend) -> None:
    await backend.schedule_upsert(a_schedule())
    await backend.schedule_set_status("nightly", "paused")
    rearm = datetime(2030, 6, 1, tzinfo=UTC)
    assert await backend.schedule_set_status("nightly", "active", rearm)  # type: ignore[call-arg]
    got = await backend.schedule_get("nightly")
    assert got is not None and (got.status, got.next_run_at) == ("active", rearm)


# --- migrations ------------------------------------------------------------------


async def test_sqlite_migrate_is_idempotent(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "m.db"), SoniqSettings())
    try:
        status = await backend.migration_status()
        assert [(m.name, m.applied) for m in status] == [("0001_initial", False)]
        first = await backend.migrate()
        assert (first.applied, first.already_applied) == (["0001_initial"], [])
        second = await backend.migrate()
        assert (second.applied, second.already_applied) == ([], ["0001_initial"])
        [info] = await backend.migration_status()
        assert info.applied and info.applied_at is not None
        assert_utc(info.applied_at)
    finally:
        await backend.close()


async def test_sqlite_open_creates_the_schema_lazily(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lazy.db"
    path.parent.mkdir()
    backend = SQLiteBackend(str(path), SoniqSettings())
    try:
        job = new_job()
        assert await backend.enqueue([job]) == [job.id]  # opens and migrates on first use
        assert path.exists()
        report = await backend.migrate()
        assert report.already_applied == ["0001_initial"]
    finally:
        await backend.close()
    reopened = SQLiteBackend(str(path), SoniqSettings())
    try:
        assert await reopened.get_job(job.id) is not None
    finally:
        await reopened.close()


async def test_sqlite_unusable_path_raises_clear_error(tmp_path: Path) -> None:
    from soniq.errors import DatabaseUnavailableError

    backend = SQLiteBackend(str(tmp_path / "missing-dir" / "x.db"), SoniqSettings())
    with pytest.raises(DatabaseUnavailableError, match="missing-dir"):
        await backend.open()
    await backend.close()


def test_split_statements_keeps_semicolons_in_strings() -> None:
    script = "-- c;\nCREATE TABLE t (a TEXT DEFAULT ';');\nINSERT INTO t VALUES ('x;y');\n-- end"
    assert split_statements(script) == [
        "-- c;\nCREATE TABLE t (a TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('x;y');",
    ]


async def test_sqlite_datetimes_round_trip_exactly(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "t.db"), SoniqSettings())
    try:
        moment = datetime(2027, 2, 3, 4, 5, 6, 999999, tzinfo=UTC)
        job = new_job(scheduled_at=moment)
        await backend.enqueue([job])
        row = await backend.get_job(job.id)
        assert row is not None and row.scheduled_at == moment
        naive = new_job(scheduled_at=datetime(2027, 1, 1, 12, 0))
        await backend.enqueue([naive])
        row = await backend.get_job(naive.id)
        assert row is not None and row.scheduled_at == datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    finally:
        await backend.close()


async def test_sqlite_claim_uses_the_partial_indexes(tmp_path: Path) -> None:
    """The claim must walk an index in order, never sort the backlog."""
    import sqlite3

    from soniq.sql import sqlite_queries as q

    backend = SQLiteBackend(str(tmp_path / "plan.db"), SoniqSettings())
    await backend.open()
    await backend.close()
    conn = sqlite3.connect(str(tmp_path / "plan.db"))
    try:
        params = {"worker_id": "w", "lease": "l", "now": 0, "limit": 5, "queue": "a", "ids": "[]"}
        for sql, index in (
            (q.JOB_CLAIM_ALL, "soniq_jobs_claim_all_idx"),
            (q.JOB_CLAIM_QUEUE, "soniq_jobs_claim_queue_idx"),
            (q.JOB_DUE_IN_QUEUE, "soniq_jobs_claim_queue_idx"),
        ):
            plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert index in plan and "TEMP B-TREE" not in plan, plan
        plan = " | ".join(
            r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.JOB_LIVE_BY_DEDUP, {"keys": "[]"})
        )
        assert "soniq_jobs_dedup_idx" in plan, plan
    finally:
        conn.close()


# --- several processes on one SQLite file -----------------------------------------

CHILD = r"""
import asyncio, json, os, random, sys, time
from soniq.backends.sqlite import SQLiteBackend
from soniq.job import Ack, Done

async def barrier(backend, n):
    # Every process holds one claimed job before any goes on: the runs overlap for sure.
    deadline = time.monotonic() + 30
    while len(await backend.list_jobs(queue=None, status="processing", limit=n, offset=0)) < n:
        if time.monotonic() > deadline:
            sys.exit("barrier timed out")
        await asyncio.sleep(0.005)

async def main(path, queues, n):
    backend = SQLiteBackend(path)
    await backend.open()
    print("ready", flush=True)
    sys.stdin.readline()
    worker = f"w-{os.getpid()}"
    held = await backend.claim(queues, worker, 1)
    claimed = [j.id for j in held]
    await barrier(backend, n)
    while held:
        await backend.ack([Ack(j, Done(None)) for j in held], result_ttl=600)
        held = await backend.claim(queues, worker, random.randint(1, 8))
        claimed += [j.id for j in held]
    await backend.close()
    print(json.dumps(claimed), flush=True)

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
"""


async def test_sqlite_several_processes_claim_each_job_once(tmp_path: Path) -> None:
    path = str(tmp_path / "multi.db")
    producer = SQLiteBackend(path, SoniqSettings())
    jobs = [new_job(queue="a" if i % 3 else "b", priority=1 + i % 5) for i in range(600)]
    try:
        await producer.enqueue(jobs)
    finally:
        await producer.close()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    queue_choices: list[list[str] | None] = [None, ["a", "b"], ["a"]]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            path,
            json.dumps(queues),
            str(len(queue_choices)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=env,
        )
        for queues in queue_choices
    ]
    try:
        outputs = await asyncio.wait_for(_run_children(procs), timeout=90)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    claims = [json.loads(out) for out in outputs]
    assert all(claims), "every process held a job at the barrier"
    every = [job_id for claimed in claims for job_id in claimed]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert set(every) == {j.id for j in jobs}
    check = SQLiteBackend(path, SoniqSettings())
    try:
        [stats_a, stats_b] = await check.queue_stats()
        assert stats_a.done + stats_b.done == 600
        assert stats_a.queued == stats_a.processing == stats_b.queued == 0
    finally:
        await check.close()


async def _run_children(procs: list[asyncio.subprocess.Process]) -> list[str]:
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            _, err = await proc.communicate()
            raise AssertionError(f"child failed to start: {line!r} {err.decode()}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode().strip().splitlines()[-1])
    return outputs


OPENER = r"""
import asyncio, sys, uuid
from soniq.backends.sqlite import SQLiteBackend
from soniq.job import NewJob

async def main(path):
    print("ready", flush=True)
    sys.stdin.readline()
    backend = SQLiteBackend(path)
    job = NewJob(id=str(uuid.uuid4()), job_name="t", args={}, args_json="{}", queue="default",
                 priority=100, max_attempts=1, scheduled_at=None, dedup_key=None)
    await backend.enqueue([job])  # opens the file and creates the schema on first use
    await backend.close()
    print(job.id, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_sqlite_several_processes_create_the_schema_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh.db")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPENER, path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT), env=env,
        )
        for _ in range(4)
    ]  # fmt: skip
    try:
        ids = await asyncio.wait_for(_run_children(procs), timeout=60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    check = SQLiteBackend(path, SoniqSettings())
    try:
        [migration] = await check.migration_status()
        assert migration.applied
        listed = await check.list_jobs(queue=None, status=None, limit=10, offset=0)
        assert {j.id for j in listed} == set(ids)
    finally:
        await check.close()


async def test_sqlite_prune_works_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soniq.backends import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "PRUNE_CHUNK", 3)
    backend = SQLiteBackend(str(tmp_path / "p.db"), SoniqSettings())
    try:
        await backend.enqueue([new_job() for _ in range(7)])
        claimed = await backend.claim(None, "w", 10)
        await backend.ack([Ack(j, Done(None)) for j in claimed], result_ttl=0.01)
        await wait_until(lambda: backend.prune(), timeout=5, message="rows pruned")
        assert await backend.list_jobs(queue=None, status=None, limit=10, offset=0) == []
    finally:
        await backend.close()
