"""The dashboard's pages and JSON API on each backend, through a real uvicorn.

Every page renders, every read endpoint answers with its documented shape,
writes do what they say, and hostile input gets a 404/422 with a JSON error,
never a 500.
"""

from __future__ import annotations

from typing import Any

import httpx

from soniq import Soniq
from tests.dashboard.conftest import register

PAGES = ["/", "/jobs", "/dead-letter", "/workers", "/schedules", "/dead-letter/purge"]


async def seed(app: Soniq) -> dict[str, Any]:
    """One done job, one queued job, one dead letter and one schedule."""
    register(app)
    done_id = await app.enqueue("dash.send", args={"to": "<script>alert(1)</script>"})
    dead_id = await app.enqueue("dash.fail", args={"n": 7})
    await app.run_worker(run_once=True)
    queued_id = await app.enqueue("dash.send", args={"to": "later@example.com"})
    await app.scheduler.add("dash.send", every=60, args={"to": "x"}, name="dash.every")
    return {"done": done_id, "dead": dead_id, "queued": queued_id}


async def test_every_page_and_read_endpoint_on_each_backend(
    soniq_app: Soniq, dashboard: Any
) -> None:
    ids = await seed(soniq_app)
    served = await dashboard(soniq_app)
    async with served.client() as http:
        for path in [*PAGES, f"/jobs/{ids['done']}", f"/jobs/{ids['dead']}"]:
            r = await http.get(path)
            assert r.status_code == 200, (path, r.text[:500])
            assert "text/html" in r.headers["content-type"]
        stats = (await http.get("/api/stats")).json()
        assert stats["done"] == 1 and stats["dead_letter"] == 1 and stats["queued"] == 1
        assert stats["total"] == 3
        [queue] = (await http.get("/api/queues")).json()
        assert queue["queue"] == "default" and queue["total"] == 3
        jobs = (await http.get("/api/jobs", params={"limit": 1})).json()
        assert [j["id"] for j in jobs["jobs"]] == [ids["queued"]] and jobs["next_cursor"]
        rest = (await http.get("/api/jobs", params={"cursor": jobs["next_cursor"]})).json()
        assert {j["id"] for j in rest["jobs"]} == {ids["done"]} and rest["next_cursor"] is None
        found = (await http.get("/api/jobs/search", params={"q": "later@"})).json()
        assert [j["id"] for j in found["jobs"]] == [ids["queued"]]
        dead = (await http.get(f"/api/jobs/{ids['dead']}")).json()
        assert dead["status"] == "dead_letter" and "boom 7" in dead["last_error"]
        assert "RuntimeError" in (dead["traceback"] or dead["last_error"])
        assert (await http.get(f"/api/jobs/{ids['done']}")).json()["result"].startswith("sent")
        timeline = (await http.get("/api/jobs/timeline", params={"hours": 1})).json()
        assert timeline["completed"] == 1 and timeline["failed"] == 1
        assert len(timeline["buckets"]) == 60
        types = (await http.get("/api/jobs/types")).json()["types"]
        assert {"dash.send", "dash.fail"} <= set(types)
        assert (await http.get("/api/dead-letter")).json()["total"] == 1
        assert (await http.get("/api/workers")).json() == []
        assert (await http.get("/api/workers/stats")).json()["total"] == 0
        [schedule] = (await http.get("/api/schedules")).json()
        assert schedule["name"] == "dash.every" and schedule["status"] == "active"
        health = (await http.get("/api/system/health")).json()
        assert health["status"] == "ok" and health["backend"] == soniq_app.backend.name
        metrics = (await http.get("/api/metrics", params={"hours": 2})).json()
        assert metrics["stats"]["total"] == 3
        assert (await http.get("/health")).json() == {"status": "ok"}
        assert (await http.get("/ready")).json() == {"status": "ready"}


