"""Lifecycle hooks in both documented styles, adapted once per worker.

The Hooks page passes positional values (``job_name, job_id, attempt`` ...);
the Common-patterns page passes the ``JobContext`` (and the exception). Which
style a hook uses is decided from its signature (checked at registration, so a
bad hook fails where it is written); the worker builds its adapters once, so
its hot path only calls ready-made ones.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from soniq.errors import JobRegistrationError
from soniq.job import JobContext

log = logging.getLogger("soniq.hooks")

HOOK_EVENTS = ("before_job", "after_job", "on_error")
# Number of positional values each event's documented (Hooks page) style takes.
_POSITIONAL_ARITY = {"before_job": 3, "after_job": 3, "on_error": 4}
_CONTEXT_ARITY = {"before_job": 1, "after_job": 1, "on_error": 2}

Adapter = Callable[[JobContext, Any], Awaitable[None]]


def _arity(func: Callable[..., Any]) -> tuple[int, int, bool]:
    """(required positional, max positional, has *args)."""
    params = inspect.signature(func).parameters.values()
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = sum(1 for p in positional if p.default is p.empty)
    star = any(p.kind == p.VAR_POSITIONAL for p in params)
    return required, len(positional), star


def _fits(func: Callable[..., Any], n: int) -> bool:
    required, maximum, star = _arity(func)
    return required <= n and (star or maximum >= n)


def adapt_hook(event: str, func: Callable[..., Any]) -> Adapter:
    """Wrap ``func`` so the worker calls every hook as ``await adapter(ctx, extra)``.

    ``extra`` is the duration in ms for ``after_job`` and the exception for ``on_error``.
    """
    if event not in HOOK_EVENTS:
        raise JobRegistrationError(f"Unknown hook event {event!r}; use one of {HOOK_EVENTS}")
    if not callable(func):
        raise JobRegistrationError(f"{event} hook must be callable, got {func!r}")
    if _fits(func, _POSITIONAL_ARITY[event]) and not _fits(func, _CONTEXT_ARITY[event]):
        build = _positional_args(event)
    elif _fits(func, _CONTEXT_ARITY[event]):
        build = _context_args(event)
    elif event == "on_error" and _fits(func, 3):
        # The published tutorial's on_error(job_name, job_id, error): no attempt.
        build = _three_args
    else:
        raise JobRegistrationError(
            f"{event} hook {getattr(func, '__qualname__', func)} takes neither "
            f"{_POSITIONAL_ARITY[event]} positional arguments (Hooks page style) nor "
            f"{_CONTEXT_ARITY[event]} (context style); see the hook signatures in the docs"
        )
    is_async = inspect.iscoroutinefunction(func)

    async def call(ctx: JobContext, extra: Any) -> None:
        result = func(*build(ctx, extra))
        if is_async or inspect.isawaitable(result):
            await result

    return call


def _positional_args(event: str) -> Callable[[JobContext, Any], tuple[Any, ...]]:
    if event == "before_job":
        return lambda ctx, extra: (ctx.job_name, ctx.job_id, ctx.attempt)
    if event == "after_job":
        return lambda ctx, extra: (ctx.job_name, ctx.job_id, extra)
    return lambda ctx, extra: (ctx.job_name, ctx.job_id, str(extra), ctx.attempt)


def _three_args(ctx: JobContext, extra: Any) -> tuple[Any, ...]:
    return (ctx.job_name, ctx.job_id, str(extra))


def _context_args(event: str) -> Callable[[JobContext, Any], tuple[Any, ...]]:
    if event == "on_error":
        return lambda ctx, extra: (ctx, extra)
    return lambda ctx, extra: (ctx,)


@dataclass
class HookSet:
    """Adapted hooks per event, in registration order."""

    before_job: list[Adapter] = field(default_factory=list)
    after_job: list[Adapter] = field(default_factory=list)
    on_error: list[Adapter] = field(default_factory=list)

    @classmethod
    def from_dict(cls, hooks: dict[str, list[Callable[..., Any]]] | None) -> HookSet:
        out = cls()
        for event, funcs in (hooks or {}).items():
            for func in funcs:
                out.events(event).append(adapt_hook(event, func))
        return out

    def events(self, event: str) -> list[Adapter]:
        if event not in HOOK_EVENTS:
            raise JobRegistrationError(f"Unknown hook event {event!r}; use one of {HOOK_EVENTS}")
        hooks: list[Adapter] = getattr(self, event)
        return hooks

    async def run(self, event: str, ctx: JobContext, extra: Any = None) -> None:
        """Call each hook; a raising hook logs a warning and never changes the job's outcome."""
        for hook in self.events(event):
            try:
                await hook(ctx, extra)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - hooks must not break jobs
                log.warning("Hook %s failed: %r", event, exc)
