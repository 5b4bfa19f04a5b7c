"""The ``soniq`` command group (``soniq.cli.main``; ``python -m soniq.cli.main`` runs it).

Plugin commands join the built-in ones through ``--plugins=a,b`` (before the
command) or ``SONIQ_PLUGINS``: see :mod:`soniq.cli.plugins`.
"""

from __future__ import annotations

from typing import Any

import click

import soniq
from soniq.cli.db import migrate_status, setup
from soniq.cli.dead_letters import dead_letter
from soniq.cli.plugins import META_KEY, plugin_commands, requested_plugins
from soniq.cli.run import dashboard, scheduler, worker
from soniq.cli.status import inspect, status


def _load_plugins(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    # Eager, so the commands exist before click resolves the subcommand or prints help.
    if META_KEY not in ctx.meta:
        ctx.meta[META_KEY] = plugin_commands(requested_plugins(value))


class SoniqGroup(click.Group):
    """Built-in commands plus the commands of the plugins asked for."""

    def _plugins(self, ctx: click.Context) -> dict[str, click.Command]:
        if META_KEY not in ctx.meta:  # no --plugins given: SONIQ_PLUGINS decides
            ctx.meta[META_KEY] = plugin_commands(requested_plugins(None))
        found: dict[str, click.Command] = ctx.meta[META_KEY]
        return found

    def list_commands(self, ctx: click.Context) -> list[str]:
        extra = [n for n in self._plugins(ctx) if n not in self.commands]
        return [*super().list_commands(ctx), *sorted(extra)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, cmd_name) or self._plugins(ctx).get(cmd_name)


@click.group(cls=SoniqGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(soniq.__version__, prog_name="soniq")
@click.option(
    "--plugins",
    metavar="A,B",
    default=None,
    is_eager=True,
    expose_value=False,
    callback=_load_plugins,
    help="Entry-point plugins whose commands to add. Defaults to SONIQ_PLUGINS (none).",
)
def main(**_: Any) -> None:
    """Soniq CLI: background jobs for Python, powered by PostgreSQL."""


for _command in (setup, migrate_status, worker, scheduler, status, inspect, dead_letter, dashboard):
    main.add_command(_command)

__all__ = ["SoniqGroup", "main"]
