"""Bad input never hurts: property tests over the enqueue API on every backend.

Each generated enqueue either works (the row reads back as given) or raises a
``soniq.errors`` exception and writes nothing; no driver or statement error
escapes. And a worker never stalls on a row it cannot decode: it dead-letters it
with the reason and goes on.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from soniq import Soniq
from soniq.errors import JobValidationError, SoniqError
from tests.backend_apps import AppFactory
from tests.worker_support import connect

TASK = "bad.input"
PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Text as callers really pass it: quotes, NUL, lone surrogates, SQL, huge strings.
NASTY = [
    "", " ", "'", '"', "\\", "\x00", "a\x00b", "\ud800", "x\udfff", "$1", "%s", "{}",
    "'; DROP TABLE soniq_jobs; --", "\u202eevil", "😀" * 70, "é" * 255, "q" * 256,
    "q" * 10_000, "soniq_new_job",
]  # fmt: skip
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
names = st.one_of(st.sampled_from(NASTY), any_text, st.integers(0, 12_000).map(lambda n: "n" * n))
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(10**4000, 10**4400),
    st.floats(), st.text(st.characters(exclude_categories=()), max_size=40),
)  # fmt: skip
json_like = st.recursive(
    leaves,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(any_text, kids, max_size=4),
    max_leaves=16,
)


def nested(depth: int) -> Any:
    value: Any = "core"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


arguments = st.dictionaries(
    st.text(max_size=12), json_like | st.integers(1, 1200).map(nested), max_size=4
)
priorities = st.one_of(st.none(), st.integers(-3, 1003), st.sampled_from([True, 1.5, "1", 10**20]))
times = st.one_of(
    st.none(),
    st.floats(),
    st.datetimes(timezones=st.sampled_from([None, timezone.utc, timezone(timedelta(hours=14)),
                                            timezone(timedelta(hours=-12))])),
)  # fmt: skip


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: PostgreSQL's jsonb writes numbers back in their own form."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b or math.isclose(float(a), float(b), rel_tol=1e-15, abs_tol=0.0)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


async def count_jobs(app: Soniq) -> int:
    return sum(s.total for s in await app.backend.queue_stats())


async def producer(app_factory: AppFactory) -> Soniq:
    """Enqueues by name whatever it is given: the storage rules are what is under test."""
    return await app_factory(enqueue_validation="none")


@pytest.mark.timeout(300)
@PROPERTY
@given(
    task=names, queue=st.none() | names, args=arguments, priority=priorities,
    dedup_key=st.none() | names, scheduled_at=times,
)  # fmt: skip
async def test_enqueue_works_or_raises_a_soniq_error(
    app_factory: AppFactory, task: str, queue: str | None, args: dict[str, Any],
    priority: Any, dedup_key: str | None, scheduled_at: Any,
) -> None:  # fmt: skip
    app = await producer(app_factory)
    before = await count_jobs(app)
    try:
        job_id = await app.enqueue(
            task, args=args, queue=queue, priority=priority, dedup_key=dedup_key,
            scheduled_at=scheduled_at,
        )  # fmt: skip
    except SoniqError:
        assert await count_jobs(app) == before, "a refused enqueue wrote something"
        return
    job = await app.backend.get_job(job_id)
    assert job is not None
    if await count_jobs(app) == before:  # a duplicate of an earlier example's job
        assert dedup_key is not None and job.dedup_key == dedup_key
        return
    assert (job.job_name, job.queue) == (task, queue or "default")
    assert same(job.args, json.loads(json.dumps(args)))


@PROPERTY
@given(items=st.lists(arguments, min_size=1, max_size=5), queue=st.none() | names)
async def test_enqueue_many_writes_all_or_nothing(
    app_factory: AppFactory, items: list[dict[str, Any]], queue: str | None
) -> None:
    app = await producer(app_factory)
    before = await count_jobs(app)
    try:
        ids = await app.enqueue_many(TASK, items, queue=queue)
    except SoniqError:
        assert await count_jobs(app) == before
        return
    assert await count_jobs(app) == before + len(items) == before + len(set(ids))


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("queue", "q" * 10_000, "queue name is 10,000 characters long"),
        ("queue", "a\x00b", "NUL character"),
        ("queue", "\ud800", "lone surrogate"),
        ("task", "t" * 256, "task name is 256 characters long"),
        ("dedup_key", "k" * 513, "dedup_key is 513 characters long"),
    ],
)
async def test_limits_are_clear_errors_at_enqueue(
    app_factory: AppFactory, option: str, value: str, words: str
) -> None:
    """Found when tried: a 10,000-character queue name failed inside NOTIFY with the
    driver's own 'payload string too long'."""
    app = await producer(app_factory)
    task = value if option == "task" else TASK
    kwargs: dict[str, Any] = {"queue": value} if option == "queue" else {}
    if option == "dedup_key":
        kwargs = {"dedup_key": value}
    with pytest.raises(JobValidationError, match=words) as info:
        await app.enqueue(task, args={}, **kwargs)
    assert str(info.value).endswith(".")  # ...and says what to do
    assert await count_jobs(app) == 0
    ok = await app.enqueue(TASK, args={}, queue="é" * 255, dedup_key="😀" * 512)
    assert (await app.backend.get_job(ok)) is not None  # the limits themselves are fine


