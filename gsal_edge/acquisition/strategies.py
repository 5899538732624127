"""Baselines and ablations of spec §8 behind one `Strategy` interface, selectable by name.

Every strategy takes the same inputs (a `ScorePool`, fine-node coverage counts, the concept graph,
a `GSALConfig`, the budget b, a seeded ``numpy.random.Generator`` and optional labeled embeddings)
and returns the same output: a `Selection` of ordered picks, each with a score and a rationale.

Names (``available_strategies()``):

- ``gsal`` / ``full``: spec §§5-7 (three-level graph).
- ``diffusion_only``: lambda = gamma = 0.  ``symbolic_only``: alpha = beta = 0 (no diffusion term;
  the "CLIP-only" row of the paper).
- graph ablations: ``fine_only``, ``coarse_only``, ``abstract_only``, ``fine_coarse`` (config ``levels``).
- ``gsal_no_rarity``: every rarity indicator set to 1 (config ``rarity=False``): the symbolic term
  rewards a named (non-background) concept whatever its coverage.
- ``random``; ``entropy``, ``margin``, ``mc_dropout``: the record's image-level ``uncertainty`` value,
  ranked in the direction :data:`gsal_edge.acquisition.uncertainty.RANK_SIGN` gives (all three:
  higher = more uncertain; the stored margin is already ``1 - min(p1 - p2)``). The per-image
  aggregation is the scorer's (see its docs); these rank what it wrote.
- ``coreset``: k-center greedy (Sener & Savarese) on the records' ``embedding``, Euclidean distance,
  centers seeded by the labeled embeddings (or one seeded random pick when there are none).
- ``uniform_by_label``: per-class quotas by predicted labels (round-robin over classes, seeded random
  order within a class), no diffusion.

- ``badge`` (:mod:`gsal_edge.acquisition.badge`): k-means++ seeding on per-image gradient embeddings
  (p - onehot(y_hat)) (x) h of the box predictor's class-score layer, the max-norm one of the top-k
  proposals by detector score. ``ppal`` (:mod:`gsal_edge.acquisition.ppal`): difficulty-calibrated
  uncertainty pre-selection, then k-medoids on category-conditioned matching distances. Both read the
  round detector's box-head outputs (``needs_box_features``, ``box_request``), handed to ``select`` as
  ``box_features`` (a score record carries neither h nor the per-proposal class-probability vectors).

Not implemented (details in docs/baselines.md):

- MI-AOD (Yuan et al., CVPR 2021) is a different detector and training, not a selection rule on a
  trained one: two adversarial instance classifiers on the detection head, trained with a max-min
  prediction-discrepancy objective that also uses the unlabeled images, plus a multiple-instance
  image-classification branch that re-weights instance uncertainty. Here it would need a second
  classifier head on the RoI head and a new training loop in ``gsal_edge.models.detector_training``, so
  its rows would no longer compare selection rules on the same detector.
- NORIS (2023; only its abstract could be read here) needs no detector change: per the abstract it scores how training on a sample would lower
  the informativeness of similar samples, measured with features of the detected object regions, and
  picks samples that are informative and far from other informative ones. It is feasible on this
  detector (the box-head features of ``badge``/``ppal`` are the object features it needs), but the exact
  informativeness-update rule is in the paper's body, which was not available to us; a rule written
  from the abstract would be our own method under NORIS's name, so it is left out rather than guessed.

Each strategy declares what its inputs need (as baal's heuristics do), so a runner computes only that:
``needs_scores`` (the scorer's records: E_rec, V_den, proposals, uncertainties), ``needs_embeddings``
(whole-slice CLIP embeddings of the pool and of the labeled images), ``needs_mc_dropout`` (the
records' ``uncertainty["mc_dropout"]``, from T stochastic detector passes per image) and
``needs_box_features`` (the round detector's box-head outputs per candidate, and for PPAL the labeled
set's per-class detection quality; False unless a strategy sets it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Any

import numpy as np

from gsal_edge.acquisition.badge import BadgeConfig, badge_image_embeddings, driving_proposal, kmeans_pp_seeds
from gsal_edge.acquisition.box_outputs import BoxRequest, PoolBoxFeatures
from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.ppal import (
    PPALConfig,
    binary_entropy,
    ccms_distances,
    dcus_uncertainty,
    difficulty_weights,
    k_medoids,
)
from gsal_edge.acquisition.score_pool import FusionError, ScorePool
from gsal_edge.acquisition.selection import Pick, Selection, gsal_select, top_b
from gsal_edge.acquisition.uncertainty import rank_sign

__all__ = [
    "STRATEGIES",
    "BadgeStrategy",
    "CoresetStrategy",
    "GSALStrategy",
    "PPALStrategy",
    "RandomStrategy",
    "Strategy",
    "UncertaintyStrategy",
    "UniformByLabelStrategy",
    "available_strategies",
    "get_strategy",
    "k_center_greedy",
]

Counts = Mapping[str, float] | np.ndarray


class Strategy(ABC):
    """One acquisition strategy. Subclasses implement `select` and set the three declarations."""

    name: str = "strategy"
    # declared by every subclass (no defaults here, so a forgotten one is an AttributeError, not a guess)
    needs_scores: bool  # reads the score records (E_rec, V_den, proposals, uncertainties)
    needs_embeddings: bool  # reads whole-slice CLIP embeddings of the pool and of the labeled images
    needs_mc_dropout: bool  # reads uncertainty["mc_dropout"] (T stochastic detector passes per image)
    # reads the round detector's box-head outputs (``select(..., box_features=...)``), as ``box_request``
    # asks; a default, so strategies that never read the detector's internals need not say so
    needs_box_features: bool = False
    box_request: BoxRequest | None = None
    # reads only the records' detector outputs (``uncertainty``): the round then runs the detector engine alone,
    # not the diffusion prior or CLIP, so the cost it reports is the baseline's own
    reads_detector_only: bool = False

    @abstractmethod
    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        """Pick ``budget`` images of ``pool`` in order, each with a score and a rationale."""


class GSALStrategy(Strategy):
    """GSAL (spec §§5-7) with config overrides (ablations)."""

    needs_scores, needs_embeddings, needs_mc_dropout = True, False, False

    def __init__(self, name: str, overrides: Mapping[str, Any] | None = None, what: str = ""):
        self.name = name
        self.overrides = dict(overrides or {})
        self.what = what

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        cfg = config.replace(**self.overrides) if self.overrides else config
        sel = gsal_select(pool, graph, counts, cfg, budget, strategy=self.name)
        sel.info["overrides"] = {("lambda" if k == "lambda_" else k): (list(v) if isinstance(v, tuple) else v)
                                 for k, v in self.overrides.items()}
        return sel


def _simple_picks(name: str, pool: ScorePool, order: np.ndarray, scores: np.ndarray, what: str,
                  extra: Callable[[int, int], dict[str, Any]] | None = None) -> list[Pick]:
    picks = []
    for r, i in enumerate(order, 1):
        i = int(i)
        rat: dict[str, Any] = {"rank": r, "image_id": str(pool.image_ids[i]), "strategy": name,
                               "score": float(scores[i]), "score_name": what}
        if extra is not None:
            rat.update(extra(i, r))
        picks.append(Pick(str(pool.image_ids[i]), r, float(scores[i]), rat,
                          f"picked by {name}: {what} = {float(scores[i]):.4g} (rank {r})"))
    return picks


class RandomStrategy(Strategy):
    """Uniform random picks: one uniform draw per image from ``rng``, top-b of the draws."""

    name = "random"
    needs_scores, needs_embeddings, needs_mc_dropout = False, False, False

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        draw = rng.random(pool.n_images)
        order = top_b(draw, pool.image_ids, budget)
        return Selection(self.name, _simple_picks(self.name, pool, order, draw, "uniform draw"),
                         {"n_images": pool.n_images})


class UncertaintyStrategy(Strategy):
    """Ranks the record's ``uncertainty[key]`` in its :func:`rank_sign` direction (+1: higher first).

    ``needs_mc_dropout``: the key is filled by MC-dropout passes, not by the scorer itself."""

    needs_scores, needs_embeddings = True, False
    reads_detector_only = True

    def __init__(self, name: str, key: str, needs_mc_dropout: bool = False):
        self.name, self.key, self.sign = name, key, rank_sign(key)
        self.needs_mc_dropout = needs_mc_dropout

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        if pool.n_images == 0:
            return Selection(self.name, [], {"n_images": 0})
        values = pool.uncertainty.get(self.key)
        if values is None:
            raise FusionError(f"strategy {self.name!r} needs uncertainty[{self.key!r}] in the score records; "
                              f"keys present: {', '.join(sorted(pool.uncertainty)) or 'none'}")
        missing = np.flatnonzero(np.isnan(values))
        if missing.size:
            raise FusionError(f"strategy {self.name!r}: image_id={str(pool.image_ids[missing[0]])!r} has no "
                              f"uncertainty[{self.key!r}] ({missing.size} images lack it)")
        score = self.sign * values
        order = top_b(score, pool.image_ids, budget)
        what = self.key if self.sign > 0 else f"-{self.key}"
        return Selection(self.name, _simple_picks(self.name, pool, order, score, what), {"n_images": pool.n_images})


def k_center_greedy(x: np.ndarray, centers: np.ndarray | None, budget: int, image_ids: np.ndarray,
                    rng: np.random.Generator, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """k-center greedy: repeatedly pick the point farthest (Euclidean) from all centers.

    ``centers`` = labeled embeddings [L, d] (None/empty: the first pick is a seeded random point).
    Ties in distance go to the smaller image id. Returns (indices, distance at pick time; NaN for a
    random first pick).
    """
    n = x.shape[0]
    budget = min(budget, n)
    min_d = np.full(n, np.inf)
    if centers is not None and len(centers):
        c = np.asarray(centers, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] != x.shape[1]:
            raise ValueError(f"labeled embeddings must be [L, {x.shape[1]}], got {c.shape}")
        x2 = np.einsum("ij,ij->i", x, x)
        for s in range(0, c.shape[0], chunk):
            cc = c[s: s + chunk]
            d = x2[:, None] - 2.0 * x @ cc.T + np.einsum("ij,ij->i", cc, cc)[None, :]
            min_d = np.minimum(min_d, np.maximum(d, 0.0).min(axis=1))
    picked: list[int] = []
    dist: list[float] = []
    available = np.ones(n, dtype=bool)
    for _ in range(budget):
        if np.isinf(min_d[available]).all():
            avail_idx = np.flatnonzero(available)
            i = int(avail_idx[rng.integers(avail_idx.size)])
            dist.append(float("nan"))
        else:
            i = int(top_b(min_d, image_ids, 1, eligible=available)[0])
            dist.append(float(np.sqrt(min_d[i])))
        picked.append(i)
        available[i] = False
        d = np.einsum("ij,ij->i", x - x[i], x - x[i])
        min_d = np.minimum(min_d, d)
    return np.array(picked, dtype=np.int64), np.array(dist)


class CoresetStrategy(Strategy):
    """Core-set (k-center greedy) on the records' embeddings, seeded by the labeled embeddings."""

    name = "coreset"
    needs_scores, needs_embeddings, needs_mc_dropout = False, True, False

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        if pool.n_images == 0:
            return Selection(self.name, [], {"n_images": 0})
        if pool.embeddings is None:
            raise FusionError("strategy 'coreset' needs an 'embedding' in the score records; none has one")
        bad = np.flatnonzero(np.isnan(pool.embeddings).any(axis=1))
        if bad.size:
            raise FusionError(f"strategy 'coreset': image_id={str(pool.image_ids[bad[0]])!r} has no embedding")
        idx, dist = k_center_greedy(pool.embeddings, labeled_embeddings, budget, pool.image_ids, rng)
        score = np.full(pool.n_images, np.nan)
        score[idx] = dist
        picks = []
        for r, (i, d) in enumerate(zip(idx, dist), 1):
            first = bool(np.isnan(d))
            rat = {"rank": r, "image_id": str(pool.image_ids[i]), "strategy": self.name,
                   "score": None if first else float(d), "score_name": "distance to nearest center",
                   "seeded_random_first_center": first}
            text = ("picked by coreset: first center, seeded random (no labeled embeddings)" if first else
                    f"picked by coreset: farthest from labeled/picked centers (distance {d:.4g})")
            picks.append(Pick(str(pool.image_ids[i]), r, 0.0 if first else float(d), rat, text))
        n_lab = 0 if labeled_embeddings is None else len(labeled_embeddings)
        return Selection(self.name, picks, {"n_images": pool.n_images, "n_labeled_centers": n_lab})


