"""Sync producers: ``app.enqueue_sync`` / ``app.schedule_sync`` for code without an event loop.

Django and Flask views, scripts and plain threads call these. Each call runs the
ordinary async ``enqueue`` (same validation, same statements) on the app's *home
loop* and blocks until it returns:

* if the app already lives on an event loop running in another thread (a FastAPI
  app's ``def`` route runs in a thread pool; uvicorn's loop holds the pool), the
  call goes to that loop, so the process keeps one pool;
* otherwise to a private loop on a daemon thread, one per ``Soniq`` instance,
  started on first use. ``await app.close()`` closes its pool and ends the thread;
  a finaliser does the same when the app is garbage-collected or the interpreter
  exits, so no loop, thread or connection is left behind.

A sync connection (psycopg 3, SQLAlchemy ``Session``, Django's ``connection``) is
unwrapped in the caller's thread, where Django allows its use; the statements then
run on it from a worker thread while the caller waits (psycopg connections are
thread-safe, and the caller is blocked, so nothing interleaves).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

from soniq.errors import SoniqError
from soniq.integrations.connections import unwrap_sync

if TYPE_CHECKING:
    from soniq.app import Soniq
    from soniq.backends import StorageBackend

T = TypeVar("T")
STOP_TIMEOUT = 15.0


class SyncCallError(SoniqError, RuntimeError):
    """A blocking ``*_sync`` call made where it would block an event loop."""


class SyncRunner:
    """Runs one app's coroutines for callers that have no event loop (thread-safe)."""

    def __init__(self, app: Soniq) -> None:
        self._app = weakref.ref(app)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # --- calls -----------------------------------------------------------------
    def prepare_connection(self, connection: Any) -> Any:
        """Unwrap a sync connection here, in the caller's thread (see module doc)."""
        return unwrap_sync(connection) if connection is not None else None

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the app's home loop and return its result (or raise its error)."""
        try:
            loop = self._home_loop()
        except BaseException:
            coro.close()  # never started: no "coroutine was never awaited" warning
            raise
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, loop)
        return future.result()

    def _home_loop(self) -> asyncio.AbstractEventLoop:
        current = _running_loop()
        if current is not None:
            raise SyncCallError(
                "enqueue_sync()/schedule_sync() block until the job is stored, and this "
                "thread runs an event loop that would stall meanwhile; use "
                "`await app.enqueue(...)` / `await app.schedule(...)` here."
            )
        app = self._app()
        home = app._loop if app is not None and app._initialized else None
        if home is not None and home is not self._loop and home.is_running():
            return home  # the loop that owns the app's pool, running in another thread
        return self._private_loop()

    def _private_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._loop.is_closed():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(
                    target=loop.run_forever, name="soniq-sync-producer", daemon=True
                )
                thread.start()
                self._loop, self._thread = loop, thread
                app = self._app()
                backend = app.backend if app is not None else None
                if app is not None:
                    self._finalizer = weakref.finalize(app, _stop, loop, thread, backend)
            return self._loop

    # --- shutdown --------------------------------------------------------------
    async def aclose(self) -> None:
        """Close the pool the private loop holds (if it is the home) and end its thread.

        Called by ``app.close()`` from whatever loop the user closes on.
        """
        with self._lock:
            loop, thread, finalizer = self._loop, self._thread, self._finalizer
            if loop is None or thread is None or asyncio.get_running_loop() is loop:
                return  # nothing started, or app.close() running on the private loop itself
            self._loop, self._thread, self._finalizer = None, None, None
        if finalizer is not None:
            finalizer.detach()
        app = self._app()
        if app is not None and app._loop is loop and loop.is_running():
            # The pool lives on the private loop: only there can it be closed gracefully.
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(app.close(), loop))
        await asyncio.to_thread(_stop, loop, thread, None)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _stop(
    loop: asyncio.AbstractEventLoop, thread: threading.Thread, backend: StorageBackend | None
) -> None:
    """End a private loop: close ``backend`` on it (if given), stop it, join it, close it.

    Also the finaliser of an app that was never closed (garbage-collected, or the
    interpreter exiting): then ``backend`` is given, and nothing else uses it any more.
    """
    if loop.is_closed():
        return
    if threading.current_thread() is thread:  # collected on the loop's own thread
        loop.call_soon(loop.stop)
        return
    if backend is not None and loop.is_running():
        # Shutting down anyway: on failure the server simply drops the sessions.
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(backend.close(), loop).result(STOP_TIMEOUT)
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)
    thread.join(STOP_TIMEOUT)
    if not thread.is_alive():
        loop.close()
