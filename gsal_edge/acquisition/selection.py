"""Selection (spec §7): top-b by A(x), the ``batch_aware`` greedy option and screening; every pick
carries its rationale (``rationale``: JSON + one readable sentence).

Ties in A are broken by image id, ascending (string order; spec §10). Labeled images are never in
the pool, so every population is the pool handed in.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import ConceptGraph
from gsal_edge.acquisition.config import GSALConfig, ScreeningConfig
from gsal_edge.acquisition.fusion import (
    DiffusionTerms,
    FusionResult,
    combine,
    fuse,
    proposal_bonus,
    segment_max,
)
from gsal_edge.acquisition.normalization import zscore
from gsal_edge.acquisition.rarity import Coverage, bonus_table, count_instances, coverage, threshold_rule
from gsal_edge.acquisition.rationale import rationale, sentence
from gsal_edge.acquisition.score_pool import ScorePool

__all__ = [
    "Pick",
    "ScreeningReport",
    "Selection",
    "gsal_select",
    "labeled_counts",
    "screen",
    "selection_overlap",
    "top_b",
]


# ---------------------------------------------------------------------- outputs
@dataclass
class Pick:
    """One selected image: rank (1-based), its score (A(x) for GSAL), rationale and sentence."""

    image_id: str
    rank: int
    acquisition: float
    rationale: dict[str, Any]
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "rank": self.rank, "acquisition": self.acquisition,
                "rationale": self.rationale, "sentence": self.sentence}


@dataclass
class Selection:
    """Ordered picks of one strategy; ``info`` holds strategy-level facts (thresholds, screening)."""

    strategy: str
    picks: list[Pick]
    info: dict[str, Any] = field(default_factory=dict)
    fusion: FusionResult | None = None  # GSAL only: every term, aligned with ``pool``
    pool: ScorePool | None = None  # the pool the picks were made from (after prefilter/screening)

    @property
    def image_ids(self) -> list[str]:
        return [p.image_id for p in self.picks]

    def to_dict(self, config: GSALConfig | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {"picks": [p.to_dict() for p in self.picks], "strategy": self.strategy,
                             "info": self.info}
        if config is not None:
            d["config"] = config.to_dict()
        return d

    def to_json(self, config: GSALConfig | None = None) -> str:
        """Deterministic JSON (same inputs -> byte-identical text)."""
        return json.dumps(self.to_dict(config), indent=2, sort_keys=False, allow_nan=False) + "\n"


# ---------------------------------------------------------------------- top-b with id tie-break
def top_b(scores: np.ndarray, image_ids: np.ndarray, b: int, eligible: np.ndarray | None = None) -> np.ndarray:
    """Indices of the b highest scores, descending; ties by image id ascending (string order).

    Uses argpartition, then sorts only the candidates (every image tied with the b-th score is a
    candidate), so it is O(N) for a million images.
    """
    scores = np.asarray(scores, dtype=np.float64)
    idx = np.arange(scores.shape[0]) if eligible is None else np.flatnonzero(eligible)
    b = int(min(max(b, 0), idx.size))
    if b == 0:
        return np.zeros(0, dtype=np.int64)
    s = scores[idx]
    if b < idx.size:
        kth = np.partition(s, idx.size - b)[idx.size - b]  # b-th largest value
        cand = idx[s >= kth]
    else:
        cand = idx
    order = np.lexsort((image_ids[cand], -scores[cand]))
    return cand[order[:b]].astype(np.int64)


# ---------------------------------------------------------------------- label modes
def labeled_counts(graph: ConceptGraph, label_mode: str, labels: Iterable[str] | None = None,
                   assigned_concepts: Iterable[str] | None = None, where: str = "labeled set") -> dict[str, int]:
    """Coverage counts n(v) of the fine nodes for either label mode (spec §3).

    typed: ``labels`` = class names of the labeled instances (the annotated truth).
    binary: ``assigned_concepts`` = Eq. 3 concepts of the labeled (ground-truth) boxes; background and
    unknown are not counted.
    """
    if label_mode == "typed":
        if labels is None:
            raise ValueError("label_mode 'typed' needs the labeled class names (labels=...)")
        return count_instances(labels, graph, where)
    if label_mode == "binary":
        if assigned_concepts is None:
            raise ValueError("label_mode 'binary' needs the CLIP-assigned concepts of the labeled boxes")
        return count_instances(assigned_concepts, graph, where)
    raise ValueError(f"label_mode must be 'typed' or 'binary', got {label_mode!r}")


# ---------------------------------------------------------------------- screening (spec §7)
@dataclass(frozen=True)
class ScreeningReport:
    """Which images the cheap screening score would keep / drop."""

    keep: np.ndarray
    cheap_score: np.ndarray
    dropped_ids: list[str]
    n_keep: int


def screen(pool: ScorePool, budget: int, cfg: ScreeningConfig, groups: np.ndarray | None = None) -> ScreeningReport:
    """Spec §7 screening **[ours]**: c(x) = z(E_rec_img) + w * z(max_p score(p)); keep the top
    ``max(min_keep, ceil(keep_factor * budget))`` images (ties by id). Works whether or not screening
    is enabled in the config, so its effect on the picks can be measured."""
    n = pool.n_images
    max_score = segment_max(pool.prop_score, pool.starts, pool.n_props)
    c = zscore(pool.e_rec, groups) + cfg.score_weight * zscore(max_score, groups)
    n_keep = min(n, max(cfg.min_keep, math.ceil(cfg.keep_factor * budget)))
    keep = np.zeros(n, dtype=bool)
    keep[top_b(c, pool.image_ids, n_keep)] = True
    return ScreeningReport(keep=keep, cheap_score=c, dropped_ids=[str(x) for x in pool.image_ids[~keep]],
                           n_keep=int(n_keep))


# ---------------------------------------------------------------------- GSAL selection
def gsal_select(pool: ScorePool, graph: ConceptGraph, counts: Mapping[str, float] | np.ndarray,
                config: GSALConfig, budget: int, strategy: str = "gsal") -> Selection:
    """Spec §7: prefilter top-M, optional screening, fuse into A(x), pick top-b (or greedily with
    ``batch_aware``), and explain every pick."""
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    info: dict[str, Any] = {"n_images": pool.n_images, "n_proposals": pool.n_proposals,
                            "label_mode": config.label_mode, "graph": graph.name}
    pool = pool.prefilter(config.M)
    info["n_proposals_after_prefilter"] = pool.n_proposals
    # Screening only narrows who may be picked: the z() populations stay the whole unlabeled pool
    # (spec §10), so an image's A(x) is the same with screening on or off.
    eligible: np.ndarray | None = None
    if config.screening.enabled and pool.n_images:
        groups, _ = pool.groups(config.group_by)
        rep = screen(pool, budget, config.screening, groups)
        info["screening"] = {"kept": rep.n_keep, "dropped": pool.n_images - rep.n_keep}
        eligible = rep.keep
    cov = coverage(graph, counts, config.percentile, rule=threshold_rule(config.thresholds))
    info["coverage"] = cov.to_dict()
    if pool.n_images == 0 or budget == 0:
        return Selection(strategy, [], info)
    if not config.batch_aware:
        res = fuse(pool, graph, cov, config)
        order = top_b(res.A, pool.image_ids, budget, eligible)
        picks = [_make_pick(pool, graph, res, config, int(i), r + 1) for r, i in enumerate(order)]
        return Selection(strategy, picks, info, res, pool)
    return _batch_aware(pool, graph, cov, config, budget, strategy, info, eligible)


def _batch_aware(pool: ScorePool, graph: ConceptGraph, cov: Coverage, config: GSALConfig, budget: int,
                 strategy: str, info: dict[str, Any], eligible: np.ndarray | None = None) -> Selection:
    """**[ours]** greedy: after each pick, add the picked image's assigned concepts (hard argmax,
    background/unknown excluded) to provisional counts n(v), recompute thresholds and S(p), re-fuse.
    Populations stay the round's pool U (Eq. 11), so only the symbolic terms change; the fusion is
    recomputed only when the bonus table S_c changes. ``eligible`` (screening) limits who may be picked."""
    res = fuse(pool, graph, cov, config)
    terms = DiffusionTerms(res.D_img, res.zD_img, res.D_p, res.zD_p)  # fixed for the round: only S(p) changes
    n_fine = cov.n_fine.copy()
    taken = np.zeros(pool.n_images, dtype=bool) if eligible is None else ~np.asarray(eligible, dtype=bool)
    budget = min(budget, int((~taken).sum()))
    A_open = np.where(taken, -np.inf, res.A)  # A(x) with the images picked so far (or screened out) at -inf
    picks: list[Pick] = []
    nf = len(graph.fine)
    for rank in range(1, min(budget, pool.n_images) + 1):
        cand = np.flatnonzero(A_open == A_open.max())
        i = int(cand[np.argmin(pool.image_ids[cand])]) if cand.size > 1 else int(cand[0])  # ties: id order
        picks.append(_make_pick(pool, graph, res, config, i, rank))
        taken[i] = True
        A_open[i] = -np.inf
        ci = res.concept_index[pool.starts[i]: pool.starts[i + 1]]
        ci = ci[(ci < nf)]
        if ci.size == 0:
            continue
        n_fine += np.bincount(ci, minlength=nf)
        n_fine[~graph.defect_mask] = cov.n_fine[~graph.defect_mask]
        new_cov = coverage(graph, n_fine, config.percentile, rule=threshold_rule(config.thresholds))
        table = bonus_table(graph, new_cov, config.mu, config.thresholds, config.levels, config.rarity)
        if np.array_equal(table.S, res.table.S):
            res.coverage = new_cov
            res.table = table
            continue
        S_p = proposal_bonus(res.concept_index, table, res.probabilities, config.assignment)
        res = combine(pool, terms, S_p, config, res.concept_index, table, new_cov, res.probabilities, res.groups,
                      res.n_groups)
        A_open = np.where(taken, -np.inf, res.A)
    info["provisional_counts"] = {f: float(v) for f, v in zip(graph.fine, n_fine)}
    return Selection(strategy, picks, info, res, pool)


# ---------------------------------------------------------------------- picks
def _make_pick(pool: ScorePool, graph: ConceptGraph, res: FusionResult, config: GSALConfig, i: int,
               rank: int) -> Pick:
    r = rationale(pool, graph, res, config, i, rank)
    return Pick(image_id=str(pool.image_ids[i]), rank=rank, acquisition=float(res.A[i]), rationale=r,
                sentence=sentence(r, config))


def selection_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """|a ∩ b| / max(|a|, 1): how much two pick lists agree (e.g. screening on vs off)."""
    return len(set(a) & set(b)) / max(len(a), 1)
