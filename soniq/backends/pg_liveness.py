"""PostgreSQL liveness: each worker's session lock, the lost-worker sweep, checked LISTEN.

A worker's death is visible to PostgreSQL the moment its connection ends. So each
registered worker holds a session-level advisory lock on a dedicated connection of
its own; a process that can take that lock knows the worker is gone, and requeues
its jobs seconds after a crash instead of after ``heartbeat_timeout`` (300 s by
default, which still applies to workers that hold no lock).

* :func:`probe_session`: is a connection a PostgreSQL session of its own (direct, or
  PgBouncer in session mode) or a transaction-mode pooler's client? Locks and LISTEN
  only mean something on the former.
* :class:`Liveness`: this backend's direct connections. One per registered worker,
  holding its lock, checked and re-taken every tick; and the sweep that finds other
  workers whose lock has been free for ``grace`` seconds, deletes them and requeues
  their jobs.
* ``Liveness.listen``: ``LISTEN`` rides on a registered worker's liveness connection
  (one direct connection per worker, not two), whose health check notices a half-open
  connection (the network stopped delivering without closing it), closes it, and
  reconnects; the worker's re-listen loop then subscribes again. :class:`PgListener`
  is the same on a connection of its own, for a process that listens without having
  registered a worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from soniq.backends._common import LOST_WORKER_ERROR
from soniq.settings import SoniqSettings
from soniq.sql import postgres_queries as q
from soniq.utils import stop_task

log = logging.getLogger("soniq.postgres")

# A direct session gets the probe in about a millisecond; through a pooler in transaction
# mode it never arrives, so this is what detection costs a PgBouncer user at connect. A
# direct server too loaded to answer in time is taken for a pooler: slower, never wrong.
PROBE_TIMEOUT = 2.0
# A liveness connection that does not answer SELECT 1 in this long is taken as half-open
# (generous: a false alarm opens a gap in the worker's lock). A LISTEN connection gets
# three heartbeat intervals within 1..5 s (a false alarm there only re-subscribes).
CHECK_TIMEOUT = 5.0
CONNECT_TIMEOUT = 10.0
# How often the locks are checked and the sweep runs, at most.
MAX_TICK = 1.0
# What a dropped connection, a restarting server or a timeout raise.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

POOLER_WARNING = (
    "database_url goes through a connection pooler in transaction mode (PgBouncer?): "
    "no LISTEN there, so workers poll every poll_interval, and a crashed worker's jobs "
    "wait heartbeat_timeout to be recovered. Set SONIQ_LISTEN_DATABASE_URL to a direct "
    "PostgreSQL URL for instant wake-ups and crash recovery in seconds."
)


def lock_key(worker_id: str) -> int:
    """The worker's advisory-lock key: 63 bits of its random uuid (one bigint lock)."""
    return uuid.UUID(worker_id).int & ((1 << 63) - 1)


def liveness_timing(settings: SoniqSettings) -> tuple[float, float]:
    """(tick, grace): a lock must stay free for ``grace`` before its worker counts as gone.

    A live worker re-takes a lock it lost (a dropped connection, a server restart)
    on its next tick, so two ticks and a second of slack separate a worker that is
    reconnecting from one that is dead.
    """
    tick = min(MAX_TICK, settings.heartbeat_interval)
    return tick, 2 * tick + 1.0


async def probe_session(conn: Any, send: Callable[[str], Awaitable[Any]]) -> bool:
    """True when ``conn`` is a session of its own: a NOTIFY sent with ``send`` (another
    connection) reaches its LISTEN. Through a transaction-mode pooler the notification
    goes to whichever server session ran the LISTEN, never to this client."""
    channel = q.PROBE_CHANNEL_PREFIX + uuid.uuid4().hex
    heard = asyncio.Event()

    def on_probe(*_: Any) -> None:
        heard.set()

    await conn.add_listener(channel, on_probe)
    try:
        await send(q.PROBE_NOTIFY.format(channel=channel))
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(heard.wait(), PROBE_TIMEOUT)
    finally:
        with contextlib.suppress(*CONNECTION_ERRORS):
            await conn.remove_listener(channel, on_probe)
    return heard.is_set()


async def pool_is_direct(url: str, pool: Any) -> bool:
    """Whether the pool's connections are sessions of their own (see ``probe_session``).

    When the probe itself cannot run, the answer is True: the behaviour of a backend
    that never asked.
    """
    try:
        conn = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT, statement_cache_size=0)
    except CONNECTION_ERRORS:
        return True
    try:
        return await probe_session(conn, pool.execute)
    except CONNECTION_ERRORS:
        return True
    finally:
        await close_quietly(conn)


