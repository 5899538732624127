"""Start `server.cli serve` as a real process and wait until it serves (shared by the slow station tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def start_serve_process(args: list[str], timeout: float = 180.0,
                        ready: str = "serving bundle") -> tuple[subprocess.Popen, str, list[str]]:
    """Run ``python -m server.cli serve ARGS``; return (process, 127.0.0.1:port, output lines so far) once a
    line starts with ``ready``.

    The caller owns the process (terminate it in a ``finally``). Fails with the output when the
    server never reports its address.
    """
    cmd = [sys.executable, "-m", "server.cli", "serve", *args]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    lines: list[str] = []
    addr = None
    t0 = time.time()
    assert proc.stdout is not None
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        addr = addr or (m.group(1) if m else None)
        if line.startswith(ready):
            break
    if not addr:
        proc.kill()
        raise AssertionError("station process did not report its address:\n" + "".join(lines))
    return proc, addr, lines
