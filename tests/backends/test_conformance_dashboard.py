"""The dashboard's read verbs, once, for PostgreSQL, SQLite and memory.

``job_page`` (keyset pages with filters and search), ``job_task_names`` and
``job_throughput`` behave identically on every backend; each test runs three
times through the shared ``soniq_app`` fixture (tests/backend_apps.py).
"""

from __future__ import annotations

import itertools
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from soniq import Soniq
from soniq.backends import JobCursor, JobQuery
from soniq.job import Ack, Done, Fail, Job

# The app-on-each-backend fixtures (soniq_app, app_factory) come from tests/backend_apps.py.
from tests.backends.test_conformance import claim_one, tick, wid, worker_info
from tests.helpers import wait_until

UTC = timezone.utc


@pytest.fixture
def dash_app(soniq_app: Soniq) -> Soniq:
    """The conformance suite's app (one per backend) with two tasks registered."""
    register(soniq_app)
    return soniq_app


def register(app: Soniq) -> None:
    @app.job(name="dash.send")
    async def send(to: str = "", n: int = 0) -> None: ...

    @app.job(name="dash.other", queue="other")
    async def other(n: int = 0) -> None: ...


async def all_pages(app: Soniq, query: JobQuery) -> list[list[Job]]:
    """Follow the cursor from the first page to the last."""
    pages: list[list[Job]] = []
    after: JobCursor | None = None
    while True:
        page = await app.backend.job_page(
            JobQuery(
                queue=query.queue, status=query.status, task=query.task, search=query.search,
                after=after, limit=query.limit,
            )
        )  # fmt: skip
        if not page:
            return pages
        pages.append(page)
        last = page[-1]
        assert last.created_at is not None
        after = JobCursor(created_at=last.created_at, id=last.id)


async def test_job_page_walks_every_job_once_newest_first(dash_app: Soniq) -> None:
    # One enqueue_many shares one created_at on PostgreSQL: ties are ordered by id.
    first = await dash_app.enqueue_many("dash.send", [{"n": i} for i in range(7)])
    await tick()
    later = await dash_app.enqueue("dash.send", args={"n": 99})
    pages = await all_pages(dash_app, JobQuery(limit=3))
    assert [len(p) for p in pages] == [3, 3, 2]
    seen = [j.id for p in pages for j in p]
    assert sorted(seen) == sorted([*first, later])
    assert seen[0] == later
    keys = [(j.created_at, j.id) for p in pages for j in p]
    assert keys == sorted(keys, reverse=True)
    # list_jobs pages in the same order, ties within the batch included.
    assert [j["id"] for j in await dash_app.list_jobs(limit=4)] == seen[:4]
    assert [j["id"] for j in await dash_app.list_jobs(limit=4, offset=4)] == seen[4:]


async def test_job_page_filters_by_queue_status_and_task(dash_app: Soniq) -> None:
    sends = await dash_app.enqueue_many("dash.send", [{"n": i} for i in range(3)])
    others = await dash_app.enqueue_many("dash.other", [{"n": i} for i in range(2)])
    assert await dash_app.cancel_job(sends[0])
    page = dash_app.backend.job_page
    assert {j.id for j in await page(JobQuery(queue="other"))} == set(others)
    assert {j.id for j in await page(JobQuery(task="dash.send"))} == set(sends)
    assert [j.id for j in await page(JobQuery(status="cancelled"))] == [sends[0]]
    queued = await page(JobQuery(status="queued", task="dash.send"))
    assert {j.id for j in queued} == set(sends[1:])
    assert await page(JobQuery(status="done")) == []
    assert await page(JobQuery(queue="nope")) == []


async def test_job_page_status_done_and_pages_within_a_filter(dash_app: Soniq) -> None:
    ids = await dash_app.enqueue_many("dash.send", [{"n": i} for i in range(5)])
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    claimed = await dash_app.backend.claim(None, worker, 3)
    await dash_app.backend.ack([Ack(c, Done("1")) for c in claimed], result_ttl=60)
    pages = await all_pages(dash_app, JobQuery(status="done", limit=2))
    assert sorted(j.id for p in pages for j in p) == sorted(c.id for c in claimed)
    assert all(j.status == "done" and j.result == 1 for p in pages for j in p)
    queued = await all_pages(dash_app, JobQuery(status="queued", limit=1))
    assert {j.id for p in queued for j in p} == set(ids) - {c.id for c in claimed}


