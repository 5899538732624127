"""Start ``python -m server.cli serve`` as a child process and wait until it serves.

One start loop for everything that runs a real station process: the slow station tests
(tests/server/station_process.py re-exports it) and the load/soak test (bench/load_test.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"listening on (127\.0\.0\.1:\d+)")


def start_serve_process(args: list[str], timeout: float = 180.0, ready: str = "serving bundle",
                        env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, list[str]]:
    """Run ``python -m server.cli serve ARGS`` (stdout and stderr merged into one text pipe); return
    (process, 127.0.0.1:port, output lines so far) once a line starts with ``ready``.

    The caller owns the process (terminate it in a ``finally``) and must keep reading its stdout (a full
    pipe blocks the station). Raises ``AssertionError`` with the output when the station exits, or never
    reports its address or ``ready`` within ``timeout`` seconds (the process is killed then).
    """
    cmd = [sys.executable, "-m", "server.cli", "serve", *args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ if env is None else env, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    addr = None
    is_ready = False
    t0 = time.monotonic()
    assert proc.stdout is not None
    while time.monotonic() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = _LISTENING.search(line)
        addr = addr or (m.group(1) if m else None)
        if line.startswith(ready):
            is_ready = True
            break
    if not addr or not is_ready:
        proc.kill()
        proc.wait(10)
        what = "report its address" if not addr else f"print {ready!r}"
        raise AssertionError(f"station process did not {what} (exit code {proc.returncode}):\n"
                             + "".join(lines[-40:]))
    return proc, addr, lines
