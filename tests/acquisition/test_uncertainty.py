"""Per-image uncertainty aggregates."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.acquisition.uncertainty import image_uncertainty


def test_no_detection() -> None:
    u = image_uncertainty(np.zeros((0, 6), np.float32), np.zeros(0, np.float32))
    assert u == {"entropy": 0.0, "entropy_mean": 0.0, "margin": 0.0, "max_score": 0.0, "least_confidence": 1.0,
                 "n_det": 0.0}


def test_hand_values() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.9, 0.05, 0.05], [1 / 3, 1 / 3, 1 / 3]])
    scores = np.array([0.5, 0.05, 1 / 3])
    u = image_uncertainty(probs, scores)
    h = [math.log(2), -(0.9 * math.log(0.9) + 2 * 0.05 * math.log(0.05)), math.log(3)]
    assert u["entropy"] == pytest.approx(math.log(3))  # max entropy: the uniform row
    assert u["entropy_mean"] == pytest.approx(np.mean(h))
    assert u["margin"] == pytest.approx(1.0)  # rows 0 and 2 have margin 0
    assert u["max_score"] == pytest.approx(0.5) and u["least_confidence"] == pytest.approx(0.5)
    assert u["n_det"] == 3.0


def test_confident_detections_are_less_uncertain() -> None:
    sure = image_uncertainty(np.array([[0.02, 0.97, 0.01]]), np.array([0.97]))
    unsure = image_uncertainty(np.array([[0.4, 0.35, 0.25]]), np.array([0.35]))
    assert sure["entropy"] < unsure["entropy"] and sure["margin"] < unsure["margin"]
    assert sure["margin"] == pytest.approx(1 - 0.95)


def test_shape_mismatch_is_named() -> None:
    with pytest.raises(ValueError, match="class_probs"):
        image_uncertainty(np.ones((2, 3)) / 3, np.ones(3))
