"""End to end in headless Chromium: a real worker, real PostgreSQL, a real uvicorn.

Skipped (with the reason) where Chromium or the playwright package is missing;
.ci/run installs both. Screenshots of every page go to the test's artifacts
directory ($SONIQ_TEST_ARTIFACTS/dashboard, else the test's tmp_path).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from tests.helpers import wait_until

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAGES = {"overview": "/", "jobs": "/jobs", "dead-letters": "/dead-letter",
         "workers": "/workers", "schedules": "/schedules"}  # fmt: skip

playwright_api = pytest.importorskip("playwright.async_api", reason="pip install playwright")
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium", allow_module_level=True)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        launched = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        await launched.close()


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = os.environ.get("SONIQ_TEST_ARTIFACTS")
    folder = (Path(root) if root else tmp_path) / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def register(app: Soniq, state: dict[str, bool]) -> None:
    @app.job(name="shop.flaky", retries=0)
    async def flaky(order: int) -> str:
        if state["fail"]:
            raise RuntimeError(f"payment gateway down for order {order}")
        return f"charged {order}"

    @app.job(name="shop.receipt")
    async def receipt(to: str) -> None: ...


async def dead_count(app: Soniq) -> int:
    return await app.dead_letter.count()


async def test_every_page_search_replay_and_pause_with_a_real_worker(
    app: Soniq, dashboard: Any, browser: Any, artifacts: Path
) -> None:
    state = {"fail": True}
    register(app, state)
    await app.enqueue("shop.receipt", args={"to": "needle-42@example.com"})
    for i in range(5):
        await app.enqueue("shop.receipt", args={"to": f"someone{i}@example.com"})
    dead_id = await app.enqueue("shop.flaky", args={"order": 7})
    await app.scheduler.add("shop.receipt", every=3600, args={"to": "ops"}, name="hourly.receipt")
    worker = asyncio.create_task(app.run_worker(concurrency=2))
    try:
        await wait_until(lambda: dead_count(app), message="the dead letter")
        served = await dashboard(app)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        for name, path in PAGES.items():
            response = await page.goto(served.url + path)
            assert response.status == 200, path
            await page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
        phone = await browser.new_page(viewport={"width": 390, "height": 844})
        await phone.goto(served.url + "/jobs")
        await phone.screenshot(path=str(artifacts / "jobs-phone.png"), full_page=True)

        # Search by argument text through the filter form.
        await page.goto(served.url + "/jobs")
        await page.fill('input[name="q"]', "needle-42")
        await page.click('form.filters button[type="submit"]')
        await page.wait_for_url("**/jobs?q=needle-42*")
        rows = page.locator("table.jobs tbody tr")
        assert await rows.count() == 1
        assert "needle-42@example.com" in await rows.first.inner_text()

        # Replay the dead letter with a click; the worker runs the new job.
        state["fail"] = False
        await page.goto(served.url + "/dead-letter")
        await page.click(f'button[data-api$="/dead-letter/{dead_id}/replay"]')
        await page.wait_for_selector("text=Replayed.")
        dead = await app.dead_letter.get(dead_id)
        assert dead is not None and dead["resurrection_count"] == 1

        async def replay_done() -> bool:
            found = await app.list_jobs(status="done", limit=50)
            return any(j["job_name"] == "shop.flaky" for j in found)

        await wait_until(replay_done, message="the replayed job to run")
        await page.goto(served.url + "/jobs?task=shop.flaky&status=done")
        assert "shop.flaky" in await page.locator("table.jobs tbody").inner_text()
        await page.screenshot(path=str(artifacts / "replayed.png"), full_page=True)

        # Pause a schedule with a click; the live refresh shows the new state.
        await page.goto(served.url + "/schedules")
        await page.click('form[action$="/schedules/hourly.receipt/pause"] button')
        await page.wait_for_selector(".badge.s-paused")
        await page.wait_for_selector("text=Schedule paused.")
        schedule = await app.scheduler.get("hourly.receipt")
        assert schedule is not None and schedule.status == "paused"
        await page.screenshot(path=str(artifacts / "schedule-paused.png"), full_page=True)
        assert errors == []
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def test_reading_and_forms_with_javascript_off_and_cross_site_pages_refused(
    app: Soniq, dashboard: Any, browser: Any, artifacts: Path
) -> None:
    state = {"fail": True}
    register(app, state)
    dead_id = await app.enqueue("shop.flaky", args={"order": 1})
    await app.run_worker(run_once=True)
    later = await app.enqueue("shop.receipt", args={"to": "<b>bold</b>"}, scheduled_at=3600)
    served = await dashboard(app)

    # A page on another origin auto-submits a form and fires a fetch at the dashboard.
    evil = await browser.new_page()
    attack = f"""<html><body>
      <form id="f" method="post" action="{served.url}/dead-letter/{dead_id}/replay">
        <input name="csrf" value="guess"></form>
      <script>
        fetch("{served.url}/api/dead-letter/{dead_id}/replay", {{method: "POST", mode: "no-cors"}})
          .finally(() => document.getElementById("f").submit());
      </script></body></html>"""

    async def serve_evil(route: Any) -> None:
        await route.fulfill(status=200, content_type="text/html", body=attack)

    await evil.route("http://evil.test/**", serve_evil)
    await evil.goto("http://evil.test/")
    await evil.wait_for_load_state("networkidle")
    assert "Cross-site write refused" in await evil.content()
    dead = await app.dead_letter.get(dead_id)
    assert dead is not None and dead["resurrection_count"] == 0

    context = await browser.new_context(java_script_enabled=False)
    page = await context.new_page()
    await page.goto(served.url + "/jobs")
    assert await page.locator("label.live").is_hidden()
    assert "<b>bold</b>" in await page.locator("table.jobs").inner_text()  # shown as text
    await page.select_option('select[name="status"]', "queued")
    await page.click('form.filters button[type="submit"]')
    await page.wait_for_url("**status=queued*")
    await page.click(f'a[href$="/jobs/{later}"]')
    await page.click('form[action$="/cancel"] button')
    await page.wait_for_selector(".badge.s-cancelled")
    assert "Job cancelled." in await page.locator(".notice").inner_text()
    job = await app.get_job(later)
    assert job is not None and job["status"] == "cancelled"

    await page.goto(served.url + "/dead-letter")
    await page.check(f'input[name="ids"][value="{dead_id}"]')
    await page.click('#bulk .actions button:has-text("Replay selected")')
    await page.wait_for_selector("text=1 dead letter(s) replayed.")
    await page.goto(served.url + "/dead-letter/purge")
    await page.click('button[name="confirm"]')
    await page.wait_for_selector("text=1 dead letter(s) deleted.")
    await page.screenshot(path=str(artifacts / "no-js-purged.png"), full_page=True)
    assert await dead_count(app) == 0
    await context.close()