class UniformByLabelStrategy(Strategy):
    """Per-class quotas by predicted labels, no diffusion.

    An image's predicted classes are its proposals' detector labels (``label``), or, when records have
    none (binary mode, class-agnostic detector), their assigned concepts (background/unknown excluded).
    Classes take turns in name order; within a class images come in a seeded random order; an image
    already picked is skipped. Images without a predicted class fill the budget last, at random.
    """

    name = "uniform_by_label"
    needs_scores, needs_embeddings, needs_mc_dropout = True, False, False

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None) -> Selection:
        n = pool.n_images
        if pool.prop_label is not None and (pool.prop_label >= 0).any():
            names, lab, source = pool.labels, pool.prop_label, "detector label"
        else:
            names, lab, source = pool.concepts, pool.prop_concept, "assigned concept"
        valid = lab >= 0
        if source == "assigned concept":
            skip = {j for j, c in enumerate(names) if c in (BACKGROUND, UNKNOWN)}
            valid &= ~np.isin(lab, list(skip))
        pairs = np.unique(pool.prop_image[valid] * max(len(names), 1) + lab[valid])
        img, cls = pairs // max(len(names), 1), pairs % max(len(names), 1)
        order_keys = rng.random(n)
        queues: list[tuple[str, list[int]]] = []
        for c in sorted(set(cls.tolist()), key=lambda j: names[j]):
            members = img[cls == c]
            members = members[np.lexsort((pool.image_ids[members], order_keys[members]))]
            queues.append((names[c], members.tolist()))
        picked: list[int] = []
        which: dict[int, tuple[str, int]] = {}
        taken = np.zeros(n, dtype=bool)
        pos = [0] * len(queues)
        budget = min(budget, n)
        turn = 0
        while len(picked) < budget and queues:
            active = False
            for q, (cname, members) in enumerate(queues):
                if len(picked) >= budget:
                    break
                while pos[q] < len(members) and taken[members[pos[q]]]:
                    pos[q] += 1
                if pos[q] < len(members):
                    i = members[pos[q]]
                    taken[i] = True
                    picked.append(i)
                    which[i] = (cname, turn)
                    active = True
            turn += 1
            if not active:
                break
        if len(picked) < budget:
            rest = np.flatnonzero(~taken)
            rest = rest[np.lexsort((pool.image_ids[rest], order_keys[rest]))]
            for i in rest[: budget - len(picked)]:
                picked.append(int(i))
                which[int(i)] = ("(no predicted class)", -1)
        picks = []
        for r, i in enumerate(picked, 1):
            cname, t = which[i]
            rat = {"rank": r, "image_id": str(pool.image_ids[i]), "strategy": self.name, "class": cname,
                   "quota_round": t, "label_source": source}
            picks.append(Pick(str(pool.image_ids[i]), r, float(-r), rat,
                              f"picked by uniform_by_label: quota of class {cname} (round {t + 1})"
                              if t >= 0 else "picked by uniform_by_label: filler (no predicted class)"))
        return Selection(self.name, picks, {"n_images": n, "n_classes": len(queues), "label_source": source})


