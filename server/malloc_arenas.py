"""Cap glibc's malloc arenas in the station process (``gsal-edge serve``), before it starts any thread.

Why: glibc gives each thread that meets lock contention its own malloc arena, up to 8 x cores, and an arena
keeps the memory freed into it. The station has many threads that allocate slice-sized buffers (gRPC
handlers, batcher, forwarder, spool writer), so its RSS crept up under steady load: the 10-minute soak
(``make soak``) measured a station RSS slope of 1.23 MB/min with glibc's default, 0.05 MB/min with
``MALLOC_ARENA_MAX=2`` (docs/reliability.md). Two arenas cost no measurable throughput there: the scorer,
not malloc, is the bottleneck.

The cap is set with ``mallopt(M_ARENA_MAX, n)``: glibc fixes its arena limit the first time a thread
needs a new arena, so this must run before the process starts threads (the start of ``serve``). Override:
``--malloc-arena-max N`` or ``GSAL_MALLOC_ARENA_MAX=N`` (0: glibc's default); a ``MALLOC_ARENA_MAX`` already
in the environment was applied by glibc itself at start and is left as it is. Not glibc (musl, macOS):
nothing is done.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ENV = "GSAL_MALLOC_ARENA_MAX"
DEFAULT_ARENA_MAX = 2
M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(n: int = DEFAULT_ARENA_MAX) -> str:
    """Cap malloc arenas at ``n`` (0: leave glibc's default); a one-line account of what was done."""
    if n < 0:
        raise ValueError(f"malloc arena cap must be >= 0, got {n}")
    if "MALLOC_ARENA_MAX" in os.environ:
        return f"malloc arenas: MALLOC_ARENA_MAX={os.environ['MALLOC_ARENA_MAX']} from the environment"
    if n == 0:
        return "malloc arenas: glibc default (cap disabled)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return "malloc arenas: not glibc, left as they are"
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(M_ARENA_MAX, n) != 1:
        return f"malloc arenas: mallopt(M_ARENA_MAX, {n}) refused, left as they are"
    os.environ["MALLOC_ARENA_MAX"] = str(n)  # child processes start with the same cap
    return f"malloc arenas: capped at {n} (mallopt M_ARENA_MAX; --malloc-arena-max / {ENV} to change)"
