"""The README's demo (`python examples/demo.py`) runs as written, from any directory."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "examples" / "demo.py"


def test_readme_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SONIQ_")}
    proc = subprocess.run(
        [sys.executable, str(DEMO)],
        cwd=tmp_path,  # a clean directory: the demo must not depend on the repo as cwd
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"demo failed:\n{out}\n{proc.stderr}"
    assert re.search(r"^Enqueued 5 jobs into .+\.db$", out, re.M), out
    # Results of the successful jobs.
    for line in ("add -> 0", "add -> 11", "add -> 22", "send_welcome -> sent to dev@example.com"):
        assert f"{line}\n" in out, out
    assert "[worker] sending welcome email to dev@example.com (attempt 1)" in out
    # The dead-letter path: the failing job used both attempts, then was replayed.
    assert "flaky -> status=dead_letter after 2 attempts\n" in out, out
    assert "last error: RuntimeError: payment gateway refused order 42" in out
    dead_line = r"^Dead-letter queue holds 1 job\(s\); replaying [0-9a-f]{8}\.\.\.$"
    assert re.search(dead_line, out, re.M), out
    assert re.search(r"^Replayed as [0-9a-f]{8}\.\.\. with status queued$", out, re.M), out
    assert re.search(r"^queue default: .*'dead_letter': 1", out, re.M), out
    assert "Traceback" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []  # the demo writes to its own temp dir, not the cwd
