"""Every access rule of the dashboard, over real HTTP against a real uvicorn.

Loopback callers come over TCP from 127.0.0.1; remote callers over a Unix
socket, where the server sees no peer address. Each refused write is followed
by a check that nothing changed.
"""

from __future__ import annotations

from typing import Any

import pytest

from soniq import Soniq
from soniq.dashboard import security
from tests.dashboard.conftest import Served, register

KEY = "k3y-for-tests"


async def dead_letter(app: Soniq) -> str:
    register(app)
    dead_id = await app.enqueue("dash.fail", args={"n": 1})
    await app.run_worker(run_once=True)
    return dead_id


async def replays(app: Soniq, dead_id: str) -> int:
    row = await app.dead_letter.get(dead_id)
    assert row is not None
    return int(row["resurrection_count"])


async def test_loopback_caller_may_write_without_a_key(app: Soniq, dashboard: Any) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app)
    async with served.client() as http:
        assert (await http.post(f"/api/dead-letter/{dead_id}/replay")).status_code == 200
    assert await replays(app, dead_id) == 1


@pytest.mark.parametrize(
    "proxy_header",
    [
        {"X-Forwarded-For": "127.0.0.1"},
        {"X-Forwarded-For": "203.0.113.9, 127.0.0.1"},
        {"Forwarded": "for=127.0.0.1"},
        {"X-Real-IP": "127.0.0.1"},
    ],
)
async def test_a_proxied_loopback_caller_cannot_write(
    app: Soniq, dashboard: Any, proxy_header: dict[str, str]
) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app)
    async with served.client(headers=proxy_header) as http:
        r = await http.post(f"/api/dead-letter/{dead_id}/replay")
        assert r.status_code == 403 and "API key" in r.json()["detail"]
        assert (await http.get("/api/stats")).status_code == 200  # reads stay open: no key set
    assert await replays(app, dead_id) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
async def test_cross_site_writes_are_refused(
    app: Soniq, dashboard: Any, headers: dict[str, str]
) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app, api_key=KEY)
    async with served.client() as http:
        for auth in ({}, {"Authorization": f"Bearer {KEY}"}):
            r = await http.post(f"/api/dead-letter/{dead_id}/replay", headers={**headers, **auth})
            assert r.status_code == 403 and "Cross-site" in r.json()["detail"], r.text
            form = await http.post(f"/dead-letter/{dead_id}/replay", headers=headers,
                                   data={"csrf": "guess"})  # fmt: skip
            assert form.status_code == 403
    assert await replays(app, dead_id) == 0


async def test_browser_writes_need_the_csrf_token(app: Soniq, dashboard: Any) -> None:
    dead_id = await dead_letter(app)
    served: Served = await dashboard(app)
    same_site = {"Origin": served.url, "Sec-Fetch-Site": "same-origin"}
    async with served.client(headers=same_site) as http:
        assert (await http.post(f"/api/dead-letter/{dead_id}/replay")).status_code == 403
        form = await http.post(f"/dead-letter/{dead_id}/replay", data={"csrf": "stale"})
        assert form.status_code == 403 and "reload the page" in form.text
        assert await replays(app, dead_id) == 0
        html = (await http.get("/dead-letter")).text
        token = html.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
        ok = await http.post(f"/dead-letter/{dead_id}/replay", data={"csrf": token},
                             follow_redirects=False)  # fmt: skip
        assert ok.status_code == 303 and "done=replayed" in ok.headers["location"]
        as_js = {"X-Soniq-CSRF": token, "Content-Type": "application/json"}
        api = await http.post(f"/api/dead-letter/{dead_id}/replay", headers=as_js)
        assert api.status_code == 200
    assert await replays(app, dead_id) == 2


@pytest.mark.parametrize("host", ["evil.example", "rebind.attacker.test:8080", "", "127.0.0.2"])
async def test_a_host_the_dashboard_does_not_serve_is_refused(
    app: Soniq, dashboard: Any, host: str
) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app)
    async with served.client(headers={"Host": host}) as http:
        read = await http.get("/api/stats")
        assert read.status_code == 400 and "allowed_hosts" in read.json()["detail"]
        assert (await http.get("/")).status_code == 400
        assert (await http.post(f"/api/dead-letter/{dead_id}/replay")).status_code == 400
    assert await replays(app, dead_id) == 0


async def test_allowed_hosts_extend_the_host_check(app: Soniq, dashboard: Any) -> None:
    served = await dashboard(app, allowed_hosts=["Jobs.Example.COM"])
    async with served.client(headers={"Host": "jobs.example.com:6161"}) as http:
        assert (await http.get("/api/stats")).status_code == 200
    async with served.client(headers={"Host": "localhost:6161"}) as http:
        assert (await http.get("/api/stats")).status_code == 200


