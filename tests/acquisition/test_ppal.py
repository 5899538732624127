"""PPAL math: difficulty weights, DCUS, CCMS distances and the k-medoids diversity step."""

from __future__ import annotations

import numpy as np
import pytest

from gsal_edge.acquisition.box_outputs import BoxHeadOutputs
from gsal_edge.acquisition.ppal import (
    PPALConfig,
    binary_entropy,
    ccms_distances,
    class_quality,
    dcus_uncertainty,
    difficulty_weights,
    k_centre_greedy_init,
    k_medoids,
)


def dets(feats: list[list[float]], labels: list[int], scores: list[float]) -> BoxHeadOutputs:
    f = np.array(feats, np.float32).reshape(len(labels), -1)
    n = len(labels)
    probs = np.full((n, 3), 0.0, np.float32)
    return BoxHeadOutputs(f, probs, np.array(scores, np.float32), np.array(labels, np.int64),
                          np.zeros((n, 4), np.float32))


def test_difficulty_weights_by_hand() -> None:
    w = difficulty_weights(np.array([1.0, 0.0, 0.5]), ub=0.2, alpha=0.3)
    assert w[0] == pytest.approx(1.0) and w[1] == pytest.approx(1.2)       # easy -> 1, hard -> 1 + ub
    b = np.exp(1 / 0.3) - 1
    assert w[2] == pytest.approx(1 + 0.3 * np.log(b * 0.5 + 1) * 0.2)
    assert np.all(np.diff(difficulty_weights(np.linspace(0, 1, 11))) < 0)   # lower quality -> larger weight
    assert np.array_equal(class_quality(np.array([1.5, 0.0]), np.array([3.0, 0.0])), [0.5, 0.0])  # unseen = hardest


def test_dcus_weights_the_hard_class_up() -> None:
    # two images with one equally uncertain detection each, of class 1 (easy) and class 2 (hard)
    easy, hard = dets([[1, 0]], [1], [0.5]), dets([[1, 0]], [2], [0.5])
    w = difficulty_weights(np.array([0.9, 0.1]))
    u = dcus_uncertainty([easy, hard], w, score_thr=0.05)
    assert u[1] > u[0]
    assert u[0] == pytest.approx(w[0] * np.log(2), rel=1e-6)            # H(0.5) = ln 2
    # sum over detections; below-threshold ones do not count
    two = dets([[1, 0], [0, 1], [1, 1]], [1, 1, 1], [0.5, 0.3, 0.01])
    assert dcus_uncertainty([two], np.ones(2), 0.05)[0] == pytest.approx(float(binary_entropy(np.array([0.5, 0.3])).sum()))


def test_ccms_is_category_conditioned_and_score_weighted() -> None:
    a = dets([[1, 0]], [1], [0.9])
    same = dets([[1, 0]], [1], [0.8])               # same class, same feature
    other_class = dets([[1, 0]], [2], [0.8])        # same feature, other class: maximal distance
    ortho = dets([[0, 1]], [1], [0.8])              # same class, orthogonal feature
    empty = dets([[0, 1]], [1], [0.01])             # nothing above the threshold
    d = ccms_distances([a, same, other_class, ortho, empty], score_thr=0.05, empty_distance=1.0)
    assert d[0, 1] == pytest.approx(0.0, abs=1e-7)
    assert d[0, 2] == pytest.approx(2.0)
    assert d[0, 3] == pytest.approx(1.0)
    assert d[0, 4] == 1.0 and d[4, 4] == 0.0
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    # A -> B is the score-weighted mean over A's detections of the nearest same-class distance
    mix = dets([[1, 0], [0, 1]], [1, 1], [0.9, 0.1])
    d2 = ccms_distances([mix, a], 0.05)
    a_to_b = (0.9 * 0.0 + 0.1 * 1.0) / 1.0          # mix's dets to a's single det
    b_to_a = 0.0                                    # a's det has an identical one in mix
    assert d2[0, 1] == pytest.approx(0.5 * (a_to_b + b_to_a))


def test_k_centre_greedy_and_k_medoids_pick_one_per_cluster_not_duplicates() -> None:
    # three tight groups in 1-D: {0, 0, 0.1}, {5, 5.1}, {9}
    pts = np.array([0.0, 0.0, 0.1, 5.0, 5.1, 9.0])
    d = np.abs(pts[:, None] - pts[None, :])
    for seed in range(20):
        init = k_centre_greedy_init(d, 3, np.random.default_rng(seed))
        med = k_medoids(d, 3, np.random.default_rng(seed))
        groups = lambda idx: sorted({0 if pts[i] < 1 else 1 if pts[i] < 6 else 2 for i in idx})
        assert groups(init) == [0, 1, 2] and groups(med) == [0, 1, 2]
        assert len(set(med.tolist())) == 3


def test_ppal_diversity_picks_a_non_duplicate() -> None:
    """Two identical uncertain images and a different one: a batch of 2 takes one of the twins and the other."""
    twin = dets([[1, 0, 0]], [1], [0.5])
    other = dets([[0, 0, 1]], [1], [0.45])
    d = ccms_distances([twin, twin, other], 0.05)
    for seed in range(10):
        med = sorted(k_medoids(d, 2, np.random.default_rng(seed)).tolist())
        assert 2 in med and (0 in med) != (1 in med)


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="score_thr"):
        PPALConfig(score_thr=1.5)
    with pytest.raises(ValueError, match="expand_ratio"):
        PPALConfig(expand_ratio=0.5)
