"""Offline scoring: a folder of slice files through a :class:`GSALScorer` in-process, no station.

The steps are the station's, with the same functions: a slice file is read as the ``score`` client
reads it (:func:`gsal_edge.data.slices.read_slice_file`), its id (the path relative to the folder) is
checked and its pixels decoded and validated under the station's :class:`SliceLimits`
(:func:`check_slice_id`, :func:`decode_slice`, what the station's servicer calls), the scorer scores
batches of slices, the station id is stamped on as the station does (:func:`stamp_station`), and the
record is validated as a client validates what comes off the wire (``ScoreRecord.from_dict``). So
``record.to_json()`` is byte for byte what ``gsal-edge score --server`` writes for the same slice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.data.slices import (
    DEFAULT_LIMITS,
    SLICE_SUFFIXES,
    SliceError,
    SliceFile,
    SliceLimits,
    check_slice_id,
    decode_slice,
    read_slice_file,
)
from gsal_edge.errors import GSALError

log = logging.getLogger(__name__)


class SlicesScorer(Protocol):
    """What offline scoring needs of a scorer (:class:`gsal_edge.scoring.scorer.GSALScorer` fits)."""

    def score(
        self, slices: list[np.ndarray], image_ids: list[str], metas: list[dict[str, str]] | None = None
    ) -> list[ScoreRecord]: ...

    def embed_regions(self, slices: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray]) -> list[np.ndarray]:
        ...


class OfflineScoringError(GSALError, RuntimeError):
    """The scorer failed on one slice (the message says why); the other slices are still scored."""


@dataclass(frozen=True)
class ItemResult:
    """One slice's outcome: a record, or the error that stopped it (``SliceError`` for bad input)."""

    slice_id: str
    record: ScoreRecord | None = None
    error: GSALError | None = None
    proposal_embeddings: np.ndarray | None = None  # [n_proposals, d] f_I rows, with ``with_embeddings``


def stamp_station(rec: ScoreRecord, station_id: str | None) -> ScoreRecord:
    """The record with ``model.station`` set to ``station_id`` (when given); a copy, ``rec`` is not changed.

    The station finalizes every record with this before it answers or forwards it.
    """
    if not station_id or rec.model.get("station") == station_id:
        return rec
    return replace(rec, model={**rec.model, "station": station_id})


def list_slice_files(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Slice files (``.png``, ``.tif``, ``.tiff``, ``.npy``) in ``folder``, sorted by path."""
    folder = Path(folder)
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES)


def decode_slice_file(slice_file: SliceFile, limits: SliceLimits = DEFAULT_LIMITS) -> np.ndarray:
    """A slice file's pixels, decoded and validated as a station validates a received slice; raises
    :class:`SliceError` naming the field."""
    f = slice_file
    return decode_slice(f.data, f.shape, f.dtype, f.encoding, limits)


def _score_batch(scorer: SlicesScorer, arrays: list[np.ndarray], ids: list[str],
                 metas: list[dict[str, str]]) -> list[ScoreRecord | OfflineScoringError]:
    """Score one batch; when it fails, score its slices one by one so the good ones still succeed."""
    try:
        return list(_checked(scorer.score(arrays, ids, metas), ids))
    except Exception as e:  # noqa: BLE001 - any scorer failure becomes a per-item error
        if len(ids) == 1:
            return [OfflineScoringError(f"scoring failed: {type(e).__name__}: {e}")]
        log.warning("batch of %d failed (%s); retrying slices one by one", len(ids), e)
    out: list[ScoreRecord | OfflineScoringError] = []
    for a, i, m in zip(arrays, ids, metas):
        out.extend(_score_batch(scorer, [a], [i], [m]))
    return out


def _checked(records: Sequence[ScoreRecord], ids: list[str]) -> Iterator[ScoreRecord]:
    if len(records) != len(ids):
        raise RuntimeError(f"scorer returned {len(records)} records for {len(ids)} slices")
    for rec, sid in zip(records, ids):
        if rec.image_id != sid:
            raise RuntimeError(f"scorer returned record {rec.image_id!r} for slice {sid!r}")
        yield rec


def score_files(
    scorer: SlicesScorer,
    files: Sequence[Path],
    root: str | Path,
    *,
    meta: dict[str, str] | None = None,
    batch_size: int = 8,
    station_id: str | None = None,
    limits: SliceLimits = DEFAULT_LIMITS,
    with_embeddings: bool = False,
    on_skip: Callable[[Path, Exception], None] | None = None,
) -> Iterator[ItemResult]:
    """Score slice files in order, ``batch_size`` at a time; yields one :class:`ItemResult` per readable file.

    Ids are the paths relative to ``root`` ('/'-separated). A file that cannot be read is skipped and
    reported to ``on_skip``, as the ``score`` client skips it; a bad id or bad pixels yield the
    :class:`SliceError`, as a station answers INVALID_ARGUMENT. ``with_embeddings`` also returns each
    proposal's CLIP region embedding: the record's own ``proposals[i].embedding`` when the bundle's spec
    attaches them (``ScorerSpec.proposal_embedding``, the default), else :meth:`GSALScorer.embed_regions`
    (the crops Eq. 3 assigned).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(root)
    meta = dict(meta or {})
    pending: list[tuple[str, np.ndarray]] = []

    def flush() -> Iterator[ItemResult]:
        ids, arrays = [sid for sid, _ in pending], [a for _, a in pending]
        pending.clear()
        outs = _score_batch(scorer, arrays, ids, [dict(meta) for _ in ids])
        embs: list[np.ndarray | None] = [None] * len(ids)
        if with_embeddings:  # records that carry them already (ScorerSpec.proposal_embedding): those values
            ok = [(k, o) for k, o in enumerate(outs) if isinstance(o, ScoreRecord)]
            for k, o in ok:
                if o.proposals and all(p.embedding is not None for p in o.proposals):
                    embs[k] = np.asarray([p.embedding for p in o.proposals], np.float64)
            ok = [(k, o) for k, o in ok if embs[k] is None]
            boxes = [np.asarray([p.box for p in o.proposals], np.float32).reshape(-1, 4) for _, o in ok]
            for (k, _), e in zip(ok, scorer.embed_regions([arrays[k] for k, _ in ok], boxes)):
                embs[k] = e
        for sid, out, emb in zip(ids, outs, embs):
            if isinstance(out, OfflineScoringError):
                yield ItemResult(sid, error=out)
            else:
                rec = ScoreRecord.from_dict(stamp_station(out, station_id).to_dict(), where=f"record {sid!r}")
                yield ItemResult(sid, record=rec, proposal_embeddings=emb)

    for p in files:
        sid = p.relative_to(root).as_posix()
        try:
            f = read_slice_file(str(p))
        except (GSALError, OSError, ValueError) as e:
            if on_skip is not None:
                on_skip(p, e)
            continue
        try:
            check_slice_id(sid, limits)
            arr = decode_slice_file(f, limits)
        except SliceError as e:
            yield from flush() if pending else ()
            yield ItemResult(sid, error=e)
            continue
        pending.append((sid, arr))
        if len(pending) >= batch_size:
            yield from flush()
    if pending:
        yield from flush()
