"""BADGE (Ash et al., ICLR 2020) for a two-stage detector: gradient embeddings + k-means++ seeding.

For one proposal with box-head feature h (the penultimate feature, input of the class-score layer
W [C+1, d]) and softmax p over background + classes, the pseudo-label is y_hat = argmax p and the
cross-entropy loss gradient w.r.t. W is, in closed form,

    g = dL/dW = (p - onehot(y_hat)) (x) h        ([C+1, d], flattened class-major)

(no autograd needed; the class-score bias is left out, as in BADGE). Per image, the ``top_k``
proposals by detector score each give one g; the image's embedding is the g of largest norm
(``pooling="max_norm"``, the default) or their mean (``"mean"``). Why max-norm: ||g|| =
||p - onehot|| * ||h|| is BADGE's uncertainty magnitude, and an image is worth labeling when one of its
regions is uncertain (the detector's entropy/MC-dropout scores here take the max over proposals too);
a mean lets confident background proposals dilute it, and gradients of proposals with different
pseudo-labels point in different class blocks and partly cancel.

The batch is BADGE's k-means++ seeding on those embeddings: the first pick is the largest-norm
embedding (as in the authors' code), every further pick is drawn with probability proportional to
the squared Euclidean distance D^2 to the nearest pick so far (already picked points have D = 0; if
every remaining point has D = 0, the draw is uniform over the remaining ones, so picks stay distinct).
sklearn is not in the environment, so the seeding is implemented here (tested against a brute-force
reference); its ``kmeans_plusplus`` would differ anyway (greedy local trials, random first center).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from gsal_edge.acquisition.box_outputs import BoxHeadOutputs

__all__ = ["BadgeConfig", "badge_image_embeddings", "d2_probabilities", "driving_proposal", "gradient_embeddings",
           "kmeans_pp_seeds", "pool_embeddings"]

Pooling = Literal["max_norm", "mean"]


@dataclass(frozen=True)
class BadgeConfig:
    """BADGE settings: proposals per image (by detector score), their minimum score, the pooling."""

    top_k: int = 10
    min_score: float = 0.0
    pooling: Pooling = "max_norm"

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"BADGE top_k must be >= 1, got {self.top_k}")
        if not 0 <= self.min_score < 1:
            raise ValueError(f"BADGE min_score must be in [0, 1), got {self.min_score}")
        if self.pooling not in ("max_norm", "mean"):
            raise ValueError(f"BADGE pooling must be 'max_norm' or 'mean', got {self.pooling!r}")


def gradient_embeddings(probs: np.ndarray, feats: np.ndarray) -> np.ndarray:
    """[k, (C+1)*d] rows g = (p - onehot(argmax p)) (x) h of ``probs`` [k, C+1] and ``feats`` [k, d]."""
    p = np.asarray(probs, dtype=np.float64)
    h = np.asarray(feats, dtype=np.float64)
    if p.ndim != 2 or h.ndim != 2 or p.shape[0] != h.shape[0]:
        raise ValueError(f"expected probs [k, C+1] and feats [k, d] with the same k, got {p.shape} and {h.shape}")
    r = p.copy()
    r[np.arange(p.shape[0]), p.argmax(axis=1)] -= 1.0
    return (r[:, :, None] * h[:, None, :]).reshape(p.shape[0], -1)


def pool_embeddings(g: np.ndarray, pooling: Pooling = "max_norm") -> np.ndarray:
    """One image embedding from its proposals' rows ``g`` [k, D] (zeros when k = 0)."""
    g = np.asarray(g, dtype=np.float64)
    if g.shape[0] == 0:
        return np.zeros(g.shape[1])
    if pooling == "mean":
        return g.mean(axis=0)
    if pooling == "max_norm":
        return g[int(np.argmax(np.einsum("ij,ij->i", g, g)))]
    raise ValueError(f"unknown BADGE pooling {pooling!r}")


def badge_image_embeddings(images: tuple[BoxHeadOutputs, ...] | list[BoxHeadOutputs], cfg: BadgeConfig,
                           n_classes: int, d: int) -> np.ndarray:
    """[n, (C+1)*d] pooled gradient embeddings, one per image (zeros for an image without proposals)."""
    out = np.zeros((len(images), (n_classes + 1) * d))
    for i, b in enumerate(images):
        keep = np.flatnonzero(b.scores > cfg.min_score)[: cfg.top_k]
        if keep.size:
            out[i] = pool_embeddings(gradient_embeddings(b.probs[keep], b.feats[keep]), cfg.pooling)
    return out


def driving_proposal(b: BoxHeadOutputs, cfg: BadgeConfig) -> int | None:
    """Row of ``b`` whose gradient embedding has the largest norm among the proposals BADGE reads
    (the pooled embedding itself under ``max_norm``); None without proposals."""
    keep = np.flatnonzero(b.scores > cfg.min_score)[: cfg.top_k]
    if keep.size == 0:
        return None
    g = gradient_embeddings(b.probs[keep], b.feats[keep])
    return int(keep[int(np.argmax(np.einsum("ij,ij->i", g, g)))])


def d2_probabilities(x: np.ndarray, chosen: list[int]) -> np.ndarray:
    """k-means++ draw probabilities: D^2(x_i, nearest chosen) / sum, uniform over the unchosen if all are 0."""
    x = np.asarray(x, dtype=np.float64)
    if not chosen:
        raise ValueError("k-means++ D^2 needs at least one chosen center")
    c = x[chosen]
    d2 = np.maximum(np.einsum("ij,ij->i", x, x)[:, None] - 2.0 * x @ c.T + np.einsum("ij,ij->i", c, c)[None], 0.0)
    d2 = d2.min(axis=1)
    d2[chosen] = 0.0
    tot = d2.sum()
    if tot <= 0:
        d2 = np.ones(x.shape[0])
        d2[chosen] = 0.0
        tot = d2.sum()
    return d2 / tot


def kmeans_pp_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """BADGE's k-means++ seeding: ``k`` distinct indices of ``x`` [n, D] in pick order, and each pick's
    D^2 to the picks before it (the first, the largest-norm point, gets its squared norm)."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, np.int64), np.zeros(0)
    norms = np.einsum("ij,ij->i", x, x)
    first = int(np.argmax(norms))
    chosen, d2_at = [first], [float(norms[first])]
    min_d2 = np.maximum(norms - 2.0 * x @ x[first] + norms[first], 0.0)
    for _ in range(1, k):
        p = min_d2.copy()
        p[chosen] = 0.0
        if p.sum() <= 0:
            p = np.ones(n)
            p[chosen] = 0.0
        p /= p.sum()
        i = int(rng.choice(n, p=p))
        chosen.append(i)
        d2_at.append(float(min_d2[i]))
        min_d2 = np.minimum(min_d2, np.maximum(norms - 2.0 * x @ x[i] + norms[i], 0.0))
    return np.array(chosen, dtype=np.int64), np.array(d2_at)