def _box_features(name: str, pool: ScorePool, box_features: PoolBoxFeatures | None) -> Any:
    if box_features is None:
        raise FusionError(f"strategy {name!r} needs the round detector's box-head outputs (box_features); "
                          "the benchmark computes them when the strategy declares needs_box_features")
    try:
        return box_features.aligned_to(pool.image_ids)
    except ValueError as e:
        raise FusionError(f"strategy {name!r}: {e}") from None


def _proposal(b: Any, j: int, classes: tuple[str, ...]) -> dict[str, Any]:
    lab = int(b.labels[j])
    return {"box": [round(float(v), 1) for v in b.boxes[j]], "label": classes[lab - 1] if 0 < lab <= len(classes)
            else str(lab), "score": float(b.scores[j])}


class BadgeStrategy(Strategy):
    """BADGE: k-means++ seeding on pooled gradient embeddings of the box predictor (see badge.py)."""

    name = "badge"
    needs_scores, needs_embeddings, needs_mc_dropout = False, False, False
    needs_box_features = True

    def __init__(self, cfg: BadgeConfig | None = None):
        self.cfg = cfg or BadgeConfig()
        self.box_request = BoxRequest(self.cfg.top_k, self.cfg.min_score)

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None,
               box_features: PoolBoxFeatures | None = None) -> Selection:
        if pool.n_images == 0:
            return Selection(self.name, [], {"n_images": 0})
        imgs = _box_features(self.name, pool, box_features)
        classes = box_features.classes  # type: ignore[union-attr]
        emb = badge_image_embeddings(imgs, self.cfg, len(classes), imgs[0].feats.shape[1])
        idx, d2 = kmeans_pp_seeds(emb, budget, rng)
        norms = np.linalg.norm(emb, axis=1)
        picks = []
        for r, (i, dd) in enumerate(zip(idx.tolist(), d2.tolist()), 1):
            b = imgs[i]
            rat: dict[str, Any] = {"rank": r, "image_id": str(pool.image_ids[i]), "strategy": self.name,
                                   "score": float(dd), "score_name": "squared norm (first pick)" if r == 1 else
                                   "D^2 to the nearest earlier pick", "embedding_norm": float(norms[i]),
                                   "n_proposals": len(b), "pooling": self.cfg.pooling}
            j = driving_proposal(b, self.cfg)
            if j is not None:
                rat["driving_proposal"] = _proposal(b, j, classes)
            text = (f"picked by badge: largest gradient embedding (norm {norms[i]:.4g})" if r == 1 else
                    f"picked by badge: k-means++ draw, D^2 {dd:.4g} to the nearest earlier pick (rank {r})")
            picks.append(Pick(str(pool.image_ids[i]), r, float(dd), rat, text))
        return Selection(self.name, picks, {"n_images": pool.n_images, "config": asdict(self.cfg),
                                            "embedding_dim": int(emb.shape[1])})


