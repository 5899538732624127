"""The station's malloc arena cap (server/malloc_arenas.py) takes effect in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from server.malloc_arenas import limit_malloc_arenas

REPO = Path(__file__).resolve().parents[2]
# 8 threads allocate at once (contention makes glibc hand out arenas); malloc_stats() prints one
# "Arena N:" block per arena to stderr
_PROBE = """
import sys, threading
from server.malloc_arenas import limit_malloc_arenas
print(limit_malloc_arenas(int(sys.argv[1])), flush=True)
import ctypes
go = threading.Barrier(8)
def work():
    go.wait()
    for _ in range(20000):
        b = [bytearray(512) for _ in range(8)]
        del b
ts = [threading.Thread(target=work) for _ in range(8)]
[t.start() for t in ts]
[t.join() for t in ts]
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def _arenas(n: int, env: dict[str, str]) -> tuple[int, str]:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(n)], cwd=REPO, capture_output=True, text=True, check=False,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr.count("Arena "), r.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_stats")
def test_cap_limits_arenas_in_a_fresh_process() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env["PYTHONPATH"] = str(REPO)
    capped, said = _arenas(2, env)
    default, said0 = _arenas(0, env)
    assert "capped at 2" in said and "glibc default" in said0
    assert 1 <= capped <= 2
    assert default > capped  # the probe does make glibc create more arenas without the cap
    env["MALLOC_ARENA_MAX"] = "1"
    n, said1 = _arenas(2, env)
    assert n == 1 and "from the environment" in said1  # an explicit MALLOC_ARENA_MAX wins


def test_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        limit_malloc_arenas(-1)
