"""Detection metrics: F1 at IoU 0.5 at the best score threshold, mAP@50 and COCO AP@[.5:.95].

Inputs are per-image arrays (boxes x1, y1, x2, y2 in pixels; labels 1..C, 0 = background):
ground truth as :class:`ImageBoxes` (no scores), predictions as anything with ``boxes``,
``scores`` and ``labels`` arrays (e.g. :class:`gsal_edge.models.detector.Prediction`).

F1 (ours, VOC-style matching): within each image and class, detections are taken by descending
score and each is matched to the unmatched ground-truth box of that class with the highest
IoU >= ``iou_thr``; a match is a TP, anything else a FP, an unmatched ground truth a FN. Keeping the
detections with score >= t gives F1(t) = 2 TP / (2 TP + FP + FN); the reported F1 is the maximum
over t (t only at distinct detection scores, plus "keep none"). ``f1`` pools all classes at one
shared threshold (micro); ``per_class[c]["f1"]`` uses each class's own best threshold; ``f1_macro``
averages the per-class values over classes with ground truth. A class without ground truth has
F1 = NaN (undefined), and is left out of every mean.

Those best-threshold values are chosen on the split they score (optimistic). With ``thresholds``
(:class:`FixedThresholds`, e.g. chosen on a labeled validation split by :meth:`FixedThresholds.from_metrics`)
:func:`detection_metrics` instead keeps the detections with score >= the fixed threshold: ``f1`` (micro,
pooled) at the shared threshold, ``per_class[c]["f1"]`` at class c's threshold, ``f1_macro`` their mean over
the classes with ground truth in the scored split; the best-threshold values stay as ``f1_oracle`` and
``f1_macro_oracle``.

AP: the COCO API (faster-coco-eval), area "all", 100 detections per image; ``map50`` and ``ap``
average the per-class values over classes with ground truth.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from gsal_edge.data.dataset import DetectionDataset


@dataclass(frozen=True)
class FixedThresholds:
    """Score thresholds fixed before a split is scored: ``overall`` for the pooled (micro) F1 and one per
    class name for the per-class (macro) F1 (a class not in ``per_class`` uses ``overall``).
    ``inf`` keeps no detection."""

    overall: float
    per_class: dict[str, float]

    def for_class(self, name: str) -> float:
        return float(self.per_class.get(name, self.overall))

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> FixedThresholds:
        """The best thresholds of :func:`detection_metrics`'s output ``m`` (run on the validation split):
        pooled for ``overall``; per class where that class has ground truth there, else the pooled one."""
        overall = float(m["threshold"])
        per = {c: float(v["threshold"]) for c, v in m.get("per_class", {}).items() if v.get("n_gt", 0) > 0}
        return cls(overall, per)

    def to_dict(self) -> dict[str, Any]:
        return {"overall": self.overall, "per_class": dict(self.per_class)}


class DetectionsLike(Protocol):
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass
class ImageBoxes:
    """Boxes of one image: [N, 4] x1, y1, x2, y2, labels [N] in 1..C (scores optional)."""

    boxes: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None


def ground_truth(ds: DetectionDataset, classes: list[str] | None = None, agnostic: bool = False) -> list[ImageBoxes]:
    """The data set's annotations as :class:`ImageBoxes` (label = index in ``classes`` + 1).

    ``agnostic``: every annotation gets label 1. An annotation whose class is not in ``classes``
    raises ``ValueError`` naming the image and the class.
    """
    classes = list(ds.classes if classes is None else classes)
    index = {c: i + 1 for i, c in enumerate(classes)}
    out = []
    for e in ds.images:
        labels = []
        for a in e.annotations:
            if agnostic:
                labels.append(1)
            elif a.category in index:
                labels.append(index[a.category])
            else:
                raise ValueError(f"image {e.image_id}: annotation class {a.category!r} not in {classes}")
        boxes = np.array([a.box for a in e.annotations], dtype=np.float64).reshape(-1, 4)
        out.append(ImageBoxes(boxes, np.array(labels, dtype=np.int64)))
    return out


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of x1, y1, x2, y2 boxes (areas without the +1 of old VOC code)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def match_image(gt_boxes: np.ndarray, pred_boxes: np.ndarray, pred_scores: np.ndarray,
                iou_thr: float = 0.5) -> np.ndarray:
    """TP flags (bool, in the input order) of one image's detections of one class, greedy by score."""
    n = len(pred_scores)
    tp = np.zeros(n, dtype=bool)
    if n == 0 or len(gt_boxes) == 0:
        return tp
    iou = box_iou(pred_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), dtype=bool)
    for i in np.argsort(-np.asarray(pred_scores), kind="stable"):
        cand = np.where(~taken, iou[i], -1.0)
        j = int(np.argmax(cand))
        if cand[j] >= iou_thr:
            taken[j] = True
            tp[i] = True
    return tp


