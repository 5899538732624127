"""The forwarder's durable queue: ``SPOOL_DIR/spool.sqlite3`` (default ``DATA_DIR/forward-spool/``).

Every scored item the station forwards to the trainer (record + the slice as received) is written here
*before* the client is answered, and deleted only once the trainer acknowledged (or refused) it. A station
that is SIGKILLed, crashes or is stopped before its queue is flushed replays the spool at its next start;
the trainer's ingest is idempotent by station + slice + bundle, so a record sent twice is stored once.

Why SQLite (WAL) and not :class:`server.deferred.DeferredQueue`'s file-per-entry folder: the forwarder
writes one small record per scored slice at line rate and deletes it a few hundred ms later; a WAL
database takes a whole group of items in one commit (one write, at most one fsync) where the folder costs
two fsyncs and a rename per item, and a delete of a chunk is one statement.

Durability (``sync``): ``"normal"`` (default) keeps every committed item across a process crash or SIGKILL
(the WAL is in the OS page cache before the client is answered); a power loss may lose the last commits.
``"full"`` fsyncs every commit (power-loss safe, slower). Rows that cannot be read back (a damaged row or
database) are counted and reported by the caller, never raised at start.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gsal_edge.acquisition.records import ScoreRecord

log = logging.getLogger(__name__)

SpoolSync = Literal["normal", "full"]
FILE_NAME = "spool.sqlite3"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    record TEXT NOT NULL,
    data BLOB NOT NULL,
    encoding TEXT NOT NULL,
    shape TEXT,
    dtype TEXT
)"""


@dataclass(frozen=True)
class SpooledItem:
    """One item as stored: the record and the slice payload exactly as received."""

    record: ScoreRecord
    data: bytes
    encoding: str
    shape: tuple[int, ...] | None
    dtype: str | None


@dataclass
class SpoolLoad:
    """What :meth:`ForwardSpool.load` found: the readable items by sequence number, the count of rows that
    could not be read (deleted), and a damaged database file moved aside at open (its row count unknown)."""

    items: list[tuple[int, SpooledItem]]
    unreadable: int = 0
    moved_aside: Path | None = None  # a damaged database file, renamed out of the way


class ForwardSpool:
    """SQLite-backed FIFO of forwarded items (thread-safe; see the module docstring)."""

    def __init__(self, spool_dir: str | Path, sync: SpoolSync = "normal") -> None:
        self.dir = Path(spool_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / FILE_NAME
        self.sync = sync
        self._lock = threading.Lock()
        self._moved_aside: Path | None = None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as e:  # not a database / damaged header: keep it for inspection
            aside = self.path.with_name(f"{FILE_NAME}.unreadable-{time.time_ns()}")
            self.path.replace(aside)
            for ext in ("-wal", "-shm"):
                Path(str(self.path) + ext).unlink(missing_ok=True)
            log.error("forward spool %s unreadable (%s); moved to %s, its records are lost", self.path, e, aside)
            self._moved_aside = aside
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.sync == 'full' else 'NORMAL'}")
            db.execute(_SCHEMA)
            db.execute("SELECT count(*) FROM spool").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def add(self, items: Sequence[SpooledItem]) -> list[int]:
        """Store ``items`` in one transaction; their sequence numbers. Raises ``sqlite3.Error`` / ``OSError``."""
        rows = [(it.record.to_json(), it.data, it.encoding, json.dumps(list(it.shape)) if it.shape else None,
                 it.dtype) for it in items]
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                seqs = []
                for row in rows:
                    cur.execute("INSERT INTO spool (record, data, encoding, shape, dtype) VALUES (?, ?, ?, ?, ?)", row)
                    seqs.append(int(cur.lastrowid or 0))
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        return seqs

    def remove(self, seqs: Sequence[int]) -> None:
        """Delete delivered (or given-up) items."""
        if not seqs:
            return
        with self._lock:
            self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def load(self) -> SpoolLoad:
        """Every item left by an earlier run, oldest first; unreadable rows are deleted and counted."""
        out = SpoolLoad([], 0, self._moved_aside)
        bad: list[int] = []
        with self._lock:
            try:
                rows = self._db.execute("SELECT seq, record, data, encoding, shape, dtype FROM spool ORDER BY seq")
                for seq, rec, data, enc, shape, dtype in rows:
                    try:
                        item = SpooledItem(
                            record=ScoreRecord.from_dict(json.loads(rec), where=f"spool row {seq}"),
                            data=bytes(data), encoding=str(enc),
                            shape=tuple(int(v) for v in json.loads(shape)) if shape else None,
                            dtype=None if dtype is None else str(dtype),
                        )
                    except Exception as e:  # noqa: BLE001 - any damage to one row: count it, keep going
                        log.warning("forward spool %s: row %s unreadable (%s: %s)", self.path, seq,
                                    type(e).__name__, e)
                        bad.append(int(seq))
                        continue
                    out.items.append((int(seq), item))
            except sqlite3.DatabaseError as e:  # a damaged page: keep what was read, count the rest as one
                log.error("forward spool %s: read stopped after %d rows (%s)", self.path, len(out.items), e)
                out.unreadable += 1
            if bad:
                self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in bad])
        out.unreadable += len(bad)
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()
