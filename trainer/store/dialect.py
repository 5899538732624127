"""Where the pool database lives (a SQLite file or a PostgreSQL database) behind one small adapter.

The store's SQL is written once, portably: ``?`` placeholders, ``INSERT ... ON CONFLICT (...) DO UPDATE``
(never ``INSERT OR REPLACE``), ``RETURNING id`` (never ``lastrowid``), upsert ``SET`` expressions that
qualify the target's columns with the table name, integers 0/1 instead of boolean expressions. A
:class:`Database` runs that SQL on its backend:

* :class:`SqliteDatabase`: the sqlite3 connection as it was (WAL, ``synchronous=FULL``); a write is
  ``BEGIN IMMEDIATE ... COMMIT``; the schema version is ``PRAGMA user_version``.
* :class:`PostgresDatabase` (psycopg 3, ``pip install 'gsal-edge[postgres]'``): ``?`` becomes ``%s``;
  migrations are translated (:meth:`PostgresDatabase.ddl`: 64-bit integers, identity keys, DOUBLE
  PRECISION for REAL, byte-order ``"C"`` collation so ORDER BY matches SQLite, no ``WITHOUT ROWID``); the
  version is a one-row ``schema_version`` table. A write is one READ COMMITTED transaction that first takes
  a transaction-level advisory lock, so writers serialize exactly as under ``BEGIN IMMEDIATE`` (the
  idempotent ingest's check-then-insert stays race-free across trainer processes); readers never wait.
  ``synchronous_commit=on`` is set on every session: a returned commit is flushed to the server's WAL.

Both also give :meth:`Database.round_lock`, a cross-process lock held by one selection round from reading
the pool to recording its picks (a ``flock`` on ``rounds.lock`` beside pool.sqlite; a session advisory lock
on its own PostgreSQL connection), so two trainer processes never pick the same slice twice.
"""

from __future__ import annotations

import fcntl
import re
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from trainer.store.types import StoreDatabaseError, StoreError

# advisory lock keys (per database): all writes, and selection rounds
WRITE_LOCK_KEY = 0x6773616C_0001
ROUND_LOCK_KEY = 0x6773616C_0002


class Cursor(Protocol):
    rowcount: int

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Connection(Protocol):
    """What the store's queries use of a connection (sqlite3.Connection has it; so does :class:`PgConnection`)."""

    def execute(self, sql: str, params: Sequence[Any] = ...) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Cursor: ...


class Database(Protocol):
    backend: str  # "sqlite" | "postgresql"
    where: str  # how errors name the database

    def connect(self) -> Connection: ...

    def transaction(self, conn: Connection) -> Any: ...

    def ddl(self, stmt: str) -> str: ...

    def read_version(self, conn: Connection) -> int: ...

    def write_version(self, conn: Connection, version: int) -> None: ...

    def round_lock(self) -> Any: ...


# ------------------------------------------------------------------------------------------ SQLite


