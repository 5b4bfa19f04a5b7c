"""``soniq dashboard`` as a user runs it: a real process serving the real dashboard."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

from tests.dashboard.conftest import free_port
from tests.processes import SoniqProcess


async def test_soniq_dashboard_serves_pages_until_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "SONIQ_DATABASE_URL": str(tmp_path / "jobs.db")}
    env.pop("SONIQ_JOBS_MODULES", None)
    proc = SoniqProcess(["dashboard", "--port", str(port)], env=env, cwd=tmp_path)
    try:
        proc.wait_for(f"Uvicorn running on http://127.0.0.1:{port}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            for path in ("/", "/jobs", "/api/stats"):
                r = await http.get(path)
                assert r.status_code == 200, (path, r.text[:300])
            assert (await http.get("/", headers={"Host": "evil.example"})).status_code == 400
        assert "without SONIQ_DASHBOARD_API_KEY" not in proc.output
    finally:
        assert proc.stop(signal.SIGTERM) == 0, proc.output
