"""The ``soniq`` command (minimal: ``setup``; the full CLI is built in its own issue)."""

from __future__ import annotations

import asyncio
import os
import sys

import click

from soniq.errors import SoniqError


@click.group()
def main() -> None:
    """Soniq: background jobs on PostgreSQL."""


@main.command()
@click.option("--database-url", default=None, help="Defaults to SONIQ_DATABASE_URL.")
def setup(database_url: str | None) -> None:
    """Create the database if missing and apply pending migrations."""
    from soniq.app import Soniq

    async def run() -> None:
        app = Soniq(database_url=database_url or os.environ.get("SONIQ_DATABASE_URL"))
        report = await app.setup()
        for name in report.applied:
            click.echo(f"applied {name}")
        click.echo(f"up to date ({len(report.applied)} applied)")

    try:
        asyncio.run(run())
    except SoniqError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
