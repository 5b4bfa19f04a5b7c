"""``SoniqSettings``: every knob, its ``SONIQ_*`` env var and its default.

Precedence is constructor kwargs > environment > ``.env`` > default. There is
no module-level cache: each ``Soniq`` instance builds and owns its settings.
Every mistake (a misspelled keyword, a value out of range) is a
``ConfigurationError`` raised here, at construction, so it surfaces where the
instance is built rather than later in a worker.
"""

from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from soniq.errors import ConfigurationError, PoolTooSmallError
from soniq.utils import split_csv

DEFAULT_DATABASE_URL = "postgresql://postgres@localhost/soniq"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENQUEUE_VALIDATION_MODES = ("strict", "warn", "none")
EnqueueValidation = Literal["strict", "warn", "none"]
DEFAULT_TASK_NAME_PATTERN = r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$"
"""Explicit task names: dotted lowercase words (``billing.send_invoice``), as published."""


class SoniqSettings(BaseSettings):
    """Configuration of one Soniq instance.

    Example::

        settings = SoniqSettings(concurrency=8)   # SONIQ_CONCURRENCY=8 works too
    """

    model_config = SettingsConfigDict(
        env_prefix="SONIQ_",
        env_file=".env",
        env_file_encoding="utf-8",
        # Unknown SONIQ_* variables are ignored (a shared .env may hold other tools'
        # keys); unknown *keywords* are refused in __init__, where a typo is certain.
        extra="ignore",
        populate_by_name=True,
        validate_default=True,
    )

    database_url: str | None = None
    concurrency: int = Field(
        default=4,
        ge=1,
        # Env names only: a bare "concurrency" alias would also read an unprefixed
        # CONCURRENCY env var. The kwarg still works through populate_by_name.
        validation_alias=AliasChoices("SONIQ_CONCURRENCY", "SONIQ_WORKER_CONCURRENCY"),
    )
    max_retries: int = Field(default=3, ge=0)
    priority: int = Field(default=100, ge=1, le=1000)
    queues: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["default"])
    result_ttl: int = Field(default=300, ge=0)
    job_timeout: float | None = Field(default=300.0, ge=0)
    pool_min_size: int = Field(default=5, ge=0)
    pool_max_size: int = Field(default=20, ge=1)
    pool_headroom: int = Field(default=2, ge=0)
    poll_interval: float = Field(default=5.0, gt=0)
    heartbeat_interval: float = Field(default=5.0, gt=0)
    heartbeat_timeout: float = Field(default=300.0, gt=0)
    cleanup_interval: float = Field(default=300.0, gt=0)
    error_retry_delay: float = Field(default=5.0, ge=0)
    log_level: str = "INFO"
    debug: bool = False
    environment: str = "production"
    jobs_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    enqueue_validation: EnqueueValidation = "strict"
    # 25 s, not 30: Kubernetes sends SIGKILL 30 s after SIGTERM by default, and the
    # worker still has to requeue what did not finish and deregister after the grace.
    shutdown_timeout: float = Field(default=25.0, ge=0)
    dashboard_api_key: str | None = None
    signing_key: str | None = None
    # Observability (soniq/signing.py, logs.py, metrics.py): SONIQ_SECRET_KEY is the
    # published package's name for the signing key, read when signing_key is unset.
    secret_key: str | None = None
    job_logs: bool = True
    job_log_level: str = "INFO"
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    # Reliability: a direct PostgreSQL URL for each worker's own long-lived connection
    # (its LISTEN and its liveness lock) when database_url points at a transaction-mode
    # pooler such as PgBouncer, which cannot hold either.
    listen_database_url: str | None = None
    # Compatibility with the published package (COMPAT.md): explicit task names must
    # match this (full match); routes of jobs registered without a queue; the thread
    # pool of sync handlers; and entry-point plugin names (SONIQ_PLUGINS) for the CLI
    # and for Soniq(autoload_plugins=True). Nothing loads plugins unless asked.
    task_name_pattern: str = DEFAULT_TASK_NAME_PATTERN
    route_map: dict[str, str] = Field(default_factory=dict)
    sync_handler_pool_size: int = Field(default=8, ge=1, le=256)
    sync_handler_grace_seconds: float | None = Field(default=None, ge=0)
    scheduler_suppress_warning: bool = False
    plugins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Speed: `soniq worker` runs its event loop on uvloop when it is installed
    # (`pip install 'soniq[speed]'`); false keeps asyncio's own loop. A worker started
    # with `await app.run_worker()` runs on its caller's loop, which Soniq cannot choose.
    use_uvloop: bool = True
    # Speed: on PostgreSQL a worker whose jobs run quicker than a claim sends its next
    # claim while the last one's jobs run (soniq/claiming.py). False: a claim waits for
    # free slots, for when more worker processes than cores share one queue, where the
    # claims in flight fight over rows and CPU (bench/RESULTS.md, "Claiming ahead").
    claim_ahead: bool = True

    _pool_max_size_explicit: bool = PrivateAttr(default=False)
    _split_queues = field_validator("queues", "jobs_modules", "plugins", mode="before")(split_csv)

    def __init__(self, **values: Any) -> None:
        _reject_unknown_keywords(values)
        try:
            super().__init__(**values)
        except ValidationError as exc:
            problems = "; ".join(f"{_label(err['loc'])}: {err['msg']}" for err in exc.errors())
            raise ConfigurationError(
                f"Invalid Soniq settings: {problems}. Fix the keyword argument or the SONIQ_* "
                "variable (environment or .env)."
            ) from None

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        level = str(value).upper()
        if level not in LOG_LEVELS:
            raise ValueError(
                f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)} (SONIQ_LOG_LEVEL)"
            )
        return level

    @field_validator("debug", "scheduler_suppress_warning", mode="before")
    @classmethod
    def _empty_is_false(cls, value: Any) -> Any:
        # `SONIQ_DEBUG=` (set but empty, as .env templates leave it) means off, not an
        # error that would stop every command.
        return False if isinstance(value, str) and not value.strip() else value

    @field_validator("use_uvloop", "claim_ahead", mode="before")
    @classmethod
    def _empty_is_default(cls, value: Any) -> Any:
        # `SONIQ_USE_UVLOOP=` (set but empty) keeps the default rather than failing.
        return True if isinstance(value, str) and not value.strip() else value

    @field_validator("task_name_pattern")
    @classmethod
    def _check_pattern(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"{value!r} is not a regular expression ({exc}); fix SONIQ_TASK_NAME_PATTERN"
            ) from None
        return value

    @field_validator("enqueue_validation", mode="before")
    @classmethod
    def _normalise_validation(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_pool(self) -> SoniqSettings:
        # Only min against max here. Max against concurrency is the worker's business
        # (worker_pool_size): a producer-only process must never fail because of it.
        if "pool_min_size" in self.model_fields_set and self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than pool_max_size "
                f"({self.pool_max_size}); lower SONIQ_POOL_MIN_SIZE or raise SONIQ_POOL_MAX_SIZE"
            )
        return self

    def model_post_init(self, context: Any, /) -> None:
        # Remembered once: a worker may later grow pool_max_size on this object, and
        # that assignment must not make the size look chosen by the user.
        self._pool_max_size_explicit = "pool_max_size" in self.model_fields_set

    @property
    def effective_job_timeout(self) -> float | None:
        """``job_timeout`` with 0 meaning "no timeout"."""
        return self.job_timeout or None

    @property
    def pool_max_size_explicit(self) -> bool:
        """Whether ``pool_max_size`` came from a kwarg, the environment or ``.env``."""
        return self._pool_max_size_explicit

    def resolved_database_url(self) -> str:
        return self.database_url or DEFAULT_DATABASE_URL


