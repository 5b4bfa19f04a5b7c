"""The HTML pages and their form actions (which work with JavaScript off).

Each page renders the dicts of :mod:`soniq.dashboard.data` with a Jinja
template. Each form posts to an action here, which checks the write rules
(CSRF token included), does the change and redirects back with a notice:
post/redirect/get, so a reload never repeats an action.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from soniq.dashboard import data, params, security
from soniq.dashboard.web import Context, check_write, page, prefix, query_string, render

MAX_FORM = 2_000_000
NOTICES = {
    "retried": "Job queued again as {job}.",
    "cancelled": "Job cancelled.",
    "deleted": "Job deleted.",
    "replayed": "{n} dead letter(s) replayed.",
    "purged": "{n} dead letter(s) deleted.",
    "paused": "Schedule paused.",
    "resumed": "Schedule resumed.",
}


async def form_fields(request: Request) -> dict[str, list[str]]:
    """An urlencoded form body (no multipart parser needed: the forms send nothing else)."""
    raw = await request.body()
    if len(raw) > MAX_FORM:
        raise params.BadRequest("the form is larger than 2 MB")
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def first(fields: dict[str, list[str]], name: str) -> str | None:
    values = fields.get(name)
    return values[0] if values else None


def notice(request: Request) -> str | None:
    """A fixed message chosen by ``?done=`` (never text from the URL itself)."""
    q = request.query_params
    template = NOTICES.get(q.get("done", ""))
    if template is None:
        return None
    n = q.get("n", "")
    job = q.get("job", "")
    return template.format(n=n if n.isdigit() else "?", job=params.job_id(job) or "a new job")


def back(request: Request, path: str, **values: Any) -> Response:
    return RedirectResponse(f"{prefix(request)}{path}{query_string(values)}", status_code=303)


class Pages:
    """Handlers bound to one dashboard instance."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def show(self, request: Request, name: str, **values: Any) -> Response:
        return render(self.ctx, request, name, notice=notice(request), **values)

    # --- reads ------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        return self.show(
            request, "overview.html", nav="overview", **await data.overview(self.ctx.soniq)
        )

    async def jobs(self, request: Request) -> Response:
        p = params.job_list(request.query_params)
        found = await data.job_page(self.ctx.soniq, p)
        next_link = None
        if found["next_cursor"]:
            next_link = query_string(
                {**p.filters(), "limit": p.limit, "cursor": found["next_cursor"]}
            )
        return self.show(
            request, "jobs.html", nav="jobs", jobs=found["jobs"], p=p, next_link=next_link,
            first_link=query_string({**p.filters()}), tasks=await data.task_names(self.ctx.soniq),
            statuses=params.STATUSES,
        )  # fmt: skip

    async def job(self, request: Request) -> Response:
        found = await data.job(self.ctx.soniq, request.path_params["job_id"])
        logs = await data.job_logs(self.ctx.soniq, found["id"])
        return self.show(request, "job.html", nav="jobs", job=found, logs=logs)

    async def dead_letters(self, request: Request) -> Response:
        q = request.query_params
        queue, task = params.text(q, "queue"), params.text(q, "task")
        limit = params.integer(q, "limit", params.DEFAULT_LIMIT, 1, params.MAX_LIMIT)
        offset = params.integer(q, "offset", 0, 0, params.MAX_OFFSET)
        found = await data.dead_letters(
            self.ctx.soniq, queue=queue, task=task, limit=limit, offset=offset
        )
        filters = {"queue": queue, "task": task}
        more = offset + limit < found["total"]
        newer = max(0, offset - limit)
        return self.show(
            request, "dead_letters.html", nav="dead", dead=found["jobs"], total=found["total"],
            filters=filters, offset=offset, limit=limit, filter_query=query_string(filters),
            next_link=query_string({**filters, "offset": offset + limit}) if more else None,
            prev_link=query_string({**filters, "offset": newer}) if offset else None,
        )  # fmt: skip

    async def confirm_purge(self, request: Request) -> Response:
        q = request.query_params
        queue, task = params.text(q, "queue"), params.text(q, "task")
        count = await self.ctx.soniq.dead_letter.count(queue=queue, task=task)
        return self.show(request, "purge.html", nav="dead", queue=queue, task=task, count=count)

    async def workers(self, request: Request) -> Response:
        rows = await data.workers(self.ctx.soniq)
        return self.show(
            request, "workers.html", nav="workers", workers=rows, stats=data.worker_stats(rows)
        )

    async def schedules(self, request: Request) -> Response:
        rows = await data.schedules(self.ctx.soniq)
        return self.show(request, "schedules.html", nav="schedules", schedules=rows)

    # --- form actions -------------------------------------------------------------
    async def _checked_form(self, request: Request) -> dict[str, list[str]]:
        fields = await form_fields(request)
        await check_write(self.ctx, request, first(fields, "csrf"))
        return fields

    async def retry(self, request: Request) -> Response:
        await self._checked_form(request)
        new_id = await data.retry_job(self.ctx.soniq, request.path_params["job_id"])
        return back(request, f"/jobs/{new_id}", done="retried", job=new_id)

    async def cancel(self, request: Request) -> Response:
        await self._checked_form(request)
        await data.cancel_job(self.ctx.soniq, request.path_params["job_id"])
        return back(request, f"/jobs/{request.path_params['job_id']}", done="cancelled")

    async def delete(self, request: Request) -> Response:
        await self._checked_form(request)
        await data.delete_job(self.ctx.soniq, request.path_params["job_id"])
        return back(request, "/jobs", done="deleted")

    async def replay_one(self, request: Request) -> Response:
        await self._checked_form(request)
        new_id = await data.replay_dead(self.ctx.soniq, request.path_params["job_id"])
        return back(request, "/dead-letter", done="replayed", n=1, job=new_id)

    async def purge_one(self, request: Request) -> Response:
        await self._checked_form(request)
        await data.purge_dead(self.ctx.soniq, request.path_params["job_id"])
        return back(request, "/dead-letter", done="purged", n=1)

    async def replay_many(self, request: Request) -> Response:
        fields = await self._checked_form(request)
        chosen = _selection(fields)
        new_ids = await data.replay_selection(self.ctx.soniq, chosen)
        return back(request, "/dead-letter", done="replayed", n=len(new_ids))

    async def purge_many(self, request: Request) -> Response:
        fields = await self._checked_form(request)
        if first(fields, "confirm") != "yes":
            raise params.BadRequest("purging needs the confirmation step; use the Purge button")
        deleted = await data.purge_selection(self.ctx.soniq, _selection(fields))
        return back(request, "/dead-letter", done="purged", n=deleted)

    async def pause(self, request: Request) -> Response:
        await self._checked_form(request)
        await data.set_schedule(self.ctx.soniq, request.path_params["name"], paused=True)
        return back(request, "/schedules", done="paused")

    async def resume(self, request: Request) -> Response:
        await self._checked_form(request)
        await data.set_schedule(self.ctx.soniq, request.path_params["name"], paused=False)
        return back(request, "/schedules", done="resumed")

    # --- signing in with the key (remote browsers) ---------------------------------
    async def login_form(self, request: Request) -> Response:
        return self.show(request, "login.html", nav="", failed=False)

    async def login(self, request: Request) -> Response:
        fields = await form_fields(request)
        security.check_same_site(request.headers)
        key = first(fields, "key") or ""
        if not security.key_matches(self.ctx.policy, key):
            return render(
                self.ctx, request, "login.html", status=401, nav="", failed=True, notice=None
            )
        response = back(request, "/")
        response.set_cookie(
            security.KEY_COOKIE, key, httponly=True, samesite="strict", path=f"{prefix(request)}/",
            secure=request.url.scheme == "https",
        )  # fmt: skip
        return response

    async def logout(self, request: Request) -> Response:
        security.check_same_site(request.headers)
        response = back(request, "/login")
        response.delete_cookie(security.KEY_COOKIE, path=f"{prefix(request)}/")
        return response


