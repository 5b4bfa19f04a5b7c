"""The ``soniq`` command: set up the database, run workers and the scheduler, inspect state.

Every command takes ``--database-url`` (default ``SONIQ_DATABASE_URL``) and
``--help``. Errors are one clear line on stderr with a non-zero exit code.

Example::

    soniq setup
    SONIQ_JOBS_MODULES=jobs soniq worker --concurrency 4
    soniq dead-letter list --json
"""

from __future__ import annotations

import click

import soniq
from soniq.cli.db import migrate_status, setup
from soniq.cli.dead_letters import dead_letter
from soniq.cli.run import dashboard, scheduler, worker
from soniq.cli.status import inspect, status


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(soniq.__version__, prog_name="soniq")
def main() -> None:
    """Soniq: background jobs for Python, powered by PostgreSQL."""


for _command in (setup, migrate_status, worker, scheduler, status, inspect, dead_letter, dashboard):
    main.add_command(_command)

__all__ = ["main"]