class PPALStrategy(Strategy):
    """PPAL: DCUS pre-selection, then k-medoids on CCMS distances (see ppal.py)."""

    name = "ppal"
    needs_scores, needs_embeddings, needs_mc_dropout = False, False, False
    needs_box_features = True

    def __init__(self, cfg: PPALConfig | None = None):
        self.cfg = cfg or PPALConfig()
        self.box_request = BoxRequest(self.cfg.max_dets, self.cfg.score_thr, self.cfg.quality_xi)

    def select(self, pool: ScorePool, counts: Counts, graph: ConceptGraph, config: GSALConfig, budget: int,
               rng: np.random.Generator, labeled_embeddings: np.ndarray | None = None,
               box_features: PoolBoxFeatures | None = None) -> Selection:
        if pool.n_images == 0:
            return Selection(self.name, [], {"n_images": 0})
        imgs = _box_features(self.name, pool, box_features)
        bf: PoolBoxFeatures = box_features  # type: ignore[assignment]
        n_cls = len(bf.classes)
        quality = np.zeros(n_cls) if bf.class_quality is None else np.asarray(bf.class_quality, dtype=np.float64)
        if quality.shape != (n_cls,):
            raise FusionError(f"strategy 'ppal': class quality has shape {quality.shape}, expected ({n_cls},)")
        w = difficulty_weights(quality, self.cfg.class_weight_ub, self.cfg.class_weight_alpha)
        u = dcus_uncertainty(imgs, w, self.cfg.score_thr)
        budget = min(budget, pool.n_images)
        n_cand = min(pool.n_images, max(budget, int(np.ceil(self.cfg.expand_ratio * budget))))
        cand = top_b(u, pool.image_ids, n_cand)
        d = ccms_distances([imgs[i] for i in cand], self.cfg.score_thr, self.cfg.empty_distance)
        med = cand[k_medoids(d, budget, rng, self.cfg.kmedoids_iters)]
        order = med[np.lexsort((pool.image_ids[med], -u[med]))]
        picks = []
        for r, i in enumerate(order.tolist(), 1):
            b = imgs[i]
            rat: dict[str, Any] = {"rank": r, "image_id": str(pool.image_ids[i]), "strategy": self.name,
                                   "score": float(u[i]), "score_name": "DCUS uncertainty",
                                   "dcus_rank": int(np.flatnonzero(cand == i)[0]) + 1, "n_candidates": int(n_cand)}
            keep = np.flatnonzero(b.scores >= self.cfg.score_thr)
            if keep.size:
                contrib = w[b.labels[keep] - 1] * binary_entropy(b.scores[keep])
                rat["driving_proposal"] = _proposal(b, int(keep[int(np.argmax(contrib))]), bf.classes)
            picks.append(Pick(str(pool.image_ids[i]), r, float(u[i]), rat,
                              f"picked by ppal: a CCMS medoid among the {n_cand} most difficulty-weighted uncertain "
                              f"images (DCUS {u[i]:.4g}, rank {rat['dcus_rank']} there)"))
        return Selection(self.name, picks, {"n_images": pool.n_images, "config": asdict(self.cfg),
                                            "n_candidates": int(n_cand),
                                            "class_quality": {c: float(q) for c, q in zip(bf.classes, quality)},
                                            "class_weights": {c: float(x) for c, x in zip(bf.classes, w)}})


STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "gsal": lambda: GSALStrategy("gsal"),
    "full": lambda: GSALStrategy("full", {"levels": ("fine", "coarse", "abstract")}),
    "diffusion_only": lambda: GSALStrategy("diffusion_only", {"lambda_": 0.0, "gamma": 0.0}),
    "symbolic_only": lambda: GSALStrategy("symbolic_only", {"alpha": 0.0, "beta": 0.0}),
    "fine_only": lambda: GSALStrategy("fine_only", {"levels": ("fine",)}),
    "coarse_only": lambda: GSALStrategy("coarse_only", {"levels": ("coarse",)}),
    "abstract_only": lambda: GSALStrategy("abstract_only", {"levels": ("abstract",)}),
    "fine_coarse": lambda: GSALStrategy("fine_coarse", {"levels": ("fine", "coarse")}),
    "gsal_no_rarity": lambda: GSALStrategy("gsal_no_rarity", {"rarity": False}),
    "random": RandomStrategy,
    "entropy": lambda: UncertaintyStrategy("entropy", "entropy"),
    "margin": lambda: UncertaintyStrategy("margin", "margin"),
    "mc_dropout": lambda: UncertaintyStrategy("mc_dropout", "mc_dropout", needs_mc_dropout=True),
    "coreset": CoresetStrategy,
    "uniform_by_label": UniformByLabelStrategy,
    "badge": BadgeStrategy,
    "ppal": PPALStrategy,
}


def available_strategies() -> list[str]:
    """Registered strategy names."""
    return list(STRATEGIES)


def get_strategy(name: str) -> Strategy:
    """The strategy registered as ``name``; unknown names raise a `KeyError` listing valid ones."""
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; available: {', '.join(STRATEGIES)}") from None
