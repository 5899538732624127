"""Ingest: validate a batch of score records, store their images, insert their rows idempotently.

Idempotency. A slice is keyed by (station, slice id); a score record by (slice, bundle id).

* same key, same content (sha256 of the canonical record JSON): a duplicate, nothing written;
* same (station, slice), a different bundle: the new record is stored *alongside* the old one;
* same (station, slice, bundle), different content: a conflict; the first record is kept (the rationale
  of any round that used it stays reproducible), the newcomer is counted and logged, not stored.
  Scoring is seeded per image, so this only happens if a station changes its scoring config without
  changing its bundle.

Several bundles (mark-stale, not re-score). The store has one *current bundle* (the one deployed by the
trainer; until one is deployed, the bundle of the first record ever ingested). Records made by any other
bundle are marked ``stale`` and excluded from selection: raw E_rec/V_den and detector proposals of two
different models are not comparable inside one z-scored pool. A slice whose only records are stale
waits, unselectable, until a station re-scores it with the current bundle (``PoolStore.stale_slices()``
lists them with their stored image for that). Stale records are kept, never deleted: past rounds cite them.

Image files are written atomically and fsynced *before* the rows that name them commit, so a committed
row never points at a missing file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gsal_edge.jsonio import canonical_json
from trainer.images import ImageStore
from trainer.store.dialect import Connection
from trainer.store.types import IngestItem, IngestResult, StoreError, bundle_of, check_station, record_digest

#: one validated item: (item, where it is named in errors, content sha256, canonical record JSON)
Prepared = tuple[IngestItem, str, str, str]


def prepare_items(items: Sequence[IngestItem]) -> list[Prepared]:
    """Validate every item before anything is written; StoreError names the first invalid one."""
    prepared = []
    for i, it in enumerate(items):
        where = f"ingest item {i} (station={it.station!r}, image_id={it.record.image_id!r})"
        check_station(it.station, where)
        rec_station = it.record.model.get("station")
        if rec_station and rec_station != it.station:
            raise StoreError(f"{where}: record's model.station={rec_station!r} differs from the stream's")
        if it.image is None and it.image_ref is None:
            raise StoreError(f"{where}: neither image bytes nor an image reference")
        if it.width is not None and (it.width <= 0 or (it.height or 0) <= 0):
            raise StoreError(f"{where}: width/height must be positive, got {it.width}x{it.height}")
        prepared.append((it, where, record_digest(it.record), canonical_json(it.record.to_dict())))
    return prepared


def store_images(images: ImageStore, prepared: Sequence[Prepared]) -> list[tuple[str, str] | None]:
    """Write the items' pixels durably; (sha256, format) per item, None for an item sent by reference.

    Content-addressed, so safe outside the database lock and before the transaction that names them.
    """
    with_pixels = [(it.image, it.image_format, where) for it, where, _, _ in prepared if it.image is not None]
    stored = iter(images.put_many(with_pixels))
    return [next(stored) if it.image is not None else None for it, _, _, _ in prepared]


def insert_items(
    c: Connection, prepared: Sequence[Prepared], images: Sequence[tuple[str, str] | None], now: float
) -> IngestResult:
    """The rows of one batch, inside the caller's write transaction (see the module doc for the rules).

    The batch's stations, known slices and their records are read with a few set queries up front, so a
    new record costs two INSERTs and one batched INSERT of its proposals (round trips matter on a
    database server).
    """
    result = IngestResult()
    if not prepared:
        return result
    current = c.execute("SELECT value FROM kv WHERE key = 'current_bundle'").fetchone()
    current_bundle = current[0] if current else None
    if current_bundle is None:
        current_bundle = bundle_of(prepared[0][0].record)
        c.execute("INSERT INTO kv (key, value) VALUES ('current_bundle', ?)", (current_bundle,))
    # each station's row carries the bundle of its latest record in the batch
    latest = {it.station: bundle_of(it.record) for it, _, _, _ in prepared}
    for station, bundle in latest.items():
        c.execute(
            "INSERT INTO stations (station_id, bundle_id, first_seen, last_seen) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (station_id) DO UPDATE SET bundle_id = excluded.bundle_id, "
            "last_seen = excluded.last_seen",
            (station, bundle, now, now),
        )
    slices = _known_slices(c, {(it.station, it.record.image_id) for it, _, _, _ in prepared})
    records = _known_records(c, [v[0] for v in slices.values()])
    for (it, where, digest, rec_json), img in zip(prepared, images):
        rec = it.record
        bundle = bundle_of(rec)
        key = (it.station, rec.image_id)
        known = slices.get(key)
        if known is None:
            slice_pk = c.execute(
                "INSERT INTO slices (station_id, slice_id, image_sha256, image_format, image_ref, "
                "width, height, meta_json, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    it.station,
                    rec.image_id,
                    img[0] if img else None,
                    img[1] if img else None,
                    it.image_ref,
                    it.width,
                    it.height,
                    canonical_json(rec.meta),
                    now,
                ),
            ).fetchone()[0]
            slices[key] = [slice_pk, img[0] if img else None]
        else:
            slice_pk = known[0]
            if known[1] is None and img is not None:
                c.execute(
                    "UPDATE slices SET image_sha256 = ?, image_format = ?, "
                    "width = coalesce(width, ?), height = coalesce(height, ?) WHERE id = ?",
                    (img[0], img[1], it.width, it.height, slice_pk),
                )
                known[1] = img[0]
        old = records.get((slice_pk, bundle))
        if old is not None:
            result.outcomes.append("duplicate" if old == digest else "conflict")
            continue
        rec_pk = c.execute(
            "INSERT INTO score_records (slice_pk, bundle_id, content_sha256, e_rec, v_den, "
            "n_proposals, record_json, stale, ingested_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                slice_pk,
                bundle,
                digest,
                rec.e_rec,
                rec.v_den,
                len(rec.proposals),
                rec_json,
                int(bundle != current_bundle),
                now,
            ),
        ).fetchone()[0]
        records[(slice_pk, bundle)] = digest
        if rec.proposals:
            c.executemany(
                "INSERT INTO proposals (record_id, idx, x1, y1, x2, y2, score, e_rec, v_den, concept, "
                "label, similarity_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (rec_pk, j, *p.box, p.score, p.e_rec, p.v_den, p.concept, p.label,
                     canonical_json(p.similarity))
                    for j, p in enumerate(rec.proposals)
                ],
            )
        result.outcomes.append("inserted")
    return result


def _chunks(values: Sequence[Any], n: int = 500) -> list[Sequence[Any]]:
    return [values[k:k + n] for k in range(0, len(values), n)]


def _known_slices(c: Connection, keys: set[tuple[str, str]]) -> dict[tuple[str, str], list[Any]]:
    """(station, slice id) -> [row id, image sha256 or None] of the slices already stored."""
    by_station: dict[str, list[str]] = {}
    for station, slice_id in sorted(keys):
        by_station.setdefault(station, []).append(slice_id)
    out: dict[tuple[str, str], list[Any]] = {}
    for station, ids in by_station.items():
        for part in _chunks(ids):
            rows = c.execute(
                f"SELECT id, slice_id, image_sha256 FROM slices WHERE station_id = ? "
                f"AND slice_id IN ({', '.join('?' * len(part))})",
                (station, *part),
            ).fetchall()
            out.update({(station, r[1]): [r[0], r[2]] for r in rows})
    return out


def _known_records(c: Connection, slice_pks: Sequence[int]) -> dict[tuple[int, str], str]:
    """(slice row id, bundle id) -> content sha256 of the records already stored for those slices."""
    out: dict[tuple[int, str], str] = {}
    for part in _chunks(sorted(slice_pks)):
        rows = c.execute(
            f"SELECT slice_pk, bundle_id, content_sha256 FROM score_records "
            f"WHERE slice_pk IN ({', '.join('?' * len(part))})",
            tuple(part),
        ).fetchall()
        out.update({(r[0], r[1]): r[2] for r in rows})
    return out
