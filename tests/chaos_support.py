"""A PostgreSQL server (and a PgBouncer) that a test or bench script owns and may restart.

The machine's own cluster is shared with other test runs, so the fault drills never
restart it: they start a throwaway server from the PostgreSQL binaries on the
machine (``/usr/lib/postgresql/*/bin``, else the ones inside the ``pgserver``
wheel), on a free port, in a temporary directory that is deleted at the end.
PostgreSQL refuses to run as root, so under root the server runs as the
``postgres`` (or ``pgserver``) user through ``runuser``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from tests.helpers import wait_until, wait_until_sync
from tests.processes import ScriptProcesses

if TYPE_CHECKING:
    from soniq import Soniq

SERVICE_USERS = ("postgres", "pgserver")


class SetupError(RuntimeError):
    """The throwaway server (or PgBouncer) cannot be started on this machine; says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pg_bin() -> Path:
    system = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    for candidate in reversed(system):
        if (candidate / "pg_ctl").exists():
            return candidate
    with contextlib.suppress(ImportError):
        import pgserver

        bundled = Path(pgserver.__file__).parent / "pginstall" / "bin"
        if (bundled / "pg_ctl").exists():
            return bundled
    raise SetupError(
        "no PostgreSQL binaries found (looked in /usr/lib/postgresql/*/bin and the pgserver "
        "wheel); install postgresql (apt-get install -y postgresql) or pip install pgserver"
    )


def _run_as() -> str | None:
    """The user to run PostgreSQL (and PgBouncer) as: None when not root."""
    if os.geteuid() != 0:
        return None
    for name in SERVICE_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise SetupError(
        "running as root and no 'postgres' or 'pgserver' user exists to run the throwaway "
        "server as; create one (useradd postgres) or run the tests as a normal user"
    )


def _as_user(user: str | None, argv: list[str]) -> list[str]:
    if user is None:
        return argv
    if shutil.which("runuser"):
        return ["runuser", "-u", user, "--", *argv]
    return ["su", user, "-s", "/bin/sh", "-c", " ".join(_quote(a) for a in argv)]


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def _owned_tempdir(prefix: str, user: str | None) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700 if user is None else 0o755)
    return path