async def test_writes_on_each_backend(soniq_app: Soniq, dashboard: Any) -> None:
    ids = await seed(soniq_app)
    served = await dashboard(soniq_app)
    async with served.client() as http:
        replay = await http.post(f"/api/dead-letter/{ids['dead']}/replay")
        assert replay.status_code == 200, replay.text
        replayed = await soniq_app.get_job(replay.json()["job_id"])
        assert replayed is not None and replayed["status"] == "queued"
        again = await http.post(f"/api/jobs/{ids['done']}/retry")
        assert (await soniq_app.get_job(again.json()["job_id"]))["job_name"] == "dash.send"  # type: ignore[index]
        assert (await http.post(f"/api/jobs/{ids['queued']}/retry")).status_code == 409
        assert (await http.post(f"/api/jobs/{ids['queued']}/cancel")).json() == {"cancelled": True}
        assert (await http.post(f"/api/jobs/{ids['queued']}/cancel")).status_code == 409
        assert (await http.delete(f"/api/jobs/{ids['queued']}")).json() == {"deleted": True}
        assert (await http.get(f"/api/jobs/{ids['queued']}")).status_code == 404
        assert (await http.post("/api/schedules/dash.every/pause")).json()["status"] == "paused"
        assert (await soniq_app.scheduler.get("dash.every")).status == "paused"  # type: ignore[union-attr]
        assert (await http.post("/api/schedules/dash.every/resume")).json()["status"] == "active"
        bulk = await http.post("/api/dead-letter/replay", json={"queue": "default"})
        assert bulk.json()["replayed"] == 1
        purge = await http.post("/api/dead-letter/purge", json={"ids": [ids["dead"]]})
        assert purge.json() == {"deleted": 1}
        assert (await http.delete(f"/api/dead-letter/{ids['dead']}")).status_code == 404


BAD_REQUESTS = [
    ("GET", "/api/jobs/not-a-uuid", None, 404),
    ("GET", "/api/jobs/00000000-0000-0000-0000-000000000000", None, 404),
    ("GET", "/api/jobs?limit=1000000000", None, 422),
    ("GET", "/api/jobs?limit=-1", None, 422),
    ("GET", "/api/jobs?limit=abc", None, 422),
    ("GET", "/api/jobs?status=exploded", None, 422),
    ("GET", "/api/jobs?cursor=%%%", None, 422),
    ("GET", "/api/jobs?cursor=bm90fGE", None, 422),
    ("GET", "/api/jobs?offset=99999999999", None, 422),
    ("GET", "/api/jobs?offset=5&task=x", None, 422),
    ("GET", "/api/jobs?q=" + "x" * 5000, None, 422),
    ("GET", "/api/jobs?q=%00", None, 422),
    ("GET", "/api/jobs/search", None, 422),
    ("GET", "/api/jobs/timeline?hours=0", None, 422),
    ("GET", "/api/jobs/timeline?hours=99999", None, 422),
    ("GET", "/api/dead-letter?limit=0", None, 422),
    ("POST", "/api/jobs/not-a-uuid/retry", None, 404),
    ("POST", "/api/jobs/00000000-0000-0000-0000-000000000000/cancel", None, 404),
    ("DELETE", "/api/jobs/%27%3B%20DROP%20TABLE%20soniq_jobs", None, 404),
    ("POST", "/api/dead-letter/nope/replay", None, 404),
    ("POST", "/api/dead-letter/replay", b"{not json", 422),
    ("POST", "/api/dead-letter/replay", b"[1, 2]", 422),
    ("POST", "/api/dead-letter/replay", b"{}", 422),
    ("POST", "/api/dead-letter/replay", b'{"ids": "abc"}', 422),
    ("POST", "/api/dead-letter/replay", b'{"ids": [1, 2]}', 422),
    ("POST", "/api/dead-letter/purge", b'{"queue": 5}', 422),
    ("POST", "/api/schedules/missing/pause", None, 404),
    ("GET", "/api/nothing-here", None, 404),
    ("GET", "/jobs/not-a-uuid", None, 404),
    ("GET", "/jobs?limit=99999", None, 422),
]


