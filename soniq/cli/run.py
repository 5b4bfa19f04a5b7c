"""Long-running processes: ``soniq worker``, ``soniq scheduler``, ``soniq dashboard``."""

from __future__ import annotations

import asyncio
import contextlib
import io as _io
import logging
import signal
import sys
from collections.abc import Iterator

import click

import soniq
from soniq.app import Soniq
from soniq.cli._common import (
    Io,
    cli_errors,
    database_app,
    database_url_option,
    jobs_modules_env,
    resolve_url,
    run_app,
    running_loop_name,
    same_database,
    split_csv,
    worker_uvloop,
)
from soniq.utils import mask_url

log = logging.getLogger("soniq.cli")

LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def jobs_modules_option(func: click.decorators.FC) -> click.decorators.FC:
    option = click.option(
        "--jobs-modules",
        metavar="M1,M2",
        default=None,
        help="Comma-separated modules that define your jobs, added to SONIQ_JOBS_MODULES.",
    )
    return option(func)


def log_level_option(func: click.decorators.FC) -> click.decorators.FC:
    option = click.option(
        "--log-level",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default=None,
        help="Log level. Defaults to SONIQ_LOG_LEVEL (INFO).",
    )
    return option(func)


def merged_modules(option: str | None) -> list[str]:
    """``SONIQ_JOBS_MODULES`` first, then ``--jobs-modules`` (each once): the flag adds to
    the environment rather than replacing it, as in the published package."""
    return list(dict.fromkeys([*jobs_modules_env(), *(split_csv(option) or [])]))


def load_app(io: Io, url_option: str | None, modules_option: str | None) -> Soniq:
    """Import the jobs modules and return their instance (the one a worker must run).

    ``--database-url`` naming another database than that instance's is an error (the
    flag could not be honoured); a differing ``SONIQ_DATABASE_URL`` only warns, since a
    shared environment often carries one for other tools.
    """
    from soniq.discovery import discover_app

    url = resolve_url(url_option)
    app = discover_app(merged_modules(modules_option))
    if url_option and not same_database(url_option, app.database_url):
        raise click.UsageError(
            f"--database-url ({mask_url(url_option)}) conflicts with the database of the Soniq "
            f"instance in your jobs modules ({mask_url(app.database_url)}): a worker runs on "
            "that instance. Remove the flag, or point it at the same database."
        )
    if url is not None and not same_database(url, app.database_url):
        io.warn(
            f"the Soniq instance from your jobs modules uses {mask_url(app.database_url)}, "
            f"not {mask_url(url)} (from SONIQ_DATABASE_URL); running on the instance's "
            "database. Make them agree to silence this warning."
        )
    io.line(f"Using job-module instance: {mask_url(app.database_url)}")
    return app


