"""``@app.job()``: every option, naming, sync/async handlers, JobContext injection."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from soniq import JobContext, Soniq
from soniq.errors import JobRegistrationError, JobValidationError

ROOT = Path(__file__).resolve().parents[1]


def meta(app: Soniq, name: str) -> dict[str, Any]:
    found = app._get_job_registry().get_job(name)
    assert found is not None, f"{name} not registered; have {app._get_job_registry().names()}"
    return found


@pytest.fixture
def mem() -> Soniq:
    return Soniq(backend="memory")


# --- options -----------------------------------------------------------------------


def test_explicit_name(mem: Soniq) -> None:
    @mem.job(name="users.send_email")
    async def send_email(to: str) -> None: ...

    assert mem._get_job_registry().names() == ["users.send_email"]
    assert meta(mem, "users.send_email")["func"] is send_email


def test_default_name_is_module_qualname(mem: Soniq) -> None:
    @mem.job()
    async def local_job() -> None: ...

    expected = f"{__name__}.test_default_name_is_module_qualname.<locals>.local_job"
    assert mem._get_job_registry().names() == [expected]
    assert __name__ == "tests.test_jobs"


class Handlers:
    @staticmethod
    async def method_job() -> None: ...


def test_default_name_of_class_attribute(mem: Soniq) -> None:
    mem.job()(Handlers.method_job)
    assert mem._get_job_registry().names() == ["tests.test_jobs.Handlers.method_job"]


def test_decorator_returns_the_function(mem: Soniq) -> None:
    async def f() -> int:
        return 1

    assert mem.job()(f) is f


def test_retries_and_alias(mem: Soniq) -> None:
    @mem.job(name="a", retries=5)
    async def a() -> None: ...

    @mem.job(name="b", max_retries=2)
    async def b() -> None: ...

    @mem.job(name="c", retries=0)
    async def c() -> None: ...

    assert meta(mem, "a")["max_retries"] == 5
    assert meta(mem, "a")["max_attempts"] == 6
    assert meta(mem, "b")["max_retries"] == 2
    assert meta(mem, "c")["max_retries"] == 0

    # Both given: max_retries wins, as in the published package (COMPAT.md §4).
    @mem.job(name="d", retries=1, max_retries=2)
    async def d() -> None: ...

    assert meta(mem, "d")["max_retries"] == 2
    with pytest.raises(JobRegistrationError, match="retries"):
        mem.job(name="e", retries=-1)(a)


def test_max_retries_default_follows_setting() -> None:
    app = Soniq(backend="memory", max_retries=7, priority=42)

    @app.job(name="x")
    async def x() -> None: ...

    assert meta(app, "x")["max_retries"] == 7
    assert meta(app, "x")["priority"] == 42


@pytest.mark.parametrize("priority", [1, 10, 1000])
def test_priority_valid(mem: Soniq, priority: int) -> None:
    @mem.job(name="p", priority=priority)
    async def p() -> None: ...

    assert meta(mem, "p")["priority"] == priority


@pytest.mark.parametrize("priority", [0, -5, 1001, 2.5, "10", True])
def test_priority_invalid(mem: Soniq, priority: Any) -> None:
    async def p() -> None: ...

    with pytest.raises(JobRegistrationError, match="priority"):
        mem.job(name="p", priority=priority)(p)
    assert len(mem._get_job_registry()) == 0


def test_queue_and_unique(mem: Soniq) -> None:
    @mem.job(name="q", queue="urgent", unique=True)
    async def q() -> None: ...

    assert meta(mem, "q")["queue"] == "urgent"
    assert meta(mem, "q")["unique"] is True
    with pytest.raises(JobRegistrationError, match="queue"):
        mem.job(name="bad", queue="")(q)


def test_retry_options(mem: Soniq) -> None:
    @mem.job(name="n", retry_delay=2.5, retry_backoff=True, retry_max_delay=60)
    async def n() -> None: ...

    @mem.job(name="lst", retry_delay=[1, 5, 30, 60])
    async def lst() -> None: ...

    assert meta(mem, "n")["retry_delay"] == 2.5
    assert meta(mem, "n")["retry_backoff"] is True
    assert meta(mem, "n")["retry_max_delay"] == 60
    assert meta(mem, "lst")["retry_delay"] == [1, 5, 30, 60]
    for bad in (-1, [1, -2], "5", [1, "x"]):
        with pytest.raises(JobRegistrationError, match="retry_delay"):
            mem.job(name="bad", retry_delay=bad)(n)  # type: ignore[arg-type]
    with pytest.raises(JobRegistrationError, match="retry_max_delay"):
        mem.job(name="bad", retry_max_delay=-1)(n)


def test_timeout(mem: Soniq) -> None:
    @mem.job(name="t", timeout=120)
    async def t() -> None: ...

    assert meta(mem, "t")["timeout"] == 120
    with pytest.raises(JobRegistrationError, match="timeout"):
        mem.job(name="bad", timeout=-1)(t)


class OrderArgs(BaseModel):
    order_id: int


def test_validate_and_args_model_alias(mem: Soniq) -> None:
    @mem.job(name="v", validate=OrderArgs)
    async def v(order_id: int) -> None: ...

    @mem.job(name="am", args_model=OrderArgs)
    async def am(order_id: int) -> None: ...

    assert meta(mem, "v")["args_model"] is OrderArgs
    assert meta(mem, "am")["args_model"] is OrderArgs
    with pytest.raises(JobRegistrationError):
        mem.job(name="both", validate=OrderArgs, args_model=BaseModel)(v)


async def test_validate_rejects_at_enqueue(app: Soniq) -> None:
    @app.job(validate=OrderArgs)
    async def charge(order_id: Any) -> None: ...

    with pytest.raises(JobValidationError, match="OrderArgs"):
        await app.enqueue(charge, order_id="not-a-number")
    assert await app.list_jobs() == []
    job_id = await app.enqueue(charge, order_id="42")  # coercible → accepted
    assert (await app.get_job(job_id))["args"] == {"order_id": "42"}  # type: ignore[index]


def test_registering_same_name_twice(mem: Soniq) -> None:
    @mem.job(name="dup")
    async def first() -> None: ...

    async def second() -> None: ...

    with pytest.raises(JobRegistrationError, match="already registered"):
        mem.job(name="dup")(second)
    mem.job(name="dup")(first)  # the same function again is fine


async def test_options_reach_the_row(app: Soniq) -> None:
    @app.job(retries=5, priority=10, queue="urgent", retry_delay=[1, 5, 30, 60], timeout=120)
    async def process_payment(order_id: int, amount: float) -> None: ...

    job_id = await app.enqueue(process_payment, order_id=1, amount=9.5)
    job = await app.get_job(job_id)
    assert job is not None
    assert (job["queue"], job["priority"], job["max_attempts"]) == ("urgent", 10, 6)
    assert job["job_name"] == "tests.test_jobs.test_options_reach_the_row.<locals>.process_payment"


# --- running handlers -----------------------------------------------------------------


async def test_sync_and_async_handlers_run(app: Soniq) -> None:
    threads: dict[str, str] = {}

    @app.job()
    async def add(a: int, b: int) -> int:
        threads["async"] = threading.current_thread().name
        return a + b

    @app.job()
    def multiply(a: int, b: int) -> dict[str, int]:
        threads["sync"] = threading.current_thread().name
        return {"product": a * b}

    j1 = await app.enqueue(add, a=2, b=3)
    j2 = await app.enqueue(multiply, a=4, b=5)
    assert await app.run_worker(run_once=True) is True
    assert await app.get_result(j1) == 5
    assert await app.get_result(j2) == {"product": 20}
    # Sync handlers run off the event loop.
    assert threads["async"] == threading.main_thread().name
    assert threads["sync"] != threading.main_thread().name


async def test_retries_are_honoured(app: Soniq) -> None:
    calls: list[int] = []

    @app.job(retries=2)
    async def flaky(ctx: JobContext) -> None:
        calls.append(ctx.attempt)
        raise RuntimeError("boom")

    job_id = await app.enqueue(flaky)
    for _ in range(10):  # one run_once may stop before the immediate retry is claimable
        await app.run_worker(run_once=True)
        if len(calls) >= 3:
            break
    assert calls == [1, 2, 3]
    status = await app.get_job_status(job_id)
    assert status is not None and status["status"] == "dead_letter"
    assert "boom" in status["last_error"]


async def test_retry_delay_schedules_the_retry(app: Soniq) -> None:
    @app.job(retries=3, retry_delay=[100, 200])
    async def failing() -> None:
        raise ValueError("nope")

    job_id = await app.enqueue(failing)
    before = datetime.now(timezone.utc)
    await app.run_worker(run_once=True)
    job = await app.get_job(job_id)
    assert job is not None
    assert job["status"] == "queued" and job["attempts"] == 1
    delay = (job["scheduled_at"] - before).total_seconds()
    assert 95 <= delay <= 105, delay


async def test_per_job_timeout(app: Soniq) -> None:
    import asyncio

    @app.job(retries=0, timeout=0.2)
    async def slow() -> None:
        await asyncio.sleep(30)

    job_id = await app.enqueue(slow)
    await app.run_worker(run_once=True)
    status = await app.get_job_status(job_id)
    assert status is not None and status["status"] == "dead_letter"
    assert "TimeoutError" in status["last_error"]


# --- JobContext -------------------------------------------------------------------------


async def test_job_context_injection(app: Soniq) -> None:
    seen: list[JobContext] = []

    @app.job(queue="ctxq", retries=4)
    async def process_order(order_id: int, ctx: JobContext) -> int:
        seen.append(ctx)
        return order_id

    @app.job()
    def sync_with_context(context: JobContext) -> str:  # any parameter name works
        return context.job_name

    prefix = "tests.test_jobs.test_job_context_injection.<locals>."
    sig = app._get_job_registry().get(prefix + "process_order")
    assert sig is not None and sig.context_param == "ctx"
    assert app._get_job_registry().get(prefix + "sync_with_context").context_param == "context"  # type: ignore[union-attr]
    job_id = await app.enqueue(process_order, order_id=7)
    sync_id = await app.enqueue(sync_with_context)
    workers: list[str] = []
    original = app._make_worker

    def capture() -> Any:
        worker = original()
        workers.append(worker.worker_id)
        return worker

    app._make_worker = capture  # type: ignore[method-assign]
    await app.run_worker(run_once=True)
    assert await app.get_result(job_id) == 7
    assert await app.get_result(sync_id) == prefix + "sync_with_context"
    (ctx,) = seen
    assert ctx.job_id == job_id
    assert ctx.job_name == sig.name
    assert (ctx.attempt, ctx.max_attempts, ctx.queue) == (1, 5, "ctxq")
    assert ctx.worker_id == workers[0]
    uuid.UUID(ctx.worker_id)
    assert isinstance(ctx.created_at, datetime) and ctx.created_at.tzinfo is not None
    assert isinstance(ctx.scheduled_at, datetime)


def test_context_param_not_required_at_enqueue(mem: Soniq) -> None:
    @mem.job(name="c")
    async def c(x: int, ctx: JobContext) -> None: ...

    job = mem.build_job(c, kwargs={"x": 1})
    assert job.args == {"x": 1}
    with pytest.raises(JobValidationError):
        mem.build_job(c, kwargs={})


FUTURE_MODULE = """
from __future__ import annotations