async def test_hostile_input_gets_a_clear_error_never_a_500(app: Soniq, dashboard: Any) -> None:
    register(app)
    await app.enqueue("dash.send", args={"to": "a"})
    served = await dashboard(app)
    async with served.client() as http:
        for method, path, body, status in BAD_REQUESTS:
            headers = {"Content-Type": "application/json"} if body else {}
            r = await http.request(method, path, content=body, headers=headers)
            assert r.status_code == status, (method, path, r.text[:300])
            if path.startswith("/api/") and "nothing-here" not in path:
                assert r.json()["detail"], path
    assert (await app.get_queue_stats())[0]["total"] == 1


async def test_arguments_and_errors_are_escaped_and_credentials_never_shown(
    app: Soniq, dashboard: Any
) -> None:
    register(app)
    job_id = await app.enqueue("dash.send", args={"to": "<script>alert(1)</script>"})
    served = await dashboard(app)
    async with served.client() as http:
        for path in ["/jobs", f"/jobs/{job_id}", "/jobs?q=%3Cscript%3E"]:
            html = (await http.get(path)).text
            assert "<script>alert(1)</script>" not in html
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        headers = (await http.get("/")).headers
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY"


def test_database_description_drops_credentials() -> None:
    from soniq.dashboard.web import describe_database

    shown = describe_database("postgresql://admin:s3cret@db.internal:5432/prod?sslmode=require")
    assert shown == "db.internal/prod" and "s3cret" not in shown and "admin" not in shown
    assert describe_database("/var/lib/jobs.db") == "jobs.db"


async def test_mounted_under_a_prefix_every_link_and_asset_works(
    app: Soniq, dashboard: Any
) -> None:
    from fastapi import FastAPI

    from soniq.dashboard import create_dashboard_app

    register(app)
    job_id = await app.enqueue("dash.send", args={"to": "a"})
    outer = FastAPI()
    outer.mount("/admin/queue", create_dashboard_app(app))
    served = await dashboard(app, asgi=outer)
    async with served.client() as http:
        html = (await http.get("/admin/queue/jobs")).text
        assert 'href="/admin/queue/static/dashboard.css"' in html
        assert f'href="/admin/queue/jobs/{job_id}"' in html
        assert 'href="/jobs' not in html and 'href="/"' not in html
        assert (await http.get("/admin/queue/static/dashboard.css")).status_code == 200
        assert (await http.get("/admin/queue/static/dashboard.js")).status_code == 200
        doc = (await http.get("/admin/queue/api/openapi.json")).json()
        assert doc["servers"] == [{"url": "/admin/queue"}]
        assert "/api/dead-letter/{job_id}/replay" in doc["paths"]
        r = await http.post(f"/admin/queue/jobs/{job_id}/cancel", follow_redirects=False,
                            data={"csrf": "x"}, headers={"Origin": served.url})  # fmt: skip
        assert r.status_code == 403
        assert (await app.get_job(job_id))["status"] == "queued"  # type: ignore[index]


