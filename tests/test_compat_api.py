"""Code written for the published ``soniq`` package runs on ours (COMPAT.md §1, §3-§8, §12,
and the "Conflicts - seeds win" shims). Written from COMPAT.md, item by item."""

from __future__ import annotations

import asyncio
import importlib
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import soniq
from soniq import JobContext, Snooze, Soniq, every, task_ref, weekly
from soniq.core.retry import ExponentialBackoff
from soniq.errors import ConfigurationError
from soniq.settings import get_settings
from tests.backend_apps import AppFactory
from tests.helpers import wait_until

# --- §1 import paths -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("module", "names"),
    [
        ("soniq", ["Snooze", "DASHBOARD_AVAILABLE", "Soniq", "task_ref", "TaskRef"]),
        ("soniq.job", ["Snooze", "JobContext"]),
        ("soniq.settings", ["get_settings", "SoniqSettings"]),
        ("soniq.plugin", ["SoniqPlugin", "CommandSpec", "PanelSpec", "PluginRegistry",
                          "discover_plugins"]),
        ("soniq.observability", ["MetricsSink", "NoopMetricsSink", "PrometheusMetricsSink"]),
        ("soniq.metrics", ["PrometheusMetricsSink"]),
        ("soniq.core.retry", ["RetryPolicy", "ExponentialBackoff"]),
        ("soniq.core.middleware", ["Middleware"]),
        ("soniq.features.dead_letter", ["DeadLetterFilter", "DeadLetterService", "DeadLetterJob",
                                        "DeadLetterStats", "DeadLetterReason"]),
        ("soniq.features.webhooks", ["WebhookEvent"]),
        ("soniq.types", ["QueueStats"]),
        ("soniq.discovery", ["AmbiguousAppError"]),
        ("soniq.backends.postgres", ["PostgresBackend"]),
        ("soniq.backends.sqlite", ["SQLiteBackend"]),
        ("soniq.cli.main", ["main"]),
    ],
)  # fmt: skip
def test_published_import_paths(module: str, names: list[str]) -> None:
    imported = importlib.import_module(module)
    for name in names:
        assert hasattr(imported, name), f"{module}.{name}"


def test_dashboard_available_is_a_bool() -> None:
    assert soniq.DASHBOARD_AVAILABLE is True  # the test extra brings starlette and jinja2


def test_queue_stats_typed_dict_keys() -> None:
    from soniq.types import QueueStats

    assert set(QueueStats.__annotations__) == {
        "total", "queued", "processing", "done", "dead_letter", "cancelled",
    }  # fmt: skip


def test_backend_classes_by_name_without_settings(tmp_path: Path) -> None:
    from soniq.backends.memory import MemoryBackend
    from soniq.backends.postgres import PostgresBackend
    from soniq.backends.sqlite import SQLiteBackend

    pg = PostgresBackend("postgresql://localhost/x", pool_min_size=2, pool_max_size=7)
    assert (pg.settings.pool_min_size, pg.settings.pool_max_size) == (2, 7)
    assert SQLiteBackend(str(tmp_path / "a.db")).path.endswith("a.db")
    assert MemoryBackend().name == "memory"


