"""The error model: one base class, stable codes, and messages that end with the fix.

Every error Soniq raises on purpose is a :class:`SoniqError`. Each carries:

* ``error_code`` — a stable string to branch on (``SONIQ_UNKNOWN_TASK_NAME``, ...).
  Codes never change once released; messages may be reworded. Each class has a
  default code, so ``UnknownTaskError("...")`` is enough to raise one.
* ``message`` — what went wrong and how to fix it, in one or two sentences.
* ``context`` — the values involved (``{"task_name": ..., "mode": ...}``), for logs
  and for code that reacts to the error.
* ``suggestions`` — further fixes, one line each (often empty: the message has the fix).
* ``documentation_url`` — where to read more, when there is a page.

``str(err)`` is the framed form the published ``soniq`` package prints
(``Soniq Error [CODE]: message`` plus Context/Suggestions/Documentation blocks),
so logs and existing ``except`` handlers see the same text. The ``soniq`` command
prints ``message`` and ``suggestions`` instead, since the code and the frame are
noise on a terminal.

Example::

    try:
        await app.enqueue("billing.send_invoce", args={})
    except SoniqError as err:
        if err.error_code == SONIQ_UNKNOWN_TASK_NAME:
            log.error("%s (task %s)", err.message, err.context["task_name"])
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from soniq.utils import mask_url

# --- stable codes users branch on (each constant equals its own name) -------------------
SONIQ_UNKNOWN_TASK_NAME = "SONIQ_UNKNOWN_TASK_NAME"
SONIQ_INVALID_TASK_NAME = "SONIQ_INVALID_TASK_NAME"
SONIQ_TASK_ARGS_INVALID = "SONIQ_TASK_ARGS_INVALID"
SONIQ_PLUGIN_DUPLICATE = "SONIQ_PLUGIN_DUPLICATE"
SONIQ_POOL_TOO_SMALL = "SONIQ_POOL_TOO_SMALL"
SONIQ_INIT_ERROR = "SONIQ_INIT_ERROR"
SONIQ_APP_CLOSED = "SONIQ_APP_CLOSED"
SONIQ_APP_FROZEN = "SONIQ_APP_FROZEN"
MIGRATION_FAILED = "MIGRATION_FAILED"


class SoniqError(Exception):
    """Base class of every error Soniq raises on purpose.

    ``SoniqError(message, error_code=None, context=None, suggestions=None,
    documentation_url=None)``; a subclass supplies its own default ``error_code``.
    """

    error_code: str = "SONIQ_ERROR"

    def __init__(
        self,
        message: str = "",
        error_code: str | None = None,
        context: Mapping[str, Any] | None = None,
        suggestions: Iterable[str] | None = None,
        documentation_url: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = str(message)
        self.error_code = error_code or type(self).error_code
        self.context: dict[str, Any] = dict(context or {})
        self.suggestions: list[str] = [str(s) for s in suggestions or ()]
        self.documentation_url = documentation_url

    def __str__(self) -> str:
        parts = [f"Soniq Error [{self.error_code}]: {self.message}"]
        if self.context:
            lines = "\n".join(f"  {key}: {value}" for key, value in self.context.items())
            parts.append(f"Context:\n{lines}")
        if self.suggestions:
            parts.append("Suggestions:\n" + "\n".join(f"  - {s}" for s in self.suggestions))
        if self.documentation_url:
            parts.append(f"Documentation: {self.documentation_url}")
        return "\n\n".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, error_code={self.error_code!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as cls(*args): keep the keyword state too (multiprocessing,
        # pytest-xdist and logging handlers pickle errors).
        return (_rebuild, (type(self), self.__dict__.copy()))

    def describe(self) -> str:
        """``message`` followed by the suggestions, one per line: what a person reads."""
        return "\n".join([self.message, *(f"  - {s}" for s in self.suggestions)])


def _rebuild(cls: type[SoniqError], state: dict[str, Any]) -> SoniqError:
    err = cls.__new__(cls)
    Exception.__init__(err, state.get("message", ""))
    err.__dict__.update(state)
    return err


def describe_error(exc: BaseException) -> str:
    """``Type: message`` of any exception, without the framed ``str`` of a ``SoniqError``.

    What a job's ``last_error`` and a log line should hold: the frame and the
    code would repeat on every line of a dashboard.
    """
    text = exc.message if isinstance(exc, SoniqError) else str(exc)
    return f"{type(exc).__name__}: {text}"


class ConfigurationError(SoniqError, ValueError):
    """A setting or constructor argument is invalid."""

    error_code = "SONIQ_CONFIG_INVALID"


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A setting or argument of the wrong type (``cron(5)``): both a ``ConfigurationError``
    and, as the published package raises it, a ``TypeError``."""


