"""Settings (SPEC §1): every seed-table key, its env var, its default, and precedence."""

from __future__ import annotations

import asyncio
import re
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import ConfigurationError, WorkerError
from soniq.settings import SoniqSettings, worker_pool_size
from tests.helpers import FAST_SETTINGS

# key -> (default, env value, parsed env value), straight from the seed's settings table.
SEED_TABLE: dict[str, tuple[Any, str, Any]] = {
    "concurrency": (4, "8", 8),
    "max_retries": (3, "7", 7),
    "priority": (100, "50", 50),
    "queues": (["default"], "emails,billing", ["emails", "billing"]),
    "result_ttl": (300, "60", 60),
    "job_timeout": (300.0, "12.5", 12.5),
    "pool_min_size": (5, "2", 2),
    "pool_max_size": (20, "40", 40),
    "pool_headroom": (2, "3", 3),
    "poll_interval": (5.0, "0.5", 0.5),
    "heartbeat_interval": (5.0, "1.5", 1.5),
    "heartbeat_timeout": (300.0, "30", 30.0),
    "cleanup_interval": (300.0, "45", 45.0),
    "error_retry_delay": (5.0, "0.25", 0.25),
    "log_level": ("INFO", "DEBUG", "DEBUG"),
    "debug": (False, "true", True),
    "environment": ("production", "staging", "staging"),
}