def best_f1(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> dict[str, float]:
    """Best F1 over score thresholds from pooled detections (scores, TP flags) and the GT count.

    Returns f1, threshold (detections with score >= threshold are kept; inf = keep none),
    precision, recall, tp, fp, fn at that threshold. F1 is NaN when ``n_gt`` is 0.
    """
    scores = np.asarray(scores, dtype=np.float64)
    tp = np.asarray(tp, dtype=bool)
    if n_gt == 0:
        return {"f1": math.nan, "threshold": math.inf, "precision": math.nan, "recall": math.nan,
                "tp": 0.0, "fp": float(len(scores)), "fn": 0.0}
    best = {"f1": 0.0, "threshold": math.inf, "precision": 0.0, "recall": 0.0, "tp": 0.0, "fp": 0.0,
            "fn": float(n_gt)}
    if len(scores) == 0:
        return best
    order = np.argsort(-scores, kind="stable")
    s, t = scores[order], tp[order]
    ctp = np.cumsum(t)
    cfp = np.cumsum(~t)
    last = np.r_[s[1:] != s[:-1], True]  # evaluate only after the last of each run of equal scores
    ctp, cfp, s = ctp[last], cfp[last], s[last]
    f1 = 2 * ctp / (2 * ctp + cfp + (n_gt - ctp))
    k = int(np.argmax(f1))
    if f1[k] > best["f1"]:
        best = {"f1": float(f1[k]), "threshold": float(s[k]),
                "precision": float(ctp[k] / (ctp[k] + cfp[k])), "recall": float(ctp[k] / n_gt),
                "tp": float(ctp[k]), "fp": float(cfp[k]), "fn": float(n_gt - ctp[k])}
    return best


def _check_pairs(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike]) -> None:
    if len(gts) != len(preds):
        raise ValueError(f"{len(gts)} ground-truth images but {len(preds)} predictions")


def _class_matches(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike], num_classes: int,
                   iou_thr: float) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """Per label 1..C: (scores, TP flags) of every detection of that class over all images, and its GT count."""
    _check_pairs(gts, preds)
    per_scores: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes + 1)}
    per_tp: dict[int, list[np.ndarray]] = {c: [] for c in range(1, num_classes + 1)}
    n_gt = {c: 0 for c in range(1, num_classes + 1)}
    for i, (g, p) in enumerate(zip(gts, preds)):
        g_lab = np.asarray(g.labels, dtype=np.int64)
        p_lab = np.asarray(p.labels, dtype=np.int64)
        bad = set(np.unique(np.r_[g_lab, p_lab]).tolist()) - set(range(1, num_classes + 1))
        if bad:
            raise ValueError(f"image {i}: labels {sorted(bad)} outside 1..{num_classes}")
        for c in range(1, num_classes + 1):
            gm, pm = g_lab == c, p_lab == c
            n_gt[c] += int(gm.sum())
            if pm.any():
                sc = np.asarray(p.scores, dtype=np.float64)[pm]
                per_scores[c].append(sc)
                per_tp[c].append(match_image(np.asarray(g.boxes)[gm], np.asarray(p.boxes)[pm], sc, iou_thr))
    return {c: (np.concatenate(per_scores[c]) if per_scores[c] else np.zeros(0),
                np.concatenate(per_tp[c]) if per_tp[c] else np.zeros(0, dtype=bool), n_gt[c])
            for c in range(1, num_classes + 1)}