class DatabaseUnavailableError(SoniqError, ConnectionError):
    """The database cannot be reached (first use included: the published ``SONIQ_INIT_ERROR``)."""

    error_code = SONIQ_INIT_ERROR


class SchemaMissingError(SoniqError):
    """Soniq's tables are not there: ``soniq setup`` has not been run on this database."""

    error_code = "SONIQ_SCHEMA_MISSING"

    @classmethod
    def for_database(cls, database_url: str) -> SchemaMissingError:
        """The error for ``database_url``: which database was looked at, and the fix."""
        shown = mask_url(database_url)
        return cls(
            f"Soniq's tables are missing in the database {shown}: `soniq setup` has not been "
            f"run on it. Create them once with {setup_command(database_url)}.",
            context={"database_url": shown},
        )


def setup_command(database_url: str) -> str:
    """How to run ``soniq setup`` on ``database_url``, ready to copy (password masked)."""
    masked = mask_url(database_url)
    shown = shlex.quote(masked)
    command = f"`soniq setup --database-url {shown}` (or `SONIQ_DATABASE_URL={shown} soniq setup`)"
    if masked != database_url:
        command += ", with your password in place of ***"
    return command


class MigrationError(SoniqError):
    """A migration failed; nothing of that migration was applied.

    ``MigrationError(migration_step, reason, database_info=None)`` as in the
    published package: the message names the step and the reason, and
    ``context`` is ``{migration_step, reason, **database_info}``. Called with a
    single argument, that argument is the whole message.
    """

    error_code = MIGRATION_FAILED

    def __init__(
        self,
        migration_step: str,
        reason: str | None = None,
        database_info: Mapping[str, Any] | None = None,
        *,
        suggestions: Iterable[str] | None = None,
    ) -> None:
        self.migration_step: str | None = None
        self.reason: str | None = None
        if reason is None:
            super().__init__(migration_step, context=database_info, suggestions=suggestions)
            return
        super().__init__(
            f"Migration {migration_step} failed: {reason}",
            context={"migration_step": migration_step, "reason": reason, **(database_info or {})},
            suggestions=suggestions,
        )
        self.migration_step, self.reason = migration_step, reason


class JobRegistrationError(SoniqError, ValueError):
    """A ``@app.job`` / hook registration is invalid."""

    error_code = "SONIQ_JOB_REGISTRATION_INVALID"


class EnqueueError(SoniqError, ValueError):
    """An enqueue was refused; nothing was written."""

    error_code = "SONIQ_ENQUEUE_INVALID"


class InvalidTaskNameError(JobRegistrationError, EnqueueError, TypeError):
    """A task name that is not a string or does not match ``task_name_pattern``.

    Also a ``TypeError``, what an empty or non-string name raised before names had a
    pattern.

    Raised where a name is written down: ``@app.job(name=...)``, ``task_ref``,
    and string targets of enqueue and ``scheduler.add``. Context ``{name, pattern}``.
    """

    error_code = SONIQ_INVALID_TASK_NAME


class UnknownTaskError(EnqueueError, LookupError):
    """A task name that no ``@app.job`` registered (``enqueue_validation="strict"``).

    Context ``{task_name, mode}``.
    """

    error_code = SONIQ_UNKNOWN_TASK_NAME


class JobValidationError(EnqueueError):
    """Arguments that do not bind to the handler or fail its ``validate=`` model."""

    error_code = SONIQ_TASK_ARGS_INVALID


