"""What only the embedded backends have: SQLite files and processes, and memory's lifetime.

Behaviour common to every backend is in ``test_conformance.py``; this file
covers migrations of a file, exact time round trips, the query plans of the
claim, several processes (and backend objects) on one file, and that a memory
store is private to its backend object yet survives close/reopen.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from soniq.backends.memory import MemoryBackend
from soniq.backends.sqlite import SQLiteBackend, migration_files, split_statements
from soniq.job import (
    Ack,
    Done,
)
from soniq.settings import SoniqSettings
from tests.backends.test_conformance import assert_utc, new_job
from tests.helpers import wait_until

UTC = timezone.utc
REPO_ROOT = Path(__file__).resolve().parents[2]
ALL = [name for name, _ in migration_files()]


async def test_concurrent_claims_from_two_objects_on_one_file(tmp_path: Path) -> None:
    one, two = (SQLiteBackend(str(tmp_path / "shared.db"), SoniqSettings()) for _ in range(2))
    try:
        await one.open()
        await two.open()
        await one.enqueue([new_job() for _ in range(200)])
        claims = [b.claim(None, "w", 3) for b in (one, two) for _ in range(40)]
        ids = [j.id for batch in await asyncio.gather(*claims) for j in batch]
        assert len(ids) == len(set(ids)) == 200
    finally:
        await one.close()
        await two.close()


# --- migrations ------------------------------------------------------------------


async def test_sqlite_migrate_is_idempotent(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "m.db"), SoniqSettings())
    try:
        status = await backend.migration_status()
        assert [(m.name, m.applied) for m in status] == [(n, False) for n in ALL]
        first = await backend.migrate()
        assert (first.applied, first.already_applied) == (ALL, [])
        second = await backend.migrate()
        assert (second.applied, second.already_applied) == ([], ALL)
        for info in await backend.migration_status():
            assert info.applied and info.applied_at is not None
            assert_utc(info.applied_at)
    finally:
        await backend.close()


async def test_sqlite_open_creates_the_schema_lazily(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "lazy.db"
    path.parent.mkdir()
    backend = SQLiteBackend(str(path), SoniqSettings())
    try:
        job = new_job()
        assert await backend.enqueue([job]) == [job.id]  # opens and migrates on first use
        assert path.exists()
        report = await backend.migrate()
        assert report.already_applied == ALL
    finally:
        await backend.close()
    reopened = SQLiteBackend(str(path), SoniqSettings())
    try:
        assert await reopened.get_job(job.id) is not None
    finally:
        await reopened.close()


async def test_sqlite_unusable_path_raises_clear_error(tmp_path: Path) -> None:
    from soniq.errors import DatabaseUnavailableError

    backend = SQLiteBackend(str(tmp_path / "missing-dir" / "x.db"), SoniqSettings())
    with pytest.raises(DatabaseUnavailableError, match="missing-dir"):
        await backend.open()
    await backend.close()


def test_split_statements_keeps_semicolons_in_strings() -> None:
    script = "-- c;\nCREATE TABLE t (a TEXT DEFAULT ';');\nINSERT INTO t VALUES ('x;y');\n-- end"
    assert split_statements(script) == [
        "-- c;\nCREATE TABLE t (a TEXT DEFAULT ';');",
        "INSERT INTO t VALUES ('x;y');",
    ]


async def test_sqlite_datetimes_round_trip_exactly(tmp_path: Path) -> None:
    backend = SQLiteBackend(str(tmp_path / "t.db"), SoniqSettings())
    try:
        moment = datetime(2027, 2, 3, 4, 5, 6, 999999, tzinfo=UTC)
        job = new_job(scheduled_at=moment)
        await backend.enqueue([job])
        row = await backend.get_job(job.id)
        assert row is not None and row.scheduled_at == moment
        naive = new_job(scheduled_at=datetime(2027, 1, 1, 12, 0))
        await backend.enqueue([naive])
        row = await backend.get_job(naive.id)
        assert row is not None and row.scheduled_at == datetime(2027, 1, 1, 12, 0, tzinfo=UTC)
    finally:
        await backend.close()


async def test_sqlite_claim_uses_the_partial_indexes(tmp_path: Path) -> None:
    """The claim must walk an index in order, never sort the backlog."""
    import sqlite3

    from soniq.sql import sqlite_queries as q

    backend = SQLiteBackend(str(tmp_path / "plan.db"), SoniqSettings())
    await backend.open()
    await backend.close()
    conn = sqlite3.connect(str(tmp_path / "plan.db"))
    try:
        params = {"worker_id": "w", "lease": "l", "now": 0, "limit": 5, "queue": "a", "ids": "[]"}
        for sql, index in (
            (q.JOB_CLAIM_ALL, "soniq_jobs_claim_all_idx"),
            (q.JOB_CLAIM_QUEUE, "soniq_jobs_claim_queue_idx"),
            (q.JOB_DUE_IN_QUEUE, "soniq_jobs_claim_queue_idx"),
        ):
            plan = " | ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params))
            assert index in plan and "TEMP B-TREE" not in plan, plan
        plan = " | ".join(
            r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + q.JOB_LIVE_BY_DEDUP, {"keys": "[]"})
        )
        assert "soniq_jobs_dedup_idx" in plan, plan
    finally:
        conn.close()


# --- several processes on one SQLite file -----------------------------------------

CHILD = r"""
import asyncio, json, os, random, sys, time
from soniq.backends.sqlite import SQLiteBackend
from soniq.job import Ack, Done