async def test_too_deep_arguments_are_refused_and_results_fail_the_attempt(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()

    @app.job(name="deep.echo", retries=0)
    async def echo(value: Any) -> Any:
        return nested(150)

    with pytest.raises(SoniqError, match="nested more than 100 levels"):
        await app.enqueue(echo, value=nested(101))
    job_id = await app.enqueue(echo, value=nested(99))
    assert await app.run_worker(run_once=True)
    dead = await app.backend.dead_letter_get(job_id)
    assert dead is not None and "nested more than 100 levels" in (dead.last_error or "")


# --- rows a worker cannot decode (written by hand or by another producer) ---------------

RAW_INSERT = """
INSERT INTO soniq_jobs (id, job_name, args, queue)
VALUES (gen_random_uuid(), $1, $2::jsonb, 'default')
RETURNING id::text
"""


async def test_worker_dead_letters_rows_it_cannot_decode_postgres(pg_url: str) -> None:
    app = Soniq(database_url=pg_url, poll_interval=0.2, pool_min_size=1)
    try:

        @app.job(name="raw.ok")
        async def ok(**kwargs: Any) -> str:
            return "fine"

        async with connect(pg_url) as conn:
            bad = [
                await conn.fetchval(RAW_INSERT, "raw.ok", text)
                for text in ("[1, 2]", '"just a string"', "[" * 1500 + "]" * 1500)
            ]
        good = await app.enqueue(ok, x=1)
        assert await app.run_worker(run_once=True)
        assert await app.get_result(good) == "fine"
        for job_id in bad:
            dead = await app.backend.dead_letter_get(job_id)
            assert dead is not None, job_id
            assert (dead.last_error or "").startswith("SerializationError: the job's arguments")
    finally:
        await app.close()


async def test_worker_dead_letters_rows_it_cannot_decode_sqlite(tmp_path: Any) -> None:
    import aiosqlite

    path = tmp_path / "raw.db"
    app = Soniq(database_url=str(path), poll_interval=0.2)
    try:

        @app.job(name="raw.ok")
        async def ok(**kwargs: Any) -> str:
            return "fine"

        good = await app.enqueue(ok, x=1)
        await app.enqueue(ok, x=2)
        await app.enqueue(ok, x=3)
        async with aiosqlite.connect(path) as db:
            rows = await db.execute_fetchall("SELECT id FROM soniq_jobs WHERE id <> ?", (good,))
            for (job_id,), text in zip(rows, ("not json", "[1]"), strict=True):
                await db.execute("UPDATE soniq_jobs SET args = ? WHERE id = ?", (text, job_id))
            await db.commit()
        assert await app.run_worker(run_once=True)
        assert await app.get_result(good) == "fine"
        for (job_id,) in rows:
            dead = await app.backend.dead_letter_get(job_id)
            assert dead is not None and "arguments" in (dead.last_error or "")
    finally:
        await app.close()


def test_naive_and_extreme_times_convert_or_refuse() -> None:
    from soniq.enqueue import to_utc

    assert to_utc(datetime(2030, 1, 1)) == datetime(2030, 1, 1, tzinfo=timezone.utc)
    for bad in (
        float("nan"),
        1e300,
        datetime(9999, 12, 31, 23, tzinfo=timezone(-timedelta(hours=12))),
    ):
        with pytest.raises(JobValidationError, match="finite number of seconds"):
            to_utc(bad)