async def test_job_page_search_by_id_or_argument_text(dash_app: Soniq) -> None:
    hit = await dash_app.enqueue("dash.send", args={"to": "Alice@Example.com"})
    odd = await dash_app.enqueue("dash.send", args={"to": "50%_off\\sale"})
    await dash_app.enqueue("dash.send", args={"to": "bob@example.com"})
    page = dash_app.backend.job_page
    assert [j.id for j in await page(JobQuery(search="alice@"))] == [hit]
    assert [j.id for j in await page(JobQuery(search="  ALICE  "))] == [hit]
    assert [j.id for j in await page(JobQuery(search=hit))] == [hit]
    assert [j.id for j in await page(JobQuery(search=hit.upper()))] == [hit]
    # LIKE wildcards in the search text are literal characters.
    assert [j.id for j in await page(JobQuery(search="%_o"))] == [odd]
    assert [j.id for j in await page(JobQuery(search="0%_off\\s"))] == [odd]
    assert [j.id for j in await page(JobQuery(search="%"))] == [odd]
    uni = await dash_app.enqueue("dash.send", args={"to": 'Zoë "quoted"'})
    assert [j.id for j in await page(JobQuery(search='zoë "QUOTED'))] == [uni]
    assert await page(JobQuery(search=str(uuid.uuid4()))) == []
    assert await page(JobQuery(search="example.com", task="dash.other")) == []
    assert len(await page(JobQuery(search="example.com"))) == 2


async def test_job_page_cursor_of_a_foreign_shape_matches_nothing(dash_app: Soniq) -> None:
    await dash_app.enqueue("dash.send", args={"n": 1})
    far_future = datetime.now(UTC) + timedelta(days=1)
    assert len(await dash_app.backend.job_page(JobQuery(after=JobCursor(far_future, "zz")))) in (
        0,
        1,
    )
    last = JobCursor(datetime(2000, 1, 1, tzinfo=UTC), str(uuid.uuid4()))
    assert await dash_app.backend.job_page(JobQuery(after=last)) == []


async def test_job_task_names_include_dead_letters(dash_app: Soniq) -> None:
    assert await dash_app.backend.job_task_names() == []
    await dash_app.enqueue("dash.send", args={"n": 1})
    await dash_app.enqueue("dash.other", args={"n": 1})
    await dash_app.enqueue("dash.other", args={"n": 2})

    @dash_app.job(name="dash.doomed", retries=0)
    async def doomed() -> None: ...

    await dash_app.enqueue("dash.doomed")
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    claimed = await claim_one(dash_app, worker, None)
    while claimed.job_name != "dash.doomed":
        claimed = await claim_one(dash_app, worker, None)
    await dash_app.backend.ack([Ack(claimed, Fail("boom", None))], result_ttl=60)
    assert await dash_app.backend.job_task_names() == ["dash.doomed", "dash.other", "dash.send"]


async def test_job_throughput_counts_completions_and_dead_letters(dash_app: Soniq) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    assert await dash_app.backend.job_throughput(since, 60) == []
    await dash_app.enqueue_many("dash.send", [{"n": i} for i in range(4)])
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    claimed = await dash_app.backend.claim(None, worker, 4)
    acks = [Ack(c, Done(None)) for c in claimed[:3]] + [Ack(claimed[3], Fail("x", None))]
    await dash_app.backend.ack(acks, result_ttl=60)
    buckets = await dash_app.backend.job_throughput(since, 60)
    assert sum(b.completed for b in buckets) == 3
    assert sum(b.failed for b in buckets) == 1
    for b in buckets:
        assert b.start.tzinfo is not None
        assert b.start.timestamp() % 60 == 0
        assert since - timedelta(minutes=1) <= b.start <= datetime.now(UTC)
    assert await dash_app.backend.job_throughput(datetime.now(UTC) + timedelta(hours=1), 60) == []


