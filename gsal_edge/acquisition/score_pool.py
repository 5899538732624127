"""The columnar pool of spec §11 score records that fusion and selection run on.

`ScorePool` holds the records as numpy columns: image arrays [N] and flat proposal arrays [P] whose
``prop_image`` index is non-decreasing (each image's proposals are one contiguous run), so every step
of the fusion (``fusion``) is vectorized (np.bincount, np.maximum.reduceat): no Python loop over
images, which is what lets a 1,000,000-image pool fuse in well under a second. Built from records
(`ScorePool.from_records`), restricted to images (`subset`), to each image's top-M proposals
(`prefilter`), and grouped by a meta key (`groups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from gsal_edge.acquisition.normalization import group_codes
from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError

__all__ = ["FusionError", "ScorePool", "pool_from_records"]


class FusionError(GSALError, ValueError):
    """The pool cannot be fused as configured (unknown concept, missing meta key, bad arrays)."""


@dataclass
class ScorePool:
    """Columnar spec §11 records. Image arrays have length N, proposal arrays length P.

    ``prop_concept`` / ``prop_label`` index ``concepts`` / ``labels`` (-1 = no label);
    ``similarity`` is [P, len(concepts)] with NaN where a record gave no value; ``uncertainty``
    maps a key to an [N] array (NaN = missing); ``embeddings`` is [N, d] (NaN rows = missing);
    ``meta`` maps a key to an [N] array of strings ("" = missing).
    """

    image_ids: np.ndarray
    e_rec: np.ndarray
    v_den: np.ndarray
    prop_image: np.ndarray
    prop_box: np.ndarray
    prop_score: np.ndarray
    prop_e_rec: np.ndarray
    prop_v_den: np.ndarray
    prop_concept: np.ndarray
    concepts: tuple[str, ...]
    similarity: np.ndarray | None = None
    prop_label: np.ndarray | None = None
    labels: tuple[str, ...] = ()
    uncertainty: dict[str, np.ndarray] = field(default_factory=dict)
    embeddings: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)
    check_unique_ids: bool = True

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids)
        if self.image_ids.dtype.kind not in "UO":
            raise FusionError(f"image_ids must be strings, got dtype {self.image_ids.dtype}")
        if self.image_ids.dtype.kind == "O":
            self.image_ids = self.image_ids.astype(str)
        n = self.image_ids.shape[0]
        self.e_rec = _f64(self.e_rec, (n,), "e_rec")
        self.v_den = _f64(self.v_den, (n,), "v_den")
        self.prop_image = np.asarray(self.prop_image, dtype=np.int64)
        p = self.prop_image.shape[0]
        if p and (self.prop_image.min() < 0 or self.prop_image.max() >= n):
            raise FusionError(f"prop_image must index the {n} images")
        if p > 1 and np.any(np.diff(self.prop_image) < 0):
            raise FusionError("prop_image must be non-decreasing (proposals grouped by image, in image order)")
        self.prop_box = _f64(self.prop_box, (p, 4), "prop_box")
        self.prop_score = _f64(self.prop_score, (p,), "prop_score")
        self.prop_e_rec = _f64(self.prop_e_rec, (p,), "prop_e_rec")
        self.prop_v_den = _f64(self.prop_v_den, (p,), "prop_v_den")
        self.concepts = tuple(self.concepts)
        self.prop_concept = np.asarray(self.prop_concept, dtype=np.int64)
        if self.prop_concept.shape != (p,):
            raise FusionError(f"prop_concept must have shape ({p},), got {self.prop_concept.shape}")
        if p and (self.prop_concept.min() < 0 or self.prop_concept.max() >= len(self.concepts)):
            raise FusionError("prop_concept must index `concepts`")
        if self.similarity is not None:
            self.similarity = np.asarray(self.similarity, dtype=np.float64)
            if self.similarity.shape != (p, len(self.concepts)):
                raise FusionError(f"similarity must be [{p}, {len(self.concepts)}], got {self.similarity.shape}")
        if self.prop_label is not None:
            self.prop_label = np.asarray(self.prop_label, dtype=np.int64)
            if self.prop_label.shape != (p,):
                raise FusionError(f"prop_label must have shape ({p},)")
        self.labels = tuple(self.labels)
        self.uncertainty = {k: _f64(v, (n,), f"uncertainty[{k!r}]", allow_nan=True)
                            for k, v in self.uncertainty.items()}
        if self.embeddings is not None:
            self.embeddings = np.asarray(self.embeddings, dtype=np.float64)
            if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
                raise FusionError(f"embeddings must be [{n}, d], got {self.embeddings.shape}")
        for k, v in self.meta.items():
            if np.asarray(v).shape != (n,):
                raise FusionError(f"meta[{k!r}] must have shape ({n},)")
        if self.check_unique_ids and n > 1:
            srt = np.sort(self.image_ids)
            dup = np.flatnonzero(srt[1:] == srt[:-1])
            if dup.size:
                raise FusionError(f"duplicate image_id {str(srt[dup[0]])!r} in the pool")
        self.n_props = np.bincount(self.prop_image, minlength=n).astype(np.int64)
        self.starts = np.concatenate(([0], np.cumsum(self.n_props)))

    @property
    def n_images(self) -> int:
        return int(self.image_ids.shape[0])

    @property
    def n_proposals(self) -> int:
        return int(self.prop_image.shape[0])

    def __len__(self) -> int:
        return self.n_images

    @classmethod
    def from_records(cls, records: Iterable[ScoreRecord]) -> ScorePool:
        """Columnar pool from score records (one pass). Duplicate image ids raise `FusionError`."""
        images: list[tuple[Any, ...]] = []
        props: list[tuple[Any, ...]] = []
        for i, r in enumerate(records):
            images.append((r.image_id, r.e_rec, r.v_den, r.uncertainty, r.embedding, r.meta))
            props += [(i, pr.box, pr.score, pr.e_rec, pr.v_den, pr.concept, pr.label, pr.similarity)
                      for pr in r.proposals]
        ids, e_rec, v_den, unc, embs, metas = _columns(images, 6)
        p_img, boxes, p_score, p_e, p_v, p_con, p_lab, sims = _columns(props, 8)
        n, p = len(ids), len(p_img)
        # proposals of one scorer share one key order, so the similarity dicts fall into a few key layouts:
        # fill the matrix one layout at a time instead of element by element
        layouts: dict[tuple[str, ...], list[int]] = {}
        for row, s in enumerate(sims):
            if s:
                layouts.setdefault(tuple(s), []).append(row)
        vocab = sorted(set(p_con).union(*layouts))
        vidx = {c: j for j, c in enumerate(vocab)}
        similarity = None
        if layouts:
            similarity = np.full((p, len(vocab)), np.nan)
            for keys, rows in layouts.items():
                vals = np.fromiter(chain.from_iterable(sims[r].values() for r in rows), dtype=np.float64,
                                   count=len(rows) * len(keys)).reshape(len(rows), len(keys))
                similarity[np.ix_(rows, [vidx[k] for k in keys])] = vals
        labels = sorted({lb for lb in p_lab if lb is not None})
        lidx = {c: j for j, c in enumerate(labels)}
        prop_label = np.array([lidx[lb] if lb is not None else -1 for lb in p_lab], dtype=np.int64) if labels else None
        ukeys = sorted(set().union(*[u.keys() for u in unc])) if unc else []
        uncertainty = {k: np.array([u.get(k, np.nan) for u in unc], dtype=np.float64) for k in ukeys}
        embeddings = None
        if any(e is not None for e in embs):
            dims = {len(e) for e in embs if e is not None}
            if len(dims) != 1:
                raise FusionError(f"embeddings have different lengths {sorted(dims)}")
            d = dims.pop()
            embeddings = np.full((n, d), np.nan)
            for i, e in enumerate(embs):
                if e is not None:
                    embeddings[i] = e
        mkeys = sorted(set().union(*[m.keys() for m in metas])) if metas else []
        meta = {k: np.array([m.get(k, "") for m in metas], dtype=object) for k in mkeys}
        if len(set(ids)) != n:
            seen: set[str] = set()
            dup = next(x for x in ids if x in seen or seen.add(x))  # type: ignore[func-returns-value]
            raise FusionError(f"duplicate image_id {dup!r} in the pool")
        return cls(
            image_ids=np.array(ids, dtype=str) if n else np.zeros(0, dtype="<U1"),
            e_rec=np.array(e_rec, dtype=np.float64),
            v_den=np.array(v_den, dtype=np.float64),
            prop_image=np.array(p_img, dtype=np.int64),
            prop_box=np.array(boxes, dtype=np.float64).reshape(p, 4),
            prop_score=np.array(p_score, dtype=np.float64),
            prop_e_rec=np.array(p_e, dtype=np.float64),
            prop_v_den=np.array(p_v, dtype=np.float64),
            prop_concept=np.array([vidx[c] for c in p_con], dtype=np.int64),
            concepts=tuple(vocab),
            similarity=similarity,
            prop_label=prop_label,
            labels=tuple(labels),
            uncertainty=uncertainty,
            embeddings=embeddings,
            meta=meta,
            check_unique_ids=False,
        )

    def subset(self, keep: np.ndarray) -> ScorePool:
        """The pool restricted to images ``keep`` (bool mask [N] or indices), order preserved."""
        mask = np.zeros(self.n_images, dtype=bool)
        mask[np.asarray(keep)] = True
        new_index = np.cumsum(mask) - 1
        pmask = mask[self.prop_image]
        return ScorePool(
            image_ids=self.image_ids[mask],
            e_rec=self.e_rec[mask],
            v_den=self.v_den[mask],
            prop_image=new_index[self.prop_image[pmask]],
            prop_box=self.prop_box[pmask],
            prop_score=self.prop_score[pmask],
            prop_e_rec=self.prop_e_rec[pmask],
            prop_v_den=self.prop_v_den[pmask],
            prop_concept=self.prop_concept[pmask],
            concepts=self.concepts,
            similarity=None if self.similarity is None else self.similarity[pmask],
            prop_label=None if self.prop_label is None else self.prop_label[pmask],
            labels=self.labels,
            uncertainty={k: v[mask] for k, v in self.uncertainty.items()},
            embeddings=None if self.embeddings is None else self.embeddings[mask],
            meta={k: np.asarray(v)[mask] for k, v in self.meta.items()},
            check_unique_ids=False,
        )

    def prefilter(self, M: int) -> ScorePool:
        """Proposal prefilter (spec §4): keep each image's top-M proposals by detector score
        (ties: record order). Returns ``self`` when no image has more than M."""
        if self.n_proposals == 0 or int(self.n_props.max()) <= M:
            return self
        order = np.lexsort((-self.prop_score, self.prop_image))  # stable: ties keep record order
        rank = np.arange(self.n_proposals) - self.starts[self.prop_image[order]]
        keep = np.sort(order[rank < M])
        return ScorePool(
            image_ids=self.image_ids, e_rec=self.e_rec, v_den=self.v_den,
            prop_image=self.prop_image[keep], prop_box=self.prop_box[keep], prop_score=self.prop_score[keep],
            prop_e_rec=self.prop_e_rec[keep], prop_v_den=self.prop_v_den[keep],
            prop_concept=self.prop_concept[keep], concepts=self.concepts,
            similarity=None if self.similarity is None else self.similarity[keep],
            prop_label=None if self.prop_label is None else self.prop_label[keep], labels=self.labels,
            uncertainty=self.uncertainty, embeddings=self.embeddings, meta=self.meta, check_unique_ids=False,
        )

    def groups(self, group_by: str | None) -> tuple[np.ndarray | None, list[str]]:
        """Image group codes for ``group_by`` (spec §6 [ours]); (None, []) when off."""
        if group_by is None:
            return None, []
        if group_by not in self.meta:
            raise FusionError(f"group_by={group_by!r}: no record has meta key {group_by!r} "
                              f"(meta keys: {', '.join(sorted(self.meta)) or 'none'})")
        return group_codes(self.meta[group_by])

    def first_image_with_concept(self, concept: str) -> str:
        """An image id whose proposals carry ``concept`` (for error messages)."""
        if concept in self.concepts:
            j = self.concepts.index(concept)
            hit = np.flatnonzero(self.prop_concept == j)
            if hit.size:
                return str(self.image_ids[self.prop_image[hit[0]]])
            if self.similarity is not None:
                hit = np.flatnonzero(~np.isnan(self.similarity[:, j]))
                if hit.size:
                    return str(self.image_ids[self.prop_image[hit[0]]])
        return "?"


def _f64(x: object, shape: tuple[int, ...], name: str, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.shape != shape:
        raise FusionError(f"{name} must have shape {shape}, got {a.shape}")
    bad = np.isinf(a) if allow_nan else ~np.isfinite(a)
    if a.size and bad.any():
        raise FusionError(f"{name} holds NaN/Inf at position {int(np.flatnonzero(bad.ravel())[0])}")
    return a


def _columns(rows: list[tuple[Any, ...]], k: int) -> list[tuple[Any, ...]]:
    """The k columns of a list of k-tuples (k empty columns for no rows)."""
    return list(zip(*rows)) if rows else [()] * k


def pool_from_records(records: Sequence[ScoreRecord]) -> ScorePool:
    """Alias of `ScorePool.from_records`."""
    return ScorePool.from_records(records)
