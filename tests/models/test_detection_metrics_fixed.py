"""F1 at score thresholds fixed beforehand (chosen on a validation split), and macro vs micro F1."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.models.detection_metrics import FixedThresholds, ImageBoxes, detection_metrics, f1_at


def _gt(boxes, labels) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=np.int64))


def _pred(boxes, scores, labels) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=np.int64),
                      np.array(scores, dtype=float))


def _box(i: int) -> list[float]:
    return [20.0 * i, 0.0, 20.0 * i + 10, 10.0]


FAR = [500, 500, 510, 510]


def test_threshold_chosen_on_validation_is_applied_on_test() -> None:
    classes = ["void"]
    # validation: TPs at 0.9 and 0.8, a FP at 0.6 -> best threshold 0.8 (F1 1.0)
    val_gt = [_gt([_box(0), _box(1)], [1, 1])]
    val_pred = [_pred([_box(0), _box(1), FAR], [0.9, 0.8, 0.6], [1, 1, 1])]
    val = detection_metrics(val_gt, val_pred, classes)
    assert val["threshold"] == pytest.approx(0.8) and val["f1"] == 1.0
    thr = FixedThresholds.from_metrics(val)
    assert thr.overall == pytest.approx(0.8) and thr.for_class("void") == pytest.approx(0.8)
    # test: TPs at 0.95 and 0.7; the best threshold on test itself would be 0.7 (F1 1.0), the fixed 0.8
    # keeps only the first: F1 = 2*1 / (2*1 + 0 + 1) = 2/3
    test_gt = [_gt([_box(0), _box(1)], [1, 1])]
    test_pred = [_pred([_box(0), _box(1)], [0.95, 0.7], [1, 1])]
    fixed = detection_metrics(test_gt, test_pred, classes, thresholds=thr)
    assert fixed["f1"] == pytest.approx(2 / 3) and fixed["threshold"] == pytest.approx(0.8)
    assert fixed["recall"] == pytest.approx(0.5) and fixed["precision"] == 1.0
    assert fixed["f1_oracle"] == 1.0 and fixed["threshold_source"] == "fixed"
    assert fixed["per_class"]["void"]["f1"] == pytest.approx(2 / 3)
    assert fixed["per_class"]["void"]["f1_oracle"] == 1.0
    # AP does not depend on the threshold
    assert fixed["map50"] == pytest.approx(detection_metrics(test_gt, test_pred, classes)["map50"])


def test_macro_and_micro_f1_differ_when_the_frequent_class_dominates() -> None:
    classes = ["void", "petal", "crack"]
    # 9 voids all found; the one petal missed (a petal FP elsewhere); no crack in this split
    gt = [_gt([_box(i) for i in range(9)] + [[300, 300, 320, 320]], [1] * 9 + [2])]
    pred = [_pred([_box(i) for i in range(9)] + [FAR], [0.9] * 9 + [0.9], [1] * 9 + [2])]
    m = detection_metrics(gt, pred, classes, thresholds=0.5)
    # micro: TP 9, FP 1, FN 1 -> 18 / 20; macro over classes present (void 1.0, petal 0.0) -> 0.5
    assert m["f1"] == pytest.approx(0.9)
    assert m["f1_macro"] == pytest.approx(0.5)
    assert math.isnan(m["per_class"]["crack"]["f1"])  # absent from the split: out of the macro mean


def test_per_class_thresholds_and_fallback() -> None:
    val = {"threshold": 0.4, "per_class": {"void": {"threshold": 0.7, "n_gt": 3},
                                           "petal": {"threshold": math.inf, "n_gt": 0}}}
    thr = FixedThresholds.from_metrics(val)
    assert thr.for_class("void") == 0.7
    assert thr.for_class("petal") == 0.4  # no validation ground truth: the pooled threshold
    # per-class thresholds change the macro F1, not the pooled one
    gt = [_gt([_box(0), _box(1)], [1, 2])]
    pred = [_pred([_box(0), _box(1)], [0.6, 0.6], [1, 2])]
    m = detection_metrics(gt, pred, ["void", "petal"], thresholds=thr)
    assert m["f1"] == 1.0  # pooled at 0.4 keeps both
    assert m["per_class"]["void"]["f1"] == 0.0 and m["per_class"]["petal"]["f1"] == 1.0
    assert m["f1_macro"] == pytest.approx(0.5)


def test_f1_at_keep_none_and_no_ground_truth() -> None:
    r = f1_at(np.array([0.9, 0.5]), np.array([True, False]), 2, math.inf)
    assert r["f1"] == 0.0 and r["precision"] == 0.0 and r["fn"] == 2
    r = f1_at(np.array([0.9]), np.array([False]), 0, 0.5)
    assert math.isnan(r["f1"]) and r["fp"] == 1
