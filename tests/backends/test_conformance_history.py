"""Pruning with history, once, for PostgreSQL, SQLite and memory (issue 15, item 4).

``prune()`` deletes in bounded batches, each its own transaction, until a batch comes
back short; the batch size is the backend's ``prune_batch`` (a test sets 2, so a handful
of rows spans several batches). What it deletes is exactly the done rows whose result
TTL has passed: never queued, processing or cancelled rows, nor done rows still kept.
``observability_prune`` walks job logs in windows of the same size.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

from soniq import Soniq
from soniq.job import Ack, ClaimedJob, Done
from tests.backends.test_conformance import new_job, wid
from tests.backends.test_conformance_observability import log

UTC = timezone.utc


async def claim_queue(app: Soniq, queue: str, n: int) -> list[ClaimedJob]:
    claimed = await app.backend.claim([queue], wid(), n)
    assert len(claimed) == n
    return claimed


async def test_prune_removes_exactly_the_expired_done_rows_in_batches(soniq_app: Soniq) -> None:
    backend = soniq_app.backend
    backend.prune_batch = 2  # type: ignore[attr-defined]  # every backend reads it
    expired = await backend.enqueue([new_job(queue="h.expired") for _ in range(7)])
    kept = await backend.enqueue([new_job(queue="h.kept") for _ in range(2)])
    queued = await backend.enqueue([new_job(queue="h.queued")])
    running = await backend.enqueue([new_job(queue="h.running")])
    cancelled = await backend.enqueue([new_job(queue="h.cancelled")])
    assert await backend.cancel_job(cancelled[0])
    await claim_queue(soniq_app, "h.running", 1)
    short = await claim_queue(soniq_app, "h.expired", 7)
    long = await claim_queue(soniq_app, "h.kept", 2)
    await backend.ack([Ack(j, Done("1")) for j in long], result_ttl=300)
    await backend.ack([Ack(j, Done("1")) for j in short], result_ttl=0.05)
    await asyncio.sleep(0.1)

    assert await backend.prune() == 7  # 2 + 2 + 2 + 1: four batches, the last one short
    for job_id in expired:
        assert await backend.get_job(job_id) is None
    states = {
        job_id: row.status
        for job_id in [*kept, *queued, *running, *cancelled]
        if (row := await backend.get_job(job_id)) is not None
    }
    assert states == {
        kept[0]: "done", kept[1]: "done", queued[0]: "queued", running[0]: "processing",
        cancelled[0]: "cancelled",
    }  # fmt: skip
    assert await backend.prune() == 0


async def test_prune_of_a_multiple_of_the_batch_ends_on_an_empty_batch(soniq_app: Soniq) -> None:
    backend = soniq_app.backend
    backend.prune_batch = 2  # type: ignore[attr-defined]
    await backend.enqueue([new_job(queue="h.even") for _ in range(4)])
    claimed = await claim_queue(soniq_app, "h.even", 4)
    await backend.ack([Ack(j, Done(None)) for j in claimed], result_ttl=0.05)
    await asyncio.sleep(0.1)
    assert await backend.prune() == 4
    assert await backend.list_jobs(queue="h.even", status=None, limit=10, offset=0) == []


async def test_observability_prune_walks_logs_in_windows(soniq_app: Soniq) -> None:
    """Logs of jobs that are gone go, window after window; a kept job keeps its logs."""
    b = soniq_app.backend
    [kept] = await b.enqueue([new_job(queue="h.logs")])
    gone = [str(uuid.uuid4()) for _ in range(5)]
    at = datetime.now(UTC) - timedelta(minutes=1)
    records = [log(job_id, f"{job_id} {i}", 20, at) for job_id in gone for i in range(2)]
    records[3:3] = [log(kept, f"kept {i}", 20, at) for i in range(3)]  # between orphans
    await b.observe_write(records)
    b.prune_batch = 2  # type: ignore[attr-defined]
    assert await b.observability_prune() == 10
    assert [e.message for e in await b.job_logs(kept)] == ["kept 0", "kept 1", "kept 2"]
    for job_id in gone:
        assert await b.job_logs(job_id) == []
    assert await b.observability_prune() == 0
