"""The station's durable queue of deferred slices (``--overflow defer``): ``DATA_DIR/deferred/``.

When the scoring queue is full, a station started with ``overflow="defer"`` stores the slice here and answers
``deferred`` instead of ``RESOURCE_EXHAUSTED``, so the line never waits for the scorer. One file per slice,
``<ns timestamp>-<counter>.slice``, holding the ``gsal.v1.Slice`` message exactly as received (pixels, id,
line/part/timestamp meta), so a later scoring gives the record the slice would have got at once.

Durability: each entry is written to ``tmp/``, fsynced, renamed into place and the folder fsynced before
the client is told ``deferred``; a crash leaves either the whole entry or none (stale ``tmp/`` files are
removed at start). Names sort in arrival order; entries survive restarts.

Draining (``gsal-edge station drain-deferred``, :mod:`server.drain`) streams the entries back to the
station with ``no_defer`` set and deletes each one only after its record came back (and was written out);
the station then forwards the record to the trainer like any other. Transport-free: entries are bytes.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from gsal_edge.errors import GSALError
from gsal_edge.jsonio import fsync_dir

log = logging.getLogger(__name__)

SUFFIX = ".slice"


class DeferredQueueFull(GSALError, RuntimeError):
    """The deferred queue holds its maximum items or bytes; the message says which."""


class DeferredQueue:
    """Append-only folder of entries with item and byte limits (see the module docstring)."""

    def __init__(self, data_dir: str | Path, max_items: int = 100_000, max_bytes: int = 8 << 30) -> None:
        self.dir = Path(data_dir) / "deferred"
        self.tmp = self.dir / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp.iterdir():  # half-written entries of a crash: never acknowledged
            stale.unlink(missing_ok=True)
        self.max_items, self.max_bytes = max_items, max_bytes
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._items, self._bytes = self._scan()
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="gsal-deferred")

    def _scan(self) -> tuple[int, int]:
        n = size = 0
        with os.scandir(self.dir) as it:
            for e in it:
                if e.name.endswith(SUFFIX) and e.is_file():
                    n += 1
                    size += e.stat().st_size
        return n, size

    def __len__(self) -> int:
        """Entries on disk (counted afresh: a drain removes them from another process)."""
        with self._lock:
            self._items, self._bytes = self._scan()
            return self._items

    def put(self, payload: bytes) -> int:
        """Store one entry durably; returns the number of entries now queued. Raises :class:`DeferredQueueFull`."""
        with self._lock:
            if self._items + 1 > self.max_items or self._bytes + len(payload) > self.max_bytes:
                self._items, self._bytes = self._scan()  # a drain may have made room
                if self._items + 1 > self.max_items:
                    raise DeferredQueueFull(f"deferred queue is full ({self._items} slices, max_items)")
                if self._bytes + len(payload) > self.max_bytes:
                    raise DeferredQueueFull(f"deferred queue is full ({self._bytes} bytes, max_bytes)")
            name = f"{time.time_ns():020d}-{next(self._seq):08d}{SUFFIX}"
            self._items += 1
            self._bytes += len(payload)
            n = self._items
        tmp = self.tmp / name
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.dir / name)
            fsync_dir(self.dir)
        except OSError:
            tmp.unlink(missing_ok=True)
            with self._lock:
                self._items -= 1
                self._bytes -= len(payload)
            raise
        return n

    def put_async(self, payload: bytes) -> Future[int]:
        """:meth:`put` on the queue's writer thread, so a stream's reader keeps reading while the entry is
        made durable; the future raises what :meth:`put` raises."""
        return self._writer.submit(self.put, payload)

    def close(self) -> None:
        """Finish the writes in progress."""
        self._writer.shutdown(wait=True)

    def entries(self) -> list[Path]:
        """The queued entries, oldest first."""
        return sorted(p for p in self.dir.iterdir() if p.name.endswith(SUFFIX) and p.is_file())

    @staticmethod
    def read(entry: Path) -> bytes:
        return entry.read_bytes()

    def remove(self, entry: Path) -> None:
        """Delete one entry (after its record was delivered)."""
        entry.unlink(missing_ok=True)
