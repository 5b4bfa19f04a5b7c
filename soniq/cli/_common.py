"""What every command shares: output consoles, the database URL, error handling, formatting."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from soniq import utils
from soniq.app import Soniq
from soniq.backends import detect_backend, sqlite_path
from soniq.errors import ConfigurationError, SoniqError
from soniq.settings import SoniqSettings
from soniq.utils import fmt_duration, mask_url, utc_now

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

PIPED_WIDTH = 200
"""Width of tables written to a pipe or file (no terminal to fit; COLUMNS overrides)."""

LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


# --- output -------------------------------------------------------------------
@dataclass(frozen=True)
class Io:
    """Standard output (data) and standard error (messages). Colour only on a terminal."""

    out: Console
    err: Console

    @classmethod
    def create(cls) -> Io:
        return cls(out=_console(stderr=False), err=_console(stderr=True))

    def info(self, message: str) -> None:
        self.err.print(escape(message), soft_wrap=True)

    def warn(self, message: str) -> None:
        self.err.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)

    def error(self, message: str) -> None:
        self.err.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)

    def line(self, message: str) -> None:
        """A plain line on stdout (markup allowed)."""
        self.out.print(message, soft_wrap=True)


def _console(*, stderr: bool) -> Console:
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=PIPED_WIDTH)
    return console


def make_table(title: str) -> Table:
    """The house table: a light head rule, no side borders (more room for data)."""
    return Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)


def echo_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, datetimes as ISO 8601."""
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


# --- errors ---------------------------------------------------------------------
def fail(io: Io, message: str, code: int = 1) -> None:
    io.error(message)
    raise SystemExit(code)


@contextlib.contextmanager
def cli_errors(io: Io) -> Iterator[None]:
    """Turn errors into one clear message on stderr and a non-zero exit, never a traceback."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.Abort):
        raise
    except SoniqError as exc:
        # The message and its suggestions: the framed str() (code, context) is for logs.
        fail(io, exc.describe())
    except KeyboardInterrupt:
        fail(io, "interrupted", code=130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence of a command
        if _debug():
            io.err.print(escape(traceback.format_exc()), soft_wrap=True)
        fail(
            io,
            f"{type(exc).__name__}: {exc}. If Soniq's schema is out of date, run `soniq setup`; "
            "set SONIQ_DEBUG=1 to see the traceback.",
        )


def _debug() -> bool:
    """``SONIQ_DEBUG`` (environment or ``.env``): show the traceback of an unexpected error."""
    try:
        return cli_settings().debug
    except ConfigurationError:
        return False  # already failing; an invalid setting must not hide the first error


def run_app(
    io: Io,
    build: Callable[[], Soniq],
    body: Callable[[Soniq], Awaitable[T]],
    *,
    uvloop: ModuleType | None = None,
) -> T:
    """Build the app, run ``body`` on it in a fresh event loop, close it, map errors.

    The loop is uvloop's when ``uvloop`` (the module, from ``worker_uvloop``) is given.
    """
    with cli_errors(io):
        app = build()
        if uvloop is not None:
            return cast(T, uvloop.run(_with_app(app, body)))
        return asyncio.run(_with_app(app, body))
    raise AssertionError("unreachable")  # pragma: no cover - cli_errors always exits


def worker_uvloop(settings: SoniqSettings) -> tuple[ModuleType | None, str]:
    """uvloop for ``soniq worker``'s event loop, or None and why asyncio's loop runs instead.

    Imported only here, when a worker starts: ``import soniq`` never loads an extra.
    """
    if not settings.use_uvloop:
        return None, "SONIQ_USE_UVLOOP is off"
    try:
        return importlib.import_module("uvloop"), ""
    except ImportError:
        return None, "uvloop is not installed; pip install 'soniq[speed]' for it"


def running_loop_name() -> str:
    """``uvloop`` or ``asyncio``: the package of the running event loop's class."""
    return type(asyncio.get_running_loop()).__module__.split(".", 1)[0]