from typing import Optional

from soniq import JobContext, Soniq


def register(app: Soniq):
    @app.job(name="future.with_ctx")
    async def with_ctx(order_id: int, ctx: JobContext) -> dict:
        return {"order_id": order_id, "attempt": ctx.attempt, "job_id": ctx.job_id}

    @app.job(name="future.optional_ctx")
    async def optional_ctx(ctx: Optional[JobContext] = None) -> str:
        return ctx.job_name

    @app.job(name="future.no_ctx")
    async def no_ctx(order_id: int, note: str = "") -> int:
        return order_id

    return with_ctx, optional_ctx, no_ctx
"""


async def test_job_context_with_future_annotations(
    app: Soniq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with imported(FUTURE_MODULE, tmp_path, monkeypatch) as module:
        with_ctx, optional_ctx, no_ctx = module.register(app)
        registry = app._get_job_registry()
        assert registry.get("future.with_ctx").context_param == "ctx"  # type: ignore[union-attr]
        assert registry.get("future.optional_ctx").context_param == "ctx"  # type: ignore[union-attr]
        assert registry.get("future.no_ctx").context_param is None  # type: ignore[union-attr]
        j1 = await app.enqueue(with_ctx, order_id=3)
        j2 = await app.enqueue(optional_ctx)
        j3 = await app.enqueue(no_ctx, order_id=4)
        await app.run_worker(run_once=True)
        assert await app.get_result(j1) == {"order_id": 3, "attempt": 1, "job_id": j1}
        assert await app.get_result(j2) == "future.optional_ctx"
        assert await app.get_result(j3) == 4


TYPE_CHECKING_MODULE = """
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from soniq import JobContext