def test_get_settings_is_cached_until_reload(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SONIQ_CONCURRENCY", "7")
    first = get_settings(reload=True)
    assert first.concurrency == 7 and get_settings() is first
    monkeypatch.setenv("SONIQ_CONCURRENCY", "9")
    assert get_settings().concurrency == 7  # cached
    assert get_settings(reload=True).concurrency == 9
    assert Soniq(backend="memory").settings.concurrency == 9  # instances never read the cache
    env_file = tmp_path / "custom.env"
    env_file.write_text("SONIQ_PRIORITY=42\n")
    assert get_settings(config_file=env_file, reload=True).priority == 42
    monkeypatch.setenv("SONIQ_CONCURRENCY", "many")
    with pytest.raises(ValueError, match=r"^Invalid Soniq configuration: "):
        try:
            get_settings(reload=True)
        except ConfigurationError as err:
            raise ValueError(err.message) from None
    monkeypatch.setenv("SONIQ_CONCURRENCY", "4")
    get_settings(reload=True)


def test_debug_set_but_empty_means_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_DEBUG", "")
    assert Soniq(backend="memory").settings.debug is False


# --- §3 constructor and lifecycle ---------------------------------------------------------------
async def test_lifecycle_flags_and_eager_async_with() -> None:
    app = Soniq(backend="memory")
    assert (app.is_initialized, app.is_closed) == (False, False)
    async with app as same:
        assert same is app and app.is_initialized
    assert app.is_closed and not app.is_initialized
    assert app._backend is app.backend and app._job_registry is app.registry


async def test_setup_returns_an_int_count(pg_url: str, empty_pg_url: str) -> None:
    fresh = Soniq(database_url=empty_pg_url, pool_min_size=1)
    applied = await fresh.setup()
    assert isinstance(applied, int) and applied == len(applied.applied) > 0
    assert applied.database_created and fresh.is_initialized
    assert await fresh.setup() == 0  # idempotent: nothing applied the second time
    await fresh.close()
    sqlite_app = Soniq(backend="memory")
    assert await sqlite_app.setup() >= 0
    await sqlite_app.close()


# --- §4 defining jobs ----------------------------------------------------------------------------
def test_job_decorator_accepts_custom_keys_and_tags_the_function() -> None:
    app = Soniq(backend="memory")

    @app.job(name="billing.charge", retries=1, max_retries=5, retry_jitter=True, alert="ops")
    async def charge(order_id: int) -> None: ...

    config = app.registry.get_job("billing.charge")
    assert config is not None
    assert config["max_retries"] == 5  # max_retries wins over retries
    assert config["retry_jitter"] is True and config["alert"] == "ops"
    assert charge._soniq_name == "billing.charge"  # type: ignore[attr-defined]
    assert charge._soniq_config["alert"] == "ops"  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError.__mro__[1]):  # SoniqError: a likely typo is refused
        app.job(retires=3)(charge)


def test_registry_api_of_the_published_package() -> None:
    from soniq.core.registry import JobRegistry

    registry = JobRegistry()

    def handler(x: int) -> None: ...

    registry.register_job(handler, name="ops.handler", retries=2, priority=5, flag=True)
    listed = registry.list_jobs()
    assert listed["ops.handler"]["max_retries"] == 2 and listed["ops.handler"]["flag"] is True
    listed.clear()  # a copy
    assert "ops.handler" in registry.list_jobs()
    assert registry.remove_job("ops.handler") and not registry.remove_job("ops.handler")
    registry.register_job(handler, name="ops.again")
    registry.clear()
    assert len(registry) == 0


def test_route_map_routes_jobs_registered_without_a_queue() -> None:
    app = Soniq(backend="memory", route_map={"billing.": "billing", "billing.eu.": "eu"})

    @app.job(name="billing.eu.charge")
    async def eu() -> None: ...

    @app.job(name="billing.charge")
    async def plain() -> None: ...

    @app.job(name="billing.explicit", queue="default")
    async def explicit() -> None: ...

    queues = {d.name: d.queue for d in app.registry.definitions()}
    assert queues == {"billing.eu.charge": "eu", "billing.charge": "billing",
                      "billing.explicit": "default"}  # fmt: skip


# --- §5 enqueue ---------------------------------------------------------------------------------
async def test_enqueue_many_args_list_keyword_and_timedelta_scheduling(
    soniq_app: Soniq,
) -> None:
    @soniq_app.job(name="ops.touch")
    async def touch(n: int) -> None: ...

    ids = await soniq_app.enqueue_many(touch, args_list=[{"n": 1}, {"n": 2}])
    assert len(ids) == 2
    later = await soniq_app.schedule(touch, timedelta(hours=1), n=3)
    also = await soniq_app.enqueue(touch, n=4, scheduled_at=timedelta(minutes=30))
    for job_id, offset in ((later, 3600), (also, 1800)):
        job = await soniq_app.get_job(job_id)
        assert job is not None
        delta = (job["scheduled_at"] - datetime.now(timezone.utc)).total_seconds()
        assert offset - 60 < delta <= offset


async def test_task_ref_default_queue_beats_the_local_registration() -> None:
    app = Soniq(backend="memory")

    @app.job(name="billing.send", queue="local")
    async def send() -> None: ...

    ref = task_ref(name="billing.send", default_queue="from-ref")
    routed = ref.with_default_queue("other")
    assert (ref.default_queue, routed.default_queue) == ("from-ref", "other")  # frozen copy
    assert app.build_job(ref, args={}).queue == "from-ref"
    assert app.build_job(ref, args={}, queue="explicit").queue == "explicit"
    assert app.build_job("billing.send", args={}).queue == "local"
    await app.close()


