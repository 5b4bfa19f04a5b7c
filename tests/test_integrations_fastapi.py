"""FastAPI: the FastAPI guide's complete example under a real uvicorn with a real worker
process, and ``soniq.integrations.fastapi`` (lifespan, dependency)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from fastapi import Depends, FastAPI

from soniq import Soniq
from soniq.errors import SoniqError
from soniq.integrations.fastapi import dependency, lifespan
from tests.docs_samples import SAMPLE_URL, block_starting
from tests.helpers import FAST_SETTINGS, wait_until, wait_until_sync
from tests.processes import SoniqProcess

# The example's helpers are the reader's own code; these stand in for them.
STUBS = """
import types

_ids = iter(range(1, 1_000_000))


async def save_user(name, email):
    return types.SimpleNamespace(id=next(_ids), name=name, email=email)


async def save_order(product_id, quantity):
    return types.SimpleNamespace(id=next(_ids), product_id=product_id, quantity=quantity)


async def get_user(user_id):
    return types.SimpleNamespace(id=user_id, email=f"user{user_id}@example.com")


async def get_order(order_id):
    return types.SimpleNamespace(id=order_id)


async def send_email(to, template):
    print(f"sent {template} to {to}", flush=True)


async def fulfill(order):
    print(f"fulfilled order {order.id}", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def example_app(tmp_path: Path, pg_url: str) -> Path:
    """tmp/app/main.py = the guide's complete example (URL pointed at the test database)."""
    sample = block_starting("guides/fastapi.md", "# app/main.py").code
    package = tmp_path / "app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "stubs.py").write_text(STUBS)
    (package / "main.py").write_text(
        "from app.stubs import *  # noqa\n" + SAMPLE_URL.sub(pg_url, sample)
    )
    return tmp_path


@pytest.fixture
def uvicorn(example_app: Path) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
         "--port", str(port)],
        cwd=example_app, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, f"uvicorn exited {proc.returncode}"
        try:
            httpx.get(f"{base}/docs", timeout=1)
        except httpx.TransportError:
            return False
        return True

    try:
        wait_until_sync(up, timeout=20, message="uvicorn serving")
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


async def test_guide_complete_example_under_uvicorn_with_a_worker(
    example_app: Path, uvicorn: str, pg_url: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    env.update(SONIQ_DATABASE_URL=pg_url, SONIQ_JOBS_MODULES="app.main",
               PYTHONPATH=str(example_app))  # fmt: skip
    worker = SoniqProcess(["worker", "--concurrency", "4"], env=env, cwd=example_app)
    try:
        async with httpx.AsyncClient(base_url=uvicorn) as client:
            user = await client.post("/users", params={"name": "Ada", "email": "ada@example.com"})
            order = await client.post("/orders", params={"product_id": 7, "quantity": 2})
        assert user.status_code == 200 and order.status_code == 200
        user_id, order_id = user.json()["id"], order.json()["order_id"]

        conn = await asyncpg.connect(pg_url)
        try:

            async def all_done() -> bool:
                rows = await conn.fetch("SELECT status FROM soniq_jobs")
                return len(rows) == 2 and all(r["status"] == "done" for r in rows)

            await wait_until(all_done, timeout=20, message="both jobs done by the worker")
        finally:
            await conn.close()
        worker.wait_for(f"sent welcome to user{user_id}@example.com")
        worker.wait_for(f"fulfilled order {order_id}")
    finally:
        assert worker.stop() == 0, worker.output


async def test_lifespan_opens_and_closes_and_dependency_hands_out_the_instance(
    pg_url: str,
) -> None:
    eq = Soniq(database_url=pg_url, **FAST_SETTINGS)
    api = FastAPI(lifespan=lifespan(eq))
    get_soniq = dependency(eq)

    @eq.job()
    async def send_welcome(user_id: int) -> None: ...

    @api.post("/welcome/{user_id}")
    async def welcome(user_id: int, soniq: Soniq = Depends(get_soniq)) -> dict[str, str]:  # noqa: B008
        assert soniq is eq
        return {"job_id": await soniq.enqueue(send_welcome, user_id=user_id)}

    transport = httpx.ASGITransport(app=api)
    async with (
        api.router.lifespan_context(api),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        assert eq._initialized  # opened at start-up, before any request
        job_id = (await client.post("/welcome/5")).json()["job_id"]
        job = await eq.get_job(job_id)
        assert job is not None and job["args"] == {"user_id": 5}
    assert not eq._initialized  # closed at shutdown


async def test_lifespan_fails_fast_with_the_fix(empty_pg_url: str) -> None:
    eq = Soniq(database_url=empty_pg_url)
    api = FastAPI(lifespan=lifespan(eq))
    with pytest.raises(SoniqError, match="soniq setup"):
        async with api.router.lifespan_context(api):
            pass