class SerializationError(EnqueueError, TypeError):
    """Arguments that are not JSON-serialisable (a result that is not fails its attempt)."""

    error_code = "SONIQ_NOT_SERIALIZABLE"


class JobNotFoundError(SoniqError, LookupError):
    """No job (or dead-letter entry) with that id."""

    error_code = "SONIQ_JOB_NOT_FOUND"


class JobTimeoutError(SoniqError, TimeoutError):
    """A job attempt ran past its timeout; the attempt fails with this error."""

    error_code = "SONIQ_JOB_TIMEOUT"


class JobCancelledError(SoniqError):
    """``cancel_job`` stopped a running job; ``on_error`` hooks receive this (it ends
    ``cancelled`` and is not retried)."""

    error_code = "SONIQ_JOB_CANCELLED"


class SnoozeLimitError(SoniqError):
    """A job snoozed more than its ``max_snoozes``; that snooze is a failed attempt."""

    error_code = "SONIQ_SNOOZE_LIMIT"


class DiscoveryError(SoniqError):
    """``SONIQ_JOBS_MODULES`` could not be imported or names no Soniq instance."""

    error_code = "SONIQ_DISCOVERY_FAILED"


class AmbiguousAppError(DiscoveryError, RuntimeError):
    """The jobs modules hold several ``Soniq`` instances with jobs; a worker runs one.

    Also importable from ``soniq.discovery``, where the published package defines it.
    """

    error_code = "SONIQ_AMBIGUOUS_APP"


class WorkerError(SoniqError):
    """A worker cannot start (for example, its pool is too small for its concurrency)."""

    error_code = "SONIQ_WORKER_ERROR"


class PoolTooSmallError(WorkerError):
    """``pool_max_size`` is below ``concurrency + pool_headroom`` for a worker."""

    error_code = SONIQ_POOL_TOO_SMALL


class AppFrozenError(SoniqError):
    """A setting that the running instance already uses was changed (``retry_policy``...)."""

    error_code = SONIQ_APP_FROZEN


class PluginError(SoniqError):
    """A plugin could not be found, loaded or installed."""

    error_code = "SONIQ_PLUGIN_ERROR"


class PluginDuplicateError(PluginError):
    """A plugin with that ``name`` is already installed on this instance. Context ``{name,
    version}``."""

    error_code = SONIQ_PLUGIN_DUPLICATE


class SigningError(SoniqError, ValueError):
    """A token or signature failed authentication (tampered, or made with an unknown key)."""

    error_code = "SONIQ_SIGNING_FAILED"


class WebhookError(SoniqError, ValueError):
    """A webhook registration was refused (bad URL, unknown event, private target)."""

    error_code = "SONIQ_WEBHOOK_INVALID"


class MissingExtraError(SoniqError, ImportError):
    """An optional dependency of a feature is not installed; the message names the extra."""

    error_code = "SONIQ_MISSING_EXTRA"


__all__ = [
    "MIGRATION_FAILED",
    "SONIQ_APP_CLOSED",
    "SONIQ_APP_FROZEN",
    "SONIQ_INIT_ERROR",
    "SONIQ_INVALID_TASK_NAME",
    "SONIQ_PLUGIN_DUPLICATE",
    "SONIQ_POOL_TOO_SMALL",
    "SONIQ_TASK_ARGS_INVALID",
    "SONIQ_UNKNOWN_TASK_NAME",
    "AmbiguousAppError",
    "AppFrozenError",
    "ConfigurationError",
    "ConfigurationTypeError",
    "DatabaseUnavailableError",
    "DiscoveryError",
    "EnqueueError",
    "InvalidTaskNameError",
    "JobCancelledError",
    "JobNotFoundError",
    "JobRegistrationError",
    "JobTimeoutError",
    "JobValidationError",
    "MigrationError",
    "MissingExtraError",
    "PluginDuplicateError",
    "PluginError",
    "PoolTooSmallError",
    "SchemaMissingError",
    "SerializationError",
    "SigningError",
    "SnoozeLimitError",
    "SoniqError",
    "UnknownTaskError",
    "WebhookError",
    "WorkerError",
    "describe_error",
]
