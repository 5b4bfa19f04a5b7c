"""``soniq status`` (health and totals) and ``soniq inspect`` (workers and schedules)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

import soniq
from soniq.app import Soniq
from soniq.backends import MigrationInfo
from soniq.cli._common import (
    Io,
    database_app,
    database_url_option,
    describe_database,
    echo_json,
    fmt_ago,
    fmt_time,
    make_table,
    run_app,
)
from soniq.job import Schedule, WorkerInfo
from soniq.utils import fmt_duration, utc_now

STAT_KEYS = ("queued", "processing", "done", "dead_letter", "cancelled", "total")


# --- soniq status -----------------------------------------------------------------
@dataclass
class StatusReport:
    database: str
    latency_ms: float
    migrations: list[MigrationInfo]
    queues: list[dict[str, Any]]
    workers: list[WorkerInfo]
    heartbeat_timeout: float
    jobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def pending(self) -> list[str]:
        return [m.name for m in self.migrations if not m.applied]

    def totals(self) -> dict[str, int]:
        return {key: sum(int(q[key]) for q in self.queues) for key in STAT_KEYS}

    def stale(self) -> list[WorkerInfo]:
        return stale_workers(self.workers, self.heartbeat_timeout)

    def to_dict(self) -> dict[str, Any]:
        stale = {w.id for w in self.stale()}
        return {
            "version": soniq.__version__,
            "database": self.database,
            "connected": True,
            "latency_ms": round(self.latency_ms, 2),
            "pending_migrations": self.pending,
            "totals": self.totals(),
            "queues": self.queues,
            "workers": [{**w.to_dict(), "stale": w.id in stale} for w in self.workers],
            "recent_jobs": self.jobs,
        }


def stale_workers(workers: list[WorkerInfo], timeout: float) -> list[WorkerInfo]:
    now = utc_now()
    return [
        w
        for w in workers
        if w.last_heartbeat is None or (now - w.last_heartbeat).total_seconds() > timeout
    ]


async def collect_status(app: Soniq, jobs_limit: int) -> StatusReport:
    started = time.perf_counter()
    await app.ensure_initialized()
    queues = await app.get_queue_stats()
    latency = (time.perf_counter() - started) * 1000
    return StatusReport(
        database=describe_database(app),
        latency_ms=latency,
        migrations=await app.backend.migration_status(),
        queues=queues,
        workers=await app.backend.list_workers(),
        heartbeat_timeout=app.settings.heartbeat_timeout,
        jobs=await app.list_jobs(limit=jobs_limit) if jobs_limit else [],
    )


@click.command()
@database_url_option
@click.option("--verbose", "-v", is_flag=True, help="Also list every worker.")
@click.option("--jobs", "show_jobs", is_flag=True, help="Also list the most recent jobs.")
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many recent jobs --jobs shows.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def status(
    database_url: str | None, verbose: bool, show_jobs: bool, limit: int, as_json: bool
) -> None:
    """Connection health, job totals, queues and workers."""
    io = Io.create()
    report = run_app(
        io, database_app(database_url), lambda app: collect_status(app, limit if show_jobs else 0)
    )
    if as_json:
        echo_json(report.to_dict())
        return
    print_status(io, report)
    if verbose:
        print_workers(io, report.workers, report.heartbeat_timeout)
    if show_jobs:
        print_jobs(io, report.jobs)


def print_status(io: Io, report: StatusReport) -> None:
    io.line(f"[bold]Soniq {soniq.__version__}[/bold]")
    io.line(f"Database:  {report.database} [green]connected[/green] ({report.latency_ms:.1f} ms)")
    if report.pending:
        io.line(
            f"Schema:    [yellow]{len(report.pending)} migrations pending[/yellow] "
            "- run `soniq setup`"
        )
    else:
        io.line(f"Schema:    up to date ({len(report.migrations)} migrations)")
    t = report.totals()
    io.line(
        f"Jobs:      {t['total']} total - {t['queued']} queued, {t['processing']} processing, "
        f"{t['done']} done, {t['dead_letter']} dead letter, {t['cancelled']} cancelled"
    )
    stale = len(report.stale())
    io.line(
        f"Workers:   {len(report.workers) - stale} active, {stale} stale "
        f"(no heartbeat for {report.heartbeat_timeout:g}s)"
    )
    if report.queues:
        io.out.print(_queue_table(report.queues))
    else:
        io.line("No jobs yet.")


def _queue_table(queues: list[dict[str, Any]]) -> Table:
    table = make_table("Queues")
    table.add_column("Queue", no_wrap=True)
    for key in STAT_KEYS:
        table.add_column(key.replace("_", " ").capitalize(), justify="right", no_wrap=True)
    for q in queues:
        table.add_row(str(q["queue"]), *(str(q[key]) for key in STAT_KEYS))
    return table


def print_workers(io: Io, workers: list[WorkerInfo], timeout: float) -> None:
    if not workers:
        io.line("No workers registered.")
        return
    stale = {w.id for w in stale_workers(workers, timeout)}
    now = utc_now()
    table = make_table("Workers")
    for name in (
        "Worker",
        "Host",
        "PID",
        "Queues",
        "Concurrency",
        "Uptime",
        "Last heartbeat",
        "State",
    ):
        table.add_column(name, no_wrap=name in ("Worker", "PID", "State"))
    for w in workers:
        state = "[red]stale[/red]" if w.id in stale else "[green]active[/green]"
        uptime = fmt_duration((now - w.started_at).total_seconds()) if w.started_at else "-"
        table.add_row(
            w.id[:8],
            w.hostname,
            str(w.pid),
            ",".join(w.queues) if w.queues else "all",
            str(w.concurrency),
            uptime,
            fmt_ago(w.last_heartbeat, now),
            state,
        )
    io.out.print(table)


def print_jobs(io: Io, jobs: list[dict[str, Any]]) -> None:
    if not jobs:
        io.line("No recent jobs.")
        return
    table = make_table("Recent jobs")
    table.add_column("Job", no_wrap=True)
    table.add_column("Task", overflow="fold")
    table.add_column("Queue")
    table.add_column("Status", no_wrap=True)
    table.add_column("Attempts", justify="right")
    table.add_column("Created", no_wrap=True)
    table.add_column("Last error", overflow="ellipsis", no_wrap=True, max_width=40)
    for j in jobs:
        table.add_row(
            str(j["id"]),
            str(j["job_name"]),
            str(j["queue"]),
            str(j["status"]),
            f"{j['attempts']}/{j['max_attempts']}",
            fmt_time(_dt(j.get("created_at"))),
            str(j.get("last_error") or ""),
        )
    io.out.print(table)


def _dt(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


# --- soniq inspect ----------------------------------------------------------------
@dataclass
class Inspection:
    workers: list[WorkerInfo]
    heartbeat_timeout: float
    recovered: int | None = None
    removed: int = 0
    schedules: list[Schedule] | None = None
    job: dict[str, Any] | None = None  # --job: one job's state and progress
    logs: list[dict[str, Any]] | None = None  # --job: what it logged (app.logs)


async def collect_inspection(
    app: Soniq, cleanup: bool, schedules: bool, job_id: str | None = None
) -> Inspection:
    await app.ensure_initialized()
    timeout = app.settings.heartbeat_timeout
    found = Inspection(await app.backend.list_workers(), timeout)
    if cleanup:
        found.removed = len(stale_workers(found.workers, timeout))
        found.recovered = await app.backend.recover_stale(timeout)
        found.workers = await app.backend.list_workers()
    # Always read: the default output ends with a one-line schedule summary.
    found.schedules = await app.backend.schedule_list()
    if job_id is not None:
        found.job = await app.get_job(job_id)
        if found.job is None:
            raise click.ClickException(
                f"No job {job_id}; check the id (it may have been pruned after result_ttl)"
            )
        found.logs = await app.logs.job_logs(job_id)
    return found


@click.command()
@database_url_option
@click.option("--stale", "only_stale", is_flag=True, help="Show only stale workers.")
@click.option(
    "--cleanup",
    is_flag=True,
    help="Remove stale workers and requeue (or dead-letter) the jobs they held.",
)
@click.option("--schedules", is_flag=True, help="Also list recurring schedules.")
@click.option("--job", "job_id", help="Also show this job: state, progress, what it waits for.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
def inspect(
    database_url: str | None, only_stale: bool, cleanup: bool, schedules: bool,
    job_id: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Workers (host, pid, queues, uptime, heartbeat), with --schedules schedules, and with
    --job one job's state and progress."""
    io = Io.create()
    found = run_app(
        io, database_app(database_url),
        lambda app: collect_inspection(app, cleanup, schedules, job_id),
    )  # fmt: skip
    workers = found.workers
    if only_stale:
        workers = stale_workers(workers, found.heartbeat_timeout)
    if as_json:
        data = _inspection_json(found, workers, schedules)
        if found.job is not None:
            data["job"] = found.job
            data["logs"] = found.logs or []
        echo_json(data)
        return
    if found.job is not None:
        print_job(io, found.job)
        print_job_logs(io, found.logs or [])
    if found.recovered is not None:
        io.line(
            f"Cleanup: removed {found.removed} stale workers, recovered {found.recovered} jobs."
        )
    print_workers(io, workers, found.heartbeat_timeout)
    if schedules:
        print_schedules(io, found.schedules or [])
    else:
        active = sum(1 for s in found.schedules or [] if s.status == "active")
        paused = len(found.schedules or []) - active
        io.line(f"Recurring Schedules: {active} active, {paused} paused (details: --schedules)")


