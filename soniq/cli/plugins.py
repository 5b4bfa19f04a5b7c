"""Plugin commands in the ``soniq`` command: ``soniq --plugins=a,b <command>``.

Plugins are entry points (group ``soniq.plugins``) named by ``--plugins`` or
``SONIQ_PLUGINS``; nothing is loaded otherwise. Each is installed on a ``Soniq``
built from the command's settings (no connection is made), and every
``CommandSpec`` it added with ``app.cli.add_command`` becomes a click command
beside ours. The spec's argparse-style ``arguments`` are parsed by argparse
itself, so a plugin's command line behaves exactly as its author wrote it.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
from collections.abc import Sequence
from typing import Any

import click

from soniq.cli._common import Io, cli_errors, cli_settings
from soniq.errors import ConfigurationError
from soniq.plugin import CommandSpec, discover_plugins
from soniq.utils import split_csv

META_KEY = "soniq.plugin_commands"


def requested_plugins(option: str | None) -> list[str]:
    """``--plugins`` if given, else ``SONIQ_PLUGINS`` (environment or ``.env``).

    An invalid setting elsewhere in the environment loads no plugin here: the
    command itself then reports that setting, as one clear error.
    """
    if option is not None:
        return list(split_csv(option) or [])
    try:
        return list(cli_settings().plugins)
    except ConfigurationError:
        return []


def plugin_commands(names: Sequence[str]) -> dict[str, click.Command]:
    """Load the named plugins and turn their command specs into click commands."""
    if not names:
        return {}
    from soniq.app import Soniq

    io = Io.create()
    with cli_errors(io):
        app = Soniq(plugins=discover_plugins(names))
        return {name: as_click(spec) for name, spec in app.cli.commands.items()}
    raise AssertionError("unreachable")  # pragma: no cover - cli_errors always exits


def as_click(spec: CommandSpec) -> click.Command:
    """A click command that hands its raw arguments to argparse and runs the handler."""

    def run(args: tuple[str, ...]) -> None:
        parser = argparse.ArgumentParser(
            prog=f"soniq {spec.name}", description=spec.description or spec.help
        )
        for argument in spec.arguments:
            parser.add_argument(*argument.get("args", ()), **argument.get("kwargs", {}))
        namespace = parser.parse_args(list(args))
        io = Io.create()
        with cli_errors(io):
            raise SystemExit(_exit_code(_call(spec, namespace)))

    return click.Command(
        spec.name,
        callback=run,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=spec.help,
        short_help=spec.help,
        add_help_option=False,  # argparse answers --help, with the plugin's arguments
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
    )


def _call(spec: CommandSpec, namespace: argparse.Namespace) -> Any:
    result = spec.handler(namespace)
    if inspect.isawaitable(result):
        return asyncio.run(_awaited(result))
    return result


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _exit_code(result: Any) -> int:
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


__all__ = ["META_KEY", "as_click", "plugin_commands", "requested_plugins"]
