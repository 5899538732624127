"""MC-dropout on the detector's box head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsal_edge.models.detector import build_detector
from gsal_edge.models.mc_dropout import mc_dropout_probs, mc_dropout_score, mc_dropout_uncertainty


def test_mc_dropout_score_pure() -> None:
    same = np.tile(np.array([[[0.2, 0.8], [0.9, 0.1]]]), (5, 1, 1))
    assert mc_dropout_score(same) == 0.0
    # proposal 0 flips between [0, 1] and [1, 0]: var 0.25 per class -> 0.5; proposal 1 is constant
    flip = np.array([[[0, 1], [0.5, 0.5]], [[1, 0], [0.5, 0.5]]], dtype=float)
    assert mc_dropout_score(flip) == pytest.approx(0.5)
    # top_k keeps the most foreground-like proposals (lowest mean background prob): proposal 1 here
    fg = np.array([[[0.9, 0.1], [0.0, 1.0]], [[0.1, 0.9], [0.0, 1.0]]])
    assert mc_dropout_score(fg, top_k=1) == 0.0 and mc_dropout_score(fg, top_k=2) > 0
    assert mc_dropout_score(np.zeros((3, 0, 4))) == 0.0


def test_mc_dropout_on_a_model_is_seeded_and_leaves_global_rng_alone() -> None:
    model = build_detector("tiny", 3, seed=0).eval()
    rng = np.random.default_rng(0)
    img = np.clip(0.4 + 0.05 * rng.standard_normal((64, 64)), 0, 1).astype(np.float32)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = mc_dropout_uncertainty(model, img, T=6, seed=7, p=0.3)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert a == mc_dropout_uncertainty(model, img, T=6, seed=7, p=0.3)
    assert a > 0
    probs = mc_dropout_probs(model, img, T=4, seed=1, p=0.3)
    assert probs.shape[0] == 4 and probs.shape[2] == 4
    assert np.allclose(probs.sum(-1), 1, atol=1e-5)
    assert not np.allclose(probs[0], probs[1])  # dropout is on
    # dropout is off again afterwards: plain inference is deterministic
    from gsal_edge.models.detector import predict

    p1, p2 = predict(model, [img]), predict(model, [img])
    assert np.array_equal(p1[0].scores, p2[0].scores)
    with pytest.raises(ValueError, match="T >= 2"):
        mc_dropout_uncertainty(model, img, T=1)