def register(app):
    @app.job(name="tc.job")
    async def job(x: int, ctx: JobContext) -> int:
        return ctx.attempt + x

    return job
"""


async def test_job_context_imported_only_for_type_checking(
    app: Soniq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with imported(TYPE_CHECKING_MODULE, tmp_path, monkeypatch) as module:
        job = module.register(app)
        job_id = await app.enqueue(job, x=10)
        await app.run_worker(run_once=True)
        assert await app.get_result(job_id) == 11


@contextmanager
def imported(source: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import ``source`` as a real module file (so annotations resolve like a user's module)."""
    name = f"srcmod_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(source, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.modules.pop(name, None)


# --- script run as __main__ -------------------------------------------------------------

SCRIPT = textwrap.dedent(
    """
    import sys
    from soniq import Soniq

    app = Soniq(database_url=sys.argv[1] if len(sys.argv) > 1 else None)

    @app.job()
    async def send_welcome(to: str):
        print(f"Sending welcome email to {to}")

    if __name__ == "__main__":
        print(app._get_job_registry().names()[0])
    """
)


def _python(args: list[str], cwd: Path) -> str:
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=60,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def test_script_as_main_uses_file_stem(tmp_path: Path) -> None:
    (tmp_path / "jobs.py").write_text(SCRIPT, encoding="utf-8")
    assert _python(["jobs.py"], tmp_path) == "jobs.send_welcome"
    # What the worker derives when it imports the module by name.
    imported = "import jobs; print(jobs.app._get_job_registry().names()[0])"
    assert _python(["-c", imported], tmp_path) == "jobs.send_welcome"