class PgServer:
    """A private PostgreSQL cluster: ``start``, ``restart``, ``stop``; trust auth on 127.0.0.1."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        self.bin = _pg_bin()
        self.user = _run_as()
        self.root = _owned_tempdir("soniq-chaos-pg-", self.user)
        self.data = self.root / "data"
        self.port = free_port()
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": "300",
            "fsync": "off",  # throwaway data; restarts are clean shutdowns
            "full_page_writes": "off",
            "shared_buffers": "64MB",
            **(settings or {}),
        }

    @property
    def admin_url(self) -> str:
        return self.url("postgres")

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "30", *args]
        done = subprocess.run(
            _as_user(self.user, argv), capture_output=True, text=True, timeout=timeout,
            check=False, cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise SetupError(f"pg_ctl {' '.join(args)} failed: {done.stderr}\n{tail}")

    def init(self) -> PgServer:
        argv = [str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust",
                "--no-sync", "-E", "UTF8", "--locale", "C"]  # fmt: skip
        done = subprocess.run(
            _as_user(self.user, argv), capture_output=True, text=True, timeout=120, check=False,
            cwd=self.root,
        )  # fmt: skip
        if done.returncode != 0:
            raise SetupError(f"initdb failed: {done.stderr or done.stdout}")
        with open(self.data / "postgresql.conf", "a") as conf:
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")
        return self

    def start(self) -> None:
        self._ctl("-l", str(self.root / "server.log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-l", str(self.root / "server.log"), "restart")

    def destroy(self) -> None:
        with contextlib.suppress(SetupError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def pg_server(settings: dict[str, str] | None = None) -> Iterator[PgServer]:
    server = PgServer(settings).init()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


PGBOUNCER_INI = """\
[databases]
* = host=127.0.0.1 port={pg_port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {root}/users.txt
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = 500
ignore_startup_parameters = extra_float_digits
server_reset_query =
logfile = {root}/pgbouncer.log
pidfile = {root}/pgbouncer.pid
"""


class PgBouncer:
    """A PgBouncer in transaction mode in front of ``server``, on a free port."""

    def __init__(self, server: PgServer, pool_size: int = 8) -> None:
        exe = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not Path(exe).exists():
            raise SetupError(
                "pgbouncer is not installed and could not be installed; run "
                "`apt-get install -y pgbouncer` (Debian/Ubuntu) and run the tests again"
            )
        self.exe = exe
        self.user = _run_as()
        self.root = _owned_tempdir("soniq-pgbouncer-", self.user)
        self.port = free_port()
        ini = PGBOUNCER_INI.format(
            pg_port=server.port, port=self.port, root=self.root, pool_size=pool_size
        )
        (self.root / "pgbouncer.ini").write_text(ini)
        (self.root / "users.txt").write_text('"postgres" ""\n')
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        argv = [self.exe, str(self.root / "pgbouncer.ini")]
        if self.user is not None:
            for name in ("pgbouncer.ini", "users.txt"):
                (self.root / name).chmod(0o644)
            argv = [self.exe, "-u", self.user, str(self.root / "pgbouncer.ini")]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT, cwd=self.root,
        )  # fmt: skip

        def listening() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                return True  # exited: reported below
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return True
            return False

        with contextlib.suppress(AssertionError):
            wait_until_sync(listening, timeout=15, interval=0.05, message="pgbouncer port")
        if self.proc.poll() is None and listening():
            return
        log = self.root / "pgbouncer.log"
        raise SetupError(
            f"pgbouncer did not start (exit {self.proc.poll()}): "
            f"{log.read_text()[-2000:] if log.exists() else 'no log'}"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


# --- worker processes for the kill matrix, the soak and the fault drills ---------------

WORKER_SCRIPT = """
import asyncio, logging, os, sys

from soniq import JobContext, Soniq

env = os.environ.get
logging.basicConfig(
    level=logging.INFO, stream=sys.stderr,
    format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
)
# heartbeat_timeout stays at its documented 300 s: recovery in seconds comes from the
# workers' liveness locks, not from a short timeout.
app = Soniq(
    database_url=env("CHAOS_DB_URL"), listen_database_url=env("CHAOS_LISTEN_URL") or None,
    heartbeat_interval=float(env("CHAOS_HEARTBEAT", "1")),
    poll_interval=float(env("CHAOS_POLL", "1")),
    error_retry_delay=float(env("CHAOS_RETRY_DELAY", "0.5")), pool_min_size=1,
    shutdown_timeout=float(env("CHAOS_SHUTDOWN", "5")), result_ttl=3600,
)


@app.job(name="chaos.run", retries=3)
async def run(
    n: int, ctx: JobContext, sleep: float = 0.0, fail: bool = False, first_only: bool = False
):
    async with app.backend.acquire() as conn:
        await conn.execute(
            "INSERT INTO chaos_runs (job_id, n, pid, attempt) VALUES ($1, $2, $3, $4)",
            ctx.job_id, n, os.getpid(), ctx.attempt,
        )
        if first_only:  # a re-run does not sleep
            runs = await conn.fetchval(
                "SELECT count(*) FROM chaos_runs WHERE job_id = $1", ctx.job_id
            )
            sleep = sleep if runs == 1 else 0.0
    if sleep:
        await asyncio.sleep(sleep)
    if env("CHAOS_MARK_DIR"):  # lets a test see a job finish while the database is away
        open(os.path.join(env("CHAOS_MARK_DIR"), f"finished-{n}"), "w").close()
    if fail:
        raise RuntimeError(f"job {n} fails, as its handler decides")
    return n


async def main():
    await app.run_worker(concurrency=int(env("CHAOS_CONCURRENCY", "4")))
    await app.close()


asyncio.run(main())
"""

RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS chaos_runs (
    job_id uuid NOT NULL, n int NOT NULL, pid int NOT NULL, attempt int NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


class WorkerProcs(ScriptProcesses):
    """Starts chaos worker processes (``python worker.py``); ``kill_all`` ends every one."""

    def __init__(self, url: str, root: Path, **env: str) -> None:
        super().__init__(root, "chaos_worker.py", WORKER_SCRIPT, CHAOS_DB_URL=url, **env)
        self.url = url

    def start(self, **env: str) -> subprocess.Popen[bytes]:
        return self.spawn(**env)


SETTLED = """
SELECT
  (SELECT count(*) FROM soniq_jobs WHERE id = ANY($1::uuid[]) AND status = 'done') AS done,
  (SELECT count(*) FROM soniq_dead_letter_jobs WHERE id = ANY($1::uuid[])) AS dead,
  (SELECT count(*) FROM soniq_jobs WHERE id = ANY($1::uuid[])
     AND status IN ('queued', 'processing')) AS open
"""

RUN_COUNTS = """
SELECT r.job_id::text, count(*) AS runs, array_agg(r.pid ORDER BY r.at) AS pids
FROM chaos_runs r WHERE r.job_id = ANY($1::uuid[]) GROUP BY r.job_id
"""


async def settled(url: str, ids: list[str]) -> tuple[int, int, int]:
    """(done, dead-lettered, still queued or processing) among ``ids``."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(SETTLED, ids)
    finally:
        await conn.close()
    return int(row[0]), int(row[1]), int(row[2])


async def run_counts(url: str, ids: list[str]) -> dict[str, tuple[int, list[int]]]:
    """job id -> (number of handler runs, pids in run order)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(RUN_COUNTS, ids)
    finally:
        await conn.close()
    return {r[0]: (int(r[1]), list(r[2])) for r in rows}


def unexplained_duplicates(counts: dict[str, tuple[int, list[int]]], killed: set[int]) -> list[str]:
    """Jobs that ran more than once where an earlier run was not in a killed process."""
    return [
        job_id
        for job_id, (runs, pids) in counts.items()
        if runs > 1 and not all(pid in killed for pid in pids[:-1])
    ]


class PickupTimer:
    """A job ``name`` on ``app`` that notes when its handler runs (in this process):
    ``latency(n)`` enqueues one and returns the seconds from enqueue to the handler."""

    def __init__(self, app: Soniq, name: str) -> None:
        self.app = app
        self.done: dict[int, float] = {}

        @app.job(name=name)
        async def mark(n: int) -> None:
            self.done[n] = time.monotonic()

        self.job = mark

    async def latency(self, n: int, timeout: float = 15) -> float:
        sent = time.monotonic()
        await self.app.enqueue(self.job, n=n)
        await wait_until(lambda: n in self.done, timeout=timeout, message=f"job {n} ran")
        return self.done[n] - sent


class StallingProxy:
    """A TCP proxy that can stop forwarding without closing anything (a half-open link)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pump(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                await self.flowing.wait()  # stalled: hold the bytes, close nothing
                dst.write(data)
                await dst.drain()
        dst.close()

    async def close(self) -> None:
        self.flowing.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