def _inspection_json(
    found: Inspection, workers: list[WorkerInfo], schedules: bool
) -> dict[str, Any]:
    stale = {w.id for w in stale_workers(found.workers, found.heartbeat_timeout)}
    data: dict[str, Any] = {
        "heartbeat_timeout": found.heartbeat_timeout,
        "workers": [{**w.to_dict(), "stale": w.id in stale} for w in workers],
    }
    if found.recovered is not None:
        data["cleanup"] = {"removed_workers": found.removed, "recovered_jobs": found.recovered}
    if found.schedules is not None and schedules:
        data["schedules"] = [s.to_dict() for s in found.schedules]
    return data


def print_job(io: Io, job: dict[str, Any]) -> None:
    """One job's line: state, attempts, progress, snoozes, and what it waits for or failed of."""
    io.line(f"[bold]Job {job['id']}[/bold] ({job['job_name']}, queue {job['queue']})")
    io.line(f"Status:    {job['status']}, attempt {job['attempts']} of {job['max_attempts']}")
    if job.get("progress") is not None:
        message = f" · {job['progress_message']}" if job.get("progress_message") else ""
        io.line(f"Progress:  {job['progress'] * 100:.1f}%{message}")
    if job.get("snoozes"):
        io.line(f"Snoozed:   {job['snoozes']} times")
    if job.get("waiting_for"):
        io.line(f"Waits for: {', '.join(job['waiting_for'])}")
    if job.get("cancel_requested"):
        io.line("Cancel:    requested; its worker stops it")
    if job.get("last_error"):
        io.line(f"Error:     {job['last_error']}")


