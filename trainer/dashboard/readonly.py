"""A :class:`PoolStore` over a read-only SQLite connection, so the dashboard cannot write to the store.

``PoolStore(root)`` creates and migrates the store, which a viewer must never do. Here the same query
methods run on a connection opened with ``mode=ro`` and ``PRAGMA query_only``: every write raises
``sqlite3.OperationalError``. (SQLite may still create its ``-wal`` / ``-shm`` side files to read a WAL
database safely while the trainer writes; the database and the audit log are never changed.)
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

from gsal_edge.errors import GSALError
from trainer.store.dialect import SqliteDatabase
from trainer.store.pool_store import DB_NAME, PoolStore
from trainer.store.schema import SCHEMA_VERSION


class DashboardError(GSALError, ValueError):
    """The dashboard cannot show a store (missing, other schema, bad option); the message says which."""


class ReadOnlySqliteDatabase(SqliteDatabase):
    """pool.sqlite opened with ``mode=ro`` and ``PRAGMA query_only``: every write raises."""

    def connect(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        conn = sqlite3.connect(uri, uri=True, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA query_only=ON")
        return conn


def open_read_only(root: str | Path, *, busy_timeout_s: float = 5.0) -> PoolStore:
    """The store at ``root`` for reading only; DashboardError if it does not exist or has another schema."""
    root = Path(root)
    db_path = root / DB_NAME
    if not db_path.is_file():
        raise DashboardError(f"{db_path}: no trainer store here (start `gsal-edge trainer serve --store {root}` "
                             "or ingest records first)")
    db = ReadOnlySqliteDatabase(db_path, busy_timeout_s)
    conn = db.connect()
    try:
        version = db.read_version(conn)
    finally:
        conn.close()
    if version != SCHEMA_VERSION:
        raise DashboardError(f"{db_path}: schema version {version}, this code reads {SCHEMA_VERSION} "
                             "(`gsal-edge trainer status` migrates an older store)")
    return PoolStore(root, busy_timeout_s=busy_timeout_s, database=db)  # same version: migrate writes nothing
