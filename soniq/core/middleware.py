"""Middleware: code that wraps every handler call of a worker.

``app.middleware`` registers ``async def mw(ctx, call_next)``; ``call_next(ctx)``
runs the rest of the chain and finally the handler, and returns its result. The
first registered is the outermost. What a middleware returns is the job's result;
what it raises fails the attempt like a handler error.

Example::

    @app.middleware
    async def timing(ctx, call_next):
        started = time.perf_counter()
        try:
            return await call_next(ctx)
        finally:
            log.info("%s took %.3fs", ctx.job_name, time.perf_counter() - started)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from soniq.job import JobContext

CallNext = Callable[[JobContext], Awaitable[Any]]


@runtime_checkable
class Middleware(Protocol):
    """``async (ctx, call_next) -> result``."""

    def __call__(self, ctx: JobContext, call_next: CallNext) -> Awaitable[Any]: ...


def run_chain(chain: Sequence[Middleware], ctx: JobContext, handler: CallNext) -> Awaitable[Any]:
    """Call ``handler`` through ``chain`` (``chain[0]`` outermost)."""
    call: CallNext = handler
    for middleware in reversed(chain):
        call = _link(middleware, call)
    return call(ctx)


def _link(middleware: Middleware, call_next: CallNext) -> CallNext:
    def call(ctx: JobContext) -> Awaitable[Any]:
        return middleware(ctx, call_next)

    return call


__all__ = ["CallNext", "Middleware", "run_chain"]