def _pooled(matches: dict[int, tuple[np.ndarray, np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    sc = np.concatenate([m[0] for m in matches.values()] or [np.zeros(0)])
    tp = np.concatenate([m[1] for m in matches.values()] or [np.zeros(0, dtype=bool)])
    return sc, tp, sum(m[2] for m in matches.values())


def f1_at(scores: np.ndarray, tp: np.ndarray, n_gt: int, threshold: float) -> dict[str, float]:
    """F1, precision, recall, tp, fp, fn keeping the detections with score >= ``threshold`` (fixed
    beforehand, e.g. on a validation split). F1 is NaN when ``n_gt`` is 0; precision is 0 when none is kept."""
    keep = np.asarray(scores, dtype=np.float64) >= threshold
    t = np.asarray(tp, dtype=bool)[keep]
    n_tp, n_fp = float(t.sum()), float((~t).sum())
    if n_gt == 0:
        return {"f1": math.nan, "threshold": float(threshold), "precision": math.nan, "recall": math.nan,
                "tp": 0.0, "fp": n_fp, "fn": 0.0}
    return {"f1": 2 * n_tp / (2 * n_tp + n_fp + (n_gt - n_tp)), "threshold": float(threshold),
            "precision": n_tp / (n_tp + n_fp) if n_tp + n_fp else 0.0, "recall": n_tp / n_gt,
            "tp": n_tp, "fp": n_fp, "fn": float(n_gt - n_tp)}


def _macro(per_class: dict[Any, dict[str, Any]]) -> float:
    vals = [v["f1"] for v in per_class.values() if v["n_gt"] > 0]
    return float(np.mean(vals)) if vals else math.nan


def f1_scores(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike], num_classes: int,
              iou_thr: float = 0.5) -> dict[str, Any]:
    """F1 at the best threshold: overall (pooled, one threshold), per class (label 1..C), macro."""
    matches = _class_matches(gts, preds, num_classes, iou_thr)
    per_class = {c: {**best_f1(sc, tp, n), "n_gt": n} for c, (sc, tp, n) in matches.items()}
    return {"overall": best_f1(*_pooled(matches)), "per_class": per_class, "f1_macro": _macro(per_class)}


def f1_fixed(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike], classes: list[str],
             thresholds: FixedThresholds, iou_thr: float = 0.5) -> dict[str, Any]:
    """F1 at thresholds fixed beforehand: overall (pooled, ``thresholds.overall``: micro), per class (label
    1..C at ``thresholds.for_class(name)``) and ``f1_macro`` (their mean over classes with ground truth here)."""
    matches = _class_matches(gts, preds, len(classes), iou_thr)
    per_class = {c: {**f1_at(sc, tp, n, thresholds.for_class(classes[c - 1])), "n_gt": n}
                 for c, (sc, tp, n) in matches.items()}
    return {"overall": f1_at(*_pooled(matches), thresholds.overall), "per_class": per_class,
            "f1_macro": _macro(per_class)}


def coco_ap(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike], num_classes: int,
            image_sizes: Sequence[tuple[int, int]] | None = None) -> dict[str, Any]:
    """COCO AP via faster-coco-eval: per class ``ap50`` and ``ap`` (IoU .5:.95), and their means
    over classes with ground truth (``map50``, ``ap``). ``image_sizes``: (height, width) per image."""
    from faster_coco_eval import COCO, COCOeval_faster

    _check_pairs(gts, preds)
    images, anns, dets = [], [], []
    for i, (g, p) in enumerate(zip(gts, preds)):
        h, w = image_sizes[i] if image_sizes is not None else (0, 0)
        images.append({"id": i + 1, "height": int(h), "width": int(w)})
        for b, lab in zip(np.asarray(g.boxes, dtype=float).reshape(-1, 4), np.asarray(g.labels)):
            bw, bh = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab),
                         "bbox": [float(b[0]), float(b[1]), bw, bh], "area": bw * bh, "iscrowd": 0})
        for b, s, lab in zip(np.asarray(p.boxes, dtype=float).reshape(-1, 4), np.asarray(p.scores),
                             np.asarray(p.labels)):
            dets.append({"image_id": i + 1, "category_id": int(lab),
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "score": float(s)})
    n_gt = np.bincount(np.array([a["category_id"] for a in anns], dtype=np.int64), minlength=num_classes + 1)
    per_class = {c: {"ap50": math.nan if n_gt[c] == 0 else 0.0, "ap": math.nan if n_gt[c] == 0 else 0.0,
                     "n_gt": int(n_gt[c])} for c in range(1, num_classes + 1)}
    if anns and dets:
        cats = [{"id": c, "name": str(c)} for c in range(1, num_classes + 1)]
        quiet = _quiet
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO({"images": images, "annotations": anns, "categories": cats}, print_function=quiet)
            coco_dt = coco_gt.loadRes(dets)
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=quiet)
            ev.evaluate()
            ev.accumulate()
        prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
        cat_ids = list(ev.params.catIds)
        for k, c in enumerate(cat_ids):
            if n_gt[c] == 0:
                continue
            pk = prec[:, :, k, 0, -1]
            per_class[c]["ap50"] = float(np.mean(np.where(pk[0] > -1, pk[0], 0.0)))
            per_class[c]["ap"] = float(np.mean(np.where(pk > -1, pk, 0.0)))
    with_gt = [v for v in per_class.values() if v["n_gt"] > 0]
    return {"map50": float(np.mean([v["ap50"] for v in with_gt])) if with_gt else math.nan,
            "ap": float(np.mean([v["ap"] for v in with_gt])) if with_gt else math.nan,
            "per_class": per_class}


