"""Which store a ``--store`` value names, and :func:`open_store`, the one way commands open it.

* ``DIR`` or ``sqlite://DIR`` (``sqlite:///abs/dir``): the single-machine default, a directory with
  pool.sqlite, images/, audit.jsonl, bundles/.
* ``postgresql://user[:password]@host[:port]/db[?files=DIR&...]`` (or ``postgres://``): the pool database
  is that PostgreSQL database; the files (images/, audit.jsonl, bundles/, runs/) still need a directory:
  ``?files=DIR`` in the URL, else ``$GSAL_TRAINER_FILES``, else ``artifacts/trainer-pg/<db>``. Trainer
  processes on several machines that share one database must share that directory too (e.g. NFS).
  Other query parameters (``sslmode``, ...) go to libpq unchanged; a password is never printed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from trainer.store.types import StoreError

if TYPE_CHECKING:
    from trainer.store.pool_store import PoolStore

PG_SCHEMES = ("postgresql", "postgres")
DEFAULT_PG_FILES = Path("artifacts/trainer-pg")


@dataclass(frozen=True)
class StoreLocation:
    """A parsed ``--store`` value: the backend, the files directory and (PostgreSQL) the libpq URL."""

    backend: str  # "sqlite" | "postgresql"
    files: Path
    conninfo: str | None = None  # PostgreSQL URL without ``files``

    @property
    def display(self) -> str:
        """How messages name the database (no password)."""
        if self.conninfo is None:
            return str(self.files / "pool.sqlite")
        return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", self.conninfo)


def parse_store(spec: str | Path, *, files: str | Path | None = None) -> StoreLocation:
    """Parse a ``--store`` value (see the module doc); ``files`` overrides the PostgreSQL files directory."""
    if isinstance(spec, Path):
        return StoreLocation("sqlite", spec)
    text = str(spec).strip()
    if not text:
        raise StoreError("--store is empty: give a directory, sqlite://DIR or postgresql://user@host:port/db")
    scheme, sep, _ = text.partition("://")
    if not sep:
        return StoreLocation("sqlite", Path(text))
    scheme = scheme.lower()
    if scheme == "sqlite":
        path = text[len("sqlite://"):]
        if not path:
            raise StoreError(f"--store {text!r}: sqlite:// needs a directory (sqlite:///abs/dir or sqlite://rel/dir)")
        return StoreLocation("sqlite", Path(path))
    if scheme not in PG_SCHEMES:
        raise StoreError(f"--store {text!r}: unknown scheme {scheme!r} (use a directory, sqlite:// or postgresql://)")
    parts = urlsplit(text)
    query = parse_qsl(parts.query, keep_blank_values=True)
    in_url = [v for k, v in query if k == "files"]
    db = parts.path.lstrip("/")
    if not db:
        raise StoreError(f"--store {text!r}: name the database (postgresql://user@host:port/DBNAME)")
    if files is None:
        files = in_url[-1] if in_url else os.environ.get("GSAL_TRAINER_FILES") or DEFAULT_PG_FILES / db
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode([(k, v) for k, v in query
                                                                             if k != "files"]), ""))
    return StoreLocation("postgresql", Path(files), conninfo)


def open_store(spec: str | Path, *, files: str | Path | None = None, busy_timeout_s: float = 30.0) -> PoolStore:
    """The :class:`PoolStore` a ``--store`` value names (creating and migrating it as needed)."""
    from trainer.store.dialect import PostgresDatabase
    from trainer.store.pool_store import PoolStore

    loc = parse_store(spec, files=files)
    if loc.backend == "sqlite":
        return PoolStore(loc.files, busy_timeout_s=busy_timeout_s)
    assert loc.conninfo is not None
    return PoolStore(loc.files, busy_timeout_s=busy_timeout_s,
                     database=PostgresDatabase(loc.conninfo, where=loc.display))