async def barrier(backend, n):
    # Every process holds one claimed job before any goes on: the runs overlap for sure.
    deadline = time.monotonic() + 30
    while len(await backend.list_jobs(queue=None, status="processing", limit=n, offset=0)) < n:
        if time.monotonic() > deadline:
            sys.exit("barrier timed out")
        await asyncio.sleep(0.005)

async def main(path, queues, n):
    backend = SQLiteBackend(path)
    await backend.open()
    print("ready", flush=True)
    sys.stdin.readline()
    worker = f"w-{os.getpid()}"
    held = await backend.claim(queues, worker, 1)
    claimed = [j.id for j in held]
    await barrier(backend, n)
    while held:
        await backend.ack([Ack(j, Done(None)) for j in held], result_ttl=600)
        held = await backend.claim(queues, worker, random.randint(1, 8))
        claimed += [j.id for j in held]
    await backend.close()
    print(json.dumps(claimed), flush=True)

asyncio.run(main(sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])))
"""


async def test_sqlite_several_processes_claim_each_job_once(tmp_path: Path) -> None:
    path = str(tmp_path / "multi.db")
    producer = SQLiteBackend(path, SoniqSettings())
    jobs = [new_job(queue="a" if i % 3 else "b", priority=1 + i % 5) for i in range(600)]
    try:
        await producer.enqueue(jobs)
    finally:
        await producer.close()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    queue_choices: list[list[str] | None] = [None, ["a", "b"], ["a"]]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            path,
            json.dumps(queues),
            str(len(queue_choices)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT),
            env=env,
        )
        for queues in queue_choices
    ]
    try:
        outputs = await asyncio.wait_for(_run_children(procs), timeout=90)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    claims = [json.loads(out) for out in outputs]
    assert all(claims), "every process held a job at the barrier"
    every = [job_id for claimed in claims for job_id in claimed]
    assert len(every) == len(set(every)), "a job was claimed twice"
    assert set(every) == {j.id for j in jobs}
    check = SQLiteBackend(path, SoniqSettings())
    try:
        [stats_a, stats_b] = await check.queue_stats()
        assert stats_a.done + stats_b.done == 600
        assert stats_a.queued == stats_a.processing == stats_b.queued == 0
    finally:
        await check.close()


async def _run_children(procs: list[asyncio.subprocess.Process]) -> list[str]:
    for proc in procs:
        assert proc.stdout is not None
        line = await proc.stdout.readline()
        if line.strip() != b"ready":
            _, err = await proc.communicate()
            raise AssertionError(f"child failed to start: {line!r} {err.decode()}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        await proc.stdin.drain()
    outputs = []
    for proc in procs:
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        outputs.append(out.decode().strip().splitlines()[-1])
    return outputs


OPENER = r"""
import asyncio, sys, uuid
from soniq.backends.sqlite import SQLiteBackend
from soniq.job import NewJob

async def main(path):
    print("ready", flush=True)
    sys.stdin.readline()
    backend = SQLiteBackend(path)
    job = NewJob(id=str(uuid.uuid4()), job_name="t", args={}, args_json="{}", queue="default",
                 priority=100, max_attempts=1, scheduled_at=None, dedup_key=None)
    await backend.enqueue([job])  # opens the file and creates the schema on first use
    await backend.close()
    print(job.id, flush=True)

