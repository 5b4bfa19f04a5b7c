"""``enqueue_many`` at every batch size: the INSERT statement (small batches, dedup keys,
psycopg) and the COPY (big batches without dedup keys, asyncpg; a long batch streams into
it while it is built) write the same rows, return the same ids and notify
the same way (soniq/backends/postgres.py, ``_enqueue_on`` and ``enqueue_chunks``)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest

from soniq import Soniq
from soniq.app import STREAM_CHUNK
from soniq.backends import postgres as pg_backend
from soniq.enqueue import EnqueueOptions, job_chunks
from soniq.errors import EnqueueError, JobValidationError, SerializationError
from soniq.events import Subscriber
from soniq.job import NewJob
from tests.helpers import wait_until

COPY = pg_backend.COPY_MIN_JOBS
# Sizes on each side of the threshold, and a big one.
SIZES = sorted({1, 5, COPY - 1, COPY, 5000})


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def rows_in_order(db: asyncpg.Connection) -> list[Any]:
    return list(await db.fetch("SELECT * FROM soniq_jobs ORDER BY seq"))


@pytest.mark.parametrize("size", SIZES)
async def test_plain_batch_rows(app: Soniq, db: asyncpg.Connection, size: int) -> None:
    @app.job(name="bulk.plain", queue="bulk", priority=7, retries=2)
    async def job(n: int, tag: str = "x") -> None: ...

    items = [{"n": i, "tag": f"t{i}"} if i % 2 else {"n": i} for i in range(size)]
    ids = await app.enqueue_many(job, items)
    assert len(ids) == len(set(ids)) == size
    assert all(str(uuid.UUID(i)) == i for i in ids)
    assert ids == sorted(ids)  # one sorted run, also when it streams in parts
    rows = await rows_in_order(db)
    assert [str(r["id"]) for r in rows] == ids  # input order is insertion (FIFO) order
    assert [json.loads(r["args"]) for r in rows] == items
    for r in rows:
        assert (r["job_name"], r["queue"], r["priority"], r["max_attempts"]) == (
            "bulk.plain", "bulk", 7, 3,
        )  # fmt: skip
        assert (r["status"], r["attempts"], r["dedup_key"]) == ("queued", 0, None)
        assert r["scheduled_at"] == r["created_at"]  # run now: the database's now()


@pytest.mark.parametrize("size", [COPY - 1, 300])
async def test_scheduled_batch(app: Soniq, db: asyncpg.Connection, size: int) -> None:
    @app.job(name="bulk.later")
    async def job(n: int) -> None: ...

    at = datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    ids = await app.enqueue_many(job, [{"n": i} for i in range(size)], scheduled_at=at)
    assert len(ids) == size
    rows = await rows_in_order(db)
    assert {r["scheduled_at"] for r in rows} == {at}
    later = await app.enqueue_many(
        job, [{"n": i} for i in range(size)], scheduled_at=timedelta(hours=1)
    )
    runs = await db.fetch(
        "SELECT scheduled_at - now() AS d FROM soniq_jobs WHERE id = ANY($1::uuid[])", later
    )
    assert len(runs) == size
    assert all(timedelta(minutes=59) < r["d"] <= timedelta(hours=1) for r in runs)


@pytest.mark.parametrize("size", [5, COPY, 1000])
async def test_dedup_batch(app: Soniq, db: asyncpg.Connection, size: int) -> None:
    @app.job(name="bulk.unique", unique=True)
    async def job(n: int) -> None: ...

    before = await app.enqueue(job, n=3)  # a live job the batch collides with
    items = [{"n": i % (size // 2 + 1)} for i in range(size)]  # every key about twice
    ids = await app.enqueue_many(job, items)
    assert len(ids) == size
    first: dict[int, str] = {3: before}
    for item, job_id in zip(items, ids, strict=True):
        # the first row of a key wins; later rows (and the earlier job) give its id
        assert job_id == first.setdefault(item["n"], job_id)
    rows = await rows_in_order(db)
    assert [str(r["id"]) for r in rows] == list(first.values())
    assert len({r["dedup_key"] for r in rows}) == len(rows)
    # A second batch of the same keys is all duplicates: nothing written, same ids.
    assert await app.enqueue_many(job, items) == ids
    assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == len(rows)


async def test_mixed_batches_through_the_backend(app: Soniq, db: asyncpg.Connection) -> None:
    """Rows with and without dedup keys, and rows with and without a run time, in one
    list (the backend's protocol allows it even though one enqueue_many never makes it)."""

    @app.job(name="bulk.mixed")
    async def job(n: int) -> None: ...

    await app.ensure_initialized()
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    jobs: list[NewJob] = []
    for i in range(400):
        key = f"k{i % 50}" if i % 3 == 0 else None
        when = at if i % 4 == 0 else None
        jobs.append(app.build_job(job, kwargs={"n": i}, dedup_key=key, scheduled_at=when))
    ids = await app.backend.enqueue(jobs)
    winners: dict[str, str] = {}
    for j, job_id in zip(jobs, ids, strict=True):
        if j.dedup_key is None:
            assert job_id == j.id
        else:
            assert job_id == winners.setdefault(j.dedup_key, j.id)
    rows = await rows_in_order(db)
    written = [j for j in jobs if j.dedup_key is None or winners[j.dedup_key] == j.id]
    assert [str(r["id"]) for r in rows] == [j.id for j in written]
    for r, j in zip(rows, written, strict=True):
        assert r["dedup_key"] == j.dedup_key
        assert (r["scheduled_at"] == at) is (j.scheduled_at is not None)
    # And the same shapes without dedup keys: a COPY needs one column list.
    plain = [
        app.build_job(job, kwargs={"n": i}, scheduled_at=at if i % 2 else None) for i in range(100)
    ]
    assert await app.backend.enqueue(plain) == [j.id for j in plain]


async def test_validation_is_unchanged_for_big_batches(app: Soniq, db: asyncpg.Connection) -> None:
    """A refused row raises what ``enqueue`` raises for it, prefixed with its index."""

    @app.job(name="bulk.checked")
    async def job(n: int) -> None: ...

    good = [{"n": i} for i in range(2000)]
    for index, bad in ((2000, {"m": 1}), (1500, {"n": float("nan")}), (3, {"n": object()})):
        with pytest.raises(EnqueueError) as alone:
            app.build_job(job, kwargs=bad)
        with pytest.raises(type(alone.value)) as info:
            await app.enqueue_many(job, [*good[:index], bad, *good])
        assert isinstance(alone.value, (JobValidationError, SerializationError))
        assert info.value.message == f"Item {index}: {alone.value.message}"  # says which row
        assert info.value.context == {**alone.value.context, "index": index}
    with pytest.raises(TypeError, match=r"item 7 is a list"):
        await app.enqueue_many(job, [*good[:7], [1], *good])  # type: ignore[list-item]
    with pytest.raises(JobValidationError) as info:
        await app.enqueue_many(job, good, priority=0)
    assert info.value.message.startswith("Item 0: priority 0 is out of range")
    with pytest.raises(JobValidationError, match=r"queue name .* contains a NUL"):
        await app.enqueue_many(job, good, queue="a\x00b")
    assert await app.enqueue_many(job, [], priority=0) == []
    assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 0


async def test_one_notification_per_queue_per_batch(app: Soniq, pg_url: str) -> None:
    @app.job(name="bulk.notified", queue="bulk")
    async def job(n: int) -> None: ...

    @app.job(name="bulk.notified_once", queue="bulk_unique", unique=True)
    async def unique_job(n: int) -> None: ...

    payloads: list[str] = []
    listener = await asyncpg.connect(pg_url)
    await listener.add_listener("soniq_new_job", lambda *a: payloads.append(a[3]))
    try:
        await app.enqueue_many(job, [{"n": i} for i in range(1000)])
        await wait_until(lambda: payloads, timeout=5, message="COPY batch NOTIFY")
        await app.enqueue_many(unique_job, [{"n": i % 300} for i in range(1000)])
        await wait_until(lambda: len(payloads) >= 2, timeout=5, message="dedup batch NOTIFY")
        await app.enqueue_many(unique_job, [{"n": i} for i in range(300)])  # all duplicates
        await app.enqueue_many(job, [{"n": 1}], queue="marker")
        await wait_until(lambda: len(payloads) >= 3, timeout=5, message="marker NOTIFY")
        assert payloads == ["bulk", "bulk_unique", "marker"]
    finally:
        await listener.close()


async def test_a_listening_worker_wakes_for_a_batch(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="soniq.worker")
    app = Soniq(database_url=pg_url, poll_interval=30.0, pool_min_size=1, log_level="INFO")
    done: set[int] = set()

    @app.job(name="bulk.woken")
    async def job(n: int) -> None:
        done.add(n)

    try:
        await app.ensure_initialized()
        worker = asyncio.create_task(app.run_worker(concurrency=8))
        # Listening (its start line says so), then idle: the next poll is 30 s away.
        await wait_until(lambda: "LISTEN/NOTIFY" in caplog.text, message="worker listening")
        await app.enqueue_many(job, [{"n": i} for i in range(200)])
        await wait_until(lambda: len(done) == 200, timeout=15, message="woken by NOTIFY")
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    finally:
        await app.close()


@pytest.mark.parametrize("size", [5, 1000])
async def test_transactional_batch(app: Soniq, db: asyncpg.Connection, size: int) -> None:
    @app.job(name="bulk.tx")
    async def job(n: int) -> None: ...

    @app.job(name="bulk.tx_unique", unique=True)
    async def unique_job(n: int) -> None: ...

    await app.ensure_initialized()
    items = [{"n": i} for i in range(size)]
    async with app.backend.acquire() as conn:
        with pytest.raises(RuntimeError, match="roll back"):
            async with conn.transaction():
                await app.enqueue_many(job, items, connection=conn)
                await app.enqueue_many(unique_job, items, connection=conn)
                raise RuntimeError("roll back")
        assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 0
        async with conn.transaction():
            kept = await app.enqueue_many(job, items, connection=conn)
            unique = await app.enqueue_many(unique_job, items + items, connection=conn)
            assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 0  # not yet
        assert unique[:size] == unique[size:]
        # On the caller's own connection outside a transaction: written at once.
        more = await app.enqueue_many(job, items, connection=conn)
    rows = await db.fetch("SELECT id FROM soniq_jobs")
    assert {str(r["id"]) for r in rows} == set(kept + unique + more)


async def test_psycopg_connection_takes_the_insert(app: Soniq, db: asyncpg.Connection) -> None:
    psycopg = pytest.importorskip("psycopg")

    @app.job(name="bulk.psycopg", unique=True)
    async def job(n: int) -> None: ...

    @app.job(name="bulk.psycopg_plain")
    async def plain(n: int) -> None: ...

    await app.ensure_initialized()
    conn = await psycopg.AsyncConnection.connect(app.settings.database_url)
    async with conn, conn.transaction():
        ids = await app.enqueue_many(plain, [{"n": i} for i in range(500)], connection=conn)
        dup = await app.enqueue_many(job, [{"n": i % 100} for i in range(500)], connection=conn)
    assert len(set(ids)) == 500 and len(set(dup)) == 100
    assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 600


@pytest.fixture
def copies(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Each COPY of jobs (``_copy_jobs``), in order: its rows, and the parts they came in."""
    seen: list[tuple[int, int]] = []
    real = pg_backend._copy_jobs

    async def spy(conn: Any, parts: Iterator[Any], ids: list[str]) -> None:
        counted = [0]

        def counting() -> Iterator[Any]:
            for part in parts:
                counted[0] += 1
                yield part

        await real(conn, counting(), ids)
        seen.append((len(ids), counted[0]))

    monkeypatch.setattr(pg_backend, "_copy_jobs", spy)
    return seen


async def test_which_path_a_batch_takes(
    app: Soniq, db: asyncpg.Connection, copies: list[tuple[int, int]]
) -> None:
    """Pins the threshold the tests above straddle: COPY from COPY_MIN_JOBS rows without
    dedup keys and one column list, on asyncpg (a pooled or a caller's connection)."""

    @app.job(name="bulk.path")
    async def job(n: int) -> None: ...

    for size in (COPY - 1, COPY):
        await app.enqueue_many(job, [{"n": i} for i in range(size)])
        await app.enqueue_many(job, [{"n": i} for i in range(size)], unique=True)
    async with app.backend.acquire() as conn:
        await app.enqueue_many(job, [{"n": i} for i in range(COPY + 1)], connection=conn)
    at = datetime(2030, 1, 1, tzinfo=timezone.utc)
    mixed = [
        app.build_job(job, kwargs={"n": i}, scheduled_at=at if i else None) for i in range(COPY)
    ]
    await app.backend.enqueue(mixed)
    assert [rows for rows, _ in copies] == [COPY, COPY + 1]


async def test_big_batch_with_flow_control(app: Soniq, db: asyncpg.Connection) -> None:
    """Concurrency keys are written after a COPY, in its transaction, as after the INSERT."""

    @app.job(name="bulk.keyed", concurrency_key=lambda a: a["tenant"], max_concurrency_per_key=1)
    async def keyed(tenant: int, n: int) -> None: ...

    ids = await app.enqueue_many(keyed, [{"tenant": i % 3, "n": i} for i in range(COPY * 2)])
    rows = await db.fetch(
        "SELECT id, concurrency_key FROM soniq_jobs WHERE id = ANY($1::uuid[]) ORDER BY seq", ids
    )
    assert [r["concurrency_key"] for r in rows] == [str(i % 3) for i in range(COPY * 2)]


# --- long batches: streamed into one COPY while they are built ----------------------


def streamed(copies: list[tuple[int, int]]) -> list[int]:
    """The rows of each batch that streamed into its COPY in more than one part."""
    return [rows for rows, parts in copies if parts > 1]


async def test_which_long_batch_streams(
    app: Soniq, db: asyncpg.Connection, copies: list[tuple[int, int]]
) -> None:
    """Longer than one chunk, on the app's own connection, with no hook that rewrites
    the jobs: streamed. On a caller's connection, with dedup keys or with such a hook
    (signing, tracing): built whole first, as before."""

    @app.job(name="bulk.streamed")
    async def job(n: int) -> None: ...

    for size in (STREAM_CHUNK, STREAM_CHUNK + 1):
        await app.enqueue_many(job, [{"n": i} for i in range(size)])
        await app.enqueue_many(job, [{"n": i} for i in range(size)], unique=True)
    async with app.backend.acquire() as conn:
        await app.enqueue_many(job, [{"n": i} for i in range(500)], connection=conn)
    assert streamed(copies) == [STREAM_CHUNK + 1]

    class Stamp(Subscriber):
        def prepare_enqueue(self, jobs: list[NewJob]) -> list[NewJob]:
            return [dataclasses.replace(j, priority=9) for j in jobs]

    app.events.subscribe(Stamp())
    ids = await app.enqueue_many(job, [{"n": i} for i in range(500)])
    assert streamed(copies) == [STREAM_CHUNK + 1]
    priorities = await db.fetch("SELECT DISTINCT priority FROM soniq_jobs WHERE id = ANY($1)", ids)
    assert [r["priority"] for r in priorities] == [9]


def test_chunks_are_built_when_asked_for(app: Soniq) -> None:
    """The rows of a later chunk are checked only when it is built: the first chunk
    goes out while the rest of the batch is still unchecked."""

    @app.job(name="bulk.lazy")
    async def job(n: int) -> None: ...

    rows: list[dict[str, Any]] = [{"n": i} for i in range(250)]
    rows[180] = {"m": 1}
    chunks = job_chunks(app.registry, app.settings, job, rows, EnqueueOptions(), None, 100)
    first = next(chunks)
    assert [j.args for j in first] == rows[:100]
    with pytest.raises(JobValidationError) as info:
        next(chunks)
    assert info.value.context["index"] == 180


async def test_a_refused_row_aborts_the_stream_and_the_connection_lives_on(
    pg_url: str, db: asyncpg.Connection
) -> None:
    """On a pool of one connection: the COPY the refusal aborted leaves that connection
    usable (asyncpg sends CopyFail, then waits for the cancel it requests)."""
    app = Soniq(database_url=pg_url, pool_min_size=1, pool_max_size=1)

    @app.job(name="bulk.aborted")
    async def job(n: int) -> None: ...

    try:
        good = [{"n": i} for i in range(STREAM_CHUNK * 5)]
        for _ in range(3):
            with pytest.raises(SerializationError) as info:
                await app.enqueue_many(job, [*good, {"n": object()}, *good])
            assert info.value.context["index"] == len(good)
            assert await app.enqueue_many(job, good[:3]) != []
        assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 9
    finally:
        await app.close()


async def test_parts_of_one_stream_share_their_options(app: Soniq, db: asyncpg.Connection) -> None:
    """A later part the COPY cannot take (the protocol's misuse) aborts it: nothing is
    written, and the error says how to enqueue such jobs."""

    @app.job(name="bulk.parts")
    async def job(n: int) -> None: ...

    await app.ensure_initialized()
    plain = [app.build_job(job, kwargs={"n": i}) for i in range(60)]
    keyed = [app.build_job(job, kwargs={"n": i}, dedup_key=f"k{i}") for i in range(60)]
    with pytest.raises(ValueError, match="in a batch of their own"):
        await app.backend.enqueue_chunks(iter([plain[:30], keyed, plain[30:]]))
    assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == 0
    assert await app.backend.enqueue_chunks(iter([plain[:30], plain[30:]])) == [j.id for j in plain]


async def test_a_long_batch_checks_its_first_chunk_before_connecting() -> None:
    """The target, the options and the first chunk's rows are checked before the batch
    needs the database, as for a short batch: with no server, the error is the row's."""
    app = Soniq(database_url="postgresql://postgres@127.0.0.1:9/nowhere")

    @app.job(name="bulk.offline")
    async def job(n: int) -> None: ...

    rows: list[dict[str, Any]] = [{"n": i} for i in range(STREAM_CHUNK * 3)]
    rows[5] = {"m": 1}
    try:
        with pytest.raises(JobValidationError) as info:
            await app.enqueue_many(job, rows)
        assert info.value.context["index"] == 5
        with pytest.raises(JobValidationError, match="priority 0 is out of range"):
            await app.enqueue_many(job, rows[6:], priority=0)
    finally:
        await app.close()


async def test_a_streamed_batch_carries_what_observers_record(
    app: Soniq, db: asyncpg.Connection, copies: list[tuple[int, int]]
) -> None:
    """A webhook on job.enqueued records a delivery per job: the batch still streams, and
    the deliveries are written with the jobs, in their transaction; a refused row in a
    late part leaves neither jobs nor deliveries."""

    @app.job(name="bulk.hooked")
    async def job(n: int) -> None: ...

    await app.webhooks.register(
        "http://127.0.0.1:9/hook", events=["job.enqueued"], allow_private=True
    )
    size = STREAM_CHUNK * 2 + 5
    ids = await app.enqueue_many(job, [{"n": i} for i in range(size)])
    assert streamed(copies) == [size]
    deliveries = await db.fetch("SELECT job_id, event FROM soniq_webhook_deliveries")
    assert sorted(str(r["job_id"]) for r in deliveries) == sorted(ids)
    assert {r["event"] for r in deliveries} == {"job.queued"}

    bad: list[dict[str, Any]] = [{"n": i} for i in range(size)]
    bad[size - 1] = {"m": 1}
    with pytest.raises(JobValidationError):
        await app.enqueue_many(job, bad)
    assert await db.fetchval("SELECT count(*) FROM soniq_jobs") == size
    assert await db.fetchval("SELECT count(*) FROM soniq_webhook_deliveries") == size