async def test_remote_caller_without_a_configured_key_reads_but_cannot_write(
    app: Soniq, dashboard: Any
) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app)
    async with served.remote() as http:
        assert (await http.get("/api/stats")).status_code == 200
        r = await http.post(f"/api/dead-letter/{dead_id}/replay")
        assert r.status_code == 403
        assert (await http.delete(f"/api/dead-letter/{dead_id}")).status_code == 403
        assert "Replay" not in (await http.get("/dead-letter")).text.split("<tbody>")[1]
    assert await replays(app, dead_id) == 0


async def test_with_a_key_remote_callers_need_it_for_reads_and_writes(
    app: Soniq, dashboard: Any
) -> None:
    dead_id = await dead_letter(app)
    served = await dashboard(app, api_key=KEY)
    async with served.remote() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": KEY + "x"},
                        {"Authorization": f"Basic {KEY}"}):  # fmt: skip
            r = await http.get("/api/stats", headers=headers)
            assert r.status_code == 401 and "Invalid or missing API key" in r.json()["detail"]
            w = await http.post(f"/api/dead-letter/{dead_id}/replay", headers=headers)
            assert w.status_code == 401
        assert (await http.get("/")).status_code == 401
        assert (await http.get("/login")).status_code == 200
        assert (await http.get("/static/dashboard.css")).status_code == 200
        assert (await replays(app, dead_id)) == 0
        for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}):
            assert (await http.get("/api/stats", headers=headers)).status_code == 200
        assert (await http.get(f"/api/stats?api_key={KEY}")).status_code == 200
        w = await http.post(f"/api/dead-letter/{dead_id}/replay",
                            headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert w.status_code == 200
    assert await replays(app, dead_id) == 1
    async with served.client() as http:  # loopback: reads need no key even when one is set
        assert (await http.get("/api/stats")).status_code == 200


async def test_login_cookie_lets_a_remote_browser_in(app: Soniq, dashboard: Any) -> None:
    served = await dashboard(app, api_key=KEY)
    async with served.remote() as http:
        bad = await http.post("/login", data={"key": "nope"})
        assert bad.status_code == 401
        ok = await http.post("/login", data={"key": KEY}, follow_redirects=False)
        assert ok.status_code == 303
        cookie = ok.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert (await http.get("/jobs")).status_code == 200


@pytest.mark.parametrize("how", ["read_only", "env"])
async def test_read_only_hides_and_refuses_every_write(
    app: Soniq, dashboard: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    dead_id = await dead_letter(app)
    if how == "env":
        monkeypatch.setenv("SONIQ_DASHBOARD_WRITE_ENABLED", "false")
    served = await dashboard(app, api_key=KEY, read_only=how == "read_only")
    async with served.client(headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post(f"/api/dead-letter/{dead_id}/replay")
        assert r.status_code == 403 and "read-only" in r.json()["detail"]
        assert (await http.post("/api/dead-letter/purge", json={"all": True})).status_code == 403
        html = (await http.get(f"/jobs/{dead_id}")).text
        assert "<form" not in html.split("<main")[1] and "read-only" in html
        assert f"<title>Job {dead_id[:8]} · Soniq</title>" in html  # the title is the title
        assert 'name="ids"' not in (await http.get("/dead-letter")).text
    assert await replays(app, dead_id) == 0


def test_write_switch_parses_the_published_values() -> None:
    assert security.write_switch({}) is None
    assert security.write_switch({"SONIQ_DASHBOARD_WRITE_ENABLED": "TRUE"}) is True
    assert security.write_switch({"SONIQ_DASHBOARD_WRITE_ENABLED": "off"}) is False
    with pytest.raises(Exception, match="true or false"):
        security.write_switch({"SONIQ_DASHBOARD_WRITE_ENABLED": "maybe"})


def test_loopback_detection() -> None:
    assert security.is_loopback("127.0.0.1", {})
    assert security.is_loopback("127.8.9.10", {})
    assert security.is_loopback("::1", {})
    assert not security.is_loopback("10.0.0.1", {})
    assert not security.is_loopback(None, {})
    assert not security.is_loopback("not-an-ip", {})
    assert not security.is_loopback("127.0.0.1", {"x-forwarded-for": "127.0.0.1"})


def test_start_up_warns_when_bound_beyond_loopback_without_a_key() -> None:
    from soniq.dashboard.serve import exposure_warning

    assert exposure_warning("127.0.0.1", 6161, key_configured=False) is None
    assert exposure_warning("localhost", 6161, key_configured=False) is None
    assert exposure_warning("::1", 6161, key_configured=False) is None
    assert "SONIQ_DASHBOARD_API_KEY" in (
        exposure_warning("0.0.0.0", 6161, key_configured=False) or ""
    )
    assert exposure_warning("0.0.0.0", 6161, key_configured=True) is None
