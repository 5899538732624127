"""Box-head internals of the real (tiny) torchvision detector, as BADGE and PPAL read them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsal_edge.models.box_head_features import box_head_outputs, class_quality_sums
from gsal_edge.models.detector import build_detector, predict


def _image(seed: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = 0.4 + 0.05 * rng.standard_normal((size, size))
    img[20:30, 24:36] += 0.4  # a bright blob, so proposals differ from flat noise
    return np.clip(img, 0, 1).astype(np.float32)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.set_num_threads(1)
    m = build_detector("tiny", 3, seed=0).eval()
    m.classes = ["a", "b", "c"]
    return m


def test_outputs_are_the_box_heads_own_numbers(model: torch.nn.Module) -> None:
    imgs = [_image(0), _image(1)]
    outs = box_head_outputs(model, imgs, top_k=7)
    d = model.config.representation_size
    for o in outs:
        assert 0 < len(o) <= 7 and o.feats.shape == (len(o), d) and o.probs.shape == (len(o), 4)
        assert np.allclose(o.probs.sum(1), 1, atol=1e-5)
        assert np.array_equal(o.labels, o.probs[:, 1:].argmax(1) + 1)           # label = argmax foreground class
        assert np.allclose(o.scores, o.probs[:, 1:].max(1))                      # score = max foreground prob
        assert np.all(np.diff(o.scores) <= 1e-7)                                 # highest score first
        assert (o.feats >= 0).all()                                              # h is fc7 after ReLU
        # the softmax row is the class-score layer applied to h (h really is its input)
        w = model.roi_heads.box_predictor.cls_score
        logits = torch.from_numpy(o.feats) @ w.weight.detach().T + w.bias.detach()
        assert np.allclose(torch.softmax(logits, -1).numpy(), o.probs, atol=1e-5)
    # batching does not change per-image results; the top detection is the detector's own best detection
    one = box_head_outputs(model, [imgs[1]], top_k=7, batch_size=1)[0]
    assert np.allclose(one.feats, outs[1].feats, atol=1e-5) and np.allclose(one.boxes, outs[1].boxes, atol=1e-3)
    det = predict(model, [imgs[1]])[0]
    assert outs[1].scores[0] == pytest.approx(float(det.scores.max()), abs=1e-5)
    # min_score filters; the model is left in the mode it was in
    hi = float(outs[0].scores[2])
    assert (box_head_outputs(model, [imgs[0]], top_k=7, min_score=hi)[0].scores > hi).all()
    model.train()
    box_head_outputs(model, [imgs[0]], top_k=3)
    assert model.training
    model.eval()
    with pytest.raises(ValueError, match="float32"):
        box_head_outputs(model, [imgs[0].astype(np.float64)], top_k=3)


def test_class_quality_counts_matched_proposals_of_the_right_class(model: torch.nn.Module) -> None:
    img = _image(2)
    box = box_head_outputs(model, [img], top_k=1)[0].boxes[:1].astype(np.float64)  # where the detector looks
    s_b, n_b = class_quality_sums(model, [img], [box], [np.array([2])], xi=0.6, fg_iou=0.3)
    assert n_b[1] > 0 and n_b[0] == 0 and n_b[2] == 0                          # only class 2 (index 1) is matched
    q = s_b[1] / n_b[1]
    assert 0 < q <= 1
    # xi = 1: q is the mean class probability of those proposals, which the softmax bounds by 1
    s1, n1 = class_quality_sums(model, [img], [box], [np.array([2])], xi=1.0, fg_iou=0.3)
    assert n1[1] == n_b[1] and 0 < s1[1] / n1[1] < 1
    # a stricter match threshold never matches more proposals; an image without boxes adds nothing
    _, n_strict = class_quality_sums(model, [img], [box], [np.array([2])], xi=0.6, fg_iou=0.7)
    assert n_strict[1] <= n_b[1]
    s0, n0 = class_quality_sums(model, [img], [np.zeros((0, 4))], [np.zeros(0, np.int64)], xi=0.6)
    assert n0.sum() == 0 and s0.sum() == 0
    with pytest.raises(ValueError, match="GT labels"):
        class_quality_sums(model, [img], [box], [np.array([4])], xi=0.6)