async def _with_app(app: Soniq, body: Callable[[Soniq], Awaitable[T]]) -> T:
    try:
        return await body(app)
    finally:
        with contextlib.suppress(Exception):
            await app.close()


# --- settings and the database URL ---------------------------------------------
def cli_settings() -> SoniqSettings:
    """The command's own ``SONIQ_*`` settings: environment, then ``./.env``, then defaults.

    Read through ``SoniqSettings`` rather than ``os.environ`` so that a ``.env`` file
    works for the CLI exactly as it does for ``Soniq()``. Built per call, not cached:
    there is no module-level state, and a command reads it only a few times.
    """
    return SoniqSettings()


def database_url_option(func: F) -> F:
    """``--database-url``: must agree with ``SONIQ_DATABASE_URL`` when both are given."""
    option = click.option(
        "--database-url",
        metavar="URL",
        default=None,
        help="PostgreSQL URL or SQLite path. Defaults to SONIQ_DATABASE_URL; "
        "when both are given they must name the same database.",
    )
    return option(func)


def resolve_url(option: str | None) -> str | None:
    """The URL the user asked for: ``--database-url``, else ``SONIQ_DATABASE_URL``, else None."""
    env = cli_settings().database_url or None
    if option and env and not same_database(option, env):
        raise click.UsageError(
            f"--database-url ({mask_url(option)}) and SONIQ_DATABASE_URL ({mask_url(env)}) "
            "name different databases. Pass only one of them, or make them agree."
        )
    return option or env


def same_database(a: str, b: str) -> bool:
    """Do two URLs name the same database, ignoring cosmetics (host case, port 5432, password)?"""
    return canonical_url(a) == canonical_url(b)


def canonical_url(url: str) -> tuple[str, ...]:
    kind = detect_backend(url)
    if kind == "sqlite":
        return ("sqlite", str(Path(sqlite_path(url)).expanduser().resolve()))
    if kind == "memory":
        return ("memory",)
    parts = urlsplit(url.strip())
    try:
        port = str(parts.port or 5432)
    except ValueError:
        return ("raw", url.strip())
    host = (parts.hostname or "").lower()
    user = unquote(parts.username or "")
    query = "&".join(f"{k}={v}" for k, v in sorted(parse_qsl(parts.query)))
    return (
        "postgres",
        "localhost" if host in LOOPBACK_HOSTS else host,
        port,
        user,
        unquote(parts.path.lstrip("/")) or user,
        query,
    )


def jobs_modules_env() -> list[str]:
    """``SONIQ_JOBS_MODULES`` (environment or ``.env``) as a list; empty when unset."""
    return cli_settings().jobs_modules


def database_app(url_option: str | None) -> Callable[[], Soniq]:
    """The app of a command that only needs a database.

    ``Soniq(database_url=...)`` from ``--database-url``/``SONIQ_DATABASE_URL``; when
    neither is given but ``SONIQ_JOBS_MODULES`` is, the instance those modules build
    (so its own ``database_url=`` is used).
    """

    def build() -> Soniq:
        url = resolve_url(url_option)
        modules = jobs_modules_env()
        if url is None and modules:
            from soniq.discovery import discover_app

            return discover_app(modules)
        return Soniq(database_url=url, pool_min_size=1)

    return build


def describe_database(app: Soniq) -> str:
    return f"{mask_url(app.database_url)} ({app.backend.name})"


# --- formatting -----------------------------------------------------------------
def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_ago(value: datetime | None, now: datetime | None = None) -> str:
    if value is None:
        return "-"
    return f"{fmt_duration(((now or utc_now()) - value).total_seconds())} ago"


def split_csv(value: str | None) -> list[str] | None:
    """A comma-separated CLI option as a list; ``None`` when it names nothing."""
    return utils.split_csv(value) or None if value else None
