"""The JSON API under ``/api``: a superset of the published package's dashboard API.

One table (``Endpoint``) declares each route's method, path, summary and
parameters; the Starlette routes and the OpenAPI document are both built from
it, so the document cannot drift from what is served.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

import soniq
from soniq.dashboard import data, params
from soniq.dashboard.web import ApiResponse, Context, api, check_write, json_body

ApiHandler = Callable[[Context, Request], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    summary: str
    handler: ApiHandler
    query: tuple[tuple[str, str, str], ...] = ()
    """(name, JSON type, description) of each query parameter."""
    body: str | None = None
    write: bool = False
    status: int = 200
    extra: dict[str, Any] = field(default_factory=dict)


# --- reads --------------------------------------------------------------------------


async def get_stats(ctx: Context, request: Request) -> Any:
    return await data.stats(ctx.soniq)


async def get_queues(ctx: Context, request: Request) -> Any:
    return await data.queues(ctx.soniq)


async def list_jobs(ctx: Context, request: Request) -> Any:
    return await data.job_page(ctx.soniq, params.job_list(request.query_params))


async def search_jobs(ctx: Context, request: Request) -> Any:
    if params.text(request.query_params, "q") is None:
        raise params.BadRequest("q= is required: a job id or text found in the arguments")
    return await list_jobs(ctx, request)


async def get_job(ctx: Context, request: Request) -> Any:
    return await data.job(ctx.soniq, request.path_params["job_id"])


async def get_job_logs(ctx: Context, request: Request) -> Any:
    found = await data.job(ctx.soniq, request.path_params["job_id"])
    return {"logs": await data.job_logs(ctx.soniq, found["id"])}


async def get_timeline(ctx: Context, request: Request) -> Any:
    hours = params.hours(request.query_params)
    chart = await data.timeline(ctx.soniq, hours)
    return {"hours": hours, "bucket_seconds": chart.bucket_seconds, "buckets": chart.buckets,
            "completed": chart.completed, "failed": chart.failed}  # fmt: skip


async def get_metrics(ctx: Context, request: Request) -> Any:
    timeline = await get_timeline(ctx, request)
    return {**timeline, "stats": await data.stats(ctx.soniq)}


async def get_types(ctx: Context, request: Request) -> Any:
    return {"types": await data.task_names(ctx.soniq)}


async def list_dead(ctx: Context, request: Request) -> Any:
    q = request.query_params
    return await data.dead_letters(
        ctx.soniq, queue=params.text(q, "queue"), task=params.text(q, "task"),
        limit=params.integer(q, "limit", params.DEFAULT_LIMIT, 1, params.MAX_LIMIT),
        offset=params.integer(q, "offset", 0, 0, params.MAX_OFFSET),
    )  # fmt: skip


async def list_workers(ctx: Context, request: Request) -> Any:
    return await data.workers(ctx.soniq)


async def worker_stats(ctx: Context, request: Request) -> Any:
    return data.worker_stats(await data.workers(ctx.soniq))


async def list_schedules(ctx: Context, request: Request) -> Any:
    return await data.schedules(ctx.soniq)


async def health(ctx: Context, request: Request) -> Any:
    return {**await data.health(ctx.soniq), "version": soniq.__version__}


# Plugin panels (app.dashboard.add_panel, soniq/plugin.py), at the published paths.
async def list_panels(ctx: Context, request: Request) -> Any:
    return {"panels": [{"id": p.id, "title": p.title} for p in ctx.soniq.dashboard.panels]}


async def get_panel(ctx: Context, request: Request) -> Any:
    panel_id = request.path_params["panel_id"]
    spec = ctx.soniq.dashboard.get_panel(panel_id)
    if spec is None:
        raise data.NotFound(f"No dashboard panel {panel_id!r}; GET /api/panels lists them.")
    content = await spec.render(ctx.soniq)
    return {"id": spec.id, "title": spec.title, "content": content}


# --- writes -------------------------------------------------------------------------


async def retry_job(ctx: Context, request: Request) -> Any:
    return {"job_id": await data.retry_job(ctx.soniq, request.path_params["job_id"])}


async def cancel_job(ctx: Context, request: Request) -> Any:
    await data.cancel_job(ctx.soniq, request.path_params["job_id"])
    return {"cancelled": True}


async def delete_job(ctx: Context, request: Request) -> Any:
    await data.delete_job(ctx.soniq, request.path_params["job_id"])
    return {"deleted": True}


async def replay_dead(ctx: Context, request: Request) -> Any:
    return {"job_id": await data.replay_dead(ctx.soniq, request.path_params["job_id"])}


async def replay_many(ctx: Context, request: Request) -> Any:
    chosen = params.selection(await json_body(request))
    new_ids = await data.replay_selection(ctx.soniq, chosen)
    return {"replayed": len(new_ids), "job_ids": new_ids}


async def purge_dead(ctx: Context, request: Request) -> Any:
    await data.purge_dead(ctx.soniq, request.path_params["job_id"])
    return {"deleted": True}


async def purge_many(ctx: Context, request: Request) -> Any:
    chosen = params.selection(await json_body(request))
    return {"deleted": await data.purge_selection(ctx.soniq, chosen)}


async def pause_schedule(ctx: Context, request: Request) -> Any:
    await data.set_schedule(ctx.soniq, request.path_params["name"], paused=True)
    return {"status": "paused"}


async def resume_schedule(ctx: Context, request: Request) -> Any:
    await data.set_schedule(ctx.soniq, request.path_params["name"], paused=False)
    return {"status": "active"}


# --- the table ----------------------------------------------------------------------

_FILTERS = (
    ("queue", "string", "Only this queue."),
    ("status", "string", "queued, processing, done, cancelled or dead_letter."),
    ("task", "string", "Only this task name."),
)
_PAGE = (
    ("limit", "integer", f"Rows per page, 1-{params.MAX_LIMIT} (default {params.DEFAULT_LIMIT})."),
    ("cursor", "string", "next_cursor of the previous page (keyset paging)."),
    ("offset", "integer", "Rows to skip (published API; queue/status filters only)."),
)
_SEARCH = (("q", "string", "A job id, or text found in the arguments."),)
_HOURS = (("hours", "integer", "Window, 1-168 hours (default 24)."),)
_DLQ = (
    ("queue", "string", "Only this queue."),
    ("task", "string", "Only this task name."),
    ("limit", "integer", "Rows per page."),
    ("offset", "integer", "Rows to skip."),
)
_SELECTION = '{"ids": [...]} or {"queue": ..., "task": ...} or {"all": true}'

ENDPOINTS = (
    Endpoint("GET", "/stats", "Totals by status over every queue.", get_stats),
    Endpoint("GET", "/queues", "Counts by status, per queue.", get_queues),
    Endpoint("GET", "/jobs", "Jobs newest first, filtered, one page.", list_jobs,
             _FILTERS + _SEARCH + _PAGE),
    Endpoint("GET", "/jobs/search", "Jobs matching q= (id or argument text).", search_jobs,
             _SEARCH + _FILTERS + _PAGE),
    Endpoint("GET", "/jobs/timeline", "Completions and failures per time bucket.", get_timeline,
             _HOURS),
    Endpoint("GET", "/jobs/types", "Task names seen in jobs, dead letters and the registry.",
             get_types),
    Endpoint("GET", "/jobs/{job_id}", "One job (or dead letter) with its details.", get_job),
    Endpoint("GET", "/jobs/{job_id}/logs", "What the job logged while it ran.", get_job_logs),
    Endpoint("POST", "/jobs/{job_id}/retry", "Run a finished job again (new job id).", retry_job,
             write=True),
    Endpoint("POST", "/jobs/{job_id}/cancel", "Cancel a queued job.", cancel_job, write=True),
    Endpoint("DELETE", "/jobs/{job_id}", "Delete a job row.", delete_job, write=True),
    Endpoint("GET", "/dead-letter", "Dead letters newest first.", list_dead, _DLQ),
    Endpoint("POST", "/dead-letter/replay", "Replay many dead letters.", replay_many,
             body=_SELECTION, write=True),
    Endpoint("POST", "/dead-letter/purge", "Delete many dead letters.", purge_many,
             body=_SELECTION, write=True),
    Endpoint("POST", "/dead-letter/{job_id}/replay", "Replay one dead letter.", replay_dead,
             write=True),
    Endpoint("DELETE", "/dead-letter/{job_id}", "Delete one dead letter.", purge_dead,
             write=True),
    Endpoint("GET", "/workers", "Workers with heartbeat age and state.", list_workers),
    Endpoint("GET", "/workers/stats", "Worker counts by state.", worker_stats),
    Endpoint("GET", "/schedules", "Recurring schedules.", list_schedules),
    Endpoint("POST", "/schedules/{name:path}/pause", "Pause a schedule.", pause_schedule,
             write=True),
    Endpoint("POST", "/schedules/{name:path}/resume", "Resume a schedule.", resume_schedule,
             write=True),
    Endpoint("GET", "/metrics", "Timeline plus totals (published API).", get_metrics, _HOURS),
    Endpoint("GET", "/system/health", "Database reachable?", health),
    Endpoint("GET", "/panels", "Panels plugins added.", list_panels),
    Endpoint("GET", "/panels/{panel_id}", "One plugin panel, rendered.", get_panel),
)  # fmt: skip


def _bind(ctx: Context, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def handle(request: Request) -> Response:
        if endpoint.write:
            await check_write(ctx, request)
        return ApiResponse(await endpoint.handler(ctx, request), status_code=endpoint.status)

    return api(handle)


def routes(ctx: Context) -> list[Route]:
    from soniq.dashboard.openapi import document

    async def openapi(request: Request) -> Response:
        # Inside Mount("/api") the root path ends with /api; the document's paths carry it.
        root: str = request.scope.get("root_path", "")
        return ApiResponse(document(ENDPOINTS, root.removesuffix("/api")))

    table = [Route(e.path, _bind(ctx, e), methods=[e.method]) for e in ENDPOINTS]
    return [*table, Route("/openapi.json", openapi, methods=["GET"])]