# --- §7 worker runtime ------------------------------------------------------------------------
async def test_three_parameter_on_error_hook_of_the_tutorial(soniq_app: Soniq) -> None:
    seen: list[tuple[Any, ...]] = []

    @soniq_app.on_error
    def alert(job_name: str, job_id: str, error: str) -> None:
        seen.append((job_name, job_id, error))

    @soniq_app.job(name="ops.boom", retries=0)
    async def boom() -> None:
        raise RuntimeError("kaput")

    job_id = await soniq_app.enqueue(boom)
    await soniq_app.run_worker(run_once=True)
    assert seen == [("ops.boom", job_id, "kaput")]


async def test_snooze_returned_or_raised(soniq_app: Soniq) -> None:
    runs: list[str] = []

    @soniq_app.job(name="ops.poll")
    async def poll(how: str) -> Any:
        runs.append(how)
        if how == "return":
            return Snooze(3600, reason="not yet")
        raise Snooze(3600)

    ids = [await soniq_app.enqueue(poll, how=h) for h in ("return", "raise")]
    await soniq_app.run_worker(run_once=True)
    for job_id in ids:
        job = await soniq_app.get_job(job_id)
        assert job is not None and job["status"] == "queued" and job["attempts"] == 0
    assert sorted(runs) == ["raise", "return"]


class _GiveUpOnValueError:
    def __init__(self) -> None:
        self.default = ExponentialBackoff()
        self.calls: list[tuple[int, Any]] = []

    def delay_for(self, *, attempt: int, job_meta: dict[str, Any], exc: BaseException) -> Any:
        self.calls.append((attempt, job_meta.get("team")))
        assert isinstance(exc, RuntimeError)
        if "ValueError" in str(exc):
            return None
        return self.default.delay_for(attempt=attempt, job_meta=job_meta, exc=exc)


async def test_retry_policy_decides_and_none_dead_letters(app_factory: AppFactory) -> None:
    policy = _GiveUpOnValueError()
    app = await app_factory()
    app._retry_policy = policy  # the constructor argument, on an app the fixture built

    @app.job(name="ops.bad_value", retries=5, team="payments")
    def bad_value() -> None:
        raise ValueError("never valid")

    @app.job(name="ops.flaky", retries=5, retry_delay=3600)
    def flaky() -> None:
        raise OSError("network")

    bad = await app.enqueue(bad_value)
    retried = await app.enqueue(flaky)
    await app.run_worker(run_once=True)
    dead = await app.get_job(bad)
    assert dead is not None and dead["status"] == "dead_letter" and dead["attempts"] == 1
    again = await app.get_job(retried)
    assert again is not None and again["status"] == "queued"
    assert (1, "payments") in policy.calls


def test_exponential_backoff_defaults_and_jitter() -> None:
    backoff = ExponentialBackoff(seed=1)
    meta: dict[str, Any] = {"retry_delay": 0, "retry_backoff": True}
    assert [backoff.delay_for(attempt=n, job_meta=meta, exc=RuntimeError()) for n in (1, 2, 3, 4)
            ] == [1.0, 2.0, 4.0, 8.0]  # fmt: skip
    jittered = {**meta, "retry_delay": 10, "retry_jitter": True}
    delays = [backoff.delay_for(attempt=3, job_meta=jittered, exc=RuntimeError()) or 0.0
              for _ in range(50)]  # fmt: skip
    assert all(20 <= d <= 40 for d in delays) and len(set(delays)) > 1


async def test_middleware_wraps_every_call_first_outermost(soniq_app: Soniq) -> None:
    from soniq.core.middleware import Middleware

    order: list[str] = []

    @soniq_app.middleware
    async def outer(ctx: JobContext, call_next: Any) -> Any:
        order.append(f"outer>{ctx.job_name}")
        result = await call_next(ctx)
        order.append("outer<")
        return result

    @soniq_app.middleware
    async def inner(ctx: JobContext, call_next: Any) -> Any:
        order.append("inner>")
        return {"wrapped": await call_next(ctx)}

    assert isinstance(outer, Middleware)

    @soniq_app.job(name="ops.add")
    def add(a: int, b: int) -> int:
        order.append("handler")
        return a + b

    job_id = await soniq_app.enqueue(add, a=2, b=3)
    await soniq_app.run_worker(run_once=True)
    assert order == ["outer>ops.add", "inner>", "handler", "outer<"]
    assert await soniq_app.get_result(job_id) == {"wrapped": 5}


