"""Detection metrics on hand-computed cases (F1 at the best threshold, COCO AP50 and AP)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gsal_edge.models.detection_metrics import (
    ImageBoxes,
    best_f1,
    box_iou,
    coco_ap,
    detection_metrics,
    f1_scores,
    ground_truth,
    match_image,
)


def _gt(boxes, labels) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=np.int64))


def _pred(boxes, scores, labels) -> ImageBoxes:
    return ImageBoxes(np.array(boxes, dtype=float).reshape(-1, 4), np.array(labels, dtype=np.int64),
                      np.array(scores, dtype=float))


A = [0, 0, 10, 10]
B = [50, 50, 70, 60]
FAR = [200, 200, 210, 210]


def test_box_iou_hand_values() -> None:
    iou = box_iou(np.array([A]), np.array([[5, 0, 15, 10], A, FAR, [0, 0, 10, 5]]))
    assert iou == pytest.approx(np.array([[50 / 150, 1.0, 0.0, 0.5]]))


def test_perfect_predictions_score_one() -> None:
    gts = [_gt([A, B], [1, 2]), _gt([B], [2])]
    preds = [_pred([A, B], [0.9, 0.8], [1, 2]), _pred([B], [0.7], [2])]
    m = detection_metrics(gts, preds, ["void", "crack"], image_sizes=[(256, 256)] * 2)
    assert m["f1"] == 1.0 and m["map50"] == pytest.approx(1.0) and m["ap"] == pytest.approx(1.0)
    assert m["per_class"]["void"]["f1"] == 1.0 and m["per_class"]["crack"]["ap50"] == pytest.approx(1.0)
    assert m["per_class"]["crack"]["n_gt"] == 2 and m["n_gt"] == 3


def test_one_miss() -> None:
    # 2 ground truths, 1 found: F1 = 2*1 / (2*1 + 0 + 1); COCO 101-point AP50 = 51/101 (recall 0..0.5 at precision 1)
    gts = [_gt([A, B], [1, 1])]
    preds = [_pred([A], [0.9], [1])]
    m = detection_metrics(gts, preds, ["void"])
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(0.5) and m["precision"] == 1.0
    assert m["map50"] == pytest.approx(51 / 101)


def test_false_positive_above_the_true_one() -> None:
    # FP at 0.9, TP at 0.8: F1(0.9) = 0, F1(0.8) = 2/3; AP50 = 0.5 (precision 0.5 at recall 1)
    gts = [_gt([A], [1])]
    preds = [_pred([FAR, A], [0.9, 0.8], [1, 1])]
    m = detection_metrics(gts, preds, ["void"])
    assert m["f1"] == pytest.approx(2 / 3) and m["threshold"] == pytest.approx(0.8)
    assert m["map50"] == pytest.approx(0.5)


def test_best_threshold_drops_low_scoring_false_positives() -> None:
    gts = [_gt([A], [1])]
    preds = [_pred([A, FAR, B], [0.9, 0.3, 0.2], [1, 1, 1])]
    m = detection_metrics(gts, preds, ["void"])
    assert m["f1"] == 1.0 and m["threshold"] == pytest.approx(0.9)


def test_duplicate_detection_is_a_false_positive() -> None:
    tp = match_image(np.array([A], float), np.array([A, [0, 0, 10, 9]], float), np.array([0.5, 0.9]))
    assert tp.tolist() == [False, True]  # the higher-scored duplicate takes the match


def test_wrong_class_is_miss_plus_false_positive() -> None:
    gts = [_gt([A], [1])]
    preds = [_pred([A], [0.9], [2])]
    m = detection_metrics(gts, preds, ["void", "crack"])
    assert m["f1"] == 0.0
    assert m["per_class"]["void"]["f1"] == 0.0 and m["per_class"]["void"]["ap50"] == 0.0
    assert math.isnan(m["per_class"]["crack"]["f1"]) and math.isnan(m["per_class"]["crack"]["ap"])
    assert m["f1_macro"] == 0.0 and m["map50"] == 0.0  # means over classes with ground truth only


def test_iou_threshold_decides_the_match() -> None:
    gts = [_gt([A], [1])]
    shifted = [_pred([[4, 0, 14, 10]], [0.9], [1])]  # IoU 60/140 = 0.43
    assert f1_scores(gts, shifted, 1, 0.5)["overall"]["f1"] == 0.0
    assert f1_scores(gts, shifted, 1, 0.4)["overall"]["f1"] == 1.0


def test_coco_ap_over_iou_thresholds() -> None:
    # IoU 0.72 is a hit at .50 .55 .60 .65 .70 and a miss at .75 ... .95: AP@[.5:.95] = 5/10
    gts = [_gt([A], [1])]
    preds = [_pred([[0, 0, 10, 7.2]], [0.9], [1])]
    ap = coco_ap(gts, preds, 1)
    assert ap["map50"] == pytest.approx(1.0) and ap["ap"] == pytest.approx(0.5)


def test_per_class_thresholds_differ_from_pooled() -> None:
    gts = [_gt([A], [1]), _gt([B], [2])]
    # class 1: TP 0.9; class 2: FP 0.8 then TP 0.1. Pooled (n_gt 2): F1(0.9) = 2/3, F1(0.8) = 2/4,
    # F1(0.1) = 4/5 -> 0.8 at threshold 0.1
    preds = [_pred([A], [0.9], [1]), _pred([FAR, B], [0.8, 0.1], [2, 2])]
    f = f1_scores(gts, preds, 2)
    assert f["per_class"][1]["f1"] == 1.0
    assert f["per_class"][2]["f1"] == pytest.approx(2 / 3) and f["per_class"][2]["threshold"] == pytest.approx(0.1)
    assert f["overall"]["f1"] == pytest.approx(0.8) and f["overall"]["threshold"] == pytest.approx(0.1)
    assert f["f1_macro"] == pytest.approx((1 + 2 / 3) / 2)


def test_no_predictions_and_no_ground_truth() -> None:
    assert best_f1(np.zeros(0), np.zeros(0, bool), 3)["f1"] == 0.0
    assert math.isnan(best_f1(np.array([0.5]), np.array([False]), 0)["f1"])
    m = detection_metrics([_gt([A], [1])], [_pred([], [], [])], ["void"])
    assert m["f1"] == 0.0 and m["map50"] == 0.0


def test_tied_scores_are_one_threshold() -> None:
    # two detections at the same score, one TP one FP: no threshold can split them
    r = best_f1(np.array([0.5, 0.5]), np.array([False, True]), 1)
    assert r["f1"] == pytest.approx(2 / 3) and r["fp"] == 1.0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="labels"):
        f1_scores([_gt([A], [3])], [_pred([], [], [])], 2)
    with pytest.raises(ValueError, match="predictions"):
        f1_scores([_gt([A], [1])], [], 1)


def test_ground_truth_from_dataset(tmp_path) -> None:
    from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry

    ds = DetectionDataset(tmp_path, ["void", "crack"], [
        ImageEntry("a", "a.png", 32, 32, [Annotation((1, 2, 5, 6), "crack"), Annotation((0, 0, 3, 3), "void")]),
        ImageEntry("b", "b.png", 32, 32, []),
    ])
    g = ground_truth(ds)
    assert g[0].labels.tolist() == [2, 1] and g[1].boxes.shape == (0, 4)
    assert ground_truth(ds, agnostic=True)[0].labels.tolist() == [1, 1]
    with pytest.raises(ValueError, match="image a"):
        ground_truth(ds, ["void"])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(4, 50), st.integers(4, 50),
                          st.integers(1, 3), st.floats(0.01, 1.0)), min_size=1, max_size=8))
def test_predicting_the_ground_truth_is_perfect(rows) -> None:
    boxes = [[x, y, x + w, y + h] for x, y, w, h, _, _ in rows]
    labels = [c for *_, c, _ in rows]
    scores = [s for *_, s in rows]
    gts = [_gt(boxes, labels)]
    preds = [_pred(boxes, scores, labels)]
    f = f1_scores(gts, preds, 3)
    assert f["overall"]["f1"] == 1.0
    # shuffling the predictions changes nothing
    perm = np.random.default_rng(0).permutation(len(rows))
    preds2 = [_pred(np.array(boxes)[perm], np.array(scores)[perm], np.array(labels)[perm])]
    assert f1_scores(gts, preds2, 3)["overall"] == f["overall"]
