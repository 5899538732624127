"""A round as a FiftyOne dataset folder: the pool, its picks, ground truth, proposals with concept and D(p).

Written without importing fiftyone, in FiftyOne's own dataset layout (``fo.types.FiftyOneDataset``, the
version-less layout its importer reads: ``metadata.json`` + ``samples.json`` with ``_cls``-tagged labels;
image paths relative to the folder)::

    <out>/data/<name>.png      8-bit PNG renditions of the slices (as `trainer export-tasks` writes them)
    <out>/metadata.json        name, media type, info (round, graph, config, coverage counts)
    <out>/samples.json         one sample per pool slice

Load it with ``fo.Dataset.from_dir(out, dataset_type=fo.types.FiftyOneDataset)``. Each sample has:

``acquisition`` A(x) over the round's pool (recomputed with the round's stored config and counts; None for
slices labeled before the round), ``picked``, ``rank``, ``round_acquisition`` (A(x) as stored with the pick),
``rationale`` (the pick's sentence), ``driver``, ``labeled``, ``label_round``, ``e_rec``, ``v_den``, ``D_img``,
``S_x``, tags ``pick`` / ``labeled`` / ``pool``; ``proposals`` (Detections: label = assigned concept,
confidence = detector score, attributes ``D`` = D(p), ``z_D``, ``S`` = S(p), ``u``, ``e_rec``, ``v_den``,
``similarity``, ``detector_label``) and ``ground_truth`` (Detections of the stored labels, with ``concept``).

Why this layout rather than COCO: FiftyOne's COCO importer carries detection attributes but no sample
fields, so A(x) and the rationale would need a second file and a loader script; the native layout loads
every field with one call.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import to_jsonable, write_text_atomic
from trainer.annotation import display_png, image_name
from trainer.images import atomic_write
from trainer.ref_policy import RefFetcher
from trainer.store.pool_store import PoolStore
from trainer.store.types import StoreError

log = logging.getLogger(__name__)


class FiftyOneExportError(GSALError, ValueError):
    """The round cannot be exported (no such round, graph mismatch); nothing was written."""


@dataclass
class _Fused:
    """A(x) per pool key and (D, z_D, S, u) per (key, record proposal index) for the round's pool."""

    A: dict[str, float]
    image_terms: dict[str, dict[str, float]]
    proposal_terms: dict[tuple[str, int], dict[str, float]]


def _label_rounds(store: PoolStore) -> dict[str, int | None]:
    """Pool key -> the round whose labels it got (None: seed labels, imported outside a round)."""
    return {e.image_id: e.meta.get("round") for e in store.labeled_dataset().images}


def _all_keys(store: PoolStore) -> list[str]:
    """Every slice of the store: labeled, unlabeled with a fresh record, or unlabeled waiting for re-scoring."""
    keys = set(store.labeled_keys()) | {r.image_id for r in store.unlabeled_records(exclude_pending=False)}
    return sorted(keys | {i.key for i in store.stale_slices()})


def _kept_indices(rec: ScoreRecord, kept_boxes: np.ndarray, kept_scores: np.ndarray) -> list[int]:
    """Which of the record's proposals survived the prefilter (it keeps record order): a two-pointer match."""
    out, k = [], 0
    for j, p in enumerate(rec.proposals):
        if k < len(kept_scores) and p.score == kept_scores[k] and np.array_equal(np.asarray(p.box), kept_boxes[k]):
            out.append(j)
            k += 1
    return out


def fuse_round_pool(records: list[ScoreRecord], graph: ConceptGraph, config: GSALConfig,
                    counts: dict[str, float]) -> _Fused:
    """Eqs. 7-11 and A(x) over ``records`` (the round's pool) exactly as selection fuses it (prefilter, fuse)."""
    from gsal_edge.acquisition.fusion import fuse
    from gsal_edge.acquisition.score_pool import ScorePool

    if not records:
        return _Fused({}, {}, {})
    pool = ScorePool.from_records(records).prefilter(config.M)
    res = fuse(pool, graph, counts, config)
    by_id = {r.image_id: r for r in records}
    A, img_terms, prop_terms = {}, {}, {}
    for i, key in enumerate(pool.image_ids.tolist()):
        A[key] = float(res.A[i])
        img_terms[key] = {"D_img": float(res.D_img[i]), "S_x": float(res.S_x[i])}
        lo, hi = int(pool.starts[i]), int(pool.starts[i + 1])
        for row, j in zip(range(lo, hi), _kept_indices(by_id[key], pool.prop_box[lo:hi], pool.prop_score[lo:hi])):
            prop_terms[(key, j)] = {"D": float(res.D_p[row]), "z_D": float(res.zD_p[row]),
                                    "S": float(res.S_p[row]), "u": float(res.u[row])}
    return _Fused(A, img_terms, prop_terms)


def _rel_box(box: tuple[float, float, float, float] | list[float], w: int, h: int) -> list[float]:
    """[x1, y1, x2, y2] pixels -> FiftyOne's relative [x, y, width, height], clipped to the image."""
    x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x2, y2 = min(float(w), float(box[2])), min(float(h), float(box[3]))
    return [x1 / w, y1 / h, max(0.0, x2 - x1) / w, max(0.0, y2 - y1) / h]


def _detections(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"_cls": "Detections", "detections": [{"_cls": "Detection", **d} for d in items]}