def configure_logging(level: str) -> None:
    """Log lines to stderr at ``level``; stdout line-buffered so ``print`` in jobs shows at once.

    Logging a jobs module already configured (root handlers exist) is left alone,
    except that Soniq's own loggers get ``level``.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("soniq").setLevel(level)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, _io.TextIOWrapper):
            stream.reconfigure(line_buffering=True)


@click.command()
@database_url_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Jobs run at once. Defaults to SONIQ_CONCURRENCY (4).",
)
@click.option(
    "--queues", metavar="A,B", default=None, help="Only these queues (default: all queues)."
)
@click.option("--run-once", is_flag=True, help="Process the jobs available now, then exit.")
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Serve Prometheus /metrics on this port. Defaults to SONIQ_METRICS_PORT (off).",
)
@jobs_modules_option
@log_level_option
def worker(
    database_url: str | None,
    concurrency: int | None,
    queues: str | None,
    run_once: bool,
    metrics_port: int | None,
    jobs_modules: str | None,
    log_level: str | None,
) -> None:
    """Run a worker for the jobs defined in SONIQ_JOBS_MODULES.

    Stops gracefully on SIGINT/SIGTERM: running jobs get SONIQ_SHUTDOWN_TIMEOUT
    seconds to finish, the rest go back to the queue. A second signal stops at once.
    """
    io = Io.create()
    with cli_errors(io):
        app = load_app(io, database_url, jobs_modules)
    configure_logging((log_level or app.settings.log_level).upper())
    queue_list = split_csv(queues)
    slots = concurrency or app.settings.concurrency
    where = (
        f"queues={','.join(queue_list) if queue_list else 'all'} concurrency={slots} "
        f"database={mask_url(app.database_url)} environment={app.settings.environment}"
    )
    log.info("soniq %s worker starting: %s", soniq.__version__, where)
    port = metrics_port or app.settings.metrics_port
    if port:
        with cli_errors(io):
            from soniq.metrics import serve

            serve(app.metrics, port)
        log.info("Prometheus metrics on :%d/metrics", port)

    uvloop, why_not = worker_uvloop(app.settings)

    async def body(instance: Soniq) -> bool:
        log.info("event loop: %s", running_loop_name() + (f" ({why_not})" if why_not else ""))
        return await instance.run_worker(concurrency=slots, run_once=run_once, queues=queue_list)

    run_app(io, lambda: app, body, uvloop=uvloop)
    log.info("soniq %s worker stopped: %s", soniq.__version__, where)


@click.command()
@database_url_option
@jobs_modules_option
@click.option(
    "--tick",
    type=click.FloatRange(min=0.01),
    default=None,
    help="Seconds between checks for due schedules (default 1).",
)
@click.option(
    "--check-interval",
    type=click.IntRange(min=1),
    default=None,
    help="Whole seconds between checks (the published spelling of --tick).",
)
@log_level_option
def scheduler(
    database_url: str | None,
    jobs_modules: str | None,
    tick: float | None,
    check_interval: int | None,
    log_level: str | None,
) -> None:
    """Fire recurring schedules (@app.periodic and app.scheduler.add) until SIGINT/SIGTERM.

    Run several for availability: one leads at a time, a standby takes over.
    Without SONIQ_JOBS_MODULES it still fires the schedules stored in the database.
    """
    io = Io.create()
    if tick is not None and check_interval is not None:
        raise click.UsageError("--tick and --check-interval are the same option; pass one")
    tick = tick if tick is not None else float(check_interval or 1)
    with cli_errors(io):
        if merged_modules(jobs_modules):
            app = load_app(io, database_url, jobs_modules)
        else:
            io.warn(
                "SONIQ_JOBS_MODULES is not set: running without @app.periodic jobs; schedules "
                "stored in the database (app.scheduler.add) still fire. Set it to the "
                "module(s) that define your periodic jobs to register them."
            )
            app = database_app(database_url)()
    configure_logging((log_level or app.settings.log_level).upper())
    where = (
        f"database={mask_url(app.database_url)} tick={tick:g}s "
        f"environment={app.settings.environment}"
    )
    log.info("soniq %s scheduler starting: %s", soniq.__version__, where)

    async def body(instance: Soniq) -> None:
        from soniq.scheduler import run_scheduler

        stop = asyncio.Event()
        with _stop_on_signals(stop):
            await run_scheduler(instance, stop, tick=tick)

    run_app(io, lambda: app, body)
    log.info("soniq %s scheduler stopped: %s", soniq.__version__, where)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, _on_stop_signal, sig, stop)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _on_stop_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    log.info("Received %s: stopping", sig.name)
    stop.set()


@click.command()
@database_url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port", type=click.IntRange(1, 65535), default=6161, show_default=True, help="Port."
)
@jobs_modules_option
@click.option("--read-only", is_flag=True, help="Hide and refuse every write action.")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="NAME",
    help="A host name browsers use to reach the dashboard (repeatable; '*' for any).",
)
def dashboard(
    database_url: str | None,
    host: str,
    port: int,
    jobs_modules: str | None,
    read_only: bool,
    allowed_hosts: tuple[str, ...],
) -> None:
    """Serve the web dashboard on http://127.0.0.1:6161 (see docs/dashboard.md).

    Writes are allowed for callers on this machine, or anywhere with
    SONIQ_DASHBOARD_API_KEY; SONIQ_DASHBOARD_WRITE_ENABLED=false makes it read-only.
    """
    io = Io.create()
    with cli_errors(io):
        from soniq.dashboard.serve import serve

        with_modules = bool(jobs_modules or jobs_modules_env())
        app = (
            load_app(io, database_url, jobs_modules)
            if with_modules
            else database_app(database_url)()
        )
        configure_logging(app.settings.log_level)
        log.info("soniq %s dashboard on http://%s:%s", soniq.__version__, host, port)
        serve(
            app, host=host, port=port, read_only=read_only, allowed_hosts=allowed_hosts,
            warn=io.warn,
        )  # fmt: skip