LOG_LINES = 20


def print_job_logs(io: Io, logs: list[dict[str, Any]]) -> None:
    """The job's last log records (all of them: ``--json``, or ``app.logs.job_logs``)."""
    if not logs:
        io.line("Logs:      none")
        return
    shown = logs[-LOG_LINES:]
    more = len(logs) > len(shown)
    io.line(f"Logs: (last {len(shown)} of {len(logs)}; --json for all)" if more else "Logs:")
    for r in shown:
        stamp, text = fmt_time(r["timestamp"]), escape(r["message"])
        io.line(f"  {stamp} {r['level']:<8} {r['logger']}: {text}")


def _every(seconds: float) -> str:
    """``30s``, ``1.5s``, ``10m``, ``1h``, ``1h 30m``."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    return fmt_duration(seconds).replace(" 00m", "").replace(" 00s", "").replace(" 0h", "")


def print_schedules(io: Io, schedules: list[Schedule]) -> None:
    if not schedules:
        io.line("No schedules.")
        return
    table = make_table("Schedules")
    table.add_column("Name", overflow="fold")
    table.add_column("Job", overflow="fold")
    table.add_column("Cron / every", no_wrap=True)
    table.add_column("Status", no_wrap=True)
    table.add_column("Next run", no_wrap=True)
    table.add_column("Last run", no_wrap=True)
    for s in schedules:
        timing = s.cron if s.cron else f"every {_every(s.every_seconds or 0)}"
        if s.cron and s.timezone != "UTC":
            timing += f" ({s.timezone})"
        state = "[green]active[/green]" if s.status == "active" else f"[yellow]{s.status}[/yellow]"
        table.add_row(
            s.name, s.job_name, timing, state, fmt_time(s.next_run_at), fmt_time(s.last_run_at)
        )
    io.out.print(table)
