"""The ``soniq`` command: set up the database, run workers and the scheduler, inspect state.

Every command takes ``--database-url`` (default ``SONIQ_DATABASE_URL``) and
``--help``. Errors are one clear message (and its suggestions) on stderr with a
non-zero exit code. The group itself lives in :mod:`soniq.cli.group`.

Example::

    soniq setup
    SONIQ_JOBS_MODULES=jobs soniq worker --concurrency 4
    soniq dead-letter list --json
"""

from __future__ import annotations

from soniq.cli.group import main

__all__ = ["main"]
