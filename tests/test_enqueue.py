"""``enqueue`` / ``schedule`` / ``enqueue_many`` against PostgreSQL: shapes, options, validation."""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from soniq import Soniq, task_ref
from soniq.backends.postgres import COPY_MIN_JOBS
from soniq.errors import (
    EnqueueError,
    JobValidationError,
    SerializationError,
    UnknownTaskError,
)
from tests.helpers import FAST_SETTINGS, wait_until


class EmailArgs(BaseModel):
    to: str
    subject: str
    body: str


@pytest.fixture
async def db(pg_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg_url)
    yield conn
    await conn.close()


async def count(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM soniq_jobs"))


def register_send_email(app: Soniq) -> Any:
    @app.job(name="users.send_email")
    async def send_email(to: str, subject: str, body: str) -> None: ...

    return send_email


# --- the three shapes -------------------------------------------------------------------


async def test_callable_shape(app: Soniq, db: asyncpg.Connection) -> None:
    send_email = register_send_email(app)
    job_id = await app.enqueue(send_email, to="a@b.com", subject="Hi", body="Hello")
    assert isinstance(job_id, str)
    assert str(uuid.UUID(job_id)) == job_id
    row = await db.fetchrow("SELECT * FROM soniq_jobs WHERE id = $1", uuid.UUID(job_id))
    assert row is not None
    assert row["job_name"] == "users.send_email"
    assert json.loads(row["args"]) == {"to": "a@b.com", "subject": "Hi", "body": "Hello"}
    assert row["queue"] == "default"
    assert row["priority"] == 100
    assert row["status"] == "queued"
    assert row["attempts"] == 0
    assert row["max_attempts"] == 4
    assert row["dedup_key"] is None
    assert row["worker_id"] is None and row["lease"] is None
    assert row["result"] is None and row["last_error"] is None
    assert row["started_at"] is None and row["completed_at"] is None
    now = await db.fetchval("SELECT now()")
    assert abs((row["scheduled_at"] - now).total_seconds()) < 5
    assert abs((row["created_at"] - now).total_seconds()) < 5


async def test_string_shape(app: Soniq, db: asyncpg.Connection) -> None:
    register_send_email(app)
    job_id = await app.enqueue(
        "users.send_email", args={"to": "a@b.com", "subject": "Hi", "body": "Hello"}
    )
    row = await db.fetchrow("SELECT job_name, args FROM soniq_jobs WHERE id = $1::uuid", job_id)
    assert row["job_name"] == "users.send_email"
    assert json.loads(row["args"])["to"] == "a@b.com"


async def test_task_ref_shape_cross_service(app: Soniq, db: asyncpg.Connection) -> None:
    # The producer does not register the handler: the TaskRef carries name, model, queue.
    send_email_ref = task_ref("users.send_email", EmailArgs, default_queue="emails")
    job_id = await app.enqueue(
        send_email_ref, args={"to": "a@b.com", "subject": "Hi", "body": "Hello"}
    )
    row = await db.fetchrow("SELECT job_name, queue FROM soniq_jobs WHERE id = $1::uuid", job_id)
    assert (row["job_name"], row["queue"]) == ("users.send_email", "emails")
    override = await app.enqueue(
        send_email_ref, args={"to": "x", "subject": "s", "body": "b"}, queue="other", priority=3
    )
    row = await db.fetchrow("SELECT queue, priority FROM soniq_jobs WHERE id = $1::uuid", override)
    assert (row["queue"], row["priority"]) == ("other", 3)
    with pytest.raises(JobValidationError, match="EmailArgs"):
        await app.enqueue(send_email_ref, args={"to": "a@b.com"})
    assert await count(db) == 2


async def test_task_ref_of_local_job_checks_signature(app: Soniq, db: asyncpg.Connection) -> None:
    register_send_email(app)
    ref = task_ref("users.send_email")
    with pytest.raises(JobValidationError):
        await app.enqueue(ref, args={"to": "a"})
    await app.enqueue(ref, args={"to": "a", "subject": "s", "body": "b"})
    assert await count(db) == 1


async def test_task_ref_without_args(app: Soniq, db: asyncpg.Connection) -> None:
    job_id = await app.enqueue(task_ref("other.service.ping"))
    row = await db.fetchrow("SELECT args, queue FROM soniq_jobs WHERE id = $1::uuid", job_id)
    assert json.loads(row["args"]) == {} and row["queue"] == "default"


# --- options ------------------------------------------------------------------------------


async def test_every_option(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job(queue="jobq", priority=50)
    async def task(x: int) -> None: ...

    when = datetime(2031, 1, 1, 9, 0, tzinfo=timezone.utc)
    job_id = await app.enqueue(
        task, x=1, priority=7, queue="urgent", scheduled_at=when, dedup_key="k-1"
    )
    row = await db.fetchrow("SELECT * FROM soniq_jobs WHERE id = $1::uuid", job_id)
    assert (row["priority"], row["queue"], row["dedup_key"]) == (7, "urgent", "k-1")
    assert row["scheduled_at"] == when
    # Defaults from the registration when options are omitted.
    default_id = await app.enqueue(task, x=2)
    row = await db.fetchrow("SELECT * FROM soniq_jobs WHERE id = $1::uuid", default_id)
    assert (row["priority"], row["queue"], row["dedup_key"]) == (50, "jobq", None)


async def test_unique_option_overrides_registration(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def sync_user(user_id: int) -> None: ...

    a = await app.enqueue(sync_user, user_id=1, unique=True)
    b = await app.enqueue(sync_user, user_id=1, unique=True)
    c = await app.enqueue(sync_user, user_id=1)  # not unique: a new job
    assert a == b != c
    key = await db.fetchval("SELECT dedup_key FROM soniq_jobs WHERE id = $1::uuid", a)
    assert key is not None and key.startswith(
        sync_user.__qualname__.join(["tests.test_enqueue.", ""])
    )

    @app.job(unique=True)
    async def unique_job(user_id: int) -> None: ...

    d = await app.enqueue(unique_job, user_id=1)
    e = await app.enqueue(unique_job, user_id=1, unique=False)
    assert d != e
    assert await count(db) == 4


async def test_unique_hash_is_canonical(app: Soniq) -> None:
    @app.job(unique=True)
    async def job(a: int, b: dict[str, int]) -> None: ...

    first = await app.enqueue(job, a=1, b={"x": 1, "y": 2})
    again = await app.enqueue(job, b={"y": 2, "x": 1}, a=1)
    other = await app.enqueue(job, a=2, b={"x": 1, "y": 2})
    assert first == again != other


async def test_naive_scheduled_at_is_utc(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job() -> None: ...

    naive = datetime(2030, 6, 1, 12, 0)
    aware_other_tz = datetime(2030, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    a = await app.enqueue(job, scheduled_at=naive)
    b = await app.enqueue(job, scheduled_at=aware_other_tz)
    expected = datetime(2030, 6, 1, 12, 0, tzinfo=timezone.utc)
    for job_id in (a, b):
        stored = await db.fetchval(
            "SELECT scheduled_at FROM soniq_jobs WHERE id = $1::uuid", job_id
        )
        assert stored == expected
    got = await app.get_job(a)
    assert got is not None and got["scheduled_at"] == expected
    assert got["scheduled_at"].utcoffset() == timedelta(0)


async def test_scheduled_job_is_not_claimed_early(app: Soniq) -> None:
    ran: list[int] = []

    @app.job()
    async def later(n: int) -> None:
        ran.append(n)

    await app.enqueue(later, n=1, scheduled_at=datetime.now(timezone.utc) + timedelta(hours=1))
    await app.enqueue(later, n=2)
    await app.run_worker(run_once=True)
    assert ran == [2]


async def test_schedule_with_datetime_and_seconds(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def send_report(user_id: int) -> None: ...

    run_at = datetime(2030, 1, 1, 9, 0, tzinfo=timezone.utc)
    a = await app.schedule(send_report, run_at=run_at, user_id=42)
    row = await db.fetchrow("SELECT scheduled_at, args FROM soniq_jobs WHERE id = $1::uuid", a)
    assert row["scheduled_at"] == run_at and json.loads(row["args"]) == {"user_id": 42}

    before = datetime.now(timezone.utc)
    b = await app.schedule(send_report, 60, user_id=1)
    c = await app.schedule(send_report, 2.5, user_id=2, queue="q", priority=5)
    sb = await db.fetchval("SELECT scheduled_at FROM soniq_jobs WHERE id = $1::uuid", b)
    sc = await db.fetchrow(
        "SELECT scheduled_at, queue, priority FROM soniq_jobs WHERE id = $1::uuid", c
    )
    assert 59 <= (sb - before).total_seconds() <= 65
    assert 2 <= (sc["scheduled_at"] - before).total_seconds() <= 7
    assert (sc["queue"], sc["priority"]) == ("q", 5)

    register_send_email(app)
    d = await app.schedule("users.send_email", 30, args={"to": "a", "subject": "s", "body": "b"})
    assert (await app.get_job(d))["job_name"] == "users.send_email"  # type: ignore[index]


# --- NOTIFY ---------------------------------------------------------------------------------


async def test_each_enqueue_notifies(app: Soniq, pg_url: str) -> None:
    @app.job(queue="emails")
    async def job(n: int) -> None: ...

    payloads: list[str] = []
    listener = await asyncpg.connect(pg_url)
    await listener.add_listener("soniq_new_job", lambda *a: payloads.append(a[3]))
    try:
        await app.enqueue(job, n=1)
        await wait_until(lambda: payloads == ["emails"], timeout=5, message="first NOTIFY")
        await app.enqueue(job, n=2, queue="other")
        await wait_until(lambda: len(payloads) == 2, timeout=5, message="second NOTIFY")
        assert payloads == ["emails", "other"]
        await app.enqueue_many(job, [{"n": 3}, {"n": 4}])
        await wait_until(lambda: len(payloads) >= 3, timeout=5, message="batch NOTIFY")
        assert payloads[2] == "emails"
    finally:
        await listener.close()


async def test_duplicate_enqueue_does_not_notify(app: Soniq, pg_url: str) -> None:
    @app.job()
    async def job() -> None: ...

    payloads: list[str] = []
    listener = await asyncpg.connect(pg_url)
    await listener.add_listener("soniq_new_job", lambda *a: payloads.append(a[3]))
    try:
        await app.enqueue(job, dedup_key="k")
        await wait_until(lambda: payloads, timeout=5)
        await app.enqueue(job, dedup_key="k")
        await app.enqueue(job, dedup_key="marker")
        await wait_until(lambda: len(payloads) >= 2, timeout=5)
        assert len(payloads) == 2
    finally:
        await listener.close()


# --- validation: nothing written -------------------------------------------------------------


async def test_unknown_task_name(app: Soniq, db: asyncpg.Connection) -> None:
    register_send_email(app)
    with pytest.raises(UnknownTaskError) as info:
        await app.enqueue("users.send_emial", args={})
    message = str(info.value)
    assert "users.send_emial" in message and "users.send_email" in message
    assert "TaskRef" in message
    assert isinstance(info.value, EnqueueError)
    assert await count(db) == 0


async def test_unregistered_callable(app: Soniq, db: asyncpg.Connection) -> None:
    async def not_a_job() -> None: ...

    with pytest.raises(UnknownTaskError, match=r"@app\.job"):
        await app.enqueue(not_a_job)
    assert await count(db) == 0


async def test_unknown_task_name_strict_is_the_default(
    app: Soniq, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    assert app.settings.enqueue_validation == "strict"
    with pytest.raises(UnknownTaskError, match="SONIQ_ENQUEUE_VALIDATION=warn"):
        await app.enqueue("elsewhere.job", args={"a": 1})
    with pytest.raises(UnknownTaskError):
        await app.enqueue_many("elsewhere.job", [{"a": 1}, {"a": 2}])
    assert await count(db) == 0
    assert not [r for r in caplog.records if r.name == "soniq.enqueue"]


def unknown_name_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "soniq.enqueue" and r.levelno == logging.WARNING
    ]


async def test_enqueue_validation_warn_logs_once_per_name_per_instance(
    pg_url: str, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="soniq.enqueue")
    first = Soniq(pg_url, enqueue_validation="warn")
    second = Soniq(pg_url, enqueue_validation="WARN")  # case does not matter
    try:
        await first.enqueue("billing.charge", args={"order": 1})
        await first.enqueue("billing.charge", args={"order": 2})
        await first.enqueue_many("billing.refund", [{"order": 3}, {"order": 4}])
        await first.enqueue_many("billing.refund", [{"order": 5}])
        warnings = unknown_name_warnings(caplog)
        assert len(warnings) == 2, warnings
        assert "'billing.charge'" in warnings[0] and "'billing.refund'" in warnings[1]
        assert "SONIQ_ENQUEUE_VALIDATION=none" in warnings[0]  # says how to silence it
        # The memory of warned names belongs to the instance, not to the process.
        await second.enqueue("billing.charge", args={"order": 6})
        assert len(unknown_name_warnings(caplog)) == 3
        assert await count(db) == 6
        names = await db.fetch("SELECT DISTINCT job_name FROM soniq_jobs ORDER BY 1")
        assert [r["job_name"] for r in names] == ["billing.charge", "billing.refund"]
    finally:
        await first.close()
        await second.close()


async def test_enqueue_validation_none_writes_silently_and_still_checks_the_rest(
    pg_url: str,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG, logger="soniq.enqueue")
    monkeypatch.setenv("SONIQ_ENQUEUE_VALIDATION", "none")
    app = Soniq(pg_url)
    try:
        assert app.settings.enqueue_validation == "none"
        job_id = await app.enqueue("elsewhere.job", args={"a": 1}, queue="remote", priority=7)
        await app.enqueue("elsewhere.job", args={"a": 2})
        assert not [r for r in caplog.records if r.name == "soniq.enqueue"]
        row = await db.fetchrow("SELECT * FROM soniq_jobs WHERE id = $1", uuid.UUID(job_id))
        assert row is not None
        assert (row["job_name"], row["queue"], row["priority"]) == ("elsewhere.job", "remote", 7)
        assert json.loads(row["args"]) == {"a": 1}
        # Only the name check is relaxed: bad arguments and options are still refused.
        with pytest.raises(SerializationError):
            await app.enqueue("elsewhere.job", args={"when": object()})
        with pytest.raises(JobValidationError):
            await app.enqueue("elsewhere.job", args={}, priority=0)
        assert await count(db) == 2
    finally:
        await app.close()


async def test_worker_dead_letters_a_name_it_does_not_have(pg_url: str) -> None:
    """A row written by a relaxed producer reaches a worker without the handler: one claim,
    then the dead letters, with the published package's exact words (alerts match on them)."""
    producer = Soniq(pg_url, enqueue_validation="none", **FAST_SETTINGS)
    consumer = Soniq(pg_url, **FAST_SETTINGS)

    @consumer.job(name="something.else")
    async def something_else() -> None: ...

    try:
        job_id = await producer.enqueue("elsewhere.job", args={"a": 1})
        assert await consumer.run_worker(run_once=True)
        status = await consumer.get_job_status(job_id)
        assert status is not None and status["status"] == "dead_letter"
        dead = await consumer.dead_letter.get(job_id)
        assert dead is not None
        assert dead["last_error"] == "Job elsewhere.job not registered."
        assert dead["attempts"] == 1  # no retries spent on a job that cannot run here
    finally:
        await producer.close()
        await consumer.close()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"to": "a", "subject": "s"},  # missing
        {"to": "a", "subject": "s", "body": "b", "cc": "x"},  # unexpected
        {},
    ],
)
async def test_args_not_binding(app: Soniq, db: asyncpg.Connection, kwargs: dict[str, Any]) -> None:
    send_email = register_send_email(app)
    with pytest.raises(JobValidationError, match=r"users\.send_email"):
        await app.enqueue(send_email, **kwargs)
    with pytest.raises(JobValidationError):
        await app.enqueue("users.send_email", args=kwargs)
    assert await count(db) == 0


async def test_not_json_serialisable(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job(payload: Any) -> None: ...

    bad_values = (
        object(), {1, 2}, datetime.now(), b"bytes", float("nan"), float("inf"),
        {"nested": [float("-inf")]}, "nul\x00char", "lone \ud800 surrogate",
    )  # fmt: skip
    for bad in bad_values:
        with pytest.raises(SerializationError, match="JSON"):
            await app.enqueue(job, payload=bad)
        with pytest.raises(SerializationError):
            await app.enqueue_many(job, [{"payload": 1}, {"payload": bad}])
    assert await count(db) == 0
    # Edge cases that are valid JSON for jsonb round-trip unchanged.
    fine = ["emoji \U0001f600", "a literal \\u0000 text", {"k": [1, 2.5, None, True]}]
    for value in fine:
        job_id = await app.enqueue(job, payload=value)
        assert (await app.get_job(job_id))["args"] == {"payload": value}  # type: ignore[index]


async def test_validate_model_rejects(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job(validate=EmailArgs)
    async def send(to: str, subject: str, body: Any) -> None: ...

    with pytest.raises(JobValidationError, match="EmailArgs"):
        await app.enqueue(send, to="a", subject="s", body={"not": "a string"})
    assert await count(db) == 0


@pytest.mark.parametrize("priority", [0, 1001, -1, "high", 1.5])
async def test_priority_out_of_range(app: Soniq, db: asyncpg.Connection, priority: Any) -> None:
    @app.job()
    async def job() -> None: ...

    with pytest.raises(JobValidationError, match="priority"):
        await app.enqueue(job, priority=priority)
    assert await count(db) == 0
    await app.enqueue(job, priority=1)
    await app.enqueue(job, priority=1000)
    assert await count(db) == 2


async def test_bad_scheduled_at(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job() -> None: ...

    with pytest.raises(JobValidationError, match="scheduled_at"):
        await app.enqueue(job, scheduled_at="tomorrow")  # type: ignore[arg-type]
    assert await count(db) == 0


async def test_misuse_type_errors(app: Soniq, db: asyncpg.Connection) -> None:
    send_email = register_send_email(app)
    ref = task_ref("users.send_email")
    with pytest.raises(TypeError, match="args="):
        await app.enqueue(send_email, args={"to": "a"}, subject="s")
    with pytest.raises(TypeError, match="args="):
        await app.enqueue("users.send_email", to="a", subject="s", body="b")
    with pytest.raises(TypeError, match="args="):
        await app.enqueue(ref, to="a", subject="s", body="b")
    for target in (42, None, ["users.send_email"], b"users.send_email"):
        with pytest.raises(TypeError, match="target"):
            await app.enqueue(target)
    assert await count(db) == 0


async def test_callable_with_args_dict_only(app: Soniq) -> None:
    """args= alone with a callable is accepted (the function's arguments in a dict)."""
    send_email = register_send_email(app)
    job_id = await app.enqueue(send_email, args={"to": "a", "subject": "s", "body": "b"})
    assert (await app.get_job(job_id))["args"]["to"] == "a"  # type: ignore[index]


# --- enqueue_many ------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [COPY_MIN_JOBS - 1, 500])
async def test_enqueue_many_statements(app: Soniq, db: asyncpg.Connection, n: int) -> None:
    """Below COPY_MIN_JOBS one INSERT (one round trip); from it on a COPY, which
    asyncpg's query logger does not report, then the one NOTIFY statement."""

    @app.job(queue="bulk")
    async def job(n: int) -> None: ...

    await app.ensure_initialized()
    statements: list[str] = []
    async with app.backend.acquire() as conn:
        # asyncpg reports each statement it sends (Soniq's, and its own one-time type
        # introspection, which is not counted).
        def log_query(record: Any) -> None:
            statements.append(record.query)

        conn.add_query_logger(log_query)
        ids = await app.enqueue_many(job, [{"n": i} for i in range(n)], connection=conn)
        conn.remove_query_logger(log_query)
    ours = [q for q in statements if "soniq_" in q]
    assert len(ours) == 1, statements
    assert ("INSERT INTO soniq_jobs" in ours[0]) is (n < COPY_MIN_JOBS), ours
    assert len(ids) == len(set(ids)) == n
    rows = await db.fetch("SELECT id, args FROM soniq_jobs WHERE queue = 'bulk'")
    assert {str(r["id"]) for r in rows} == set(ids)
    by_id = {str(r["id"]): json.loads(r["args"])["n"] for r in rows}
    assert [by_id[i] for i in ids] == list(range(n))  # ids come back in input order


async def test_enqueue_many_without_connection(app: Soniq, db: asyncpg.Connection) -> None:
    register_send_email(app)
    items = [{"to": f"u{i}", "subject": "s", "body": "b"} for i in range(3)]
    ids = await app.enqueue_many("users.send_email", items, priority=5, queue="mail")
    assert len(ids) == 3
    rows = await db.fetch("SELECT queue, priority FROM soniq_jobs")
    assert {(r["queue"], r["priority"]) for r in rows} == {("mail", 5)}
    assert await app.enqueue_many("users.send_email", []) == []


async def test_enqueue_many_validates_everything_first(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job(n: int) -> None: ...

    with pytest.raises(JobValidationError):
        await app.enqueue_many(job, [{"n": 1}, {"m": 2}])
    with pytest.raises(SerializationError):
        await app.enqueue_many(job, [{"n": 1}, {"n": object()}])
    with pytest.raises(JobValidationError):
        await app.enqueue_many(job, [{"n": 1}], priority=0)
    with pytest.raises(UnknownTaskError):
        await app.enqueue_many("nope", [{"n": 1}])
    assert await count(db) == 0


async def test_enqueue_many_dedup(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job(unique=True)
    async def sync_user(user_id: int) -> None: ...

    existing = await app.enqueue(sync_user, user_id=1)
    ids = await app.enqueue_many(
        sync_user, [{"user_id": 1}, {"user_id": 2}, {"user_id": 2}, {"user_id": 3}]
    )
    assert ids[0] == existing
    assert ids[1] == ids[2] != existing
    assert len(set(ids)) == 3
    assert await count(db) == 3


async def test_enqueue_many_is_transactional(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job(n: int) -> None: ...

    await app.ensure_initialized()

    class Boom(Exception):
        pass

    with pytest.raises(Boom):
        async with app.backend.acquire() as conn, conn.transaction():
            await app.enqueue_many(job, [{"n": 1}, {"n": 2}], connection=conn)
            raise Boom
    assert await count(db) == 0


async def test_concurrent_enqueues_get_distinct_ids(app: Soniq, db: asyncpg.Connection) -> None:
    @app.job()
    async def job(n: int) -> None: ...

    ids = await asyncio.gather(*(app.enqueue(job, n=i) for i in range(50)))
    assert len(set(ids)) == 50
    assert await count(db) == 50
