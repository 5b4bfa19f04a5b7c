"""``soniq dead-letter list|show|replay|purge|delete|cleanup|export``: jobs that exhausted
their attempts. ``delete`` (= ``purge``), ``cleanup``, ``export``, ``--filter`` (= ``--task``)
and ``--dry-run`` are the published package's spellings, kept for its users' scripts."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import click
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from soniq.app import Soniq
from soniq.cli._common import (
    Io,
    database_app,
    database_url_option,
    echo_json,
    fail,
    fmt_ago,
    fmt_time,
    make_table,
    run_app,
)
from soniq.dead_letter import chunks
from soniq.errors import JobNotFoundError
from soniq.utils import utc_now

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
queue_option = click.option("--queue", default=None, help="Only dead letters of this queue.")
OPTIONAL_COLUMNS = (("Queue", 100), ("Dead", 110), ("Replays", 130))
"""Columns of `dead-letter list` shown from a terminal width on (full ids come first)."""
MAX_TASK_WIDTH, MAX_QUEUE_WIDTH, MIN_ERROR_WIDTH = 32, 16, 12

task_option = click.option(
    "--task", "--filter", "task", default=None, help="Only dead letters of this exact task name."
)
dry_run_option = click.option(
    "--dry-run", is_flag=True, help="Show how many would be affected (and a few); change nothing."
)
CONFIRM_FROM = 5
"""`replay --all` asks before replaying this many or more (as the published CLI did)."""
SAMPLE_SIZE = 5


@click.group("dead-letter")
def dead_letter() -> None:
    """Inspect, replay and purge jobs that exhausted their retries."""


# --- list / show --------------------------------------------------------------------
@dead_letter.command("list")
@database_url_option
@queue_option
@task_option
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0, show_default=True)
@json_option
def list_command(
    database_url: str | None,
    queue: str | None,
    task: str | None,
    limit: int,
    offset: int,
    as_json: bool,
) -> None:
    """List dead letters, newest first."""
    io = Io.create()

    async def body(app: Soniq) -> tuple[list[dict[str, Any]], int]:
        rows = await app.dead_letter.list_jobs(queue=queue, task=task, limit=limit, offset=offset)
        return rows, await app.dead_letter.count(queue=queue, task=task)

    rows, total = run_app(io, database_app(database_url), body)
    if as_json:
        echo_json({"total": total, "offset": offset, "jobs": rows})
        return
    if not rows:
        io.line("No dead letters." if total == 0 else f"No dead letters past offset {offset}.")
        return
    io.out.print(_list_table(rows, io.out.width))
    io.line(
        f"Showing {offset + 1}-{offset + len(rows)} of {total}. "
        "Details: `soniq dead-letter show ID`."
    )


def _list_table(rows: list[dict[str, Any]], width: int) -> Table:
    """Full ids always (they are what `show`/`replay` take); optional columns need room."""
    extra = [name for name, needs in OPTIONAL_COLUMNS if width >= needs]
    table = make_table("Dead letters")
    table.add_column("Job", no_wrap=True, min_width=36)
    table.add_column("Task", overflow="fold", max_width=MAX_TASK_WIDTH)
    if "Queue" in extra:
        table.add_column("Queue", overflow="fold", max_width=MAX_QUEUE_WIDTH)
    table.add_column("Tries", justify="right", no_wrap=True)
    for name in ("Dead", "Replays"):
        if name in extra:
            table.add_column(name, justify="right", no_wrap=True)
    table.add_column(
        "Last error", overflow="ellipsis", no_wrap=True, max_width=_error_width(rows, width, extra)
    )
    now = utc_now()
    for r in rows:
        optional = {
            "Queue": escape(str(r["queue"])),
            "Dead": _short_ago(r["dead_lettered_at"], now),
            "Replays": str(r["resurrection_count"]),
        }
        cells = [str(r["id"]), escape(str(r["job_name"]))]
        cells += [optional["Queue"]] if "Queue" in extra else []
        cells.append(f"{r['attempts']}/{r['max_attempts']}")
        cells += [optional[name] for name in ("Dead", "Replays") if name in extra]
        table.add_row(*cells, escape(_first_line(r["last_error"])))
    return table


def _error_width(rows: list[dict[str, Any]], width: int, extra: list[str]) -> int:
    """What is left for the error once the other columns have their natural width."""
    task = min(MAX_TASK_WIDTH, max(4, *(len(str(r["job_name"])) for r in rows)))
    used = 36 + task + 5
    if "Queue" in extra:
        used += min(MAX_QUEUE_WIDTH, max(5, *(len(str(r["queue"])) for r in rows)))
    used += 7 * len([name for name in ("Dead", "Replays") if name in extra])
    columns = 4 + len(extra)
    return max(MIN_ERROR_WIDTH, width - used - 3 * columns)


def _short_ago(value: datetime | None, now: datetime) -> str:
    return fmt_ago(value, now).removesuffix(" ago") if value else "-"


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else ""


@dead_letter.command("show")
@database_url_option
@click.argument("job_id")
@json_option
def show_command(database_url: str | None, job_id: str, as_json: bool) -> None:
    """Show one dead letter: arguments, error and traceback."""
    io = Io.create()

    async def body(app: Soniq) -> dict[str, Any] | None:
        return await app.dead_letter.get(job_id)

    row = run_app(io, database_app(database_url), body)
    if row is None:
        fail(io, _unknown([job_id]))
        return
    if as_json:
        echo_json(row)
        return
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for label, key in (
        ("Job", "id"),
        ("Task", "job_name"),
        ("Queue", "queue"),
        ("Priority", "priority"),
        ("Created", "created_at"),
        ("Dead since", "dead_lettered_at"),
        ("Replays", "resurrection_count"),
        ("Last replay", "last_replayed_at"),
    ):
        value = row[key]
        grid.add_row(label, fmt_time(value) if key.endswith("_at") else escape(str(value)))
    grid.add_row("Attempts", f"{row['attempts']}/{row['max_attempts']}")
    grid.add_row("Arguments", escape(json.dumps(row["args"], default=str)))
    grid.add_row("Error", escape(str(row["last_error"] or "-")))
    io.out.print(grid)
    if row["traceback"]:
        io.line("\n[bold]Traceback[/bold]")
        io.out.print(escape(str(row["traceback"]).rstrip()), soft_wrap=True)


def _unknown(ids: list[str]) -> str:
    listed = ", ".join(ids)
    noun = "id" if len(ids) == 1 else "ids"
    return f"No dead-letter job with {noun} {listed}. List them with `soniq dead-letter list`."


# --- replay / purge -----------------------------------------------------------------
def _check_selection(
    ids: tuple[str, ...], all_: bool, queue: str | None, task: str | None, verb: str
) -> None:
    if ids and (all_ or queue or task):
        raise click.UsageError(
            f"Give job IDs or --all [--queue Q] [--task T], not both, to {verb}."
        )
    if not ids and not all_:
        hint = " (add --all to select by --queue/--task)" if queue or task else ""
        raise click.UsageError(f"Give the job IDs to {verb}, or --all{hint}.")


def _describe_filter(queue: str | None, task: str | None) -> str:
    parts = [f"{name}={value}" for name, value in (("queue", queue), ("task", task)) if value]
    return f" ({', '.join(parts)})" if parts else ""


async def _select(
    app: Soniq, ids: tuple[str, ...], queue: str | None, task: str | None
) -> list[str]:
    """The dead-letter ids to act on: the given ones (all must exist), or a filter snapshot."""
    if not ids:
        return await app.dead_letter.ids(queue=queue, task=task)
    wanted = list(dict.fromkeys(ids))
    missing = [i for i in wanted if await app.dead_letter.get(i) is None]
    if missing:
        raise JobNotFoundError(_unknown(missing))
    return wanted


async def _in_chunks(
    io: Io, label: str, ids: list[str], step: Callable[[list[str]], Awaitable[int]]
) -> int:
    """Run ``step`` over ``ids`` chunk by chunk, with a progress bar on a terminal."""
    done = 0
    progress = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        console=io.err,
        transient=True,
        disable=not io.err.is_terminal or len(ids) <= 1,
    )
    with progress:
        bar = progress.add_task(label, total=len(ids))
        for chunk in chunks(ids):
            done += await step(chunk)
            progress.advance(bar, len(chunk))
    return done


@dead_letter.command("replay")
@database_url_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter (matching filters).")
@queue_option
@task_option
@dry_run_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def replay_command(
    database_url: str | None,
    ids: tuple[str, ...],
    all_: bool,
    queue: str | None,
    task: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Queue a fresh copy of dead letters (new job ids); the dead-letter rows are kept.

    --all asks first when it would replay 5 or more (--yes skips the question).
    """
    _check_selection(ids, all_, queue, task, "replay")
    io = Io.create()

    async def body(app: Soniq) -> dict[str, str] | None:
        targets = await _select(app, ids, queue, task)
        if dry_run:
            await _dry_run(io, app, "replay", targets, queue, task)
            return None
        if all_ and not yes and len(targets) >= CONFIRM_FROM:
            _confirm(f"Replay {len(targets)} dead letters{_describe_filter(queue, task)}?")
        replayed: dict[str, str] = {}

        async def step(chunk: list[str]) -> int:
            new = await app.dead_letter.replay_many(chunk)
            replayed.update(new)
            return len(new)

        await _in_chunks(io, "Replaying", targets, step)
        return replayed

    replayed = run_app(io, database_app(database_url), body)
    if replayed is None:  # --dry-run
        return
    if as_json:
        echo_json({"replayed": replayed, "count": len(replayed)})
        return
    if ids:
        for dead_id, new_id in replayed.items():
            io.line(f"Replayed {dead_id} as new job {new_id}")
    noun = "dead letter" if len(replayed) == 1 else "dead letters"
    io.line(f"Replayed {len(replayed)} {noun}{_describe_filter(queue, task)}.")