def worker_pool_size(settings: SoniqSettings, concurrency: int) -> int:
    """The connection-pool size a worker running ``concurrency`` jobs at once needs.

    The one home of the pool-size rule. Each running job may hold a connection
    (a handler that enqueues or queries), plus ``pool_headroom`` for the worker's
    own claim, ack and heartbeat traffic. A ``pool_max_size`` the user did not set
    grows to fit, so ``--concurrency 64`` just works; one the user did set is a
    cap they chose, and a cap too small for the concurrency is a ``WorkerError``
    rather than a worker that stalls waiting for connections. Producers never call
    this: an enqueue needs one connection at a time, whatever ``concurrency`` says.
    """
    need = concurrency + settings.pool_headroom
    if not settings.pool_max_size_explicit:
        return max(settings.pool_max_size, need)
    if settings.pool_max_size < need:
        # The published package's opening words: troubleshooting pages quote them.
        raise PoolTooSmallError(
            f"Connection pool too small: worker concurrency ({concurrency}) plus reserved "
            f"headroom ({settings.pool_headroom}) requires {need} connections, but "
            f"pool_max_size is {settings.pool_max_size}. Raise SONIQ_POOL_MAX_SIZE "
            f"(pool_max_size) to {need}, unset it to let the worker size the pool, or lower "
            "the concurrency.",
            context={
                "concurrency": concurrency, "pool_headroom": settings.pool_headroom,
                "required": need, "pool_max_size": settings.pool_max_size,
            },
        )  # fmt: skip
    return settings.pool_max_size