def test_script_as_main_under_dash_m(tmp_path: Path) -> None:
    pkg = tmp_path / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "tasks.py").write_text(SCRIPT, encoding="utf-8")
    assert _python(["-m", "myapp.tasks"], tmp_path) == "myapp.tasks.send_welcome"


async def test_quickstart_producer_and_worker_agree(pg_url: str, tmp_path: Path) -> None:
    """`python jobs.py` enqueues; a worker that imports `jobs` runs it (SPEC §1)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from soniq import Soniq

        app = Soniq(database_url=sys.argv[1] if len(sys.argv) > 1 else None)

        @app.job()
        async def send_welcome(to: str):
            print(f"Sending welcome email to {to}")
            return to

        if __name__ == "__main__":
            print(asyncio.run(app.enqueue(send_welcome, to="dev@example.com")))
        """
    )
    (tmp_path / "jobs.py").write_text(script, encoding="utf-8")
    job_id = _python(["jobs.py", pg_url], tmp_path)
    worker = textwrap.dedent(
        """
        import asyncio, sys
        sys.argv = ["worker", sys.argv[1]]
        import jobs
        asyncio.run(jobs.app.run_worker(run_once=True))
        """
    )
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", worker, pg_url], cwd=tmp_path, capture_output=True, text=True,
        timeout=60, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Sending welcome email to dev@example.com" in out.stdout
    conn = await asyncpg.connect(pg_url)
    try:
        row = await conn.fetchrow(
            "SELECT job_name, status FROM soniq_jobs WHERE id = $1::uuid", job_id
        )
    finally:
        await conn.close()
    assert (row["job_name"], row["status"]) == ("jobs.send_welcome", "done")