async def test_openapi_lists_every_endpoint(app: Soniq, dashboard: Any) -> None:
    from soniq.dashboard.api import ENDPOINTS

    served = await dashboard(app)
    async with served.client() as http:
        doc = (await http.get("/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    operations = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert len(operations) == len(ENDPOINTS)
    for needed in [("GET", "/api/jobs"), ("POST", "/api/dead-letter/replay"),
                   ("DELETE", "/api/jobs/{job_id}"), ("GET", "/api/system/health"),
                   ("POST", "/api/schedules/{name}/pause")]:  # fmt: skip
        assert needed in operations


async def test_health_reports_an_unreachable_database(dashboard: Any, tmp_path: Any) -> None:
    broken = Soniq(database_url="postgresql://nobody:hunter2@127.0.0.1:1/nope", pool_min_size=1)
    served = await dashboard(broken, asgi=_no_lifespan(broken))
    async with served.client() as http:
        r = await http.get("/api/system/health")
        assert r.status_code == 503 and "SONIQ_DATABASE_URL" in r.json()["detail"]
        assert "hunter2" not in r.text
        assert (await http.get("/ready")).status_code == 503
        page = await http.get("/")
        assert page.status_code == 503 and "hunter2" not in page.text
    await broken.close()


def _no_lifespan(app: Soniq) -> Any:
    """The dashboard without its start-up database check (to see per-request errors)."""
    from soniq.dashboard import create_dashboard_app

    inner = create_dashboard_app(app)

    async def asgi(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            return
        await inner(scope, receive, send)

    return asgi


async def test_http_client_import_stays_out_of_soniq() -> None:
    import subprocess
    import sys

    code = (
        "import soniq, sys; print(any(m.startswith(('starlette', 'jinja2')) for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


__all__ = ["httpx"]


async def test_large_tables_get_estimated_done_counts_and_exact_live_ones(app: Soniq) -> None:
    """PostgreSQL above ``exact_below``: live statuses exact, done split by a sample."""
    import asyncpg

    register(app)
    ids = await app.enqueue_many("dash.send", [{"to": str(i)} for i in range(40)])
    await app.enqueue("dash.fail", args={"n": 1})
    await app.run_worker(run_once=True)
    await app.enqueue_many("dash.send", [{"to": "q"}] * 3, queue="other")
    await app.cancel_job(ids[0])  # already done: stays done
    conn = await asyncpg.connect(app.database_url)
    await conn.execute("ANALYZE soniq_jobs")
    await conn.close()
    counts = await app.backend.queue_counts(exact_below=1)
    assert counts.estimated is True
    by_queue = {s.queue: s for s in counts.stats}
    assert by_queue["other"].queued == 3 and by_queue["default"].dead_letter == 1
    assert by_queue["default"].done == 40  # a 100% sample of a small table is exact
    exact = {s.queue: s for s in await app.backend.queue_stats()}
    assert {
        q: (s.queued, s.processing, s.cancelled, s.dead_letter) for q, s in by_queue.items()
    } == {q: (s.queued, s.processing, s.cancelled, s.dead_letter) for q, s in exact.items()}


async def test_dead_letters_page_through_the_job_list_by_token(app: Soniq, dashboard: Any) -> None:
    register(app)
    await app.enqueue_many("dash.fail", [{"n": i} for i in range(3)])
    await app.run_worker(run_once=True)
    served = await dashboard(app)
    async with served.client() as http:
        seen: list[str] = []
        query: dict[str, Any] = {"status": "dead_letter", "limit": 2}
        while True:
            page = (await http.get("/api/jobs", params=query)).json()
            seen += [j["id"] for j in page["jobs"]]
            if not page["next_cursor"]:
                break
            query["cursor"] = page["next_cursor"]
    assert len(set(seen)) == 3 and len(seen) == 3


async def test_job_detail_shows_what_the_job_logged(soniq_app: Soniq, dashboard: Any) -> None:
    import logging

    @soniq_app.job(name="dash.chatty")
    async def chatty() -> None:
        logging.getLogger("shop").warning("card <b>4242</b> declined")

    job_id = await soniq_app.enqueue("dash.chatty")
    await soniq_app.run_worker(run_once=True)
    served = await dashboard(soniq_app)
    async with served.client() as http:
        logs = (await http.get(f"/api/jobs/{job_id}/logs")).json()["logs"]
        assert [(e["level"], e["message"]) for e in logs] == [
            ("WARNING", "card <b>4242</b> declined")
        ]
        html = (await http.get(f"/jobs/{job_id}")).text
        assert "card &lt;b&gt;4242&lt;/b&gt; declined" in html
        assert (await http.get("/api/jobs/not-a-uuid/logs")).status_code == 404