def get_settings(config_file: Path | str | None = None, reload: bool = False) -> SoniqSettings:
    """Settings from the environment and ``.env`` (or ``config_file``), built once per process.

    The published package's entry point for code outside a ``Soniq`` instance (test
    fixtures call ``get_settings(reload=True)`` after changing the environment).
    ``reload=True`` rebuilds. An invalid value raises ``ConfigurationError`` (a
    ``ValueError``) whose message starts ``Invalid Soniq configuration:``.

    The cache is private to this function: a ``Soniq`` instance never reads it, so
    instances stay isolated from each other and from this process-wide view.

    Example::

        settings = get_settings()
        print(settings.concurrency)
    """
    key = str(config_file) if config_file is not None else None
    if reload:
        _cached_settings.cache_clear()
    return _cached_settings(key)


@functools.lru_cache(maxsize=8)
def _cached_settings(env_file: str | None) -> SoniqSettings:
    try:
        if env_file is None:
            return SoniqSettings()
        return SoniqSettings(_env_file=env_file)
    except ConfigurationError as exc:
        problem = exc.message.removeprefix("Invalid Soniq settings: ")
        raise ConfigurationError(
            f"Invalid Soniq configuration: {problem}", context=exc.context
        ) from None


def _reject_unknown_keywords(values: dict[str, Any]) -> None:
    """A keyword that is no setting is a typo: say which setting was probably meant."""
    known = _known_keywords()
    for key in values:
        if key in known or key.startswith("_"):  # _env_file and friends: pydantic-settings'
            continue
        if key == "strict_task_names":
            raise ConfigurationError(
                "strict_task_names was replaced by enqueue_validation. Use "
                "enqueue_validation='none' (or 'warn') instead of strict_task_names=False; "
                "'strict' is the default."
            )
        close = difflib.get_close_matches(key, SoniqSettings.model_fields, n=1)
        if close:
            raise ConfigurationError(
                f"Unknown Soniq setting {key!r}; did you mean {close[0]!r}? "
                "Fix the keyword's spelling."
            )
        raise ConfigurationError(
            f"Unknown Soniq setting {key!r}. Use one of: {', '.join(SoniqSettings.model_fields)}."
        )


def _known_keywords() -> set[str]:
    """Field names plus their env-style aliases (``SONIQ_CONCURRENCY=`` is accepted too)."""
    known = set(SoniqSettings.model_fields)
    for field in SoniqSettings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            known.update(choice for choice in alias.choices if isinstance(choice, str))
    return known


def _label(loc: tuple[Any, ...]) -> str:
    """``concurrency (SONIQ_CONCURRENCY)`` whether the value came from a kwarg or an env alias."""
    if not loc:
        return "settings"
    name = str(loc[0]).lower().removeprefix("soniq_").removeprefix("worker_")
    return f"{name} (SONIQ_{name.upper()})"