# Settings beyond the seed table, documented in the README: same rules.
OTHER_SETTINGS: dict[str, tuple[Any, str, Any]] = {
    "enqueue_validation": ("strict", "warn", "warn"),
    "shutdown_timeout": (25.0, "10", 10.0),
    "jobs_modules": ([], "jobs, more.jobs", ["jobs", "more.jobs"]),
}
ALL_SETTINGS = {**SEED_TABLE, **OTHER_SETTINGS}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SONIQ_* from the outer environment, and no stray .env in the working directory."""
    import os

    for key in list(os.environ):
        if key.startswith("SONIQ_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("key", sorted(ALL_SETTINGS))
def test_default(key: str) -> None:
    default = ALL_SETTINGS[key][0]
    value = getattr(Soniq(backend="memory").settings, key)
    assert value == default and type(value) is type(default)


@pytest.mark.parametrize("key", sorted(ALL_SETTINGS))
def test_env_var(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, raw, parsed = ALL_SETTINGS[key]
    monkeypatch.setenv(f"SONIQ_{key.upper()}", raw)
    assert getattr(Soniq(backend="memory").settings, key) == parsed


@pytest.mark.parametrize("key", sorted(ALL_SETTINGS))
def test_kwarg(key: str) -> None:
    _, _, parsed = ALL_SETTINGS[key]
    assert getattr(Soniq(backend="memory", **{key: parsed}).settings, key) == parsed


def test_precedence_kwargs_env_dotenv_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "SONIQ_CONCURRENCY=6\nSONIQ_PRIORITY=60\nSONIQ_RESULT_TTL=66\n", encoding="utf-8"
    )
    monkeypatch.setenv("SONIQ_CONCURRENCY", "7")
    monkeypatch.setenv("SONIQ_PRIORITY", "70")
    s = Soniq(backend="memory", concurrency=8).settings
    assert s.concurrency == 8  # kwarg beats env and .env
    assert s.priority == 70  # env beats .env
    assert s.result_ttl == 66  # .env beats default
    assert s.max_retries == 3  # default


def test_dotenv_database_url(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SONIQ_DATABASE_URL=postgresql://u@dbhost/fromdotenv\n")
    assert Soniq().database_url == "postgresql://u@dbhost/fromdotenv"
    assert Soniq("postgresql://u@h/explicit").database_url == "postgresql://u@h/explicit"


def test_queues_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_QUEUES", "a,b")
    assert Soniq(backend="memory").settings.queues == ["a", "b"]
    monkeypatch.setenv("SONIQ_QUEUES", " a , b ,")
    assert Soniq(backend="memory").settings.queues == ["a", "b"]
    assert Soniq(backend="memory", queues="x,y").settings.queues == ["x", "y"]
    assert Soniq(backend="memory", queues=["z"]).settings.queues == ["z"]


def test_job_timeout_zero_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_JOB_TIMEOUT", "0")
    s = Soniq(backend="memory").settings
    assert s.job_timeout == 0 and s.effective_job_timeout is None
    assert Soniq(backend="memory").settings.effective_job_timeout is None
    monkeypatch.delenv("SONIQ_JOB_TIMEOUT")
    assert Soniq(backend="memory").settings.effective_job_timeout == 300.0


def test_worker_concurrency_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    # The glossary names SONIQ_WORKER_CONCURRENCY; SONIQ_CONCURRENCY wins when both are set.
    monkeypatch.setenv("SONIQ_WORKER_CONCURRENCY", "5")
    assert Soniq(backend="memory").settings.concurrency == 5
    monkeypatch.setenv("SONIQ_CONCURRENCY", "6")
    assert Soniq(backend="memory").settings.concurrency == 6


def test_unprefixed_env_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONCURRENCY", "9")
    monkeypatch.setenv("PRIORITY", "9")
    s = Soniq(backend="memory").settings
    assert (s.concurrency, s.priority) == (4, 100)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"concurrency": -1}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"pool_min_size": 25}, "pool_min_size"),  # > pool_max_size 20
        ({"log_level": "LOUD"}, "log_level"),
        ({"enqueue_validation": "loose"}, "enqueue_validation"),
        ({"shutdown_timeout": -1}, "shutdown_timeout"),
        ({"priority": 0}, "priority"),
        ({"max_retries": -1}, "max_retries"),
        ({"poll_interval": 0}, "poll_interval"),
    ],
)
def test_invalid_values_raise_configuration_error(kwargs: dict[str, Any], named: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Soniq(backend="memory", **kwargs)
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(info.value).endswith("SONIQ_* variable (environment or .env).")
    with pytest.raises(ConfigurationError):
        SoniqSettings(**kwargs)  # the class alone says the same thing


def test_invalid_env_value_names_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_CONCURRENCY", "-2")
    with pytest.raises(ConfigurationError, match=r"concurrency \(SONIQ_CONCURRENCY\)"):
        Soniq(backend="memory")
    monkeypatch.setenv("SONIQ_CONCURRENCY", "many")
    with pytest.raises(ConfigurationError, match="concurrency"):
        Soniq(backend="memory")


def test_log_level_case_insensitive() -> None:
    assert Soniq(backend="memory", log_level="warning").settings.log_level == "WARNING"


def test_instances_do_not_share_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    a = Soniq(backend="memory", concurrency=2, queues=["a"])
    b = Soniq(backend="memory", concurrency=9)
    assert a.settings is not b.settings
    assert (a.settings.concurrency, b.settings.concurrency) == (2, 9)
    a.settings.queues.append("mutated")
    assert b.settings.queues == ["default"]
    assert Soniq(backend="memory").settings.queues == ["default"]
    # Env changes apply to instances created afterwards, not to existing ones.
    monkeypatch.setenv("SONIQ_PRIORITY", "5")
    assert Soniq(backend="memory").settings.priority == 5
    assert a.settings.priority == 100


def test_settings_class_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_POLL_INTERVAL", "1.25")
    assert SoniqSettings().poll_interval == 1.25
    assert SoniqSettings(poll_interval=2).poll_interval == 2.0


# --- misspelled keywords ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keyword", "meant"),
    [
        ("concurency", "concurrency"),
        ("pool_max", "pool_max_size"),
        ("shutdown_timout", "shutdown_timeout"),
        ("enqueue_validaton", "enqueue_validation"),
        ("heartbeat_intervall", "heartbeat_interval"),
    ],
)
def test_misspelled_keyword_names_the_closest_setting(keyword: str, meant: str) -> None:
    kwargs: dict[str, Any] = {keyword: 8}
    for build in (
        lambda: Soniq(backend="memory", **kwargs),
        lambda: SoniqSettings(**kwargs),
    ):
        with pytest.raises(ConfigurationError) as info:
            build()
        message = str(info.value)
        assert repr(keyword) in message and f"did you mean {meant!r}?" in message
        assert message.endswith("Fix the keyword's spelling.")


def test_unknown_keyword_without_a_close_match_lists_the_settings() -> None:
    with pytest.raises(ConfigurationError) as info:
        Soniq(backend="memory", zzz=1)
    assert "'zzz'" in str(info.value) and "concurrency" in str(info.value)


def test_strict_task_names_is_gone_and_says_what_replaced_it() -> None:
    with pytest.raises(ConfigurationError, match="enqueue_validation='none'"):
        Soniq(backend="memory", strict_task_names=False)


def test_env_style_keywords_and_pydantic_settings_options_still_work(tmp_path: Path) -> None:
    assert SoniqSettings(SONIQ_CONCURRENCY=3).concurrency == 3
    env_file = tmp_path / "other.env"
    env_file.write_text("SONIQ_PRIORITY=42\n", encoding="utf-8")
    assert SoniqSettings(_env_file=env_file).priority == 42


def test_unknown_soniq_variables_in_dotenv_are_ignored(tmp_path: Path) -> None:
    """A shared .env may carry other tools' SONIQ_* keys: only keywords are checked."""
    (tmp_path / ".env").write_text("SONIQ_SOMETHING_ELSE=1\nSONIQ_CONCURRENCY=6\n")
    assert Soniq(backend="memory").settings.concurrency == 6


