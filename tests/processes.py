"""Long-running ``python -m soniq ...`` subprocesses for tests, with their output collected."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

from tests.helpers import wait_until_sync


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
