"""BADGE math: the closed-form gradient embedding, per-image pooling and k-means++ seeding."""

from __future__ import annotations

import numpy as np
import pytest

from gsal_edge.acquisition.badge import (
    BadgeConfig,
    badge_image_embeddings,
    d2_probabilities,
    driving_proposal,
    gradient_embeddings,
    kmeans_pp_seeds,
    pool_embeddings,
)
from gsal_edge.acquisition.box_outputs import BoxHeadOutputs


def test_gradient_embedding_by_hand() -> None:
    p = np.array([[0.2, 0.7, 0.1]])  # y_hat = 1
    h = np.array([[1.0, 2.0]])
    g = gradient_embeddings(p, h)
    # (p - onehot(1)) = [0.2, -0.3, 0.1]; outer with h, class-major
    assert np.allclose(g, [[0.2, 0.4, -0.3, -0.6, 0.1, 0.2]])


def test_gradient_embedding_is_the_cross_entropy_gradient() -> None:
    """Against a finite-difference gradient of CE(softmax(W h + b), argmax) w.r.t. W."""
    rng = np.random.default_rng(0)
    W, b, h = rng.normal(size=(4, 3)), rng.normal(size=4), np.abs(rng.normal(size=3))
    z = W @ h + b
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    y = int(p.argmax())

    def loss(Wx: np.ndarray) -> float:
        zz = Wx @ h + b
        return float(-(zz[y] - np.log(np.exp(zz).sum())))

    num = np.zeros_like(W)
    for i in range(4):
        for j in range(3):
            e = np.zeros_like(W)
            e[i, j] = 1e-6
            num[i, j] = (loss(W + e) - loss(W - e)) / 2e-6
    assert np.allclose(gradient_embeddings(p[None], h[None])[0], num.ravel(), atol=1e-6)


def test_pooling_max_norm_and_mean() -> None:
    g = np.array([[1.0, 0.0], [0.0, -3.0], [1.0, 1.0]])
    assert np.array_equal(pool_embeddings(g, "max_norm"), [0.0, -3.0])
    assert np.allclose(pool_embeddings(g, "mean"), [2 / 3, -2 / 3])
    assert np.array_equal(pool_embeddings(np.zeros((0, 2))), [0.0, 0.0])


def _outputs(probs: list[list[float]], feats: list[list[float]]) -> BoxHeadOutputs:
    p = np.array(probs, np.float32).reshape(-1, 3)
    return BoxHeadOutputs(np.array(feats, np.float32).reshape(len(p), -1), p, p[:, 1:].max(1), p[:, 1:].argmax(1) + 1,
                          np.zeros((len(p), 4), np.float32))


def test_image_embeddings_use_top_k_and_empty_images_are_zero() -> None:
    sure = [0.0, 1.0, 0.0]                  # a confident proposal: gradient 0
    unsure = [0.1, 0.45, 0.45]
    img = _outputs([sure, unsure], [[1.0, 1.0], [2.0, 0.0]])   # ranked by score: sure first
    empty = BoxHeadOutputs.empty(2, 2)
    e1 = badge_image_embeddings([img, empty], BadgeConfig(top_k=1), 2, 2)
    assert np.allclose(e1[0], 0) and np.allclose(e1[1], 0)   # top-1 is the sure proposal
    e2 = badge_image_embeddings([img], BadgeConfig(top_k=2), 2, 2)
    assert np.allclose(e2[0], gradient_embeddings(np.array([unsure]), np.array([[2.0, 0.0]]))[0], atol=1e-6)
    assert driving_proposal(img, BadgeConfig(top_k=2)) == 1 and driving_proposal(empty, BadgeConfig()) is None
    with pytest.raises(ValueError, match="pooling"):
        BadgeConfig(pooling="sum")  # type: ignore[arg-type]


def _brute_d2(x: np.ndarray, chosen: list[int]) -> np.ndarray:
    n = len(x)
    d2 = np.zeros(n)
    for i in range(n):
        if i in chosen:
            continue
        d2[i] = min(sum((x[i][t] - x[c][t]) ** 2 for t in range(x.shape[1])) for c in chosen)
    if d2.sum() == 0:
        d2 = np.array([0.0 if i in chosen else 1.0 for i in range(n)])
    return d2 / d2.sum()


def _brute_seeds(x: np.ndarray, k: int, rng: np.random.Generator) -> list[int]:
    norms = [float(v @ v) for v in x]
    chosen = [int(np.argmax(norms))]
    while len(chosen) < k:
        chosen.append(int(rng.choice(len(x), p=_brute_d2(x, chosen))))
    return chosen


def test_kmeans_pp_matches_a_brute_force_reference() -> None:
    rng0 = np.random.default_rng(3)
    x = rng0.normal(size=(12, 4))
    for chosen in ([0], [2, 5], [1, 3, 7, 11]):
        assert np.allclose(d2_probabilities(x, chosen), _brute_d2(x, chosen))
    for seed in range(30):
        idx, _ = kmeans_pp_seeds(x, 6, np.random.default_rng(seed))
        assert idx.tolist() == _brute_seeds(x, 6, np.random.default_rng(seed))


def test_kmeans_pp_picks_distinct_far_and_large_norm_points() -> None:
    rng = np.random.default_rng(0)
    # 10 points near the origin, one far point (10, 0), and the largest-norm point (0, -12)
    x = np.vstack([0.01 * rng.normal(size=(10, 2)), [[10.0, 0.0]], [[0.0, -12.0]]])
    idx, d2 = kmeans_pp_seeds(x, 3, np.random.default_rng(1))
    assert idx[0] == 11 and d2[0] == pytest.approx(144.0)           # first: the largest norm
    p = d2_probabilities(x, [11])
    near = ((x[:10] - x[11]) ** 2).sum(1)                           # ~144 each
    assert p[10] == pytest.approx(244 / (244 + near.sum()), rel=1e-9)
    assert p[10] > 1.6 * p[:10].max()                               # a far point is likelier than any near one
    freq = np.mean([kmeans_pp_seeds(x, 2, np.random.default_rng(s))[0][1] == 10 for s in range(2000)])
    assert abs(freq - p[10]) < 0.03                                 # the draw follows D^2
    # once the far point and a cluster point are in, the rest of the cluster is all that is left
    full, _ = kmeans_pp_seeds(x, 12, np.random.default_rng(2))
    assert sorted(full.tolist()) == list(range(12))                 # distinct: a permutation at k = n
    dup, d2d = kmeans_pp_seeds(np.ones((5, 3)), 5, np.random.default_rng(0))
    assert sorted(dup.tolist()) == list(range(5)) and np.allclose(d2d[1:], 0)  # duplicates: uniform, distinct
    assert kmeans_pp_seeds(x, 0, np.random.default_rng(0))[0].size == 0