class _RecordingSink:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str | None]] = []

    async def record_job_start(self, *, job_id: str, job_name: str, queue: str, attempt: int
                               ) -> None:  # fmt: skip
        self.events.append(("start", job_name, None))

    async def record_job_end(self, *, job_id: str, job_name: str, queue: str, status: str,
                             duration_s: float, error: str | None = None) -> None:  # fmt: skip
        assert duration_s >= 0
        self.events.append(("end", job_name, status))


async def test_metrics_sink_hears_each_outcome() -> None:
    sink = _RecordingSink()
    app = Soniq(backend="memory", metrics_sink=sink)
    assert app.metrics_sink is sink

    @app.job(name="ops.ok")
    async def ok_job() -> None: ...

    @app.job(name="ops.fails", retries=1, retry_delay=3600)
    async def fails() -> None:
        raise RuntimeError("no")

    @app.job(name="ops.dies", retries=0)
    async def dies() -> None:
        raise RuntimeError("no")

    @app.job(name="ops.later")
    async def later() -> Snooze:
        return Snooze(3600)

    for fn in (ok_job, fails, dies, later):
        await app.enqueue(fn)
    await app.run_worker(run_once=True)
    await wait_until(lambda: len(sink.events) >= 8, message="sink calls")
    assert len(sink.events) == 8
    ends = {name: status for kind, name, status in sink.events if kind == "end"}
    assert ends == {"ops.ok": "done", "ops.fails": "failed", "ops.dies": "dead_letter",
                    "ops.later": "snoozed"}  # fmt: skip
    await app.close()


def test_prometheus_sink_series_names() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from soniq.observability import PrometheusMetricsSink

    registry = CollectorRegistry()
    sink = PrometheusMetricsSink(registry=registry, prefix="billing")

    async def record() -> None:
        await sink.record_job_start(job_id="1", job_name="a.b", queue="q", attempt=1)
        await sink.record_job_end(job_id="1", job_name="a.b", queue="q", status="done",
                                  duration_s=0.02)  # fmt: skip

    asyncio.run(record())
    text = generate_latest(registry).decode()
    for series in ('billing_jobs_started_total{job_name="a.b",queue="q"} 1.0',
                   'billing_jobs_completed_total{job_name="a.b",queue="q",status="done"} 1.0',
                   'billing_jobs_in_progress{job_name="a.b",queue="q"} 0.0',
                   "billing_job_duration_seconds_bucket"):  # fmt: skip
        assert series in text


async def test_sync_handlers_share_a_bounded_pool() -> None:
    import threading

    app = Soniq(backend="memory", sync_handler_pool_size=2)
    running, peak, lock = [0], [0], threading.Lock()
    release = threading.Event()

    @app.job(name="ops.block")
    def block() -> None:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        release.wait(10)
        with lock:
            running[0] -= 1

    for _ in range(5):
        await app.enqueue(block)
    worker = asyncio.create_task(app.run_worker(concurrency=5, run_once=True))
    await wait_until(lambda: running[0] == 2, message="two sync handlers running")
    await asyncio.sleep(0)  # give a third, if the bound were broken, the chance to start
    assert running[0] == 2
    release.set()
    await worker
    assert peak[0] == 2
    await app.close()


