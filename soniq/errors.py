"""Stable exception classes. Every message says what went wrong and how to fix it."""

from __future__ import annotations

import shlex

from soniq.utils import mask_url


class SoniqError(Exception):
    """Base class of every error Soniq raises on purpose."""


class ConfigurationError(SoniqError, ValueError):
    """A setting or constructor argument is invalid."""


class DatabaseUnavailableError(SoniqError, ConnectionError):
    """The database cannot be reached."""


class SchemaMissingError(SoniqError):
    """Soniq's tables are not there: ``soniq setup`` has not been run on this database."""

    @classmethod
    def for_database(cls, database_url: str) -> SchemaMissingError:
        """The error for ``database_url``: which database was looked at, and the fix."""
        shown = mask_url(database_url)
        return cls(
            f"Soniq's tables are missing in the database {shown}: `soniq setup` has not been "
            f"run on it. Create them once with {setup_command(database_url)}."
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
    """A migration file failed; nothing of that file was applied."""


class JobRegistrationError(SoniqError, ValueError):
    """A ``@app.job`` / hook registration is invalid."""


class EnqueueError(SoniqError, ValueError):
    """An enqueue was refused; nothing was written."""


class UnknownTaskError(EnqueueError, LookupError):
    """A task name that no ``@app.job`` registered."""


class JobValidationError(EnqueueError):
    """Arguments that do not bind to the handler or fail its ``validate=`` model."""


class SerializationError(EnqueueError, TypeError):
    """Arguments that are not JSON-serialisable (a result that is not fails its attempt)."""


class JobNotFoundError(SoniqError, LookupError):
    """No job (or dead-letter entry) with that id."""


class JobTimeoutError(SoniqError, TimeoutError):
    """A job attempt ran past its timeout; the attempt fails with this error."""


class JobCancelledError(SoniqError):
    """``cancel_job`` stopped a running job; ``on_error`` hooks receive this (it ends
    ``cancelled`` and is not retried)."""


class SnoozeLimitError(SoniqError):
    """A job snoozed more than its ``max_snoozes``; that snooze is a failed attempt."""


class DiscoveryError(SoniqError):
    """``SONIQ_JOBS_MODULES`` could not be imported or names no Soniq instance."""


class WorkerError(SoniqError):
    """A worker cannot start (for example, its pool is too small for its concurrency)."""



class SigningError(SoniqError, ValueError):
    """A token or signature failed authentication (tampered, or made with an unknown key)."""


class WebhookError(SoniqError, ValueError):
    """A webhook registration was refused (bad URL, unknown event, private target)."""


class MissingExtraError(SoniqError, ImportError):
    """An optional dependency of a feature is not installed; the message names the extra."""


__all__ = [
    "ConfigurationError",
    "DatabaseUnavailableError",
    "DiscoveryError",
    "EnqueueError",
    "JobCancelledError",
    "JobNotFoundError",
    "JobRegistrationError",
    "JobTimeoutError",
    "JobValidationError",
    "MigrationError",
    "MissingExtraError",
    "SchemaMissingError",
    "SerializationError",
    "SigningError",
    "SnoozeLimitError",
    "SoniqError",
    "UnknownTaskError",
    "WebhookError",
    "WorkerError",
]
