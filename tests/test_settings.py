"""Settings (SPEC §1): every seed-table key, its env var, its default, and precedence."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from soniq import Soniq
from soniq.errors import ConfigurationError
from soniq.settings import SoniqSettings

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


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SONIQ_* from the outer environment, and no stray .env in the working directory."""
    import os

    for key in list(os.environ):
        if key.startswith("SONIQ_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("key", sorted(SEED_TABLE))
def test_default(key: str) -> None:
    default = SEED_TABLE[key][0]
    value = getattr(Soniq(backend="memory").settings, key)
    assert value == default and type(value) is type(default)


@pytest.mark.parametrize("key", sorted(SEED_TABLE))
def test_env_var(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _, raw, parsed = SEED_TABLE[key]
    monkeypatch.setenv(f"SONIQ_{key.upper()}", raw)
    assert getattr(Soniq(backend="memory").settings, key) == parsed


@pytest.mark.parametrize("key", sorted(SEED_TABLE))
def test_kwarg(key: str) -> None:
    _, _, parsed = SEED_TABLE[key]
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
        ({"concurrency": 4, "pool_max_size": 5}, "pool_max_size"),  # < 4 + 2
        ({"pool_min_size": 25}, "pool_min_size"),  # > pool_max_size 20
        ({"concurrency": 30}, "pool_max_size"),  # 30 + 2 > 20
        ({"log_level": "LOUD"}, "log_level"),
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


def test_invalid_env_value_names_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_CONCURRENCY", "-2")
    with pytest.raises(ConfigurationError, match=r"concurrency \(SONIQ_CONCURRENCY\)"):
        Soniq(backend="memory")
    monkeypatch.setenv("SONIQ_CONCURRENCY", "many")
    with pytest.raises(ConfigurationError, match="concurrency"):
        Soniq(backend="memory")


def test_pool_max_size_exactly_enough_is_fine() -> None:
    s = Soniq(backend="memory", concurrency=10, pool_headroom=2, pool_max_size=12).settings
    assert s.pool_max_size == 12


def test_pool_too_small_for_env_concurrency(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SONIQ_CONCURRENCY", "19")
    with pytest.raises(ConfigurationError, match="pool_max_size"):
        Soniq(backend="memory")
    assert Soniq(backend="memory", pool_max_size=21).settings.concurrency == 19


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
