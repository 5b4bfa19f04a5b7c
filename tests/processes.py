"""Long-running subprocesses for tests: ``python -m soniq ...`` with its output collected, and
worker scripts that log to files."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from tests.helpers import wait_until, wait_until_sync

_Procs = TypeVar("_Procs", bound="ScriptProcesses")


class SoniqProcess:
    """A ``soniq`` subprocess whose merged stdout/stderr is read line by line on a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "soniq", *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, (
            f"{self.args} exited {self.proc.returncode}:\n{self.output}"
        )

    def wait_for(self, text: str, timeout: float = 20.0) -> None:
        def seen() -> bool:
            if text in self.output:
                return True
            self.assert_alive()
            return False

        wait_until_sync(seen, timeout=timeout, message=f"{text!r} in:\n{self.output}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


class ScriptProcesses:
    """Processes of one Python script, written into ``root`` as ``name``, each with its output in
    ``root/worker-<i>.log``. Used as a context manager, it ends every process on exit (with
    ``end_signal``: SIGKILL unless a subclass says otherwise)."""

    end_signal: int = signal.SIGKILL

    def __init__(self, root: Path, name: str, script: str, **env: str) -> None:
        self.root = root
        self.script = root / name
        self.script.write_text(script)
        self.env = env  # for every process, on top of this one's environment minus SONIQ_*
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def spawn(self, **env: str) -> subprocess.Popen[bytes]:
        """Start one more process, with ``env`` added to the shared environment."""
        log_path = self.root / f"worker-{len(self.procs)}.log"
        full = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
        full.update(self.env)
        full.update(env)
        with open(log_path, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(self.script)], env=full, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
            )  # fmt: skip
        self.procs.append(proc)
        self.logs[proc.pid] = log_path
        return proc

    def log(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def end_all(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to every process still running; SIGKILL any not gone 10 s later."""
        for proc in self.alive():
            proc.send_signal(sig)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.poll() is None:
                proc.kill()

    def kill_all(self) -> None:
        self.end_all(signal.SIGKILL)

    def __enter__(self: _Procs) -> _Procs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.end_all(self.end_signal)


async def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """The exit code of ``proc`` once it has exited; fails after ``timeout`` seconds."""
    await wait_until(lambda: proc.poll() is not None, timeout=timeout, message="process exit")
    return int(proc.returncode)
