"""Selection rounds over the stored pool, with every decision written to the hash-chained audit log.

``select_round``: the current unlabeled pool (fresh records only, see ``trainer.store.ingest``) is fused with
the concept graph and the current coverage counts n(v) (spec sections 3-7) by the library
(``ScorePool.from_records`` + a ``gsal_edge.acquisition.strategies`` strategy); the picks and their rationale go to
the ``selections`` table and, in the same step, to ``audit.jsonl`` (the entry's hash is kept on the
round, so the database and the log can be checked against each other).

``export_tasks`` / ``import_labels`` / ``simulate_labels`` wrap :mod:`trainer.annotation` and log each
import (file sha256, per-class counts, coverage after it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import to_jsonable
from trainer import annotation
from trainer.audit_log import AuditLog, verify
from trainer.quarantine import usable_records
from trainer.round_assigner import RoundAssignerError, apply_round_assigner
from trainer.store.pool_store import PoolStore
from trainer.store.types import Pick, StoreError

log = logging.getLogger(__name__)


class RoundError(GSALError, ValueError):
    """A round cannot run (empty pool, unknown concept in the labels, ...); the message says why."""


def audit_log(store: PoolStore) -> AuditLog:
    return AuditLog(store.audit_path)


def fine_counts(store: PoolStore, graph: ConceptGraph, label_mode: str) -> dict[str, float]:
    """Coverage counts n(v) of every defect fine node from the stored labels (spec section 3)."""
    raw = store.coverage_counts("binary" if label_mode == "binary" else "typed")
    counts = {f: 0.0 for f in graph.defects}
    for name, n in raw.items():
        if name in (BACKGROUND, UNKNOWN):
            continue
        if name not in counts:
            raise RoundError(
                f"{store.db_path}: labeled concept {name!r} is not a fine node of graph {graph.name!r} "
                f"(fine nodes: {', '.join(graph.defects)}); label_mode={label_mode}"
            )
        counts[name] += float(n)
    return counts


@dataclass
class RoundResult:
    round_id: int
    picks: list[dict[str, Any]]  # rank, image_id, acquisition, sentence
    pool_size: int
    counts: dict[str, float]
    audit_hash: str
    info: dict[str, Any]


def select_round(
    store: PoolStore,
    graph: ConceptGraph,
    config: GSALConfig,
    budget: int,
    *,
    strategy: str = "gsal",
) -> RoundResult:
    """Fuse the pool with graph + coverage, pick ``budget`` images, write selections and the audit entry.

    Holds the store's round lock throughout, so concurrent rounds (two trainer processes) never pick the
    same slice: the second one sees the first one's picks as pending and picks from the rest.
    """
    if budget <= 0:
        raise RoundError(f"--budget must be > 0, got {budget}")
    # one round at a time per store, across processes: the pool read here must still be the pool when the
    # picks are recorded, or two trainers would pick the same slices (see PoolStore.round_lock)
    with store.round_lock():
        complete_interrupted_rounds(store)
        return _select_locked(store, graph, config, budget, strategy)


def complete_interrupted_rounds(store: PoolStore) -> dict[str, list[int]]:
    """Finish what a killed `select` left (call under the round lock): a round is recorded, then its audit
    entry appended, then its hash stored. A round without a hash whose entry is in the log gets the hash;
    one whose entry never reached the log is discarded, so its slices return to the pool and selecting
    again picks what the killed run would have. Returns ``{"completed": [...], "discarded": [...]}``."""
    from trainer.audit_log import entries_with_hash

    done: dict[str, list[int]] = {"completed": [], "discarded": []}
    pending = store.unlogged_rounds()
    if not pending:
        return done
    logged = {h.entry["data"].get("round"): h.hash for h in entries_with_hash(store.audit_path, "selection")
              if isinstance(h.entry.get("data"), dict)}  # a torn last line is no entry
    for rid in pending:
        if rid in logged:
            store.set_round_audit_hash(rid, logged[rid])
            done["completed"].append(rid)
        else:
            store.discard_round(rid)
            done["discarded"].append(rid)
    log.warning("interrupted selection rounds: completed %s from the audit log, discarded %s (never logged)",
                done["completed"], done["discarded"])
    return done


def _select_locked(
    store: PoolStore, graph: ConceptGraph, config: GSALConfig, budget: int, strategy: str
) -> RoundResult:
    from gsal_edge.acquisition.score_pool import ScorePool
    from gsal_edge.acquisition.strategies import get_strategy

    # records that do not fit this graph are skipped and counted, never abort the round (issue 18)
    records, skipped = usable_records(store.unlabeled_records(), graph, config.missing_concept)
    if skipped.count:
        log.warning("round: skipped %d record(s) that do not fit graph %s, e.g. %s", skipped.count, graph.name,
                    skipped.to_dict()["examples"][:3])
    if not records:
        raise RoundError(
            f"{store.db_path}: the unlabeled pool is empty (current bundle {store.current_bundle}; "
            f"{len(store.stale_slices())} slice(s) wait for re-scoring; {skipped.count} skipped as not fitting "
            f"graph {graph.name!r})"
        )
    counts = fine_counts(store, graph, config.label_mode)
    # [ours] assigner/calibration beyond text: re-assign the pool with the round's refreshed assigner
    try:
        records, config, assigner = apply_round_assigner(store, graph, config, records)
    except RoundAssignerError as e:
        raise RoundError(str(e)) from None
    pool = ScorePool.from_records(records)
    strat = get_strategy(strategy)
    sel = strat.select(pool, counts, graph, config, budget, np.random.default_rng(config.seed))
    picks = [
        Pick(p.image_id, p.rank, float(p.acquisition),
             dict(p.rationale) | {"sentence": p.sentence} | _assigner_note(p.rationale, assigner))
        for p in sel.picks
    ]
    info = to_jsonable(sel.info) | {"skipped_records": skipped.to_dict()}
    if assigner is not None:
        info["assigner"] = to_jsonable(assigner)
    params = {"config": config.to_dict(), "counts": counts, "graph": graph.name, "info": info}
    round_id = store.record_round(
        picks, budget=budget, strategy=sel.strategy, pool_size=len(records), params=params,
        bundle_id=store.current_bundle,
    )
    entry = {
        "round": round_id,
        "strategy": sel.strategy,
        "budget": budget,
        "pool_size": len(records),
        "bundle": store.current_bundle,
        "graph": graph.name,
        "label_mode": config.label_mode,
        "counts": counts,
        "config": config.to_dict(),
        "skipped_records": skipped.to_dict(),
        "assigner": info.get("assigner"),
        "picks": [
            {"rank": p.rank, "image_id": p.key, "acquisition": p.score, "sentence": p.rationale["sentence"],
             "rationale": p.rationale}
            for p in picks
        ],
    }
    h = audit_log(store).append("selection", to_jsonable(entry))
    store.set_round_audit_hash(round_id, h)
    log.info("round %d: %d picks from a pool of %d (%s)", round_id, len(picks), len(records), sel.strategy)
    return RoundResult(
        round_id,
        [{"rank": p.rank, "image_id": p.key, "acquisition": p.score, "sentence": p.rationale["sentence"]}
         for p in picks],
        len(records), counts, h, info,
    )


def _assigner_note(rationale: dict[str, Any], assigner: dict[str, Any] | None) -> dict[str, Any]:
    """A pick's rationale addition under a round assigner: where its driving concept's Eq. 3 row came from
    (prototype of labeled crops, or text) and the fitted temperature."""
    if assigner is None:
        return {}
    concept = (rationale.get("proposal") or {}).get("concept")
    return {"assigner": {"kind": assigner.get("kind"), "source": assigner.get("sources", {}).get(concept),
                         "temperature": assigner.get("temperature")}}


def export_tasks(
    store: PoolStore, graph: ConceptGraph, out_dir: str | Path, *, round_id: int | None = None,
    label_mode: str = "typed", binary_class: str = "defect", image_url_prefix: str | None = None,
) -> dict[str, Any]:
    """Export a round (default: the latest) for annotation: COCO + Label Studio tasks + images."""
    rid = round_id if round_id is not None else store.latest_round()
    if rid is None:
        raise RoundError(f"{store.db_path}: no selection round yet; run `trainer select` first")
    kw: dict[str, Any] = {}
    if image_url_prefix is not None:
        kw["image_url_prefix"] = image_url_prefix
    info = annotation.export_round(store, rid, out_dir, graph, mode=label_mode,  # type: ignore[arg-type]
                                   binary_class=binary_class, **kw)
    audit_log(store).append("export", {"round": rid, "out": str(out_dir), "images": info["images"],
                                       "predictions": info["predictions"]})
    return info


def concept_assigner(store: PoolStore, how: str = "auto") -> tuple[annotation.ConceptAssigner, str]:
    """The binary-mode concept assigner and its name for the log.

    ``clip``: Eq. 3 on each labeled box crop with the serving bundle's CLIP (spec section 3);
    ``proposals``: the concept of the best-overlapping stored proposal; ``auto``: clip when a serving
    bundle is registered, else proposals.
    """
    serving = store.bundle_with_role("serving")
    if how == "auto":
        how = "clip" if serving and serving.get("path") else "proposals"
    if how == "proposals":
        return annotation.proposal_concepts, "proposals"
    if how == "clip":
        if not serving or not serving.get("path"):
            raise RoundError(f"{store.db_path}: --concepts clip needs a serving bundle (trainer deploy)")
        return annotation.bundle_clip_assigner(serving["path"]), f"clip:{serving['bundle_id']}"
    raise RoundError(f"--concepts must be auto, clip or proposals, got {how!r}")


def import_labels(
    store: PoolStore, graph: ConceptGraph, path: str | Path, *, round_id: int | None = None,
    fmt: str | None = None, label_mode: str = "typed", binary_class: str = "defect",
    simulate: bool = False, allow_unselected: bool = False, concepts: str = "auto",
) -> annotation.ImportReport:
    """Import finished labels (or, with ``simulate``, reveal ground truth) and log it; all or nothing.

    In binary label mode each box's fine concept comes from :func:`concept_assigner` (``concepts``).
    """
    assigner, assigner_name = annotation.proposal_concepts, "n/a (typed)"
    if label_mode == "binary":
        assigner, assigner_name = concept_assigner(store, concepts)
    if simulate:
        rep = annotation.simulate_annotator(store, path, graph, round_id=round_id, mode=label_mode,  # type: ignore[arg-type]
                                            binary_class=binary_class, assigner=assigner)
    else:
        rep = annotation.import_labels(store, path, graph, round_id=round_id, fmt=fmt, mode=label_mode,  # type: ignore[arg-type]
                                       binary_class=binary_class, assigner=assigner,
                                       allow_unselected=allow_unselected)
    entry = rep.to_dict() | {"coverage": fine_counts(store, graph, label_mode), "label_mode": label_mode,
                             "concept_assigner": assigner_name}
    audit_log(store).append("labels", to_jsonable(entry))
    return rep


def store_status(store: PoolStore, graph: ConceptGraph | None = None, label_mode: str = "typed") -> dict[str, Any]:
    """Everything `trainer status` prints."""
    res = verify(store.audit_path)
    rounds = store.rounds()
    logged = set(audit_entry_hashes(store.audit_path))
    unlogged = [r["id"] for r in rounds if r["audit_hash"] not in logged]
    return {
        "pool": store.status(),
        "label_mode": label_mode,
        "coverage": store.coverage_counts("binary" if label_mode == "binary" else "typed"),
        "rounds": [
            {k: r[k] for k in ("id", "strategy", "budget", "pool_size", "status", "n_picks", "n_labeled", "audit_hash")}
            for r in rounds
        ],
        "bundles": [{k: b[k] for k in ("bundle_id", "role", "path", "metrics")} for b in store.bundles()],
        "stations": store.stations(),
        "audit": str(res) + (f"; rounds without a matching audit entry: {unlogged}" if unlogged else ""),
        "audit_ok": res.ok and not unlogged,
        "rounds_not_in_audit": unlogged,
    }


def audit_entry_hashes(path: Path) -> list[str]:
    """sha256 of every line of the audit log (what a round's ``audit_hash`` must be one of)."""
    from trainer.audit_log import line_hashes

    return line_hashes(path)


__all__ = [
    "RoundError",
    "RoundResult",
    "StoreError",
    "export_tasks",
    "fine_counts",
    "import_labels",
    "select_round",
    "store_status",
]
