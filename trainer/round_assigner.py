"""**[ours]** The selection round's Eq. 3 assigner, refreshed from the labeled slices (issue 16, docs/OPERATIONS.md).

Stations assign each proposal a concept against the bundle's *text* concept embeddings and send its
region embedding f_I(p) with it (``ProposalScore.embedding``). With a GSAL config whose ``assigner`` is not
``text`` or whose ``calibration`` is not ``none`` (typed label mode), `trainer select` re-assigns the pool
before fusing it, as the benchmark does each round (``gsal_edge.benchmark.pool_scoring.set_round_assigner``):

1. labeled crops (``gsal_edge.acquisition.exemplars.collect_exemplars``): each labeled box, its crop embedded
   by the serving bundle's CLIP exactly as a station embeds proposals; with ``exemplars=boxes+proposals`` also
   the stored proposals of the labeled slices (IoU >= ``exemplar_iou`` with a box: its concept, else background);
2. ``assignment.round_assigner``: prototypes for concepts with >= ``hybrid_k`` exemplars, the bundle's text
   embeddings for the rest, T fitted on the crops (leave-one-out) when ``calibration`` says so;
3. ``exemplars.reassign`` of the pool's records; the fitted T replaces the config's ``temperature``.

Binary label mode has no typed exemplars (a box's concept is itself an Eq. 3 output): the round keeps the
stations' text assignment and says so in its audit entry.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from gsal_edge.acquisition.assignment import Assigner, AssignmentError, round_assigner
from gsal_edge.acquisition.concept_graph import UNKNOWN, ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.exemplars import LabeledSlice, collect_exemplars, reassign, sources_by_concept
from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from trainer.images import decode_image
from trainer.ref_policy import RefFetcher
from trainer.store.pool_store import PoolStore

log = logging.getLogger(__name__)

__all__ = ["RoundAssignerError", "apply_round_assigner", "build_round_assigner", "labeled_slices",
           "needs_round_assigner"]


class RoundAssignerError(GSALError, ValueError):
    """The round assigner cannot be built (no serving bundle, concepts not in the graph, ...)."""


def needs_round_assigner(config: GSALConfig) -> bool:
    """True when the config asks for more than the stations' text assignment."""
    return config.assigner != "text" or config.calibration != "none"


def serving_scorer(store: PoolStore, backend: str = "onnxruntime") -> tuple[Any, str]:
    """The serving bundle's scorer (its CLIP image tower and text concept embeddings) and its id.

    Loaded as ``trainer.annotation.bundle_clip_assigner`` loads it: the trainer's own registered bundle."""
    from gsal_edge.scoring.bundle import load_bundle

    serving = store.bundle_with_role("serving")
    if not serving or not serving.get("path"):
        raise RoundAssignerError(
            f"{store.db_path}: a round assigner other than text (assigner/calibration in the GSAL config) needs a "
            "serving bundle for its CLIP and text concept embeddings (trainer deploy); none is registered")
    return load_bundle(serving["path"], backend=backend, allow_unsigned=True), str(serving["bundle_id"])


def labeled_slices(store: PoolStore, scorer: Any, *, embed_boxes: bool = True) -> tuple[list[LabeledSlice], int]:
    """Every labeled slice of the store: its fresh record, its boxes and their (typed) concepts, and the
    f_I of the box crops cut by ``scorer.embed_regions`` (as the station cuts proposals). A slice whose
    pixels cannot be read locally keeps its record's proposals only; returns (slices, such slices)."""
    fetch = RefFetcher.for_store(store)
    out, no_pixels = [], 0
    for entry in store.labeled_dataset().images:
        boxes = np.array([a.box for a in entry.annotations], dtype=np.float64).reshape(-1, 4)
        concepts = [a.category for a in entry.annotations]
        emb = None
        if embed_boxes and len(boxes):
            try:
                pixels = decode_image(fetch.local_image(store.slice_info(entry.image_id)))
                emb = np.asarray(scorer.embed_regions([pixels], [boxes])[0], dtype=np.float64)
            except (GSALError, OSError, ValueError) as e:
                no_pixels += 1
                log.warning("round assigner: slice %s: its labeled boxes are not embedded (%s)", entry.image_id, e)
        out.append(LabeledSlice(store.record(entry.image_id), boxes, concepts, emb))
    return out, no_pixels


def build_round_assigner(store: PoolStore, graph: ConceptGraph, config: GSALConfig,
                         scorer: Any | None = None) -> tuple[Assigner, dict[str, Any]]:
    """The round assigner from the store's labeled slices (module doc) and what it was built from."""
    bundle_id = None
    if scorer is None:
        scorer, bundle_id = serving_scorer(store)
    names = list(scorer.spec.concepts)
    outside = [c for c in names if c not in graph.fine and c != UNKNOWN]
    if outside:
        raise RoundAssignerError(f"the serving bundle's concepts {outside} are not fine nodes of graph {graph.name!r}")
    text = np.array(scorer.assigner.embeddings, dtype=np.float64, copy=True)  # f_T(c), what stations used
    slices, no_pixels = labeled_slices(store, scorer)
    ex = collect_exemplars(slices, names, config.exemplars, config.exemplar_iou)
    try:
        asg = round_assigner(config.assigner, names, text, ex.exemplars, config.hybrid_k, config.novelty_threshold,
                             config.calibration, config.temperature_bounds, config.calibration_min_crops)
    except AssignmentError as e:
        raise RoundAssignerError(f"assigner {config.assigner!r}: {e} (with few labels, assigner=hybrid falls back "
                                 "to text prompts per concept)") from None
    info = {"kind": asg.kind, "calibration": config.calibration, "exemplar_mode": config.exemplars,
            "bundle": bundle_id or getattr(scorer, "bundle_id", None), "labeled_slices": len(slices),
            "slices_without_pixels": no_pixels, "sources": sources_by_concept(asg),
            "temperature": asg.temperature, "fit": asg.fit, **ex.summary()}
    return asg, info


def apply_round_assigner(store: PoolStore, graph: ConceptGraph, config: GSALConfig, records: Sequence[ScoreRecord],
                         scorer: Any | None = None) -> tuple[list[ScoreRecord], GSALConfig, dict[str, Any] | None]:
    """The pool's records re-assigned by the round assigner and the config with its fitted T; unchanged (and
    None) when the config wants the stations' text assignment. Binary label mode: text, noted in the info."""
    if not needs_round_assigner(config):
        return list(records), config, None
    if config.label_mode != "typed":
        log.warning("round assigner: label_mode=%s has no typed exemplars; the stations' text assignment is kept",
                    config.label_mode)
        return list(records), config, {"kind": "text", "requested": config.assigner, "calibration": "none",
                                       "note": f"label_mode={config.label_mode} has no typed exemplars: the "
                                               "stations' text assignment is kept"}
    asg, info = build_round_assigner(store, graph, config, scorer)
    out, stats = reassign(records, asg)
    info["reassigned"] = stats.to_dict()
    if stats.without_embedding or stats.wrong_dimension:
        log.warning("round assigner: %d pool proposal(s) without an embedding and %d of another length keep the "
                    "stations' text assignment", stats.without_embedding, stats.wrong_dimension)
    if asg.temperature is not None:
        config = config.replace(temperature=asg.temperature)
    log.info("round assigner %s: sources %s, T %s, %d proposal(s) re-assigned (%d changed concept)", asg.kind,
             info["sources"], asg.temperature, stats.reassigned, stats.changed)
    return out, config, info