def export_fiftyone(
    store: PoolStore,
    graph: ConceptGraph,
    out_dir: str | Path,
    *,
    round_id: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write round ``round_id`` (default: the latest) of ``store`` as a FiftyOne dataset folder; returns counts.

    ``progress(n)`` is called once per written sample. Slices without a local image are left out (counted).
    """
    rid = round_id if round_id is not None else store.latest_round()
    if rid is None:
        raise FiftyOneExportError(f"{store.db_path}: no selection round yet; run `trainer select` first")
    rounds = {r["id"]: r for r in store.rounds()}
    if rid not in rounds:
        raise FiftyOneExportError(f"{store.db_path}: no round {rid} (rounds: {sorted(rounds)})")
    params = rounds[rid]["params"]
    if params.get("graph") and params["graph"] != graph.name:
        raise FiftyOneExportError(f"round {rid} was selected with graph {params['graph']!r}, not {graph.name!r}; "
                                  "pass the round's graph with --graph")
    config = GSALConfig.from_dict(params.get("config") or {}, where=f"round {rid} config")
    counts = {str(k): float(v) for k, v in (params.get("counts") or {}).items()}
    picks = {p.key: p for p in store.selection(rid)}
    label_round = _label_rounds(store)
    keys = _all_keys(store)
    records = {k: r for k in keys if (r := store.record(k, fresh_only=False)) is not None}
    # the round's pool: slices with a record, not labeled before the round (seed labels come first) and not
    # picked by an earlier round (labeled since, or still waiting for labels then)
    earlier = {p.key for r in rounds if r < rid for p in store.selection(r)}
    in_pool = [k for k in records if k not in earlier
               and (k not in label_round or (label_round[k] is not None and label_round[k] >= rid))]
    fused = fuse_round_pool([records[k] for k in in_pool], graph, config, counts)
    gt = {e.image_id: e for e in store.labeled_dataset().images}

    out = Path(out_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    samples, skipped = [], []
    fetcher = RefFetcher.for_store(store)
    for key in keys:
        info = store.slice_info(key)
        name = image_name(key)
        try:
            png, w, h = display_png(info, fetcher)
            atomic_write(out / "data" / name, png)
        except StoreError as e:
            log.warning("%s: left out (%s)", key, e)
            skipped.append(key)
            continue
        samples.append(_sample(key, name, w, h, info.station, records.get(key), picks.get(key), fused,
                               gt.get(key), label_round, key in fused.A))
        if progress is not None:
            progress(1)
    metadata = {
        "name": f"gsal-round-{rid}",
        "media_type": "image",
        "info": to_jsonable({"round": rid, "graph": graph.name, "strategy": rounds[rid]["strategy"],
                             "budget": rounds[rid]["budget"], "pool_size": rounds[rid]["pool_size"],
                             "bundle": rounds[rid]["bundle_id"], "counts": counts, "config": config.to_dict(),
                             "store": str(store.db_path)}),
    }
    write_text_atomic(out / "metadata.json", json.dumps(metadata, indent=1))
    write_text_atomic(out / "samples.json", json.dumps({"samples": to_jsonable(samples)}))
    return {"round": rid, "samples": len(samples), "picks": sum(s["picked"] for s in samples),
            "pool": sum(s["acquisition"] is not None for s in samples), "labeled": sum(s["labeled"] for s in samples),
            "skipped": skipped, "out": str(out)}


def _sample(key: str, name: str, w: int, h: int, station: str, rec: ScoreRecord | None, pick: Any, fused: _Fused,
            gt: Any, label_round: dict[str, int | None], pooled: bool) -> dict[str, Any]:
    """One sample dict of samples.json."""
    props = []
    for j, p in enumerate(rec.proposals if rec is not None else []):
        terms = fused.proposal_terms.get((key, j), {})
        props.append({"label": p.concept, "bounding_box": _rel_box(p.box, w, h), "confidence": p.score,
                      "D": terms.get("D"), "z_D": terms.get("z_D"), "S": terms.get("S"), "u": terms.get("u"),
                      "e_rec": p.e_rec, "v_den": p.v_den, "similarity": p.similarity.get(p.concept),
                      "detector_label": p.label, "index": j})
    boxes = []
    for a in (gt.annotations if gt is not None else []):
        boxes.append({"label": a.category, "bounding_box": _rel_box(a.box, w, h),
                      "concept": a.attributes.get("concept", a.category)})
    labeled = gt is not None
    tags = [t for t, on in (("pick", pick is not None), ("labeled", labeled), ("pool", pooled)) if on]
    rationale = pick.rationale if pick is not None else {}
    return {
        "filepath": f"data/{name}",
        "tags": tags,
        "metadata": {"_cls": "ImageMetadata", "width": w, "height": h, "num_channels": 1},
        "gsal_key": key,
        "station": station,
        "acquisition": fused.A.get(key),
        "picked": pick is not None,
        "rank": pick.rank if pick is not None else None,
        "round_acquisition": pick.score if pick is not None else None,
        "rationale": rationale.get("sentence"),
        "driver": rationale.get("driver"),
        "labeled": labeled,
        "label_round": label_round.get(key) if labeled else None,
        "e_rec": rec.e_rec if rec is not None else None,
        "v_den": rec.v_den if rec is not None else None,
        "D_img": fused.image_terms.get(key, {}).get("D_img"),
        "S_x": fused.image_terms.get(key, {}).get("S_x"),
        "proposals": _detections(props),
        "ground_truth": _detections(boxes) if labeled else None,
    }
