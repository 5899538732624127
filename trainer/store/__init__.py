"""The trainer's durable pool store: a database (SQLite in WAL mode, or PostgreSQL) plus files on disk.

Layout of a store directory::

    <root>/pool.sqlite     stations, slices, score_records, proposals, labels, label_boxes,
                           rounds, selections, bundles, kv (schema version in PRAGMA user_version)
    <root>/images/         slice images named by sha256 (see ``trainer.images``)
    <root>/audit.jsonl     the hash-chained audit log (``trainer.audit_log``)

With PostgreSQL (``--store postgresql://user@host:port/db``) the tables live in that database and the
directory keeps the files only (``trainer.store.location``).

Modules: ``types`` (items, labels, picks, pool keys, StoreError), ``schema`` (migrations), ``dialect``
(the SQLite / PostgreSQL connection adapter: placeholders, DDL, transactions, locks), ``ingest``
(validation and the idempotent, mark-stale insert), ``pool_store`` (PoolStore), ``location``
(``--store`` values and :func:`open_store`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainer.store.pool_store import PoolStore


def open_store(spec: str | Path, **kw: Any) -> PoolStore:
    """The store a ``--store`` value names: a directory / ``sqlite://DIR`` or ``postgresql://...``.

    See ``trainer.store.location`` (imported lazily, so ``import trainer.store.types`` stays light).
    """
    from trainer.store.location import open_store as _open_store

    return _open_store(spec, **kw)