asyncio.run(main(sys.argv[1]))
"""


async def test_sqlite_several_processes_create_the_schema_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "fresh.db")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPENER, path, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            cwd=str(REPO_ROOT), env=env,
        )
        for _ in range(4)
    ]  # fmt: skip
    try:
        ids = await asyncio.wait_for(_run_children(procs), timeout=60)
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    check = SQLiteBackend(path, SoniqSettings())
    try:
        assert all(m.applied for m in await check.migration_status())
        listed = await check.list_jobs(queue=None, status=None, limit=10, offset=0)
        assert {j.id for j in listed} == set(ids)
    finally:
        await check.close()


async def test_sqlite_prune_works_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from soniq.backends import sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "PRUNE_CHUNK", 3)
    backend = SQLiteBackend(str(tmp_path / "p.db"), SoniqSettings())
    try:
        await backend.enqueue([new_job() for _ in range(7)])
        claimed = await backend.claim(None, "w", 10)
        await backend.ack([Ack(j, Done(None)) for j in claimed], result_ttl=0.01)
        await wait_until(lambda: backend.prune(), timeout=5, message="rows pruned")
        assert await backend.list_jobs(queue=None, status=None, limit=10, offset=0) == []
    finally:
        await backend.close()


# --- one trip to aiosqlite's thread per transaction (SQLiteBackend._transact) --------


async def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    """WAL, synchronous=NORMAL (1), the checkpoint interval and the page cache."""
    backend = SQLiteBackend(str(tmp_path / "pragmas.db"), SoniqSettings())
    try:
        await backend.open()
        conn = await backend._connection()
        got = {
            name: next(iter(await conn.execute_fetchall(f"PRAGMA {name}")))[0]
            for name in ("journal_mode", "synchronous", "wal_autocheckpoint", "cache_size")
        }
        assert got == {
            "journal_mode": "wal", "synchronous": 1, "wal_autocheckpoint": 4000,
            "cache_size": -16384,
        }  # fmt: skip
    finally:
        await backend.close()


async def test_sqlite_claim_cancelled_before_commit_claims_nothing(tmp_path: Path) -> None:
    """A claim whose caller is cancelled while its transaction waits on (or runs on)
    aiosqlite's thread is rolled back: no job is left 'processing' with a lease nobody holds."""
    import threading

    backend = SQLiteBackend(str(tmp_path / "cancel.db"), SoniqSettings())
    try:
        await backend.enqueue([new_job() for _ in range(3)])
        conn = await backend._connection()
        gate = threading.Event()
        on_thread: Any = conn._execute  # aiosqlite's own queue to its thread
        blocker = asyncio.ensure_future(on_thread(gate.wait, 10))  # occupies the thread
        claim = asyncio.create_task(backend.claim(None, "w", 10))
        await asyncio.sleep(0.05)  # the claim's transaction is queued behind the blocker
        claim.cancel()
        gate.set()
        await blocker
        with pytest.raises(asyncio.CancelledError):
            await claim
        jobs = await backend.list_jobs(queue=None, status=None, limit=10, offset=0)
        assert [(j.status, j.attempts) for j in jobs] == [("queued", 0)] * 3
        assert len(await backend.claim(None, "w", 10)) == 3  # the backend still works

        running = threading.Event()

        def slow_work(db: Any) -> None:  # cancelled while it runs on the thread
            db.execute("INSERT INTO soniq_leases (role, owner, expires_at) VALUES ('r', 'o', 0)")
            running.set()
            gate.wait(10)

        gate.clear()
        write = asyncio.create_task(backend._transact(slow_work))
        while not running.is_set():
            await asyncio.sleep(0.01)
        write.cancel()
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await write
        assert await backend._fetch("SELECT * FROM soniq_leases", {}) == []  # rolled back
    finally:
        await backend.close()


async def test_sqlite_failed_transaction_writes_nothing_and_busy_begin_retries(
    tmp_path: Path,
) -> None:
    """An error inside the work rolls the whole transaction back; a BEGIN that finds another
    connection's write lock waits for it (busy_timeout, then retries) instead of failing."""
    import sqlite3

    path = tmp_path / "tx.db"
    backend = SQLiteBackend(str(path), SoniqSettings())
    try:
        await backend.open()

        def insert_then_fail(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO soniq_leases (role, owner, expires_at) VALUES ('r', 'o', 0)")
            raise RuntimeError("half-way")

        with pytest.raises(RuntimeError, match="half-way"):
            await backend._transact(insert_then_fail)
        assert await backend._fetch("SELECT * FROM soniq_leases", {}) == []

        other = sqlite3.connect(str(path), isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        job = new_job()
        enqueue = asyncio.create_task(backend.enqueue([job]))
        await asyncio.sleep(0.2)
        assert not enqueue.done()
        other.execute("ROLLBACK")
        other.close()
        assert await asyncio.wait_for(enqueue, 10) == [job.id]
    finally:
        await backend.close()


# --- memory: SQLite on a private in-memory database ---------------------------------


async def test_memory_stores_are_private_and_survive_close() -> None:
    one, two = MemoryBackend(SoniqSettings()), MemoryBackend(SoniqSettings())
    job = new_job()
    try:
        await one.open()
        await two.open()
        assert await one.enqueue([job]) == [job.id]
        assert await two.get_job(job.id) is None
        await one.close()
        await one.open()  # an app used across two asyncio.run() calls
        assert (await one.get_job(job.id)) is not None
    finally:
        await one.close()
        await two.close()


async def test_memory_applies_the_sqlite_migrations() -> None:
    backend = MemoryBackend(SoniqSettings())
    try:
        report = await backend.migrate()
        assert report.applied == [name for name, _ in migration_files()]
        assert all(m.applied for m in await backend.migration_status())
    finally:
        await backend.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_one_app_across_event_loops_with_contended_writes(kind: str, tmp_path: Path) -> None:
    """Each test of a user's suite runs its own loop: the locks must follow the loop."""
    from soniq import Soniq

    app = Soniq(backend="memory") if kind == "memory" else Soniq(str(tmp_path / "l.db"))

    @app.job(name="loops.noop")
    async def noop(n: int) -> None:
        return None

    async def burst() -> int:
        await asyncio.gather(*(app.enqueue(noop, n=i) for i in range(20)))  # contended
        return len(await app.list_jobs(limit=1000))

    try:
        assert asyncio.run(burst()) == 20
        assert asyncio.run(burst()) == 40  # a new loop: no "bound to a different event loop"
    finally:
        asyncio.run(app.close())