def _selection(fields: dict[str, list[str]]) -> dict[str, Any]:
    """The dead-letter form's choice: ticked ids, else the queue/task filter (or all)."""
    everything = first(fields, "all") == "yes"
    ids = [i for i in fields.get("ids", []) if i]
    if ids and not everything:
        return params.selection({"ids": ids})
    body: dict[str, Any] = {k: first(fields, k) or None for k in ("queue", "task")}
    body["all"] = everything
    return params.selection(body)


def routes(ctx: Context) -> list[Route]:
    p = Pages(ctx)
    wrap: Callable[[Callable[[Request], Awaitable[Response]]], Any] = page(ctx)
    table: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
        ("/", p.overview, "GET"),
        ("/jobs", p.jobs, "GET"),
        ("/jobs/{job_id}", p.job, "GET"),
        ("/jobs/{job_id}/retry", p.retry, "POST"),
        ("/jobs/{job_id}/cancel", p.cancel, "POST"),
        ("/jobs/{job_id}/delete", p.delete, "POST"),
        ("/dead-letter", p.dead_letters, "GET"),
        ("/dead-letter/purge", p.confirm_purge, "GET"),
        ("/dead-letter/purge", p.purge_many, "POST"),
        ("/dead-letter/replay", p.replay_many, "POST"),
        ("/dead-letter/{job_id}/replay", p.replay_one, "POST"),
        ("/dead-letter/{job_id}/delete", p.purge_one, "POST"),
        ("/workers", p.workers, "GET"),
        ("/schedules", p.schedules, "GET"),
        ("/schedules/{name:path}/pause", p.pause, "POST"),
        ("/schedules/{name:path}/resume", p.resume, "POST"),
        ("/login", p.login_form, "GET"),
        ("/login", p.login, "POST"),
        ("/logout", p.logout, "POST"),
    ]
    return [Route(path, wrap(handler), methods=[method]) for path, handler, method in table]
