"""Rarity-aware symbolic bonus (spec §3, Eq. 4; conventions of spec §10).

    n(v)   = coverage count: labeled instances of fine node v; a coarse or abstract node's count is
             the sum over the fine nodes that link to it
    tau_l  = max(numpy.percentile(counts of level l, 80), 1)   (zeros included; background/none excluded)
    r_f(p) = 1[n(fine(p)) < tau_f]     r_c(p) = 1[n(coarse(p)) < tau_c]
    r_a(p) = (1/|A(p)|) sum_{a in A(p)} 1[n(a) < tau_a]
    S(p)   = r_f(p) + r_c(p) + mu * r_a(p)

**[ours]** ``thresholds="soft"`` replaces 1[n < tau] by max(0, 1 - n/tau). **[ours]**
``thresholds="relative"`` (small graphs): tau_l = max(mean of level l's counts, 1) and
r = tau / (tau + n): with 5 fine and 2 coarse nodes the 80th percentile leaves only the most covered
node non-rare and the less covered coarse node always rare, so S(p) takes ~3 values; the relative
indicator is strictly decreasing in n, so every coverage difference orders S. ``background`` has
S = 0; ``unknown`` (novelty) counts as never covered at every level, so S = 1 + 1 + mu.

Everything here is per concept (a table of S_c over fine nodes), so S(p) for a million proposals is
one fancy-indexing gather (`symbolic_bonus`) or one matrix product (`expected_bonus`, soft
assignment).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
from gsal_edge.acquisition.config import LEVELS
from gsal_edge.errors import GSALError

__all__ = [
    "BonusTable",
    "Coverage",
    "RarityError",
    "bonus_table",
    "confidence_bonus",
    "count_instances",
    "coverage",
    "dynamic_threshold",
    "expected_bonus",
    "indicator",
    "propagate_counts",
    "symbolic_bonus",
    "threshold_rule",
]


class RarityError(GSALError, ValueError):
    """Coverage counts name a concept the graph lacks, or hold a negative/non-finite count."""


@dataclass(frozen=True)
class Coverage:
    """Coverage counts n(v) per level and the dynamic thresholds tau_f, tau_c, tau_a."""

    fine: tuple[str, ...]
    coarse: tuple[str, ...]
    abstract: tuple[str, ...]
    n_fine: np.ndarray
    n_coarse: np.ndarray
    n_abstract: np.ndarray
    tau_f: float
    tau_c: float
    tau_a: float

    def count(self, node: str) -> float:
        """n(v) of a node of any level; ``unknown`` is 0 (never covered)."""
        if node == UNKNOWN:
            return 0.0
        for names, arr in ((self.fine, self.n_fine), (self.coarse, self.n_coarse), (self.abstract, self.n_abstract)):
            if node in names:
                return float(arr[names.index(node)])
        raise KeyError(f"{node!r} is not a node of the concept graph")

    def to_dict(self) -> dict[str, object]:
        return {
            "fine": {k: float(v) for k, v in zip(self.fine, self.n_fine)},
            "coarse": {k: float(v) for k, v in zip(self.coarse, self.n_coarse)},
            "abstract": {k: float(v) for k, v in zip(self.abstract, self.n_abstract)},
            "thresholds": {"tau_f": self.tau_f, "tau_c": self.tau_c, "tau_a": self.tau_a},
        }


def dynamic_threshold(counts: np.ndarray, percentile: float = 80.0, rule: str = "percentile") -> float:
    """tau = max(numpy.percentile(counts, percentile), 1) with linear interpolation (``rule="percentile"``)
    or max(mean(counts), 1) (``rule="mean"`` [ours], the ``relative`` indicator's scale); 1 if empty."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.size == 0:
        return 1.0
    if rule == "percentile":
        return float(max(np.percentile(counts, percentile), 1.0))
    if rule == "mean":
        return float(max(counts.mean(), 1.0))
    raise RarityError(f"threshold rule must be 'percentile' or 'mean', got {rule!r}")


def threshold_rule(thresholds: str) -> str:
    """The tau rule an indicator mode uses: ``relative`` -> level mean, ``hard``/``soft`` -> percentile."""
    return "mean" if thresholds == "relative" else "percentile"


def propagate_counts(graph: ConceptGraph, n_fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coarse and abstract counts: sums over the fine nodes linking to each (spec §10)."""
    n_fine = np.asarray(n_fine, dtype=np.float64)
    n_coarse = np.bincount(graph.fine_to_coarse, weights=n_fine, minlength=len(graph.coarse))
    n_abstract = n_fine @ graph.fine_to_abstract.astype(np.float64)
    return n_coarse.astype(np.float64), np.asarray(n_abstract, dtype=np.float64)


def coverage(graph: ConceptGraph, fine_counts: Mapping[str, float] | np.ndarray,
             percentile: float = 80.0, where: str = "counts", rule: str = "percentile") -> Coverage:
    """n(v) at every level from fine-node counts (missing = 0) and the thresholds of spec §10
    (``rule`` = `dynamic_threshold`'s; see `threshold_rule`).

    ``fine_counts`` maps fine concept -> labeled instances, or is an array aligned with
    ``graph.fine``. An ``unknown`` key is ignored (unknown is never covered by definition); any other
    name absent from the graph raises `RarityError` naming it and ``where``.
    """
    if isinstance(fine_counts, np.ndarray):
        n_fine = np.asarray(fine_counts, dtype=np.float64).copy()
        if n_fine.shape != (len(graph.fine),):
            raise RarityError(f"{where}: expected {len(graph.fine)} fine counts, got shape {n_fine.shape}")
    else:
        n_fine = np.zeros(len(graph.fine), dtype=np.float64)
        for name, value in fine_counts.items():
            if name == UNKNOWN:
                continue
            if name not in graph.fine_index:
                raise RarityError(f"{where}: concept {name!r} is not a fine node of graph {graph.name!r} "
                                  f"(fine nodes: {', '.join(graph.fine)})")
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise RarityError(f"{where}: count of {name!r} must be a number, got {value!r}")
            n_fine[graph.fine_index[name]] = float(value)
    if not np.all(np.isfinite(n_fine)) or np.any(n_fine < 0):
        bad = graph.fine[int(np.flatnonzero(~np.isfinite(n_fine) | (n_fine < 0))[0])]
        raise RarityError(f"{where}: count of {bad!r} must be a finite number >= 0")
    n_coarse, n_abstract = propagate_counts(graph, n_fine)
    return Coverage(
        fine=graph.fine,
        coarse=graph.coarse,
        abstract=graph.abstract,
        n_fine=n_fine,
        n_coarse=n_coarse,
        n_abstract=n_abstract,
        tau_f=dynamic_threshold(n_fine[graph.defect_mask], percentile, rule),
        tau_c=dynamic_threshold(n_coarse[graph.coarse_mask], percentile, rule),
        tau_a=dynamic_threshold(n_abstract, percentile, rule),
    )


def indicator(n: np.ndarray, tau: float, mode: str = "hard") -> np.ndarray:
    """Rarity indicator: hard 1[n < tau]; soft **[ours]** max(0, 1 - n/tau); relative **[ours]**
    tau / (tau + n) (1 at n = 0, 1/2 at the level's mean, never 0)."""
    n = np.asarray(n, dtype=np.float64)
    if mode == "hard":
        return (n < tau).astype(np.float64)
    if mode == "soft":
        return np.maximum(0.0, 1.0 - n / tau)
    if mode == "relative":
        return tau / (tau + n)
    raise ValueError(f"thresholds must be 'hard', 'soft' or 'relative', got {mode!r}")


@dataclass(frozen=True)
class BonusTable:
    """Eq. 4 per concept: rows are ``graph.fine`` then ``unknown`` (index ``len(graph.fine)``)."""

    names: tuple[str, ...]
    r_f: np.ndarray
    r_c: np.ndarray
    r_a: np.ndarray
    S: np.ndarray

    @property
    def unknown_index(self) -> int:
        return len(self.names) - 1


def bonus_table(graph: ConceptGraph, cov: Coverage, mu: float = 0.5, thresholds: str = "hard",
                levels: Sequence[str] = LEVELS, rarity: bool = True) -> BonusTable:
    """S_c = r_f + r_c + mu * r_a for every fine concept c (Eq. 4), plus ``unknown``.

    ``levels`` drops levels for the graph ablations (fine-only, ...); ``rarity=False`` (the
    "w/o rarity" ablation) sets every indicator to 1. Background rows are 0.
    """
    nf = len(graph.fine)
    if rarity:
        ind_f = indicator(cov.n_fine, cov.tau_f, thresholds)
        ind_c = indicator(cov.n_coarse, cov.tau_c, thresholds)
        ind_a = indicator(cov.n_abstract, cov.tau_a, thresholds)
    else:
        ind_f = np.ones(nf)
        ind_c = np.ones(len(graph.coarse))
        ind_a = np.ones(len(graph.abstract))
    n_attr = graph.fine_to_abstract.sum(axis=1).astype(np.float64)
    sum_a = graph.fine_to_abstract.astype(np.float64) @ ind_a
    r_a = np.divide(sum_a, n_attr, out=np.zeros(nf), where=n_attr > 0)
    r_f = ind_f.copy()
    r_c = ind_c[graph.fine_to_coarse]
    bg = ~graph.defect_mask
    r_f[bg] = r_c[bg] = r_a[bg] = 0.0
    # unknown: never covered at every level -> every indicator is 1
    r_f = np.append(r_f, 1.0)
    r_c = np.append(r_c, 1.0)
    r_a = np.append(r_a, 1.0)
    w_f = 1.0 if "fine" in levels else 0.0
    w_c = 1.0 if "coarse" in levels else 0.0
    w_a = mu if "abstract" in levels else 0.0
    S = w_f * r_f + w_c * r_c + w_a * r_a
    return BonusTable(names=graph.fine + (UNKNOWN,), r_f=r_f, r_c=r_c, r_a=r_a, S=S)


def symbolic_bonus(concept_index: np.ndarray, table: BonusTable) -> np.ndarray:
    """Hard assignment: S(p) = S_{fine(p)}; ``concept_index`` indexes ``table.names``."""
    return table.S[np.asarray(concept_index, dtype=np.int64)]


def confidence_bonus(concept_index: np.ndarray, probabilities: np.ndarray, table: BonusTable) -> np.ndarray:
    """Confidence-gated assignment **[ours]**: S(p) = S_{fine(p)} * softmax(cos/T)_{fine(p)}, so a region
    Eq. 3 is unsure about (e.g. background that looks a little like a rare class) earns little.

    ``probabilities`` [P, len(graph.fine)]; rows assigned ``unknown`` keep S_unknown."""
    idx = np.asarray(concept_index, dtype=np.int64)
    probs = np.asarray(probabilities, dtype=np.float64)
    S = table.S[idx].copy()
    fine = idx < probs.shape[1]
    S[fine] *= probs[np.flatnonzero(fine), idx[fine]]
    return S


def expected_bonus(probabilities: np.ndarray, table: BonusTable) -> np.ndarray:
    """Soft assignment **[ours]**: S(p) = sum_c softmax(cos_c/T)_c * S_c over the fine nodes.

    ``probabilities`` is [P, len(graph.fine)] (rows sum to 1, background column included: S_bg = 0).
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    return probs @ table.S[: probs.shape[1]]


def count_instances(concepts: Iterable[str], graph: ConceptGraph, where: str = "labels",
                    ignore: Sequence[str] = (BACKGROUND, UNKNOWN)) -> dict[str, int]:
    """Fine-node counts n(v) from labeled instances.

    Typed labels: pass the class names of the labeled boxes. Binary labels (spec §3): pass the
    CLIP-assigned fine concepts of the labeled boxes (Eq. 3 on each ground-truth crop). ``background``
    and ``unknown`` are ignored by default (neither is a covered defect concept); any other name
    absent from the graph raises `RarityError`.
    """
    out = {f: 0 for f in graph.fine if f not in ignore}
    for c in concepts:
        if c in ignore:
            continue
        if c not in graph.fine_index:
            raise RarityError(f"{where}: concept {c!r} is not a fine node of graph {graph.name!r} "
                              f"(fine nodes: {', '.join(graph.fine)})")
        out[c] = out.get(c, 0) + 1
    return out
