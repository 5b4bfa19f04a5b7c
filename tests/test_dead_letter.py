"""``app.dead_letter``: list, get, count, replay, bulk replay and purge.

Dead letters are made the real way: a job with ``retries=0`` that fails once,
run by ``app.run_worker(run_once=True)``. PostgreSQL first; the same tests run
on SQLite and memory, since the service only speaks the backend protocol.
"""

from __future__ import annotations

from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import JobNotFoundError


@pytest.fixture
def dl_app(soniq_app: Soniq) -> Soniq:
    """An app on each backend (tests/backend_apps.py)."""
    return soniq_app


def register_jobs(app: Soniq) -> dict[str, Any]:
    """Two failing jobs (``retries=0``) on different queues; ``state["fail"]`` toggles failure."""
    state: dict[str, Any] = {"fail": True, "runs": []}

    @app.job(name="dl.charge", retries=0, queue="billing")
    async def charge(order: int) -> None:
        state["runs"].append(("charge", order))
        if state["fail"]:
            raise RuntimeError(f"card declined for order {order}")

    @app.job(name="dl.notify", retries=0, queue="emails")
    def notify(user: int) -> None:
        state["runs"].append(("notify", user))
        if state["fail"]:
            raise ValueError(f"no address for user {user}")

    state["charge"], state["notify"] = charge, notify
    return state


async def make_dead_letters(app: Soniq, charges: int = 2, notifies: int = 1) -> dict[str, Any]:
    state = register_jobs(app)
    ids = [await app.enqueue(state["charge"], order=i) for i in range(charges)]
    ids += [await app.enqueue(state["notify"], user=i) for i in range(notifies)]
    await app.run_worker(run_once=True)
    state["ids"] = ids
    return state


async def test_failed_job_lands_in_dead_letters_with_error_and_traceback(dl_app: Soniq) -> None:
    state = await make_dead_letters(dl_app, charges=1, notifies=0)
    [job_id] = state["ids"]

    rows = await dl_app.dead_letter.list_jobs()
    assert [r["id"] for r in rows] == [job_id]
    row = await dl_app.dead_letter.get(job_id)
    assert row is not None
    assert row["job_name"] == "dl.charge"
    assert row["queue"] == "billing"
    assert row["args"] == {"order": 0}
    assert row["attempts"] == 1 and row["max_attempts"] == 1
    assert "card declined for order 0" in row["last_error"]
    assert "RuntimeError" in (row["traceback"] or "")
    assert row["resurrection_count"] == 0
    assert (await dl_app.get_job_status(job_id) or {})["status"] == "dead_letter"


async def test_list_filters_count_and_alias(dl_app: Soniq) -> None:
    await make_dead_letters(dl_app, charges=3, notifies=2)

    assert await dl_app.dead_letter.count() == 5
    assert await dl_app.dead_letter.count(queue="billing") == 3
    assert await dl_app.dead_letter.count(task="dl.notify") == 2
    assert await dl_app.dead_letter.count(queue="billing", task="dl.notify") == 0
    emails = await dl_app.dead_letter.list(queue="emails")
    assert {r["job_name"] for r in emails} == {"dl.notify"}
    page1 = await dl_app.dead_letter.list_jobs(limit=2)
    page2 = await dl_app.dead_letter.list_jobs(limit=2, offset=2)
    page3 = await dl_app.dead_letter.list_jobs(limit=2, offset=4)
    seen = [r["id"] for r in page1 + page2 + page3]
    assert len(seen) == len(set(seen)) == 5
    assert await dl_app.dead_letter.get("00000000-0000-0000-0000-000000000000") is None
    assert await dl_app.dead_letter.get("not-a-uuid") is None


async def test_replay_queues_a_fresh_job_and_keeps_the_dead_letter(dl_app: Soniq) -> None:
    state = await make_dead_letters(dl_app, charges=1, notifies=0)
    [dead_id] = state["ids"]

    new_id = await dl_app.dead_letter.replay(dead_id)

    assert new_id != dead_id
    job = await dl_app.get_job(new_id)
    assert job is not None
    assert (job["status"], job["job_name"], job["queue"]) == ("queued", "dl.charge", "billing")
    assert job["args"] == {"order": 0} and job["attempts"] == 0
    row = await dl_app.dead_letter.get(dead_id)
    assert row is not None and row["resurrection_count"] == 1
    assert row["last_replayed_at"] is not None

    state["fail"] = False
    await dl_app.run_worker(run_once=True)
    assert (await dl_app.get_job_status(new_id) or {})["status"] == "done"
    assert state["runs"][-1] == ("charge", 0)


async def test_replay_unknown_id_raises_job_not_found(dl_app: Soniq) -> None:
    with pytest.raises(JobNotFoundError, match="No dead-letter job"):
        await dl_app.dead_letter.replay("00000000-0000-0000-0000-000000000000")
    with pytest.raises(JobNotFoundError):
        await dl_app.dead_letter.replay("nonsense")


async def test_bulk_replay_by_filter_ids_and_limit(dl_app: Soniq) -> None:
    state = await make_dead_letters(dl_app, charges=3, notifies=2)

    billing = await dl_app.dead_letter.bulk_replay(queue="billing")
    assert len(billing) == 3
    queued = await dl_app.list_jobs(status="queued")
    assert {j["id"] for j in queued} == set(billing)
    assert all(j["job_name"] == "dl.charge" for j in queued)

    picked = state["ids"][3:]  # the two notify jobs
    unknown = "00000000-0000-0000-0000-0000000000ff"
    again = await dl_app.dead_letter.bulk_replay(ids=[*picked, unknown])
    assert len(again) == 2
    limited = await dl_app.dead_letter.bulk_replay(task="dl.notify", limit=1)
    assert len(limited) == 1
    counts = [r["resurrection_count"] for r in await dl_app.dead_letter.list_jobs()]
    assert sorted(counts) == [1, 1, 1, 1, 2]


async def test_purge_by_id_ids_filter_and_all(dl_app: Soniq) -> None:
    state = await make_dead_letters(dl_app, charges=3, notifies=2)
    ids = state["ids"]

    assert await dl_app.dead_letter.purge(ids[0]) == 1
    assert await dl_app.dead_letter.purge(ids[0]) == 0
    assert await dl_app.dead_letter.purge(ids=[ids[1], "nonsense"]) == 1
    assert await dl_app.dead_letter.purge(task="dl.notify") == 2
    assert await dl_app.dead_letter.count() == 1
    with pytest.raises(ValueError, match="all=True"):
        await dl_app.dead_letter.purge()
    assert await dl_app.dead_letter.count() == 1
    assert await dl_app.dead_letter.purge(all=True) == 1
    assert await dl_app.dead_letter.list_jobs() == []


async def test_bulk_operations_work_across_chunks(
    dl_app: Soniq, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("soniq.dead_letter.CHUNK_SIZE", 2)
    await make_dead_letters(dl_app, charges=5, notifies=0)

    snapshot = await dl_app.dead_letter.ids()
    assert len(snapshot) == len(set(snapshot)) == 5
    replayed = await dl_app.dead_letter.bulk_replay()
    assert len(replayed) == 5
    assert await dl_app.dead_letter.purge(ids=snapshot) == 5