@dead_letter.command("purge")
@database_url_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Purge every dead letter (matching filters).")
@queue_option
@task_option
@dry_run_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@json_option
def purge_command(
    database_url: str | None,
    ids: tuple[str, ...],
    all_: bool,
    queue: str | None,
    task: str | None,
    dry_run: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Delete dead letters for good (asks first for --all unless --yes). Alias: delete."""
    _check_selection(ids, all_, queue, task, "purge")
    io = Io.create()

    async def body(app: Soniq) -> int | None:
        targets = await _select(app, ids, queue, task)
        if dry_run:
            await _dry_run(io, app, "purge", targets, queue, task)
            return None
        if not targets:
            return 0
        if all_ and not yes:
            noun = "dead letter" if len(targets) == 1 else "dead letters"
            _confirm(
                f"Purge {len(targets)} {noun}{_describe_filter(queue, task)}? This cannot be undone"
            )

        async def step(chunk: list[str]) -> int:
            return await app.dead_letter.purge(ids=chunk)

        return await _in_chunks(io, "Purging", targets, step)

    purged = run_app(io, database_app(database_url), body)
    if purged is None:  # --dry-run
        return
    if as_json:
        echo_json({"purged": purged})
        return
    noun = "dead letter" if purged == 1 else "dead letters"
    io.line(f"Purged {purged} {noun}{_describe_filter(queue, task)}.")


dead_letter.add_command(purge_command, name="delete")


def _confirm(question: str) -> None:
    """Ask on stderr; no answer (a script, a closed stdin) refuses, non-zero, nothing done."""
    click.confirm(question, abort=True, err=True)


async def _dry_run(
    io: Io, app: Soniq, verb: str, targets: list[str], queue: str | None, task: str | None
) -> None:
    noun = "dead letter" if len(targets) == 1 else "dead letters"
    io.line(f"Would {verb} {len(targets)} {noun}{_describe_filter(queue, task)} (dry run).")
    for dead_id in targets[:SAMPLE_SIZE]:
        row = await app.dead_letter.get(dead_id)
        if row is not None:
            io.line(f"  {dead_id}  {escape(str(row['job_name']))}")
    if len(targets) > SAMPLE_SIZE:
        io.line(f"  ... and {len(targets) - SAMPLE_SIZE} more")


@dead_letter.command("cleanup")
@database_url_option
@click.option(
    "--days", type=click.IntRange(min=0), default=30, show_default=True,
    help="Delete dead letters older than this many days.",
)  # fmt: skip
@dry_run_option
def cleanup_command(database_url: str | None, days: int, dry_run: bool) -> None:
    """Delete dead letters older than --days (default 30)."""
    io = Io.create()

    async def body(app: Soniq) -> int:
        from soniq.dead_letter import DeadLetterFilter

        cutoff = utc_now() - timedelta(days=days)
        if dry_run:
            old = await app.dead_letter.list_dead_letter_jobs(
                DeadLetterFilter(date_to=cutoff, limit=2**62)
            )
            return len(old)
        return await app.dead_letter.cleanup_old_dead_letter_jobs(days)

    count = run_app(io, database_app(database_url), body)
    noun = "dead letter" if count == 1 else "dead letters"
    verb = "Would delete" if dry_run else "Deleted"
    io.line(f"{verb} {count} {noun} older than {days} days.")


@dead_letter.command("export")
@database_url_option
@click.option(
    "--format", "fmt", type=click.Choice(["csv", "json"]), default="csv", show_default=True
)
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="File.")
@queue_option
@task_option
def export_command(
    database_url: str | None, fmt: str, output: str, queue: str | None, task: str | None
) -> None:
    """Write dead letters (newest first) to a CSV or JSON file."""
    io = Io.create()

    async def body(app: Soniq) -> tuple[str, int]:
        from soniq.dead_letter import DeadLetterFilter

        chosen = DeadLetterFilter(
            job_names=[task] if task else None, queues=[queue] if queue else None, limit=2**62
        )
        count = len(await app.dead_letter.list_dead_letter_jobs(chosen))
        path = await app.dead_letter.export_dead_letter_jobs(chosen, format=fmt, path=output)
        return path, count

    path, count = run_app(io, database_app(database_url), body)
    noun = "dead letter" if count == 1 else "dead letters"
    io.line(f"Exported {count} {noun} to {path}.")