# --- every setting is alive -------------------------------------------------------------------

# Read by the user's own code by design (the seed table says so), not by Soniq.
READ_BY_USERS = {"queues"}
# Read by feature modules (they must exist).
READ_BY_FEATURE = {
    "dashboard_api_key": "soniq.dashboard",
    "signing_key": "soniq.signing",
    "secret_key": "soniq.signing",
    "job_logs": "soniq.logs",
    "job_log_level": "soniq.logs",
    "metrics_port": "soniq.metrics",
}
# Read through an accessor of SoniqSettings that applies its rule (0 = off, the default URL).
ACCESSORS = {"job_timeout": "effective_job_timeout", "database_url": "resolved_database_url"}


@pytest.mark.parametrize("field", sorted(set(SoniqSettings.model_fields) - READ_BY_USERS))
def test_every_setting_is_read_somewhere(field: str) -> None:
    feature = READ_BY_FEATURE.get(field)
    assert feature is None or find_spec(feature) is not None, f"{feature} is missing"
    package = Path(__file__).resolve().parents[1] / "soniq"
    # An attribute read that is not a method call (log.debug(...) is no read of "debug")
    # and not the class reading itself.
    accessor = rf"|\.{ACCESSORS[field]}\b" if field in ACCESSORS else ""
    pattern = re.compile(
        rf"(?<!self)\.{field}\b(?!\s*\()|getattr\([^)]*[\"']{field}[\"']{accessor}"
    )
    readers = [
        path.relative_to(package)
        for path in package.rglob("*.py")
        if pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert readers, f"no module reads settings.{field}: read it where it matters, or remove it"


def test_default_shutdown_timeout_fits_kubernetes_grace_period() -> None:
    # Kubernetes kills a pod 30 s after SIGTERM by default; the worker needs a few seconds
    # after the grace to requeue what is left and deregister.
    assert SoniqSettings().shutdown_timeout <= 25


# --- pool sizing ------------------------------------------------------------------------------


def test_a_producer_never_fails_because_of_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Soniq(backend="memory", concurrency=500).settings.concurrency == 500
    monkeypatch.setenv("SONIQ_CONCURRENCY", "300")
    assert Soniq(backend="memory").settings.concurrency == 300
    # Even an explicit small pool: only a worker needs room for its concurrency.
    assert Soniq(backend="memory", pool_max_size=3).settings.pool_max_size == 3


def test_worker_pool_size_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    implicit = SoniqSettings()
    assert not implicit.pool_max_size_explicit
    assert worker_pool_size(implicit, 4) == 20  # the default already fits
    assert worker_pool_size(implicit, 64) == 66  # grows to concurrency + headroom
    assert worker_pool_size(SoniqSettings(pool_headroom=5), 64) == 69

    explicit = SoniqSettings(pool_max_size=30)
    assert worker_pool_size(explicit, 28) == 30  # exactly enough is fine
    with pytest.raises(WorkerError) as info:
        worker_pool_size(explicit, 29)
    message = info.value.message
    # The published package's opening words, which its troubleshooting page quotes.
    assert message.startswith("Connection pool too small: worker concurrency (29) plus reserved")
    assert "requires 31" in message and "pool_max_size is 30" in message
    assert message.endswith("or lower the concurrency.")
    assert info.value.error_code == "SONIQ_POOL_TOO_SMALL"

    # Set through the environment or .env counts as set.
    monkeypatch.setenv("SONIQ_POOL_MAX_SIZE", "10")
    with pytest.raises(WorkerError, match="SONIQ_POOL_MAX_SIZE"):
        worker_pool_size(SoniqSettings(), 9)
    monkeypatch.delenv("SONIQ_POOL_MAX_SIZE")
    (tmp_path / ".env").write_text("SONIQ_POOL_MAX_SIZE=10\n")
    assert SoniqSettings().pool_max_size_explicit


async def test_producer_with_high_concurrency_and_small_pool_enqueues(pg_url: str) -> None:
    app = Soniq(pg_url, concurrency=200, pool_max_size=2, pool_min_size=1)
    try:

        @app.job(name="settings.noop")
        async def noop() -> None: ...

        ids = [await app.enqueue(noop) for _ in range(3)]
        assert len(set(ids)) == 3
    finally:
        await app.close()


async def test_worker_sizes_an_unset_pool_from_its_concurrency(pg_url: str) -> None:
    """40 jobs that each hold a pooled connection at the same time: only a pool sized from
    the concurrency (40 + 2), not the default 20, lets all of them through."""
    app = Soniq(pg_url, **FAST_SETTINGS)
    holding: list[int] = []
    all_holding = asyncio.Event()

    @app.job(name="settings.hold", timeout=20)
    async def hold(n: int) -> None:
        async with app.backend.acquire() as conn:
            await conn.fetchval("SELECT 1")
            holding.append(n)
            if len(holding) == 40:
                all_holding.set()
            await asyncio.wait_for(all_holding.wait(), timeout=10)

    try:
        await app.enqueue_many(hold, [{"n": n} for n in range(40)])
        await app.close()  # the pool the producer side opened closes; the worker reopens it
        assert await app.run_worker(concurrency=40, run_once=True)
        assert app.settings.pool_max_size == 42
        assert not app.settings.pool_max_size_explicit  # growing it did not make it a choice
        stats = await app.get_queue_stats()
        assert (stats[0]["done"], stats[0]["dead_letter"], stats[0]["queued"]) == (40, 0, 0)
    finally:
        await app.close()


async def test_worker_refuses_an_explicit_pool_too_small(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SONIQ_POOL_MAX_SIZE", "10")
    app = Soniq(pg_url, **FAST_SETTINGS)
    try:
        with pytest.raises(WorkerError, match=r"Raise SONIQ_POOL_MAX_SIZE \(pool_max_size\) to 22"):
            await app.run_worker(concurrency=20, run_once=True)
        assert await app.run_worker(concurrency=8, run_once=True) is False  # 8 + 2 fits
    finally:
        await app.close()


@pytest.mark.parametrize("field", sorted(SoniqSettings.model_fields))
def test_readme_lists_every_setting_with_its_env_var(field: str) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("|") and f"`{field}`" in line]
    assert rows, f"README's settings table has no row for {field}"
    assert f"SONIQ_{field.upper()}" in rows[0]