@contextmanager
def sqlite_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SqliteDatabase:
    """One pool.sqlite file (WAL, FULL sync, foreign keys); see ``trainer.store.schema``."""

    backend = "sqlite"

    def __init__(self, path: Path, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.where = str(self.path)
        self.busy_timeout_s = busy_timeout_s

    def connect(self) -> sqlite3.Connection:
        """A connection in autocommit mode (transactions are explicit) with WAL, FULL sync and foreign keys."""
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def transaction(self, conn: sqlite3.Connection) -> AbstractContextManager[sqlite3.Connection]:
        return sqlite_transaction(conn)

    def ddl(self, stmt: str) -> str:
        return stmt

    def read_version(self, conn: Connection) -> int:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    def write_version(self, conn: Connection, version: int) -> None:
        conn.execute(f"PRAGMA user_version={int(version)}")

    @contextmanager
    def round_lock(self) -> Iterator[None]:
        """Exclusive ``flock`` on ``rounds.lock`` next to the database (released if the process dies)."""
        with open(self.path.with_name("rounds.lock"), "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# ------------------------------------------------------------------------------------------ PostgreSQL


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as e:  # pragma: no cover - depends on the install
        raise StoreError("a postgresql:// store needs psycopg 3: pip install 'gsal-edge[postgres]'") from e
    return psycopg


class Row(tuple):
    """A result row read by position or by column name, like sqlite3.Row (``dict(row)`` works too)."""

    _index: dict[str, int]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._index)


def _row_factory(cursor: Any) -> Any:
    desc = cursor.description
    if desc is None:
        return tuple
    index = {d.name: i for i, d in enumerate(desc)}

    def make(values: Sequence[Any]) -> Row:
        row = Row(values)
        row._index = index
        return row

    return make


@lru_cache(maxsize=512)
def to_pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled); our SQL has no ``?`` in literals."""
    return sql.replace("%", "%%").replace("?", "%s")


_DDL_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bWITHOUT\s+ROWID\b", re.IGNORECASE), ""),
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\s+REFERENCES\b", re.IGNORECASE), "BIGINT PRIMARY KEY REFERENCES"),
    (re.compile(r"\bINTEGER\s+PRIMARY\s+KEY\b", re.IGNORECASE), "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY"),
    (re.compile(r"\bINTEGER\b", re.IGNORECASE), "BIGINT"),
    (re.compile(r"\bREAL\b", re.IGNORECASE), "DOUBLE PRECISION"),
    (re.compile(r"\bTEXT\b", re.IGNORECASE), 'TEXT COLLATE "C"'),
)


class PgConnection:
    """A psycopg connection that speaks the store's portable SQL; reconnects once it is found broken.

    Database errors come out as :class:`StoreDatabaseError` (a GSALError), naming the database.
    """

    def __init__(self, db: PostgresDatabase) -> None:
        self.db = db
        self.raw = db.raw_connect()

    def ensure_open(self) -> None:
        if self.raw.closed or self.raw.broken:
            self.raw = self.db.raw_connect()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        psycopg = _psycopg()
        try:
            return self.raw.execute(to_pyformat(sql), tuple(params))
        except psycopg.Error as e:
            raise StoreDatabaseError(f"{self.db.where}: {e}".strip()) from e

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any:
        psycopg = _psycopg()
        cur = self.raw.cursor()
        try:
            cur.executemany(to_pyformat(sql), list(rows))
        except psycopg.Error as e:
            raise StoreDatabaseError(f"{self.db.where}: {e}".strip()) from e
        return cur

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase:
    """A PostgreSQL database given by a libpq URL (``postgresql://user@host:port/db``)."""

    backend = "postgresql"

    def __init__(self, conninfo: str, *, where: str | None = None, connect_timeout_s: int = 10) -> None:
        self.conninfo = conninfo
        self.where = where or conninfo
        self.connect_timeout_s = connect_timeout_s

    def raw_connect(self) -> Any:
        psycopg = _psycopg()
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=_row_factory,
                                   connect_timeout=self.connect_timeout_s)
        except psycopg.Error as e:
            raise StoreDatabaseError(f"{self.where}: cannot connect: {e}".strip()) from e
        conn.execute("SET synchronous_commit = on")
        conn.execute("SET TIME ZONE 'UTC'")
        return conn

    def connect(self) -> PgConnection:
        return PgConnection(self)

    @contextmanager
    def transaction(self, conn: PgConnection) -> Iterator[PgConnection]:
        """One write transaction (READ COMMITTED) holding the store's write lock until COMMIT/ROLLBACK."""
        conn.ensure_open()
        conn.execute("BEGIN ISOLATION LEVEL READ COMMITTED")
        try:
            conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
            yield conn
        except BaseException:
            if not (conn.raw.closed or conn.raw.broken):
                try:
                    conn.raw.execute("ROLLBACK")
                except _psycopg().Error:
                    pass
            raise
        conn.execute("COMMIT")

    def ddl(self, stmt: str) -> str:
        for pattern, repl in _DDL_RULES:
            stmt = pattern.sub(repl, stmt)
        return stmt

    def read_version(self, conn: Connection) -> int:
        # an MVCC read of the catalog, not to_regclass(): right after waiting for the write lock the catalog
        # cache may not yet show a table another process just created (and committed)
        exists = conn.execute("SELECT count(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema() "
                              "AND tablename = 'schema_version'").fetchone()[0]
        if not exists:
            return 0
        row = conn.execute("SELECT version FROM schema_version").fetchone()
        return int(row[0]) if row else 0

    def write_version(self, conn: Connection, version: int) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (int(version),))

    @contextmanager
    def round_lock(self) -> Iterator[None]:
        """A session advisory lock on a connection of its own (the server drops it if this process dies)."""
        conn = PgConnection(self)
        try:
            conn.execute("SELECT pg_advisory_lock(?)", (ROUND_LOCK_KEY,))
            yield
        finally:
            conn.close()

