"""The trainer's durable pool: a database (``trainer.store.schema``) plus content-addressed images.

:class:`PoolStore` is the one handle on a store: ingest (``trainer.store.ingest``), the pool queries
selection reads, rounds and their picks, labels and coverage n(v), the serving / previous bundles, status
and online backup. The database is pool.sqlite in the store directory (default) or a PostgreSQL database
(``trainer.store.location.open_store`` picks one from a URL); the files (images/, audit.jsonl, bundles/)
are always in the store directory. Every write is one transaction (SQLite: ``BEGIN IMMEDIATE ... COMMIT``,
WAL, ``synchronous=FULL``; PostgreSQL: see ``trainer.store.dialect``); ingest batches many records per
transaction, so the one flush per commit is amortized.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, Self

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry
from gsal_edge.jsonio import canonical_json
from trainer.images import ImageStore
from trainer.store.dialect import Connection, Database, SqliteDatabase
from trainer.store.ingest import insert_items, prepare_items, store_images
from trainer.store.schema import migrate
from trainer.store.types import (
    ImageLabels,
    IngestItem,
    IngestResult,
    Pick,
    SliceInfo,
    StoreError,
    check_station,
    pool_key,
    split_key,
)

DB_NAME = "pool.sqlite"
IMAGES_DIR = "images"
AUDIT_NAME = "audit.jsonl"


class PoolStore:
    """Thread-safe handle on one store (one connection, one lock; writers serialize anyway).

    ``root`` is the store directory (images/, audit.jsonl, bundles/); the database is ``root/pool.sqlite``
    unless ``database`` names another (``trainer.store.dialect.PostgresDatabase``).
    """

    def __init__(self, root: str | Path, *, busy_timeout_s: float = 30.0, database: Database | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.db: Database = database or SqliteDatabase(self.root / DB_NAME, busy_timeout_s)
        self.backend = self.db.backend
        #: how messages name the database: the pool.sqlite path, or the PostgreSQL URL (no password)
        self.db_path: Path | str = self.root / DB_NAME if database is None else self.db.where
        self.images = ImageStore(self.root / IMAGES_DIR)
        self.audit_path = self.root / AUDIT_NAME
        self._lock = threading.RLock()
        self._conn: Connection = self.db.connect()
        with self._lock:
            migrate(self._conn, self.db)

    # -- plumbing

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """One write transaction (SQLite: BEGIN IMMEDIATE ... COMMIT), rolled back on any exception."""
        with self._lock, self.db.transaction(self._conn) as c:
            yield c

    def _q(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """Rows of one read (portable SQL with ``?`` placeholders; rows index by position and by name)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @property
    def schema_version(self) -> int:
        with self._lock:
            return self.db.read_version(self._conn)

    def pragma(self, name: str) -> Any:
        """A SQLite PRAGMA's value (StoreError on PostgreSQL)."""
        if self.backend != "sqlite":
            raise StoreError(f"{self.db_path}: PRAGMA {name} is SQLite only (this store is {self.backend})")
        return self._q(f"PRAGMA {name}")[0][0]

    @contextmanager
    def round_lock(self) -> Iterator[None]:
        """Held by one selection round from reading the pool to recording its picks, across processes."""
        with self.db.round_lock():
            yield

    # -- kv / current bundle

    def _kv_get(self, key: str) -> str | None:
        rows = self._q("SELECT value FROM kv WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    @property
    def current_bundle(self) -> str | None:
        """The bundle whose records are fresh (selectable); None until a record or deploy sets it."""
        return self._kv_get("current_bundle")

    def set_current_bundle(self, bundle_id: str) -> int:
        """Make ``bundle_id`` current and re-mark every record's staleness; returns the stale count."""
        with self._write() as c:
            _set_current(c, bundle_id)
            return int(c.execute("SELECT count(*) FROM score_records WHERE stale = 1").fetchone()[0])

    # -- stations

    def register_station(self, station: str, address: str | None = None) -> None:
        """Add or update a station (``address`` = host:port of its Scorer, the deploy target)."""
        check_station(station, str(self.db_path))
        now = time.time()
        with self._write() as c:
            c.execute(
                "INSERT INTO stations (station_id, address, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (station_id) DO UPDATE SET address = coalesce(excluded.address, stations.address), "
                "last_seen = excluded.last_seen",
                (station, address, now, now),
            )

    def stations(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self._q("SELECT * FROM stations ORDER BY station_id")]

    # -- ingest

    def ingest(self, items: Sequence[IngestItem]) -> IngestResult:
        """Store a batch durably in one transaction (images first); idempotent, see ``trainer.store.ingest``.

        Raises StoreError (naming the item) before writing anything if an item is invalid.
        """
        prepared = prepare_items(items)
        images = store_images(self.images, prepared)
        now = time.time()
        with self._write() as c:
            result = insert_items(c, prepared, images, now)
        return result

    # -- pool queries

    def unlabeled_records(self, *, exclude_pending: bool = True) -> list[ScoreRecord]:
        """The current unlabeled pool U: the fresh record of every unlabeled slice, ordered by key.

        ``exclude_pending`` also drops slices picked by a round that is still waiting for labels.
        Each record's ``image_id`` is the pool key ``<station>/<slice id>``.
        """
        sql = (
            "SELECT s.station_id, s.slice_id, r.record_json FROM score_records r "
            "JOIN slices s ON s.id = r.slice_pk "
            "WHERE r.stale = 0 AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.slice_pk = s.id) "
        )
        if exclude_pending:
            sql += (
                "AND NOT EXISTS (SELECT 1 FROM selections se JOIN rounds ro ON ro.id = se.round_id "
                "WHERE se.slice_pk = s.id AND ro.status = 'selected') "
            )
        sql += "ORDER BY s.station_id, s.slice_id"
        out = []
        for station, slice_id, rec_json in self._q(sql):
            rec = ScoreRecord.from_dict(json.loads(rec_json), where=f"{self.db_path} {station}/{slice_id}")
            rec.image_id = pool_key(station, slice_id)
            out.append(rec)
        return out

    def record(self, key: str, *, fresh_only: bool = True) -> ScoreRecord | None:
        """The fresh (else newest) record of one pool image, with ``image_id`` = key."""
        station, slice_id = split_key(key)
        rows = self._q(
            "SELECT r.record_json, r.stale FROM score_records r JOIN slices s ON s.id = r.slice_pk "
            "WHERE s.station_id = ? AND s.slice_id = ? ORDER BY r.stale ASC, r.id DESC",
            (station, slice_id),
        )
        if not rows or (fresh_only and rows[0]["stale"]):
            return None
        rec = ScoreRecord.from_dict(json.loads(rows[0]["record_json"]), where=f"{self.db_path} {key}")
        rec.image_id = key
        return rec

    def stale_slices(self) -> list[SliceInfo]:
        """Unlabeled slices with no fresh record: they need re-scoring with the current bundle."""
        rows = self._q(
            "SELECT s.* FROM slices s WHERE NOT EXISTS "
            "(SELECT 1 FROM score_records r WHERE r.slice_pk = s.id AND r.stale = 0) "
            "AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.slice_pk = s.id) ORDER BY s.station_id, s.slice_id"
        )
        return [self._slice_info(r) for r in rows]

    def slice_info(self, key: str) -> SliceInfo:
        station, slice_id = split_key(key)
        rows = self._q("SELECT * FROM slices WHERE station_id = ? AND slice_id = ?", (station, slice_id))
        if not rows:
            raise StoreError(f"{self.db_path}: no slice {key!r}")
        return self._slice_info(rows[0])

    def _slice_info(self, r: Any) -> SliceInfo:
        path = self.images.path(r["image_sha256"], r["image_format"]) if r["image_sha256"] else None
        return SliceInfo(
            key=pool_key(r["station_id"], r["slice_id"]),
            pk=r["id"],
            station=r["station_id"],
            slice_id=r["slice_id"],
            image_path=path,
            image_ref=r["image_ref"],
            width=r["width"],
            height=r["height"],
            meta=json.loads(r["meta_json"]),
        )

    def resolve_keys(self, keys: Iterable[str]) -> dict[str, int]:
        """Pool key -> slice row id; StoreError naming the first unknown key."""
        out: dict[str, int] = {}
        with self._lock:
            for key in keys:
                station, slice_id = split_key(key)
                row = self._conn.execute(
                    "SELECT id FROM slices WHERE station_id = ? AND slice_id = ?", (station, slice_id)
                ).fetchone()
                if row is None:
                    raise StoreError(f"{self.db_path}: no slice {key!r} in the pool")
                out[key] = int(row[0])
        return out

    # -- rounds and selections

    def record_round(
        self,
        picks: Sequence[Pick],
        *,
        budget: int,
        strategy: str,
        pool_size: int,
        params: dict[str, Any],
        bundle_id: str | None = None,
    ) -> int:
        """Write one selection round and its picks (with rationale) in one transaction; returns its id.

        Refused (StoreError, nothing written) if a pick is already waiting for labels in another open
        round: a slice is never in two open rounds, even when two trainer processes select at once.
        """
        pks = self.resolve_keys(p.key for p in picks)
        with self._write() as c:
            pending = _pending_elsewhere(c, [pks[p.key] for p in picks])
            if pending:
                raise StoreError(f"{self.db_path}: {len(pending)} pick(s) already wait for labels in an open "
                                 f"round (e.g. {pending[0]}); select again")
            round_id = c.execute(
                "INSERT INTO rounds (created_at, budget, strategy, bundle_id, pool_size, params_json) "
                "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (time.time(), budget, strategy, bundle_id, pool_size, canonical_json(params)),
            ).fetchone()[0]
            c.executemany(
                "INSERT INTO selections (round_id, slice_pk, rank, score, rationale_json) VALUES (?, ?, ?, ?, ?)",
                [(round_id, pks[p.key], p.rank, float(p.score), canonical_json(p.rationale)) for p in picks],
            )
        return int(round_id)

    def rounds(self) -> list[dict[str, Any]]:
        rows = self._q(
            "SELECT r.*, (SELECT count(*) FROM selections s WHERE s.round_id = r.id) AS n_picks, "
            "(SELECT count(*) FROM selections s JOIN labels l ON l.slice_pk = s.slice_pk "
            " WHERE s.round_id = r.id) AS n_labeled FROM rounds r ORDER BY r.id"
        )
        return [dict(r) | {"params": json.loads(r["params_json"])} for r in rows]

    def latest_round(self) -> int | None:
        rows = self._q("SELECT max(id) FROM rounds")
        return None if rows[0][0] is None else int(rows[0][0])

    def selection(self, round_id: int) -> list[Pick]:
        """The picks of one round, by rank."""
        if not self._q("SELECT 1 FROM rounds WHERE id = ?", (round_id,)):
            raise StoreError(f"{self.db_path}: no round {round_id}")
        rows = self._q(
            "SELECT s.station_id, s.slice_id, se.rank, se.score, se.rationale_json FROM selections se "
            "JOIN slices s ON s.id = se.slice_pk WHERE se.round_id = ? ORDER BY se.rank",
            (round_id,),
        )
        return [Pick(pool_key(r[0], r[1]), r[2], r[3], json.loads(r[4])) for r in rows]

    def set_round_audit_hash(self, round_id: int, audit_hash: str) -> None:
        with self._write() as c:
            c.execute("UPDATE rounds SET audit_hash = ? WHERE id = ?", (audit_hash, round_id))

    def unlogged_rounds(self) -> list[int]:
        """Open rounds recorded without their audit hash (a `select` killed between the two steps)."""
        return [int(r[0]) for r in self._q(
            "SELECT id FROM rounds WHERE audit_hash IS NULL AND status = 'selected' ORDER BY id")]

    def discard_round(self, round_id: int) -> None:
        """Delete a round that never reached the audit log, with its picks (its slices return to the pool).

        Refused (StoreError) for a round with an audit hash or with labels: those happened.
        """
        with self._write() as c:
            row = c.execute("SELECT audit_hash, status FROM rounds WHERE id = ?", (round_id,)).fetchone()
            if row is None:
                raise StoreError(f"{self.db_path}: no round {round_id}")
            if row[0] is not None or row[1] != "selected":
                raise StoreError(f"{self.db_path}: round {round_id} is audited or labeled; it is not discarded")
            c.execute("DELETE FROM selections WHERE round_id = ?", (round_id,))
            c.execute("DELETE FROM rounds WHERE id = ?", (round_id,))

    def set_round_status(self, round_id: int, status: str) -> None:
        with self._write() as c:
            if c.execute("UPDATE rounds SET status = ? WHERE id = ?", (status, round_id)).rowcount != 1:
                raise StoreError(f"{self.db_path}: no round {round_id}")

    # -- labels and coverage

    def write_labels(self, labels: Sequence[ImageLabels], *, source: str, round_id: int | None = None) -> int:
        """Store finished labels in one transaction (replacing earlier labels of the same image).

        A round whose every pick is now labeled is closed (status ``labeled``). Returns the box count.
        """
        pks = self.resolve_keys(lab.key for lab in labels)
        now = time.time()
        n_boxes = 0
        with self._write() as c:
            for lab in labels:
                pk = pks[lab.key]
                c.execute("DELETE FROM label_boxes WHERE slice_pk = ?", (pk,))
                c.execute(
                    "INSERT INTO labels (slice_pk, round_id, width, height, source, labeled_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (slice_pk) DO UPDATE SET round_id = excluded.round_id, "
                    "width = excluded.width, height = excluded.height, source = excluded.source, "
                    "labeled_at = excluded.labeled_at",
                    (pk, round_id, lab.width, lab.height, source, now),
                )
                c.executemany(
                    "INSERT INTO label_boxes (slice_pk, x1, y1, x2, y2, category, concept) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(pk, *b.box, b.category, b.concept if b.concept is not None else b.category)
                     for b in lab.boxes],
                )
                n_boxes += len(lab.boxes)
            c.execute(
                "UPDATE rounds SET status = 'labeled' WHERE status = 'selected' AND NOT EXISTS ("
                "SELECT 1 FROM selections se WHERE se.round_id = rounds.id AND NOT EXISTS "
                "(SELECT 1 FROM labels l WHERE l.slice_pk = se.slice_pk))"
            )
        return n_boxes

    def coverage_counts(self, mode: Literal["typed", "binary"] = "typed") -> dict[str, int]:
        """Fine-node coverage n(v) from the labeled boxes (spec section 3).

        ``typed``: count each box's annotated class. ``binary``: the annotation carries no class, so each
        box counts for the fine concept assigned to it at import (``LabelBox.concept``).
        """
        col = {"typed": "category", "binary": "concept"}.get(mode)
        if col is None:
            raise StoreError(f"coverage mode must be 'typed' or 'binary', got {mode!r}")
        rows = self._q(
            f"SELECT {col}, count(*) FROM label_boxes WHERE {col} IS NOT NULL GROUP BY {col} ORDER BY {col}"
        )
        return {r[0]: int(r[1]) for r in rows}

    def labeled_keys(self) -> list[str]:
        rows = self._q(
            "SELECT s.station_id, s.slice_id FROM labels l JOIN slices s ON s.id = l.slice_pk "
            "ORDER BY s.station_id, s.slice_id"
        )
        return [pool_key(r[0], r[1]) for r in rows]

    def labeled_dataset(self, classes: Sequence[str] | None = None) -> DetectionDataset:
        """The labeled set L as a DetectionDataset over the stored images (sorted by key).

        Images known only by reference use that reference as an absolute file name.
        ``classes`` fixes the class order; by default the sorted set of labeled categories.
        """
        rows = self._q(
            "SELECT s.id, s.station_id, s.slice_id, s.image_sha256, s.image_format, s.image_ref, "
            "l.width, l.height, l.round_id FROM labels l JOIN slices s ON s.id = l.slice_pk "
            "ORDER BY s.station_id, s.slice_id"
        )
        boxes: dict[int, list[Annotation]] = {}
        for b in self._q("SELECT slice_pk, x1, y1, x2, y2, category, concept FROM label_boxes ORDER BY id"):
            boxes.setdefault(b[0], []).append(
                Annotation((b[1], b[2], b[3], b[4]), b[5], {"concept": b[6]} if b[6] != b[5] else {})
            )
        images = []
        for r in rows:
            if r["image_sha256"]:
                file_name = self.images.relpath(r["image_sha256"], r["image_format"])
            elif r["image_ref"]:
                file_name = str(Path(r["image_ref"]).resolve())
            else:  # pragma: no cover - ingest refuses items without either
                raise StoreError(f"{self.db_path}: slice {r['station_id']}/{r['slice_id']} has no image")
            images.append(
                ImageEntry(
                    image_id=pool_key(r["station_id"], r["slice_id"]),
                    file_name=file_name,
                    width=int(r["width"]),
                    height=int(r["height"]),
                    annotations=boxes.get(r["id"], []),
                    meta={"round": r["round_id"]},
                )
            )
        if classes is None:
            classes = sorted({a.category for e in images for a in e.annotations})
        return DetectionDataset(root=self.images.root, classes=list(classes), images=images)

    # -- bundles (serving / previous, for deploy and rollback)

    def add_bundle(
        self, bundle_id: str, path: str | None, role: str, metrics: dict[str, Any] | None = None,
        note: str | None = None,
    ) -> None:
        with self._write() as c:
            c.execute(
                "INSERT INTO bundles (bundle_id, path, created_at, role, metrics_json, note) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (bundle_id) DO UPDATE SET role = excluded.role, "
                "path = coalesce(excluded.path, bundles.path), metrics_json = excluded.metrics_json, "
                "note = coalesce(excluded.note, bundles.note)",
                (bundle_id, path, time.time(), role, canonical_json(metrics or {}), note),
            )

    def promote_bundle(self, bundle_id: str) -> str | None:
        """Make ``bundle_id`` serving (and current); the old serving one becomes ``previous``.

        Returns the bundle id it replaced. Any older ``previous`` is retired (one rollback step kept).
        """
        with self._write() as c:
            if c.execute("SELECT 1 FROM bundles WHERE bundle_id = ?", (bundle_id,)).fetchone() is None:
                raise StoreError(f"{self.db_path}: unknown bundle {bundle_id!r}")
            old = c.execute("SELECT bundle_id FROM bundles WHERE role = 'serving'").fetchone()
            c.execute("UPDATE bundles SET role = 'retired' WHERE role = 'previous'")
            if old is not None and old[0] != bundle_id:
                c.execute("UPDATE bundles SET role = 'previous' WHERE bundle_id = ?", (old[0],))
            c.execute("UPDATE bundles SET role = 'serving' WHERE bundle_id = ?", (bundle_id,))
            _set_current(c, bundle_id)
        return None if old is None or old[0] == bundle_id else str(old[0])

    def rollback_bundle(self) -> tuple[str, str]:
        """``previous`` becomes serving (and current) again; the serving one is retired.

        Records scored earlier by the restored bundle become fresh again. Returns (retired, restored).
        """
        with self._write() as c:
            prev = c.execute("SELECT bundle_id FROM bundles WHERE role = 'previous'").fetchone()
            cur = c.execute("SELECT bundle_id FROM bundles WHERE role = 'serving'").fetchone()
            if prev is None or cur is None:
                raise StoreError(f"{self.db_path}: rollback needs a serving and a previous bundle")
            c.execute("UPDATE bundles SET role = 'retired', note = 'rolled back' WHERE bundle_id = ?", (cur[0],))
            c.execute("UPDATE bundles SET role = 'serving' WHERE bundle_id = ?", (prev[0],))
            _set_current(c, prev[0])
        return str(cur[0]), str(prev[0])

    def bundles(self) -> list[dict[str, Any]]:
        rows = self._q("SELECT * FROM bundles ORDER BY created_at, bundle_id")
        return [dict(r) | {"metrics": json.loads(r["metrics_json"])} for r in rows]

    def bundle_with_role(self, role: str) -> dict[str, Any] | None:
        rows = [b for b in self.bundles() if b["role"] == role]
        return rows[-1] if rows else None

    # -- status and backup

    def status(self) -> dict[str, Any]:
        """Counts for `trainer status`."""
        one = lambda sql: int(self._q(sql)[0][0])
        return {
            "store": str(self.root) if self.backend == "sqlite" else f"{self.db_path} (files {self.root})",
            "backend": self.backend,
            "schema_version": self.schema_version,
            "current_bundle": self.current_bundle,
            "stations": one("SELECT count(*) FROM stations"),
            "slices": one("SELECT count(*) FROM slices"),
            "records": one("SELECT count(*) FROM score_records"),
            "stale_records": one("SELECT count(*) FROM score_records WHERE stale = 1"),
            "labeled": one("SELECT count(*) FROM labels"),
            "label_boxes": one("SELECT count(*) FROM label_boxes"),
            "unlabeled_fresh": one(
                "SELECT count(*) FROM score_records r WHERE r.stale = 0 AND NOT EXISTS "
                "(SELECT 1 FROM labels l WHERE l.slice_pk = r.slice_pk)"
            ),
            "rounds": one("SELECT count(*) FROM rounds"),
            "open_rounds": one("SELECT count(*) FROM rounds WHERE status = 'selected'"),
            "rounds_without_audit": one("SELECT count(*) FROM rounds WHERE audit_hash IS NULL"),
        }

    def backup(self, out: str | Path, *, images_dir: str | Path | None = None) -> dict[str, Any]:
        """Online, consistent copy of the database (sqlite3 backup API) while the store stays in use.

        ``images_dir``: also copy image files missing there (content-addressed, so incremental).
        SQLite only: back a PostgreSQL store up with the server's own tools (pg_dump, pg_basebackup).
        """
        if self.backend != "sqlite":
            raise StoreError(f"{self.db_path}: `backup` copies pool.sqlite; back PostgreSQL up with pg_dump "
                             "or pg_basebackup (and the store directory's files with any file copy)")
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.unlink(missing_ok=True)
        dest = sqlite3.connect(tmp)
        try:
            with self._lock:
                self._conn.backup(dest)
            dest.execute("PRAGMA journal_mode=DELETE")
            ok = dest.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            dest.close()
        if ok != "ok":
            raise StoreError(f"{tmp}: backup failed its integrity check: {ok}")
        tmp.replace(out)
        copied = 0
        if images_dir is not None:
            import shutil

            dst_root = Path(images_dir)
            for src in self.images.root.rglob("*"):
                if src.is_file() and not src.name.startswith(".tmp-"):
                    dst = dst_root / src.relative_to(self.images.root)
                    if not dst.exists():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copy2(src, dst)
                        copied += 1
        return {"database": str(out), "bytes": out.stat().st_size, "images_copied": copied}

    # -- fleet (trainer/fleet.py, trainer/deploy.py): station health and probe slices ---------------------

    def record_station_health(
        self, station_id: str, health: str, detail: str | None, at: float, *, address: str | None = None,
        bundle_id: str | None = None,
    ) -> None:
        """Store one health check of a registered station (``bundle_id``: the bundle it reported serving)."""
        with self._write() as c:
            c.execute(
                "UPDATE stations SET health = ?, health_detail = ?, health_checked_at = ?, "
                "address = coalesce(?, address), bundle_id = coalesce(?, bundle_id) WHERE station_id = ?",
                (health, detail, at, address, bundle_id, station_id),
            )

    def recent_slice_keys(self, station_id: str, limit: int) -> list[str]:
        """Pool keys of the ``limit`` slices ``station_id`` sent last that have stored pixels (newest first)."""
        rows = self._q(
            "SELECT station_id, slice_id FROM slices WHERE station_id = ? AND image_sha256 IS NOT NULL "
            "ORDER BY ingested_at DESC, id DESC LIMIT ?",
            (station_id, int(limit)),
        )
        return [pool_key(r[0], r[1]) for r in rows]

    # -- backfill (trainer/backfill.py): resume ------------------------------------------------------

    def scored_slice_ids(self, station_id: str, bundle_id: str) -> set[str]:
        """Slice ids of ``station_id`` that already have a record from ``bundle_id`` (a backfill skips them)."""
        rows = self._q(
            "SELECT s.slice_id FROM slices s JOIN score_records r ON r.slice_pk = s.id "
            "WHERE s.station_id = ? AND r.bundle_id = ?",
            (station_id, bundle_id),
        )
        return {str(r[0]) for r in rows}

def _set_current(c: Connection, bundle_id: str) -> None:
    """Make ``bundle_id`` the current bundle and re-mark every record's staleness (inside a write)."""
    c.execute("INSERT INTO kv (key, value) VALUES ('current_bundle', ?) "
              "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (bundle_id,))
    c.execute("UPDATE score_records SET stale = CASE WHEN bundle_id = ? THEN 0 ELSE 1 END", (bundle_id,))


def _pending_elsewhere(c: Connection, slice_pks: Sequence[int], chunk: int = 500) -> list[str]:
    """Pool keys among ``slice_pks`` picked by a round still waiting for labels (inside a write)."""
    out: list[str] = []
    for k in range(0, len(slice_pks), chunk):
        part = list(slice_pks[k:k + chunk])
        rows = c.execute(
            "SELECT s.station_id, s.slice_id FROM selections se JOIN rounds ro ON ro.id = se.round_id "
            f"JOIN slices s ON s.id = se.slice_pk WHERE ro.status = 'selected' AND se.slice_pk IN "
            f"({', '.join('?' * len(part))}) ORDER BY s.station_id, s.slice_id",
            part,
        ).fetchall()
        out += [pool_key(r[0], r[1]) for r in rows]
    return out
