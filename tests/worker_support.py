"""Shared pieces of the worker, retry, hook and crash tests (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from soniq import Soniq
from soniq.worker import Worker
from tests.helpers import wait_until


def make_worker(app: Soniq) -> Worker:
    """A ``Worker`` built the documented way, from the app's parts."""
    return Worker(
        backend=app.backend,
        registry=app._get_job_registry(),
        settings=app.settings,
        hooks=app.hooks,
    )


@contextlib.asynccontextmanager
async def running(
    worker: Worker, concurrency: int = 4, queues: list[str] | None = None
) -> AsyncIterator[asyncio.Task[bool]]:
    """Run ``worker`` continuously in the background; stop it gracefully on exit."""
    await worker.backend.open()
    task = asyncio.create_task(worker.run(concurrency=concurrency, queues=queues))
    try:
        await wait_until(
            lambda: registered(worker) or task.done(), timeout=10, message="worker registered"
        )
        if task.done():
            task.result()  # surface a start-up error
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(asyncio.shield(task), 20)


async def registered(worker: Worker) -> bool:
    rows = await worker.backend.list_workers()
    return any(w.id == worker.worker_id for w in rows)


@contextlib.asynccontextmanager
async def connect(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def job_row(url: str, job_id: str) -> Any:
    async with connect(url) as conn:
        return await conn.fetchrow("SELECT * FROM soniq_jobs WHERE id = $1", job_id)


async def dead_row(url: str, job_id: str) -> Any:
    async with connect(url) as conn:
        return await conn.fetchrow("SELECT * FROM soniq_dead_letter_jobs WHERE id = $1", job_id)


async def status_of(app: Soniq, job_id: str) -> str | None:
    job = await app.get_job_status(job_id)
    return None if job is None else str(job["status"])
