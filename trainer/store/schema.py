"""The pool database's schema and how it is migrated, on either backend (``trainer.store.dialect``).

``MIGRATIONS[i]`` takes the schema from version i to i + 1. The SQL is SQLite's, written portably (see
``trainer.store.dialect``); a PostgreSQL database gets it translated by ``PostgresDatabase.ddl``. The
version lives in ``PRAGMA user_version`` (SQLite) or the ``schema_version`` table (PostgreSQL), so opening
an older database migrates it in place and a newer one is refused.

Durability. Every SQLite connection runs ``journal_mode=WAL`` with ``synchronous=FULL``: a commit that
returned is on disk even after a power loss, not only after a process crash (NORMAL would only survive the
latter, and the trainer acknowledges records to stations that may then drop their copy). Every write is one
``BEGIN IMMEDIATE ... COMMIT`` transaction (:func:`transaction`). PostgreSQL: ``synchronous_commit=on``,
one transaction per write under the store's write lock.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from pathlib import Path

from trainer.store.dialect import Connection, Database, SqliteDatabase, sqlite_transaction
from trainer.store.types import StoreError

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version / schema_version table).
# Append, never edit; portable SQL only (see trainer.store.dialect).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE stations (
        station_id TEXT PRIMARY KEY,
        address    TEXT,                     -- host:port of its Scorer service (deploy target)
        bundle_id  TEXT,                     -- bundle of its latest record
        first_seen REAL NOT NULL,
        last_seen  REAL NOT NULL
    );
    CREATE TABLE slices (
        id           INTEGER PRIMARY KEY,
        station_id   TEXT NOT NULL REFERENCES stations(station_id),
        slice_id     TEXT NOT NULL,
        image_sha256 TEXT,                   -- content-addressed file under images/
        image_format TEXT,
        image_ref    TEXT,                   -- where the station keeps the pixels (if not sent)
        width        INTEGER,
        height       INTEGER,
        meta_json    TEXT NOT NULL DEFAULT '{}',
        ingested_at  REAL NOT NULL,
        UNIQUE (station_id, slice_id)
    );
    CREATE TABLE score_records (
        id             INTEGER PRIMARY KEY,
        slice_pk       INTEGER NOT NULL REFERENCES slices(id) ON DELETE CASCADE,
        bundle_id      TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        e_rec          REAL NOT NULL,
        v_den          REAL NOT NULL,
        n_proposals    INTEGER NOT NULL,
        record_json    TEXT NOT NULL,        -- the raw spec section 11 record as the station sent it
        stale          INTEGER NOT NULL DEFAULT 0 CHECK (stale IN (0, 1)),
        ingested_at    REAL NOT NULL,
        UNIQUE (slice_pk, bundle_id)
    );
    CREATE INDEX score_records_fresh ON score_records (stale, slice_pk);
    CREATE TABLE proposals (
        record_id       INTEGER NOT NULL REFERENCES score_records(id) ON DELETE CASCADE,
        idx             INTEGER NOT NULL,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        score           REAL NOT NULL,
        e_rec           REAL NOT NULL,
        v_den           REAL NOT NULL,
        concept         TEXT NOT NULL,
        label           TEXT,
        similarity_json TEXT NOT NULL,
        PRIMARY KEY (record_id, idx)
    ) WITHOUT ROWID;
    CREATE TABLE rounds (
        id          INTEGER PRIMARY KEY,
        created_at  REAL NOT NULL,
        budget      INTEGER NOT NULL,
        strategy    TEXT NOT NULL,
        bundle_id   TEXT,
        pool_size   INTEGER NOT NULL,
        params_json TEXT NOT NULL,
        audit_hash  TEXT,                    -- sha256 of the round's audit-log entry (NULL = not logged)
        status      TEXT NOT NULL DEFAULT 'selected' CHECK (status IN ('selected', 'labeled', 'cancelled'))
    );
    CREATE TABLE selections (
        round_id       INTEGER NOT NULL REFERENCES rounds(id) ON DELETE CASCADE,
        slice_pk       INTEGER NOT NULL REFERENCES slices(id),
        rank           INTEGER NOT NULL,
        score          REAL NOT NULL,
        rationale_json TEXT NOT NULL,
        PRIMARY KEY (round_id, slice_pk),
        UNIQUE (round_id, rank)
    );
    CREATE INDEX selections_slice ON selections (slice_pk);
    CREATE TABLE labels (
        slice_pk   INTEGER PRIMARY KEY REFERENCES slices(id),
        round_id   INTEGER REFERENCES rounds(id),
        width      INTEGER NOT NULL,
        height     INTEGER NOT NULL,
        source     TEXT NOT NULL,
        labeled_at REAL NOT NULL
    );
    CREATE TABLE label_boxes (
        id       INTEGER PRIMARY KEY,
        slice_pk INTEGER NOT NULL REFERENCES labels(slice_pk) ON DELETE CASCADE,
        x1 REAL NOT NULL, y1 REAL NOT NULL, x2 REAL NOT NULL, y2 REAL NOT NULL,
        category TEXT NOT NULL,              -- class name (typed mode) or e.g. "defect" (binary mode)
        concept  TEXT                        -- fine concept the box counts for (binary mode: assigned)
    );
    CREATE INDEX label_boxes_slice ON label_boxes (slice_pk);
    CREATE TABLE bundles (
        bundle_id    TEXT PRIMARY KEY,
        path         TEXT,
        created_at   REAL NOT NULL,
        role         TEXT NOT NULL
                     CHECK (role IN ('candidate', 'serving', 'previous', 'rejected', 'retired')),
        metrics_json TEXT NOT NULL DEFAULT '{}',
        note         TEXT
    );
    """,
    # v2 (fleet, docs/fleet.md): the last health check of each station
    """
    ALTER TABLE stations ADD COLUMN health TEXT;             -- serving | not_serving | unreachable | ...
    ALTER TABLE stations ADD COLUMN health_detail TEXT;      -- why (error text), or the check's latency
    ALTER TABLE stations ADD COLUMN health_checked_at REAL;  -- unix time of that check
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def connect(db_path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A SQLite connection in autocommit mode (transactions are explicit) with WAL, FULL sync and foreign keys."""
    return SqliteDatabase(db_path, busy_timeout_s).connect()


def transaction(conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]:
    """One SQLite write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    return sqlite_transaction(conn)


def migrate(conn: Connection, db: Database) -> None:
    """Apply the migrations the database lacks, one transaction each; refuse a schema newer than the code.

    The version is read again inside each write transaction, so two processes opening one new database at
    once apply every migration exactly once.
    """
    version = db.read_version(conn)
    while version < SCHEMA_VERSION:
        with db.transaction(conn) as c:
            version = db.read_version(c)
            if version >= SCHEMA_VERSION:
                break
            for stmt in split_sql(MIGRATIONS[version]):
                c.execute(db.ddl(stmt))
            db.write_version(c, version + 1)
            version += 1
    if version > SCHEMA_VERSION:
        raise StoreError(f"{db.where}: schema version {version} is newer than this code's {SCHEMA_VERSION}")


def split_sql(script: str) -> list[str]:
    """Statements of a migration script (no ';' inside literals in our migrations)."""
    stmts = []
    for part in script.split(";"):
        lines = [ln.split("--", 1)[0] for ln in part.splitlines()]
        s = "\n".join(lines).strip()
        if s:
            stmts.append(s)
    return stmts
