"""The documented public surface (SPEC §1): import paths, signatures and defaults."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from datetime import datetime, timezone

import pytest

from soniq import Soniq
from soniq.errors import JobRegistrationError
from tests.helpers import FAST_SETTINGS

EMPTY = inspect.Parameter.empty
KW_ONLY = inspect.Parameter.KEYWORD_ONLY
VAR_KW = inspect.Parameter.VAR_KEYWORD


def _params(func: object) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(func).parameters)  # type: ignore[arg-type]


def test_root_imports() -> None:
    import soniq
    from soniq import (
        JobContext,
        JobStatus,
        Soniq,
        TaskRef,
        cron,
        daily,
        every,
        monthly,
        task_ref,
        weekly,
    )

    for name in (
        "Soniq", "JobContext", "JobStatus", "TaskRef", "task_ref",
        "cron", "daily", "every", "weekly", "monthly",
    ):  # fmt: skip
        assert name in soniq.__all__, name
    assert inspect.isclass(Soniq) and inspect.isclass(TaskRef)
    assert all(callable(f) for f in (task_ref, cron, daily, every, weekly, monthly))
    assert JobStatus.QUEUED.value == "queued"
    assert dataclasses.is_dataclass(JobContext)


def test_documented_module_paths() -> None:
    from soniq import JobContext as RootContext
    from soniq import cron as root_cron
    from soniq.core.registry import JobRegistry
    from soniq.job import JobContext
    from soniq.settings import SoniqSettings
    from soniq.worker import Worker

    assert JobContext is RootContext
    schedules = importlib.import_module("soniq.schedules")
    assert schedules.cron is root_cron
    assert inspect.isclass(Worker) and inspect.isclass(JobRegistry)
    assert inspect.isclass(SoniqSettings)


def test_schedules_dsl_examples() -> None:
    from datetime import timedelta

    from soniq import cron, daily, every, monthly, weekly

    assert every(5).minutes() == "*/5 * * * *"
    assert every(2).hours() == "0 */2 * * *"
    assert every(30).seconds() == timedelta(seconds=30)
    assert daily().at("09:00") == "0 9 * * *"
    assert weekly().on("monday").at("09:00") == "0 9 * * 1"
    assert monthly().on_day(15).at("12:00") == "0 12 15 * *"
    assert cron("*/15 * * * *") == "*/15 * * * *"


def test_soniq_constructor_signature() -> None:
    params = _params(Soniq.__init__)
    # The published package's named extras (COMPAT.md §3) sit before **settings_overrides.
    assert list(params) == [
        "self", "database_url", "backend", "retry_policy", "metrics_sink", "plugins",
        "autoload_plugins", "settings_overrides",
    ]  # fmt: skip
    assert params["database_url"].default is None
    assert params["backend"].default is None
    assert params["plugins"].default is None and params["autoload_plugins"].default is False
    assert params["settings_overrides"].kind is VAR_KW


def test_enqueue_signature() -> None:
    params = _params(Soniq.enqueue)
    assert list(params) == [
        "self", "target", "args", "priority", "queue", "scheduled_at", "unique",
        "dedup_key", "connection", "depends_on", "func_kwargs",
    ]  # fmt: skip
    assert params["depends_on"].default is None  # flow control: run after these jobs
    assert params["target"].default is EMPTY
    assert params["target"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    for name in ("args", "priority", "queue", "scheduled_at", "unique", "dedup_key", "connection"):
        assert params[name].kind is KW_ONLY, name
        assert params[name].default is None, name
    assert params["func_kwargs"].kind is VAR_KW
    assert inspect.iscoroutinefunction(Soniq.enqueue)


def test_schedule_signature() -> None:
    params = _params(Soniq.schedule)
    assert list(params) == ["self", "target", "run_at", "args", "kwargs"]
    assert params["run_at"].default is EMPTY
    assert params["args"].kind is KW_ONLY and params["args"].default is None
    assert params["kwargs"].kind is VAR_KW
    assert inspect.iscoroutinefunction(Soniq.schedule)


def test_worker_signatures() -> None:
    from soniq.worker import Worker

    run = _params(Worker.run)
    assert list(run) == ["self", "concurrency", "run_once", "queues"]
    assert (run["concurrency"].default, run["run_once"].default, run["queues"].default) == (
        4,
        False,
        None,
    )
    once = _params(Worker.run_once)
    assert list(once) == ["self", "queues", "max_jobs"]
    assert once["queues"].default is None and once["max_jobs"].default is None
    ctor = _params(Worker.__init__)
    assert list(ctor)[:5] == ["self", "backend", "registry", "settings", "hooks"]
    assert all(p.default is not EMPTY for p in list(ctor.values())[5:])  # extras are optional
    assert ctor["backend"].default is EMPTY and ctor["registry"].default is EMPTY
    assert ctor["settings"].default is None and ctor["hooks"].default is None


def test_run_worker_signature_and_concurrency_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    params = _params(Soniq.run_worker)
    assert list(params) == ["self", "concurrency", "run_once", "queues"]
    assert params["run_once"].default is False and params["queues"].default is None
    # concurrency=None on purpose: it means "the concurrency setting" (default 4),
    # so SONIQ_CONCURRENCY applies to in-process workers as it does to the CLI.
    assert params["concurrency"].default is None
    monkeypatch.delenv("SONIQ_CONCURRENCY", raising=False)
    assert Soniq(backend="memory").settings.concurrency == 4
    monkeypatch.setenv("SONIQ_CONCURRENCY", "7")
    assert Soniq(backend="memory").settings.concurrency == 7


async def test_run_worker_uses_concurrency_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    from soniq.worker import Worker

    seen: list[int] = []
    original = Worker.run

    async def spy(self: Worker, concurrency: int = 4, run_once: bool = False, queues=None):
        seen.append(concurrency)
        return await original(self, concurrency=concurrency, run_once=run_once, queues=queues)

    monkeypatch.setattr(Worker, "run", spy)
    monkeypatch.setenv("SONIQ_CONCURRENCY", "3")
    app = Soniq(backend="memory")
    await app.run_worker(run_once=True)
    await app.run_worker(concurrency=2, run_once=True)
    monkeypatch.delenv("SONIQ_CONCURRENCY")
    await Soniq(backend="memory").run_worker(run_once=True)
    assert seen == [3, 2, 4]


def test_job_decorator_parameters() -> None:
    params = _params(Soniq.job)
    documented = {
        "name": None, "queue": "default", "unique": False, "retry_delay": 0,
        "retry_backoff": False, "retry_max_delay": None, "timeout": None, "validate": None,
        "args_model": None, "max_retries": None,
    }  # fmt: skip
    for name, default in documented.items():
        assert name in params, name
        assert params[name].kind is KW_ONLY, name
        assert params[name].default == default, name
    # retries / priority are settings-driven; their documented defaults (3, 100)
    # are checked on a registration below.
    assert {"retries", "priority"} <= set(params)


def test_job_decorator_effective_defaults() -> None:
    app = Soniq(backend="memory")

    @app.job()
    async def plain(x: int) -> None: ...

    meta = app._get_job_registry().get_job(f"{__name__}.{plain.__qualname__}")
    assert meta is not None
    assert meta["max_retries"] == 3
    assert meta["priority"] == 100
    assert meta["queue"] == "default"
    assert meta["unique"] is False
    assert meta["retry_delay"] == 0
    assert meta["retry_backoff"] is False
    assert meta["retry_max_delay"] is None
    assert meta["timeout"] is None
    assert meta["args_model"] is None


def test_job_decorator_requires_parentheses() -> None:
    app = Soniq(backend="memory")

    async def handler() -> None: ...

    with pytest.raises(TypeError):
        app.job(handler)  # type: ignore[arg-type, call-arg]
    with pytest.raises(JobRegistrationError):
        app.job()(42)  # type: ignore[type-var]


def test_job_context_fields_and_frozen() -> None:
    from soniq import JobContext

    fields = {f.name: f for f in dataclasses.fields(JobContext)}
    assert list(fields) == [
        "job_id", "job_name", "attempt", "max_attempts", "queue", "worker_id",
        "scheduled_at", "created_at",
    ]  # fmt: skip
    for optional in ("worker_id", "scheduled_at", "created_at"):
        assert fields[optional].default is None
    ctx = JobContext(
        job_id="i", job_name="m.f", attempt=1, max_attempts=4, queue="default",
        worker_id="w", scheduled_at=datetime.now(timezone.utc),
        created_at=datetime.now(timezone.utc),
    )  # fmt: skip
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.attempt = 2  # type: ignore[misc]


def test_job_status_values() -> None:
    from soniq import JobStatus

    assert JobStatus.QUEUED.value == "queued"
    assert JobStatus.PROCESSING.value == "processing"
    assert JobStatus.DONE.value == "done"
    assert JobStatus.CANCELLED.value == "cancelled"
    # What get_job_status reports for a dead-lettered id (never stored in soniq_jobs).
    assert JobStatus("dead_letter") is JobStatus.DEAD_LETTER
    done: str = "done"
    assert done == JobStatus.DONE  # a str enum: equal to its value


def test_task_ref_shape() -> None:
    from pydantic import BaseModel

    from soniq import TaskRef, task_ref

    class Args(BaseModel):
        order_id: int

    ref = task_ref("billing.send_invoice", Args, default_queue="billing")
    assert isinstance(ref, TaskRef)
    assert (ref.name, ref.args_model, ref.default_queue) == (
        "billing.send_invoice",
        Args,
        "billing",
    )
    assert task_ref("x.y").args_model is None
    with pytest.raises(TypeError):
        task_ref("")


def test_app_methods_exist() -> None:
    for name in (
        "ensure_initialized", "close", "setup", "enqueue", "enqueue_many", "schedule",
        "get_job", "get_result", "get_job_status", "cancel_job", "delete_job", "list_jobs",
        "get_queue_stats", "run_worker",
    ):  # fmt: skip
        assert inspect.iscoroutinefunction(getattr(Soniq, name)), name
    for name in ("job", "periodic", "before_job", "after_job", "on_error", "_get_job_registry"):
        assert callable(getattr(Soniq, name)), name
    lj = _params(Soniq.list_jobs)
    assert (lj["queue"].default, lj["status"].default) == (None, None)
    assert (lj["limit"].default, lj["offset"].default) == (100, 0)


def test_fast_settings_are_valid() -> None:
    assert Soniq(backend="memory", **FAST_SETTINGS).settings.poll_interval == 0.2
