"""PPAL (Yang, Huang & Crowley 2022, "Plug and Play Active Learning for Object Detection"), two stages.

1. **DCUS** (difficulty calibrated uncertainty sampling). Per foreground class c a detection quality
   q_c (mean of p_c^xi * IoU^(1 - xi) over the labeled set's proposals matched to a class-c box) gives
   the difficulty weight w_c = 1 + alpha * ub * log(b * (1 - q_c) + 1), b = e^(1/alpha) - 1, so
   w runs from 1 (q = 1, easy) to 1 + ub (q = 0, hard: also a class never matched). An image's
   uncertainty is sum over its detections with score >= ``score_thr`` of w_label * H(score), H the
   binary entropy of the detection score; the ``expand_ratio * b`` most uncertain images are kept.
2. **CCMS** (category conditioned matching similarity) diversity on the kept images. Between
   detections i of image A and j of image B the distance is 1 - cos(h_i, h_j) for the same label, 2
   (the maximum) otherwise; A -> B is the score-weighted mean over A's detections of the distance to
   the nearest detection of B, and the image distance is the mean of A -> B and B -> A. The b picks
   are the medoids of a k-medoids clustering on that matrix, seeded by k-centre greedy (seeded random
   first centre), as in the authors' released code (``DiversitySampler.kmeans``; the paper calls it a
   modified k-means++: with only pairwise similarities, medoids replace means).

Hyper-parameters default to the authors' VOC config (score_thr 0.05, ub 0.2, alpha 0.3, xi 0.6,
expand ratio 4, 100 detections, 100 k-medoids iterations).

Simplified here (the detector and its training stay the project's):
- q_c is measured once per round after training, on the labeled images with the trained detector
  (test-time RPN proposals), not as the paper's EMA over training iterations of positive anchors;
- the detector is the project's two-stage Faster R-CNN, not RetinaNet: a detection is a proposal
  with its argmax class (softmax score), its feature is the box head's penultimate feature h (the
  paper's RetinaNet code samples the FPN map at the box centre);
- an image without a detection above ``score_thr`` is at distance ``empty_distance`` from an image
  with one and 0 from another empty one (the released code gives 0 to every pair involving it, a
  case it flags as a potential bug);
- the final picks are ordered by DCUS uncertainty (the paper's batch has no order).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gsal_edge.acquisition.box_outputs import BoxHeadOutputs

__all__ = [
    "PPALConfig",
    "ccms_distances",
    "class_quality",
    "dcus_uncertainty",
    "difficulty_weights",
    "k_centre_greedy_init",
    "k_medoids",
]


@dataclass(frozen=True)
class PPALConfig:
    """PPAL settings (defaults: the authors' VOC config, see module doc)."""

    score_thr: float = 0.05
    class_weight_ub: float = 0.2
    class_weight_alpha: float = 0.3
    quality_xi: float = 0.6
    expand_ratio: float = 4.0
    max_dets: int = 100
    kmedoids_iters: int = 100
    empty_distance: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.score_thr < 1:
            raise ValueError(f"PPAL score_thr must be in [0, 1), got {self.score_thr}")
        if self.class_weight_ub < 0 or self.class_weight_alpha <= 0:
            raise ValueError("PPAL class_weight_ub must be >= 0 and class_weight_alpha > 0")
        if not 0 <= self.quality_xi <= 1:
            raise ValueError(f"PPAL quality_xi must be in [0, 1], got {self.quality_xi}")
        if self.expand_ratio < 1 or self.max_dets < 1 or self.kmedoids_iters < 0:
            raise ValueError("PPAL expand_ratio must be >= 1, max_dets >= 1, kmedoids_iters >= 0")
        if not 0 <= self.empty_distance <= 2:
            raise ValueError(f"PPAL empty_distance must be in [0, 2], got {self.empty_distance}")


def class_quality(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """q_c = sums / counts per class; 0 (hardest) for a class with no matched proposal."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    return np.where(counts > 0, sums / np.maximum(counts, 1e-12), 0.0)


def difficulty_weights(quality: np.ndarray, ub: float = 0.2, alpha: float = 0.3) -> np.ndarray:
    """w_c = 1 + alpha * ub * log(b * (1 - q_c) + 1), b = e^(1/alpha) - 1 (1 at q = 1, 1 + ub at q = 0)."""
    q = np.clip(np.asarray(quality, dtype=np.float64), 0.0, 1.0)
    b = np.expm1(1.0 / alpha)
    return 1.0 + alpha * np.log(b * (1.0 - q) + 1.0) * ub


def binary_entropy(s: np.ndarray) -> np.ndarray:
    """-s log s - (1 - s) log(1 - s) (natural log; the authors' 1e-10 guard)."""
    s = np.asarray(s, dtype=np.float64)
    return -(s * np.log(s + 1e-10) + (1 - s) * np.log(1 - s + 1e-10))


def dcus_uncertainty(images: tuple[BoxHeadOutputs, ...] | list[BoxHeadOutputs], weights: np.ndarray,
                     score_thr: float) -> np.ndarray:
    """Per image: sum over detections with score >= ``score_thr`` of w[label - 1] * H(score)."""
    w = np.asarray(weights, dtype=np.float64)
    out = np.zeros(len(images))
    for i, b in enumerate(images):
        keep = b.scores >= score_thr
        if keep.any():
            out[i] = float((w[b.labels[keep] - 1] * binary_entropy(b.scores[keep])).sum())
    return out


def ccms_distances(images: tuple[BoxHeadOutputs, ...] | list[BoxHeadOutputs], score_thr: float,
                   empty_distance: float = 1.0) -> np.ndarray:
    """[n, n] CCMS image distances (symmetric, 0 on the diagonal; see module doc)."""
    n = len(images)
    feats, labels, scores, owner = [], [], [], []
    for i, b in enumerate(images):
        keep = np.flatnonzero(b.scores > score_thr)
        f = np.asarray(b.feats[keep], dtype=np.float64)
        # unit rows in float32: the [n_a, N] cosine products dominate the cost; 1e-7 is plenty for a distance
        feats.append((f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)).astype(np.float32))
        labels.append(b.labels[keep])
        scores.append(np.asarray(b.scores[keep], dtype=np.float64))
        owner.append(np.full(keep.size, i))
    d_dir = np.zeros((n, n))
    has = np.array([len(s) > 0 for s in scores])
    if has.any():
        F, L, O = np.concatenate(feats), np.concatenate(labels), np.concatenate(owner)
        starts = np.flatnonzero(np.r_[True, O[1:] != O[:-1]])  # detections are grouped by image
        img_of_start = O[starts]
        for a in np.flatnonzero(has):
            dist = 1.0 - (feats[a] @ F.T).astype(np.float64)  # [n_a, N]
            dist[labels[a][:, None] != L[None, :]] = 2.0
            nearest = np.minimum.reduceat(dist, starts, axis=1)  # [n_a, images with detections]
            s = scores[a]
            d_dir[a, img_of_start] = (s @ nearest) / s.sum()
    d = 0.5 * (d_dir + d_dir.T)
    mixed = has[:, None] != has[None, :]
    d[mixed] = empty_distance
    d[~has[:, None] & ~has[None, :]] = 0.0
    d = np.clip(d, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def k_centre_greedy_init(d: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    """k-centre greedy on a distance matrix: a seeded random first centre, then the farthest point."""
    n = d.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return []
    centres = [int(rng.integers(n))]
    min_d = d[:, centres[0]].copy()
    for _ in range(1, k):
        m = min_d.copy()
        m[centres] = -1.0
        c = int(np.argmax(m))
        centres.append(c)
        min_d = np.minimum(min_d, d[:, c])
    return centres


def k_medoids(d: np.ndarray, k: int, rng: np.random.Generator, n_iter: int = 100) -> np.ndarray:
    """PPAL's diversity step: k-centre-greedy seeds refined by k-medoids (assign to the nearest centre,
    move each centre to its cluster's medoid) until stable or ``n_iter`` rounds; ``k`` distinct indices."""
    centres = np.array(k_centre_greedy_init(d, k, rng), dtype=np.int64)
    for _ in range(n_iter):
        assign = np.argmin(d[:, centres], axis=1)
        assign[centres] = np.arange(centres.size)  # a centre stays in its own cluster (ties between duplicates)
        new = centres.copy()
        for j in range(centres.size):
            members = np.flatnonzero(assign == j)
            new[j] = members[int(np.argmin(d[np.ix_(members, members)].sum(axis=1)))]
        if np.array_equal(new, centres) or np.unique(new).size != new.size:
            break
        centres = new
    return centres