def _quiet(*args: Any, **kwargs: Any) -> None:
    """Swallow faster-coco-eval's progress messages."""


def detection_metrics(gts: Sequence[ImageBoxes], preds: Sequence[DetectionsLike], classes: list[str],
                      iou_thr: float = 0.5, image_sizes: Sequence[tuple[int, int]] | None = None,
                      thresholds: FixedThresholds | float | None = None) -> dict[str, Any]:
    """All metrics as one JSON-friendly dict: f1 (+ threshold, precision, recall), f1_macro, map50, ap,
    and ``per_class[name]`` = {f1, threshold, precision, recall, ap50, ap, n_gt}.

    Without ``thresholds`` the F1 values use the best threshold on these very images. With fixed
    ``thresholds`` (a float: one for every class) they use those, ``threshold_source`` is ``"fixed"`` and the
    best-threshold values are kept as ``f1_oracle``, ``f1_macro_oracle`` and ``per_class[name]["f1_oracle"]``."""
    best = f1_scores(gts, preds, len(classes), iou_thr)
    fixed = None
    if thresholds is not None:
        if not isinstance(thresholds, FixedThresholds):
            thresholds = FixedThresholds(float(thresholds), {})
        fixed = f1_fixed(gts, preds, classes, thresholds, iou_thr)
    f1 = fixed or best
    ap = coco_ap(gts, preds, len(classes), image_sizes)
    per_class = {}
    for i, name in enumerate(classes):
        fc, ac = f1["per_class"][i + 1], ap["per_class"][i + 1]
        per_class[name] = {"f1": fc["f1"], "threshold": fc["threshold"], "precision": fc["precision"],
                           "recall": fc["recall"], "ap50": ac["ap50"], "ap": ac["ap"], "n_gt": fc["n_gt"]}
        if fixed is not None:
            per_class[name]["f1_oracle"] = best["per_class"][i + 1]["f1"]
    o = f1["overall"]
    out = {"f1": o["f1"], "threshold": o["threshold"], "precision": o["precision"], "recall": o["recall"],
           "f1_macro": f1["f1_macro"], "map50": ap["map50"], "ap": ap["ap"], "n_images": len(gts),
           "n_gt": int(sum(v["n_gt"] for v in per_class.values())), "per_class": per_class,
           "threshold_source": "best" if fixed is None else "fixed"}
    if fixed is not None:
        out["f1_oracle"] = best["overall"]["f1"]
        out["f1_macro_oracle"] = best["f1_macro"]
    return out