async def close_quietly(conn: Any) -> None:
    if conn is None or conn.is_closed():
        return
    try:
        await asyncio.wait_for(conn.close(), 2.0)
    except CONNECTION_ERRORS:
        conn.terminate()


class _Session:
    """One registered worker's dedicated connection and whether it holds the lock."""

    __slots__ = ("conn", "key", "locked", "worker_id")

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.key = lock_key(worker_id)
        self.conn: Any = None
        self.locked = False

    def lost(self) -> bool:
        return self.conn is None or self.conn.is_closed()


class Liveness:
    """The direct connections of one backend: worker locks, the sweep, LISTEN.

    ``direct_url`` is None when there is no direct connection to be had (the pool
    goes through a transaction-mode pooler and no ``listen_database_url`` is set):
    then no lock is held, nothing is swept, and LISTEN is off.
    """

    def __init__(self, pool: Any, direct_url: str | None, settings: SoniqSettings) -> None:
        self._pool = pool
        self._url = direct_url
        self.tick, self.grace = liveness_timing(settings)
        # Two missed heartbeats: with the lock free for ``grace`` too, the worker is gone.
        self.silent = 2 * settings.heartbeat_interval
        self._sessions: dict[str, _Session] = {}
        self._first_free: dict[str, float] = {}  # other workers' free locks: since when
        self._task: asyncio.Task[None] | None = None
        self._mutex = asyncio.Lock()
        self._verified: bool | None = None  # does direct_url give sessions of their own?
        self._warned = False

    # --- direct connections ----------------------------------------------------
    async def connect(self, application_name: str) -> Any | None:
        """A direct connection known to be a session of its own, or None (then warned once)."""
        if self._url is None or self._verified is False:
            self._warn_pooler()
            return None
        conn = await asyncpg.connect(
            self._url, timeout=CONNECT_TIMEOUT, statement_cache_size=0,
            server_settings={"application_name": application_name},
        )  # fmt: skip
        try:
            if self._verified is None:
                self._verified = await probe_session(conn, self._pool.execute)
            if not self._verified:
                await close_quietly(conn)
                self._warn_pooler()
                return None
        except BaseException:
            await close_quietly(conn)
            raise
        return conn

    def _warn_pooler(self) -> None:
        if not self._warned:
            self._warned = True
            if self._url is None:
                log.warning(POOLER_WARNING)
            else:
                log.warning(
                    "SONIQ_LISTEN_DATABASE_URL does not give connections of their own (a "
                    "pooler in transaction mode?); point it at PostgreSQL itself. Meanwhile: "
                    "%s",
                    POOLER_WARNING,
                )

    # --- worker locks ----------------------------------------------------------
    async def hold(self, worker_id: str) -> int | None:
        """Take (or keep) ``worker_id``'s lock on its own connection; its key, or None."""
        if self._url is None:
            self._warn_pooler()
            return None
        async with self._mutex:
            session = self._sessions.setdefault(worker_id, _Session(worker_id))
            try:
                await self._lock(session)
            except CONNECTION_ERRORS as exc:
                log.warning("Liveness lock of worker %s not taken yet (%s)", worker_id, exc)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="soniq-liveness")
        return session.key if session.locked else None

    async def release(self, worker_id: str) -> None:
        """Drop ``worker_id``'s connection, which releases its lock."""
        async with self._mutex:
            session = self._sessions.pop(worker_id, None)
            if session is not None:
                await close_quietly(session.conn)
        if not self._sessions:
            await self._stop_task()

    async def close(self) -> None:
        await self._stop_task()
        for worker_id in list(self._sessions):
            await self.release(worker_id)

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            await stop_task(task)

    async def _lock(self, session: _Session) -> None:
        if session.lost():
            session.locked = False
            conn = await self.connect("soniq-worker-liveness")
            if conn is None:
                return
            session.conn = conn
            await conn.execute(q.SESSION_SETUP)
            with contextlib.suppress(asyncpg.PostgresError):
                await conn.execute(q.SESSION_SETUP_IDLE)
        if not session.locked:
            session.locked = bool(await session.conn.fetchval(q.WORKER_LOCK, session.key))

    # --- LISTEN --------------------------------------------------------------------
    async def listen(self, on_new_job: Callable[[str], None], every: float) -> Any | None:
        """Subscribe on a registered worker's connection, else on a connection of its own."""
        if self._url is None:
            self._warn_pooler()
            return None
        async with self._mutex:
            session = next((s for s in self._sessions.values() if not s.lost()), None)
            if session is not None:
                listener = _SessionListener(self, session.conn, on_new_job)
                await session.conn.add_listener(q.CHANNEL, listener.deliver)
                return listener
        conn = await self.connect("soniq-listen")
        if conn is None:
            return None
        own = PgListener(conn, on_new_job, every)
        try:
            await conn.add_listener(q.CHANNEL, own.deliver)
        except BaseException:
            await own.close()
            raise
        return own

    async def _unlisten(self, listener: _SessionListener) -> None:
        async with self._mutex:
            if listener.is_alive():
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await asyncio.wait_for(
                        listener.conn.remove_listener(q.CHANNEL, listener.deliver), 2.0
                    )

    # --- the loop: keep our locks, sweep the others' ---------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            try:
                await self._heal()
                await self.sweep()
            except CONNECTION_ERRORS as exc:  # the database is away: next tick
                log.debug("Liveness sweep failed: %s", exc)
            except Exception:  # a bug must not end crash recovery: log it, keep going
                log.exception("Liveness sweep failed; trying again in %.1fs", self.tick)

    async def _heal(self) -> None:
        """Check each of our connections; reconnect and re-take a lock that was lost."""
        async with self._mutex:
            for session in list(self._sessions.values()):
                if not session.lost():
                    try:
                        await asyncio.wait_for(session.conn.execute(q.SESSION_CHECK), CHECK_TIMEOUT)
                    except CONNECTION_ERRORS as exc:
                        log.warning("Liveness connection stopped answering (%s); reconnecting", exc)
                        session.conn.terminate()
                if session.locked and not session.lost():
                    continue
                try:
                    await self._lock(session)
                    if session.locked:
                        await self._pool.execute(
                            q.WORKER_SET_LOCK_KEY, session.worker_id, session.key
                        )
                        log.info("Worker %s holds its liveness lock again", session.worker_id)
                except CONNECTION_ERRORS as exc:
                    log.debug("Liveness lock of %s not re-taken yet: %s", session.worker_id, exc)

    async def sweep(self) -> int:
        """Requeue the jobs of workers whose lock has been free for ``grace``; how many."""
        rows = await self._pool.fetch(q.WORKER_LOCKS_FREE, list(self._sessions), self.silent)
        now = time.monotonic()
        free = {str(r[0]) for r in rows}
        for worker_id in [w for w in self._first_free if w not in free]:
            del self._first_free[worker_id]  # took its lock back: alive after all
        for worker_id in free:
            self._first_free.setdefault(worker_id, now)
        gone = [w for w, since in self._first_free.items() if now - since >= self.grace]
        if not gone:
            return 0
        async with self._pool.acquire() as conn, conn.transaction():
            deleted = [str(r[0]) for r in await conn.fetch(q.WORKER_DELETE_LOST, gone, self.silent)]
            recovered = 0
            if deleted:
                row = await conn.fetchrow(q.JOB_RECOVER_OF_WORKERS, LOST_WORKER_ERROR, deleted)
                recovered = int(row[0])
        for worker_id in gone:
            self._first_free.pop(worker_id, None)
        if deleted:
            log.warning(
                "Recovered %d jobs from %d lost workers (%s): their liveness lock was free "
                "for %.1fs",
                recovered, len(deleted), ", ".join(deleted), self.grace,
            )  # fmt: skip
        return recovered


