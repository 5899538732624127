"""**[ours]** Labeled crops for the round assigner (issue 16), from score records and stored labels.

The exemplars of a concept c are CLIP region embeddings f_I known to show c:

* every labeled box of c (its crop embedded as the station embeds proposals);
* with ``exemplars="boxes+proposals"``, every detector proposal on a labeled slice whose best IoU with a
  labeled box is >= ``exemplar_iou`` (that box's concept), and every proposal below it with every box
  (``background``): :func:`label_proposals`, the one IoU rule of the benchmark and the trainer.

:func:`reassign` applies a round assigner (``assignment.round_assigner``) to records: each proposal that
carries its embedding (``ProposalScore.embedding``) gets the assigner's concept and similarities (Eq. 3);
one without keeps the station's text values and is counted. Pure numpy, no I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gsal_edge.acquisition.assignment import Assigner, AssignmentError
from gsal_edge.acquisition.concept_graph import BACKGROUND
from gsal_edge.acquisition.records import ScoreRecord

__all__ = [
    "ExemplarSet",
    "LabeledSlice",
    "ReassignStats",
    "box_iou",
    "collect_exemplars",
    "label_proposals",
    "reassign",
    "sources_by_concept",
]

EXEMPLAR_MODES = ("boxes", "boxes+proposals")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of (x1, y1, x2, y2) boxes; 0 where the union is empty."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def label_proposals(proposal_boxes: np.ndarray, gt_boxes: np.ndarray, gt_concepts: Sequence[str],
                    iou_threshold: float) -> list[str]:
    """The concept each proposal on a labeled slice is an exemplar of: the concept of its best-IoU labeled
    box when that IoU is >= ``iou_threshold``, else ``background`` (also on a slice without boxes)."""
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    if len(gt_concepts) != len(gt):
        raise AssignmentError(f"{len(gt)} labeled boxes but {len(gt_concepts)} concepts")
    if not 0 < iou_threshold <= 1:
        raise AssignmentError(f"exemplar IoU threshold must be in (0, 1], got {iou_threshold}")
    props = np.asarray(proposal_boxes, dtype=np.float64).reshape(-1, 4)
    if not len(gt):
        return [BACKGROUND] * len(props)
    iou = box_iou(props, gt)
    best = np.argmax(iou, axis=1)
    return [gt_concepts[k] if iou[j, k] >= iou_threshold else BACKGROUND for j, k in enumerate(best)]


@dataclass(frozen=True)
class LabeledSlice:
    """One labeled slice: its score record (proposal boxes + embeddings), its labeled boxes and their
    concepts, and (optionally) the f_I of the labeled boxes' crops ([n_boxes, d]; None = not embedded)."""

    record: ScoreRecord | None
    boxes: np.ndarray
    concepts: list[str]
    box_embeddings: np.ndarray | None = None


@dataclass
class ExemplarSet:
    """Exemplars per concept ({concept: [n, d]}) and where they came from, for the round's audit entry."""

    exemplars: dict[str, np.ndarray]
    from_boxes: dict[str, int] = field(default_factory=dict)
    from_proposals: dict[str, int] = field(default_factory=dict)
    proposals_without_embedding: int = 0  # proposals on labeled slices the station sent no f_I for
    slices_without_record: int = 0
    boxes_without_embedding: int = 0
    dropped_concepts: dict[str, int] = field(default_factory=dict)  # not one of the assigner's concepts

    def summary(self) -> dict[str, Any]:
        return {"exemplars": {c: int(e.shape[0]) for c, e in self.exemplars.items()},
                "from_boxes": dict(self.from_boxes), "from_proposals": dict(self.from_proposals),
                "proposals_without_embedding": self.proposals_without_embedding,
                "slices_without_record": self.slices_without_record,
                "boxes_without_embedding": self.boxes_without_embedding,
                "dropped_concepts": dict(self.dropped_concepts)}


