"""Selection (spec §7): top-b by A(x), the ``batch_aware`` greedy option, screening, and a rationale
per pick (JSON + one readable sentence).

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

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
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
from gsal_edge.acquisition.rarity import Coverage, bonus_table, count_instances, coverage, indicator
from gsal_edge.acquisition.score_pool import ScorePool

__all__ = [
    "Pick",
    "ScreeningReport",
    "Selection",
    "concept_margin",
    "gsal_select",
    "labeled_counts",
    "rationale",
    "screen",
    "selection_overlap",
    "sentence",
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
    if config.screening.enabled and pool.n_images:
        groups, _ = pool.groups(config.group_by)
        rep = screen(pool, budget, config.screening, groups)
        info["screening"] = {"kept": rep.n_keep, "dropped": pool.n_images - rep.n_keep}
        pool = pool.subset(rep.keep)
    cov = coverage(graph, counts, config.percentile)
    info["coverage"] = cov.to_dict()
    if pool.n_images == 0 or budget == 0:
        return Selection(strategy, [], info)
    if not config.batch_aware:
        res = fuse(pool, graph, cov, config)
        order = top_b(res.A, pool.image_ids, budget)
        picks = [_make_pick(pool, graph, res, config, int(i), r + 1) for r, i in enumerate(order)]
        return Selection(strategy, picks, info, res, pool)
    return _batch_aware(pool, graph, cov, config, budget, strategy, info)


def _batch_aware(pool: ScorePool, graph: ConceptGraph, cov: Coverage, config: GSALConfig, budget: int,
                 strategy: str, info: dict[str, Any]) -> Selection:
    """**[ours]** greedy: after each pick, add the picked image's assigned concepts (hard argmax,
    background/unknown excluded) to provisional counts n(v), recompute thresholds and S(p), re-fuse.
    Populations stay the round's pool U (Eq. 11), so only the symbolic terms change; the fusion is
    recomputed only when the bonus table S_c changes."""
    res = fuse(pool, graph, cov, config)
    terms = DiffusionTerms(res.D_img, res.zD_img, res.D_p, res.zD_p)  # fixed for the round: only S(p) changes
    n_fine = cov.n_fine.copy()
    taken = np.zeros(pool.n_images, dtype=bool)
    A_open = res.A.copy()  # A(x) with the images picked so far masked to -inf
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
        new_cov = coverage(graph, n_fine, config.percentile)
        table = bonus_table(graph, new_cov, config.mu, config.thresholds, config.levels, config.rarity)
        if np.array_equal(table.S, res.table.S):
            res.coverage = new_cov
            res.table = table
            continue
        S_p = proposal_bonus(res.concept_index, table, res.probabilities)
        c = combine(pool, terms, S_p, config, res.groups, res.n_groups)
        res = FusionResult(D_img=terms.D_img, zD_img=terms.zD_img, P=c["P"], zP=c["zP"], G=c["G"], zG=c["zG"],
                           S_x=c["S_x"], zS_x=c["zS_x"], A=c["A"], D_p=terms.D_p, zD_p=terms.zD_p, S_p=S_p,
                           zS_p=c["zS_p"], u=c["u"], concept_index=res.concept_index, table=table,
                           coverage=new_cov, probabilities=res.probabilities, groups=res.groups,
                           n_groups=res.n_groups, G_scale=c["G_scale"])
        A_open = np.where(taken, -np.inf, res.A)
    info["provisional_counts"] = {f: float(v) for f, v in zip(graph.fine, n_fine)}
    return Selection(strategy, picks, info, res, pool)


# ---------------------------------------------------------------------- rationale
def _num(x: float) -> float | int:
    x = float(x)
    return int(x) if x.is_integer() and abs(x) < 2**53 else x


def _fmt(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else f"{x:.3g}"


def _node(name: str, n: float, tau: float, r: float) -> dict[str, Any]:
    return {"name": name, "count": _num(n), "tau": _num(tau), "rare": bool(n < tau), "indicator": float(r)}


def concept_margin(similarity: dict[str, float], concept: str) -> tuple[str, float, float] | None:
    """How sure Eq. 3 was: (runner-up concept, its similarity, sim(concept) - that); None without a rival."""
    if concept not in similarity or len(similarity) < 2:
        return None
    other, s2 = max(((c, v) for c, v in similarity.items() if c != concept), key=lambda cv: cv[1])
    return other, s2, similarity[concept] - s2


def rationale(pool: ScorePool, graph: ConceptGraph, res: FusionResult, config: GSALConfig, i: int,
              rank: int) -> dict[str, Any]:
    """Why image ``i`` was picked: A and its terms, the driving proposal (box, D, S), its semantic
    path fine -> coarse -> abstract with counts n(v) and thresholds tau, and the dominant term.

    Attribution: A = z(G) + lambda z(S(x)) and, G having mean 0 over the pool, z(G) = G / (std(G) + 1e-8)
    = [(1 - eta) z(D_img) + eta z(P)] / (std(G) + 1e-8). The region term eta z(P) is split between
    difficulty and rarity in proportion to the positive parts of z(D(p)) and gamma z(S(p)) of the
    proposal with the largest u_p. "rarity" dominates when lambda z(S(x)) plus the region's rarity
    share exceeds the image and region difficulty shares.
    """
    cov = res.coverage
    tbl = res.table
    s, e = int(pool.starts[i]), int(pool.starts[i + 1])
    scale = float(res.G_scale[i]) if res.G_scale is not None else 1.0
    c_img = float((1.0 - config.eta) * res.zD_img[i]) / scale
    c_region = float(config.eta * res.zP[i]) / scale
    c_sym = float(config.lambda_ * res.zS_x[i])
    w_d = w_s = 0.0
    k_u = -1
    if e > s:
        k_u = int(np.argmax(res.u[s:e]))
        pd = max(float(res.zD_p[s + k_u]), 0.0)
        ps = max(float(config.gamma * res.zS_p[s + k_u]), 0.0)
        w_d, w_s = (pd / (pd + ps), ps / (pd + ps)) if pd + ps > 0 else (0.5, 0.5)
    difficulty = c_img + c_region * w_d
    rarity = c_sym + c_region * w_s
    dominant = "rarity" if (rarity > difficulty and res.S_x[i] > 0) else "difficulty"
    out: dict[str, Any] = {
        "rank": rank,
        "image_id": str(pool.image_ids[i]),
        "acquisition": float(res.A[i]),
        "terms": {
            "z_G": float(res.zG[i]), "lambda_z_S_x": c_sym,
            "G": float(res.G[i]), "eta_z_P": float(config.eta * res.zP[i]),
            "one_minus_eta_z_D_img": float((1.0 - config.eta) * res.zD_img[i]),
            "P": float(res.P[i]), "z_P": float(res.zP[i]),
            "D_img": float(res.D_img[i]), "z_D_img": float(res.zD_img[i]),
            "S_x": float(res.S_x[i]), "z_S_x": float(res.zS_x[i]),
        },
        "contributions": {
            "image_difficulty": c_img, "region_difficulty": c_region * w_d,
            "region_rarity": c_region * w_s, "concept_rarity": c_sym,
            "difficulty": difficulty, "rarity": rarity,
        },
        "n_proposals": e - s,
        "dominant": dominant,
        "thresholds": {"tau_f": _num(cov.tau_f), "tau_c": _num(cov.tau_c), "tau_a": _num(cov.tau_a)},
    }
    if e == s:
        out["driver"] = "hard image"
        out["proposal"] = None
        out["path"] = None
        out["novel"] = False
        return out
    if dominant == "rarity":
        # the proposal that earned S(x) = max S(p); among equals, the one with the largest u_p
        k = int(np.lexsort((-res.u[s:e], -res.S_p[s:e]))[0])
    else:
        k = k_u
    j = s + k
    ci = int(res.concept_index[j])
    novel = ci == tbl.unknown_index
    concept = UNKNOWN if novel else graph.fine[ci]
    sim: dict[str, float] = {}
    if pool.similarity is not None:
        sim = {c: float(v) for c, v in zip(pool.concepts, pool.similarity[j]) if not math.isnan(v)}
    prop = {
        "index": k, "box": [float(v) for v in pool.prop_box[j]], "score": float(pool.prop_score[j]),
        "e_rec": float(pool.prop_e_rec[j]), "v_den": float(pool.prop_v_den[j]),
        "D": float(res.D_p[j]), "z_D": float(res.zD_p[j]), "S": float(res.S_p[j]), "z_S": float(res.zS_p[j]),
        "u": float(res.u[j]), "concept": concept, "record_concept": pool.concepts[int(pool.prop_concept[j])],
        "r_f": float(tbl.r_f[ci]), "r_c": float(tbl.r_c[ci]), "r_a": float(tbl.r_a[ci]),
        "similarity": sim,
    }
    close = concept_margin(sim, concept)
    if close is not None:
        prop["runner_up"] = {"concept": close[0], "similarity": close[1]}
        prop["margin"] = close[2]
    if res.probabilities is not None and not novel and res.probabilities[j].sum() > 0:
        prop["probabilities"] = {f: float(p) for f, p in zip(graph.fine, res.probabilities[j])}
    out["proposal"] = prop
    out["novel"] = bool(novel)
    if novel:
        out["path"] = {"fine": {"name": UNKNOWN, "count": 0, "tau": _num(cov.tau_f), "rare": True, "indicator": 1.0},
                       "coarse": None, "abstract": [],
                       "note": "unknown: matches no known concept, counted as never covered at every level"}
        if sim:
            out["path"]["best_similarity"] = max(sim.values())
    elif concept == BACKGROUND:
        out["path"] = {"fine": {"name": BACKGROUND, "count": _num(cov.n_fine[ci]), "tau": None, "rare": False,
                                "indicator": 0.0},
                       "coarse": None, "abstract": [], "note": "background never earns a rarity bonus"}
    else:
        ind = _indicators(cov, config)
        fi, cc, attrs = graph.path(concept)
        c_i = graph.coarse_index_of[cc]
        out["path"] = {
            "fine": _node(fi, cov.n_fine[ci], cov.tau_f, ind[0][ci]),
            "coarse": _node(cc, cov.n_coarse[c_i], cov.tau_c, ind[1][c_i]),
            "abstract": [_node(a, cov.n_abstract[graph.abstract_index_of[a]], cov.tau_a,
                               ind[2][graph.abstract_index_of[a]]) for a in attrs],
        }
    if dominant == "rarity":
        out["driver"] = "novel concept" if novel else "rare concept"
    else:
        out["driver"] = "hard region" if c_region * w_d >= c_img else "hard image"
    return out


def _indicators(cov: Coverage, config: GSALConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not config.rarity:
        return np.ones_like(cov.n_fine), np.ones_like(cov.n_coarse), np.ones_like(cov.n_abstract)
    return (indicator(cov.n_fine, cov.tau_f, config.thresholds),
            indicator(cov.n_coarse, cov.tau_c, config.thresholds),
            indicator(cov.n_abstract, cov.tau_a, config.thresholds))


def sentence(r: dict[str, Any], config: GSALConfig | None = None) -> str:
    """One readable sentence from a rationale, e.g. "picked for a rare concept: drill_hole
    (0 labeled, tau_f = 3) in a hard region"; when the driving concept beat the runner-up's similarity
    by less than ``rationale_margin``, it says so ("; concept uncertain: ...")."""
    prop = r.get("proposal")
    if prop is None:
        return (f"picked for a hard image: whole-image difficulty z(D_img) = {r['terms']['z_D_img']:.2f}, "
                "no proposals")
    text = _sentence(r, prop, config)
    margin = prop.get("margin")
    limit = (config or GSALConfig()).rationale_margin
    if margin is not None and margin < limit and not r.get("novel"):
        ru = prop["runner_up"]
        text += (f"; concept uncertain: {prop['concept']} {prop['similarity'][prop['concept']]:.2f} vs "
                 f"{ru['concept']} {ru['similarity']:.2f}")
    return text


def _sentence(r: dict[str, Any], prop: dict[str, Any], config: GSALConfig | None) -> str:
    where = "a hard region" if prop["z_D"] > 0 else "a typical region"
    path = r["path"]
    if r["dominant"] == "rarity":
        if r["novel"]:
            best = path.get("best_similarity")
            thr = config.novelty_threshold if config is not None else None
            detail = (f" (best similarity {best:.2f} < threshold {thr:.2f})"
                      if best is not None and thr is not None else "")
            return (f"picked for a novel concept: unknown{detail}, counted as never covered, in {where}")
        fine, coarse = path["fine"], path["coarse"]
        if fine["rare"]:
            return (f"picked for a rare concept: {fine['name']} ({_fmt(fine['count'])} labeled, "
                    f"tau_f = {_fmt(fine['tau'])}) in {where}")
        if coarse is not None and coarse["rare"]:
            return (f"picked for a rare family: {coarse['name']} ({_fmt(coarse['count'])} labeled, "
                    f"tau_c = {_fmt(coarse['tau'])}) via {fine['name']} in {where}")
        rare_attrs = [a for a in path["abstract"] if a["rare"]]
        if rare_attrs:
            names = ", ".join(f"{a['name']} ({_fmt(a['count'])} labeled)" for a in rare_attrs)
            return (f"picked for rare attributes: {names}, tau_a = {_fmt(rare_attrs[0]['tau'])}, "
                    f"via {fine['name']} in {where}")
        return f"picked for its semantic bonus S(x) = {r['terms']['S_x']:.2f} via {fine['name']} in {where}"
    concept = prop["concept"]
    fine = path["fine"] if path else None
    if fine is not None and concept not in (BACKGROUND, UNKNOWN):
        state = "rare" if fine["rare"] else "covered"
        cov_txt = f" ({_fmt(fine['count'])} labeled, tau_f = {_fmt(fine['tau'])}, {state})"
    else:
        cov_txt = ""
    if r["driver"] == "hard region":
        return (f"picked for a hard region: {concept}{cov_txt} proposal with z(D) = {prop['z_D']:.2f} "
                f"at [{', '.join(f'{v:g}' for v in prop['box'])}]")
    return (f"picked for a hard image: whole-image difficulty z(D_img) = {r['terms']['z_D_img']:.2f}; "
            f"strongest proposal {concept}{cov_txt}")


def _make_pick(pool: ScorePool, graph: ConceptGraph, res: FusionResult, config: GSALConfig, i: int,
               rank: int) -> Pick:
    r = rationale(pool, graph, res, config, i, rank)
    return Pick(image_id=str(pool.image_ids[i]), rank=rank, acquisition=float(res.A[i]), rationale=r,
                sentence=sentence(r, config))


def selection_overlap(a: Sequence[str], b: Sequence[str]) -> float:
    """|a ∩ b| / max(|a|, 1): how much two pick lists agree (e.g. screening on vs off)."""
    return len(set(a) & set(b)) / max(len(a), 1)