async def test_job_throughput_keeps_completions_whatever_result_ttl(app_factory: Any) -> None:
    """Done rows are deleted at once with result_ttl=0; the worker's rollup
    (throughput_add, flushed each heartbeat and at shutdown) still counts them."""
    app = await app_factory(result_ttl=0)
    register(app)
    since = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) // 60 * 60 - 60, UTC)
    await app.enqueue_many("dash.send", [{"n": i} for i in range(3)])
    await app.enqueue_many("dash.other", [{"n": i} for i in range(2)])
    assert await app.run_worker(concurrency=2, run_once=True)
    assert await app.backend.job_page(JobQuery(status="done")) == []  # gone already

    async def completed() -> int:
        return sum(b.completed for b in await app.backend.job_throughput(since, 60))

    await wait_until(lambda: _equals(completed(), 5), message="5 completions counted")
    await app.enqueue("dash.send", args={"n": 9})  # a second drain adds to the same rows
    assert await app.run_worker(run_once=True)
    await wait_until(lambda: _equals(completed(), 6), message="6 completions counted")


async def test_prune_drops_rollup_rows_older_than_8_days(soniq_app: Soniq) -> None:
    now = datetime.fromtimestamp(int(datetime.now(UTC).timestamp()) // 60 * 60, UTC)
    old = now - timedelta(days=9)
    await soniq_app.backend.throughput_add({(old, "default"): 4, (now, "default"): 2})
    await soniq_app.backend.throughput_add({(now, "default"): 1, (now, "other"): 1})
    buckets = await soniq_app.backend.job_throughput(now - timedelta(days=10), 3600)
    assert sorted(b.completed for b in buckets) == [4, 4]
    await soniq_app.backend.prune()
    [recent] = await soniq_app.backend.job_throughput(now - timedelta(days=10), 3600)
    assert recent.completed == 4 and recent.start <= now < recent.start + timedelta(hours=1)


async def _equals(count: Any, expected: int) -> bool:
    return bool(await count == expected)


async def test_queue_counts_are_exact_below_the_threshold(dash_app: Soniq) -> None:
    await dash_app.enqueue_many("dash.send", [{"n": i} for i in range(3)])
    await dash_app.enqueue("dash.other", args={"n": 1})
    counts = await dash_app.backend.queue_counts(exact_below=1_000_000)
    assert counts.estimated is False
    assert counts.stats == await dash_app.backend.queue_stats()


async def test_running_jobs_are_listed_in_place_with_the_others(dash_app: Soniq) -> None:
    """Processing rows are left out of PostgreSQL's listing indexes (0009, so a claim
    writes none of their entries): every listing still shows them where they belong."""
    ids = []
    for n in range(4):
        ids.append(await dash_app.enqueue("dash.send", args={"n": n}))
        await tick()
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    running = await claim_one(dash_app, worker, None)  # the oldest: FIFO
    assert running.id == ids[0]
    newest_first = list(reversed(ids))

    pages = await all_pages(dash_app, JobQuery(limit=3))
    assert [j.id for p in pages for j in p] == newest_first
    by_task = await all_pages(dash_app, JobQuery(task="dash.send", limit=3))
    assert [j.id for p in by_task for j in p] == newest_first
    assert [j["id"] for j in await dash_app.list_jobs(limit=10)] == newest_first
    assert [j["id"] for j in await dash_app.list_jobs(limit=2, offset=2)] == newest_first[2:]
    processing = await dash_app.backend.list_jobs(
        queue=None, status="processing", limit=9, offset=0
    )
    assert [j.id for j in processing] == [running.id]
    queued = await dash_app.backend.list_jobs(queue=None, status="queued", limit=9, offset=0)
    assert [j.id for j in queued] == newest_first[:3]


async def test_task_names_include_a_task_whose_only_job_is_running(dash_app: Soniq) -> None:
    await dash_app.enqueue("dash.other", args={"n": 1})
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    await claim_one(dash_app, worker, None)
    assert await dash_app.backend.job_task_names() == ["dash.other"]


async def test_every_status_is_listed_in_place_within_a_task(dash_app: Soniq) -> None:
    """PostgreSQL reads done rows and the others through different indexes (0010), and
    counts queued rows through a claim index: a task's pages, with or without a status,
    hold each of its jobs where it belongs, and the counts and the task names see every
    status."""
    sends, others = [], []
    for n in range(6):
        sends.append(await dash_app.enqueue("dash.send", args={"n": n}))
        others.append(await dash_app.enqueue("dash.other", args={"n": n}))
        await tick()
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    claimed = await dash_app.backend.claim(None, worker, 4)  # FIFO: send0 other0 send1 other1
    assert [c.id for c in claimed] == [sends[0], others[0], sends[1], others[1]]
    await dash_app.backend.ack([Ack(c, Done(None)) for c in claimed[:2]], result_ttl=60)
    assert await dash_app.cancel_job(sends[2])
    newest_first = list(reversed(sends))

    def listed(pages: list[list[Job]]) -> list[str]:
        return [j.id for p in pages for j in p]

    assert listed(await all_pages(dash_app, JobQuery(task="dash.send", limit=2))) == newest_first
    by_status = {"queued": newest_first[:3], "cancelled": [sends[2]], "processing": [sends[1]]}
    for status, expected in {**by_status, "done": [sends[0]]}.items():
        pages = await all_pages(dash_app, JobQuery(task="dash.send", status=status, limit=2))
        assert listed(pages) == expected, status
    queued = await all_pages(dash_app, JobQuery(status="queued", queue="other", limit=3))
    assert listed(queued) == list(reversed(others[2:]))
    stats = {s["queue"]: s for s in await dash_app.get_queue_stats()}
    assert stats["default"] == {
        "queue": "default", "total": 6, "queued": 3, "processing": 1, "done": 1,
        "dead_letter": 0, "cancelled": 1,
    }  # fmt: skip
    assert stats["other"] == {
        "queue": "other", "total": 6, "queued": 4, "processing": 1, "done": 1,
        "dead_letter": 0, "cancelled": 0,
    }  # fmt: skip
    assert await dash_app.backend.job_task_names() == ["dash.other", "dash.send"]

    @dash_app.job(name="dash.waiting")
    async def waiting() -> None: ...

    await dash_app.enqueue("dash.waiting")  # a task whose only job is queued
    assert await dash_app.backend.job_task_names() == ["dash.other", "dash.send", "dash.waiting"]


async def test_every_filter_pages_like_a_sort_of_all_jobs(dash_app: Soniq) -> None:
    """PostgreSQL reads the jobs that are not done range by range, one per (status,
    queue, task), and merges them (0010_lean_enqueue.sql): every combination of filters,
    paged by cursor and by offset, lists what filtering and sorting all the jobs gives."""
    made = []
    for n in range(4):
        for name, into in itertools.product(("dash.send", "dash.other"), ("default", "other")):
            made.append(await dash_app.enqueue(name, args={"n": n}, queue=into))
            await tick()
    worker = wid()
    await dash_app.backend.register_worker(worker_info(worker))
    claimed = await dash_app.backend.claim(None, worker, 6)
    await dash_app.backend.ack([Ack(c, Done(None)) for c in claimed[::2]], result_ttl=60)
    for job_id in made[-5::2]:
        assert await dash_app.cancel_job(job_id)
    jobs = [job for job_id in made if (job := await dash_app.backend.get_job(job_id))]
    statuses = {j.status for j in jobs}
    assert statuses == {"queued", "processing", "done", "cancelled"}

    def expected(queue: str | None, status: str | None, task: str | None) -> list[str]:
        wanted = {"queue": queue, "status": status, "job_name": task}
        chosen = [j for j in jobs if all(v in (None, getattr(j, k)) for k, v in wanted.items())]
        return [j.id for j in sorted(chosen, key=lambda j: (j.created_at, j.id), reverse=True)]

    for queue, status, task in itertools.product(
        (None, "default", "other"), (None, *sorted(statuses)), (None, "dash.send", "dash.other")
    ):
        query = JobQuery(queue=queue, status=status, task=task, limit=2)
        pages = await all_pages(dash_app, query)
        assert [j.id for p in pages for j in p] == expected(queue, status, task), query
        if task is None:
            listed = [
                j.id
                for offset in range(0, len(jobs), 3)
                for j in await dash_app.backend.list_jobs(
                    queue=queue, status=status, limit=3, offset=offset
                )
            ]
            assert listed == expected(queue, status, None), (queue, status)
    assert await dash_app.backend.list_jobs(queue=None, status="nope", limit=5, offset=0) == []
    assert await dash_app.backend.job_page(JobQuery(status="nope")) == []