def collect_exemplars(slices: Sequence[LabeledSlice], names: Sequence[str], mode: str = "boxes+proposals",
                      iou_threshold: float = 0.1) -> ExemplarSet:
    """The exemplars dict of :func:`gsal_edge.acquisition.assignment.round_assigner` from labeled slices
    (module doc): labeled box crops, plus with ``mode="boxes+proposals"`` the records' proposals labeled by
    :func:`label_proposals`. Concepts outside ``names`` are dropped and counted; every embedding of the set
    must have one length (AssignmentError naming the slice otherwise)."""
    if mode not in EXEMPLAR_MODES:
        raise AssignmentError(f"exemplars must be one of {EXEMPLAR_MODES}, got {mode!r}")
    allowed = set(names)
    rows: dict[str, list[np.ndarray]] = {}
    out = ExemplarSet(exemplars={})
    dim: int | None = None

    def add(concept: str, e: Any, source: dict[str, int], where: str) -> None:
        nonlocal dim
        if concept not in allowed:
            out.dropped_concepts[concept] = out.dropped_concepts.get(concept, 0) + 1
            return
        v = np.asarray(e, dtype=np.float64).reshape(-1)
        if dim is None:
            dim = v.shape[0]
        elif v.shape[0] != dim:
            raise AssignmentError(f"{where}: embedding has {v.shape[0]} values, the other exemplars {dim} "
                                  "(records and box crops must come from one CLIP)")
        if not np.all(np.isfinite(v)):
            raise AssignmentError(f"{where}: embedding has a NaN or Inf")
        rows.setdefault(concept, []).append(v)
        source[concept] = source.get(concept, 0) + 1

    for s in slices:
        sid = s.record.image_id if s.record is not None else "?"
        gt = np.asarray(s.boxes, dtype=np.float64).reshape(-1, 4)
        if len(s.concepts) != len(gt):
            raise AssignmentError(f"labeled slice {sid!r}: {len(gt)} boxes but {len(s.concepts)} concepts")
        if s.box_embeddings is None:
            out.boxes_without_embedding += len(gt)
        else:
            emb = np.asarray(s.box_embeddings, dtype=np.float64).reshape(len(gt), -1)
            for j, (c, e) in enumerate(zip(s.concepts, emb)):
                add(c, e, out.from_boxes, f"labeled slice {sid!r} box {j}")
        if mode != "boxes+proposals":
            continue
        if s.record is None:
            out.slices_without_record += 1
            continue
        props = s.record.proposals
        labels = label_proposals(np.array([p.box for p in props]).reshape(-1, 4), gt, s.concepts, iou_threshold)
        for j, (p, c) in enumerate(zip(props, labels)):
            if p.embedding is None:
                out.proposals_without_embedding += 1
            else:
                add(c, p.embedding, out.from_proposals, f"labeled slice {sid!r} proposals[{j}]")
    out.exemplars = {c: np.stack(rows[c]) for c in names if c in rows}
    return out


@dataclass
class ReassignStats:
    """What :func:`reassign` did: proposals re-assigned, kept at the station's text values, concepts changed."""

    reassigned: int = 0
    without_embedding: int = 0
    wrong_dimension: int = 0
    changed: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def reassign(records: Sequence[ScoreRecord], assigner: Assigner,
             similarity_decimals: int = 6) -> tuple[list[ScoreRecord], ReassignStats]:
    """Records whose proposals' ``concept`` and ``similarity`` come from ``assigner`` (Eq. 3 on their
    ``embedding``, similarities rounded as a station rounds them); the inputs are not modified.

    A proposal without an embedding (an older station, or ``ScorerSpec.proposal_embedding`` off), or with one
    of another length than the assigner's (another CLIP), keeps the station's text values and is counted.
    """
    d = int(assigner.embeddings.shape[1])
    stats = ReassignStats()
    todo: list[tuple[int, int]] = []
    emb: list[list[float]] = []
    for i, r in enumerate(records):
        for j, p in enumerate(r.proposals):
            if p.embedding is None:
                stats.without_embedding += 1
            elif len(p.embedding) != d:
                stats.wrong_dimension += 1
            else:
                todo.append((i, j))
                emb.append(p.embedding)
    out = [dataclasses.replace(r, proposals=list(r.proposals)) for r in records]
    if not todo:
        return out, stats
    a = assigner(np.asarray(emb, dtype=np.float64))
    for k, (i, j) in enumerate(todo):
        p = out[i].proposals[j]
        sim = {c: round(float(s), similarity_decimals) for c, s in zip(a.names, a.similarity[k])}
        stats.changed += a.concepts[k] != p.concept
        out[i].proposals[j] = dataclasses.replace(p, concept=a.concepts[k], similarity=sim)
    stats.reassigned = len(todo)
    return out, stats


def sources_by_concept(assigner: Assigner) -> dict[str, str]:
    """{concept: "prototype" | "text"} of an assigner, for rationales and audit entries."""
    return dict(zip(assigner.names, assigner.sources))