# --- §8 schedules -----------------------------------------------------------------------------
def test_schedule_dsl_additions() -> None:
    assert every(2).days() == "0 0 */2 * *"
    assert weekly().on(1).at("09:00") == "0 9 * * 1"
    assert weekly().on(0).at("00:00") == "0 0 * * 0"
    with pytest.raises(ValueError):
        weekly().on(7)
    with pytest.raises(TypeError):
        weekly().on(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        soniq.cron(5)  # type: ignore[arg-type]


async def test_scheduler_add_returns_the_name_and_published_keys(soniq_app: Soniq) -> None:
    @soniq_app.job(name="reports.daily")
    async def report(region: str) -> None: ...

    name = await soniq_app.scheduler.add(report, cron="0 9 * * *", args={"region": "EU"})
    assert name == "reports.daily" and isinstance(name, str)
    assert name.cron == "0 9 * * *"  # still reads as the stored schedule
    assert await soniq_app.scheduler.pause(name)
    stored = await soniq_app.scheduler.get(name)
    assert stored is not None
    assert stored["schedule_type"] == "cron" and stored["schedule_value"] == "0 9 * * *"
    assert stored["status"] == "paused" and stored["args"] == {"region": "EU"}
    assert "next_run" in list(stored.keys())
    every_name = await soniq_app.scheduler.add("reports.daily", every=300, name="reports.often",
                                               args={"region": "US"})  # fmt: skip
    listed = {s["name"]: s for s in await soniq_app.scheduler.list()}
    assert listed[every_name]["schedule_type"] == "interval"
    assert listed[every_name]["schedule_value"] == "300"


async def test_periodic_schedule_args_spelling() -> None:
    app = Soniq(backend="memory")

    @app.periodic(every=60, name="ops.tick", schedule_args={"n": 1})
    async def tick(n: int) -> None: ...

    definition = app.registry.get("ops.tick")
    assert definition is not None and definition.periodic is not None
    assert definition.periodic["args"] == {"n": 1}
    assert "schedule_args" not in (app.registry.get_job("ops.tick") or {})


async def test_scheduler_start_and_stop_in_process(soniq_app: Soniq) -> None:
    fired: list[int] = []

    @soniq_app.job(name="ops.beat")
    async def beat() -> None:
        fired.append(1)

    await soniq_app.scheduler.add(beat, every=timedelta(seconds=0.2))
    await soniq_app.scheduler.start(check_interval=0.05)
    assert soniq_app.scheduler.running
    await wait_until(
        lambda: soniq_app.list_jobs(queue="default"), message="the in-process scheduler fired"
    )
    await soniq_app.scheduler.stop()
    assert not soniq_app.scheduler.running
    await soniq_app.scheduler.stop()  # idempotent


# --- Conflicts - seeds win --------------------------------------------------------------------
async def test_queue_stats_list_also_answers_aggregate_keys(soniq_app: Soniq) -> None:
    stats = await soniq_app.get_queue_stats()
    assert stats == [] and len(stats) == 0 and stats["queued"] == 0
    assert stats.get("done") == 0 and dict(stats.items())["total"] == 0

    @soniq_app.job(name="ops.a", queue="a")
    async def a() -> None: ...

    @soniq_app.job(name="ops.b", queue="b")
    async def b() -> None: ...

    await soniq_app.enqueue(a)
    await soniq_app.enqueue(b)
    await soniq_app.enqueue(b)
    stats = await soniq_app.get_queue_stats()
    assert [row["queue"] for row in stats] == ["a", "b"]  # seed shape, sorted
    assert (stats["queued"], stats["total"], stats[1]["queued"]) == (3, 3, 2)
    with pytest.raises(KeyError):
        stats["nonsense"]


async def test_worker_side_validate_dead_letters_at_once(pg_url: str) -> None:
    from pydantic import BaseModel

    class Charge(BaseModel):
        order_id: int

    producer = Soniq(database_url=pg_url, enqueue_validation="none", pool_min_size=1)
    consumer = Soniq(database_url=pg_url, pool_min_size=1)
    ran: list[int] = []

    @consumer.job(name="billing.charge", validate=Charge, retries=3)
    async def charge(order_id: int) -> None:
        ran.append(order_id)

    bad = await producer.enqueue("billing.charge", args={"order_id": "not a number"})
    good = await producer.enqueue("billing.charge", args={"order_id": 7})
    await consumer.run_worker(run_once=True)
    assert ran == [7]
    record = await consumer.dead_letter.get_dead_letter_job(bad)
    assert record is not None and record.attempts == 1  # no retry could fix it
    assert record.dead_letter_reason == "invalid_arguments"
    assert (await consumer.get_job(good) or {})["status"] == "done"
    await producer.close()
    await consumer.close()


async def test_get_result_rebuilds_a_result_model(soniq_app: Soniq) -> None:
    from dataclasses import dataclass

    from pydantic import BaseModel

    class Invoice(BaseModel):
        number: int

    @dataclass
    class Total:
        amount: int

    @soniq_app.job(name="billing.invoice")
    async def invoice() -> dict[str, int]:
        return {"number": 7, "amount": 7}

    job_id = await soniq_app.enqueue(invoice)
    await soniq_app.run_worker(run_once=True)
    assert await soniq_app.get_result(job_id, result_model=Invoice) == Invoice(number=7)
    assert await soniq_app.get_result(job_id, result_model=dict) == {"number": 7, "amount": 7}
    with pytest.raises(TypeError):
        await soniq_app.get_result(job_id, result_model=Total)  # 'number' is no field of Total