class _SessionListener:
    """A subscription on a worker's liveness connection: alive while that connection is."""

    def __init__(self, owner: Liveness, conn: Any, on_new_job: Callable[[str], None]) -> None:
        self._owner = owner
        self.conn = conn
        self._on_new_job = on_new_job

    def deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_new_job(payload)

    def is_alive(self) -> bool:
        return not self.conn.is_closed()

    async def close(self) -> None:
        await self._owner._unlisten(self)


class PgListener:
    """``LISTEN soniq_new_job`` on a dedicated connection, checked every ``every`` seconds."""

    def __init__(self, conn: Any, on_new_job: Callable[[str], None], every: float) -> None:
        self._conn = conn
        self._on_new_job = on_new_job
        self._healthy = True
        self._timeout = min(CHECK_TIMEOUT, max(1.0, 3 * every))
        self._task = asyncio.create_task(self._watch(every), name="soniq-listen-check")

    def deliver(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_new_job(payload)

    def is_alive(self) -> bool:
        return self._healthy and not self._conn.is_closed()

    async def _watch(self, every: float) -> None:
        while self.is_alive():
            await asyncio.sleep(every)
            try:
                await asyncio.wait_for(self._conn.execute(q.SESSION_CHECK), self._timeout)
            except CONNECTION_ERRORS as exc:
                log.warning("LISTEN connection stopped answering (%r); closing it", exc)
                self._healthy = False
                self._conn.terminate()

    async def close(self) -> None:
        await stop_task(self._task)
        if not self.is_alive():
            self._conn.terminate()
            return
        with contextlib.suppress(*CONNECTION_ERRORS):
            await asyncio.wait_for(self._conn.remove_listener(q.CHANNEL, self.deliver), 2.0)
        await close_quietly(self._conn)
