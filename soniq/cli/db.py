"""``soniq setup`` and ``soniq migrate-status``."""

from __future__ import annotations

import click

from soniq.app import Soniq
from soniq.backends import MigrationInfo
from soniq.cli._common import (
    Io,
    database_app,
    database_url_option,
    describe_database,
    echo_json,
    fmt_time,
    make_table,
    resolve_url,
    run_app,
)
from soniq.settings import DEFAULT_DATABASE_URL
from soniq.utils import mask_url


@click.command()
@database_url_option
def setup(database_url: str | None) -> None:
    """Create the database if missing and apply pending migrations.

    Safe to run more than once and from several processes at once: migrations
    run under a lock and each is applied exactly once. Run it once per deploy.
    """
    io = Io.create()

    async def body(app: Soniq) -> None:
        io.line(f"Setting up {describe_database(app)}")
        if app.database_url == DEFAULT_DATABASE_URL and resolve_url(database_url) is None:
            io.warn(
                f"no database named (no --database-url, no SONIQ_DATABASE_URL), so this sets "
                f"up Soniq's built-in default, {DEFAULT_DATABASE_URL}. If your app uses "
                "another database, set up that one: `soniq setup --database-url <your URL>` "
                "(or `SONIQ_DATABASE_URL=<your URL> soniq setup`)."
            )
        report = await app.setup()
        if report.database_created:
            io.line("Created the database.")
        for name in report.applied:
            io.line(f"Applied migration {name}")
        total = len(report.applied) + len(report.already_applied)
        where = mask_url(app.database_url)
        if report.applied:
            io.line(
                f"Schema is up to date in {where} "
                f"({len(report.applied)} applied now, {total} in total)."
            )
        if "0000_adopt_published" in report.applied:
            io.line(
                "Adopted a database of the published soniq package: its jobs, dead letters, "
                "schedules and webhooks without a secret were copied (register webhooks with "
                "a secret again); its own tables are kept in the schema soniq_published "
                "(DROP SCHEMA soniq_published CASCADE when done)."
            )
        else:
            io.line(
                f"Schema is up to date in {where}; nothing to do "
                f"({total} migrations already applied)."
            )
        io.line("Database setup completed.")  # the published package's words; scripts grep it

    run_app(io, database_app(database_url), body)


@click.command("migrate-status")
@database_url_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--check", is_flag=True, help="Exit with status 1 when migrations are pending.")
def migrate_status(database_url: str | None, as_json: bool, check: bool) -> None:
    """Show applied and pending migrations."""
    io = Io.create()

    async def body(app: Soniq) -> list[MigrationInfo]:
        return await app.backend.migration_status()

    infos = run_app(io, database_app(database_url), body)
    pending = [m.name for m in infos if not m.applied]
    if as_json:
        echo_json(
            [{"name": m.name, "applied": m.applied, "applied_at": m.applied_at} for m in infos]
        )
    else:
        _print_migrations(io, infos, pending)
    if check and pending:
        raise SystemExit(1)


def _print_migrations(io: Io, infos: list[MigrationInfo], pending: list[str]) -> None:
    table = make_table("Migrations")
    table.add_column("Migration", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Applied at", no_wrap=True)
    for m in infos:
        status = "[green]applied[/green]" if m.applied else "[yellow]pending[/yellow]"
        table.add_row(m.name, status, fmt_time(m.applied_at))
    io.out.print(table)
    applied = len(infos) - len(pending)
    if pending:
        io.line(f"{applied} applied, {len(pending)} pending: run `soniq setup` to apply them.")
    else:
        io.line(f"{applied} applied, 0 pending: the schema is up to date.")
