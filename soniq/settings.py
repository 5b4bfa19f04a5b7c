"""``SoniqSettings``: every knob, its ``SONIQ_*`` env var and its default.

Precedence is constructor kwargs > environment > ``.env`` > default. There is
no module-level cache: each ``Soniq`` instance builds and owns its settings.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_DATABASE_URL = "postgresql://postgres@localhost/soniq"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class SoniqSettings(BaseSettings):
    """Configuration of one Soniq instance.

    Example::

        settings = SoniqSettings(concurrency=8)   # SONIQ_CONCURRENCY=8 works too
    """

    model_config = SettingsConfigDict(
        env_prefix="SONIQ_",
        env_file=".env",
        env_file_encoding="utf-8",
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
    strict_task_names: bool = True
    shutdown_timeout: float = Field(default=30.0, ge=0)
    dashboard_api_key: str | None = None
    signing_key: str | None = None

    _split_queues = field_validator("queues", "jobs_modules", mode="before")(_split_csv)

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_log_level(cls, value: Any) -> str:
        level = str(value).upper()
        if level not in LOG_LEVELS:
            raise ValueError(
                f"unknown log level {value!r}; use one of {', '.join(LOG_LEVELS)} (SONIQ_LOG_LEVEL)"
            )
        return level

    @model_validator(mode="after")
    def _check_pool(self) -> SoniqSettings:
        # Only a concurrency that was asked for is checked here: a producer-only
        # instance with a small pool is fine. The worker re-checks the concurrency
        # it actually runs with.
        need = self.concurrency + self.pool_headroom
        if "concurrency" in self.model_fields_set and self.pool_max_size < need:
            raise ValueError(
                f"pool_max_size ({self.pool_max_size}) must be at least concurrency "
                f"({self.concurrency}) + pool_headroom ({self.pool_headroom}) = {need}; "
                "raise SONIQ_POOL_MAX_SIZE or lower SONIQ_CONCURRENCY"
            )
        if "pool_min_size" in self.model_fields_set and self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than pool_max_size "
                f"({self.pool_max_size}); lower SONIQ_POOL_MIN_SIZE"
            )
        return self

    @property
    def effective_job_timeout(self) -> float | None:
        """``job_timeout`` with 0 meaning "no timeout"."""
        return self.job_timeout or None

    def resolved_database_url(self) -> str:
        return self.database_url or DEFAULT_DATABASE_URL
