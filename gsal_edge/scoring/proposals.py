"""Which detections become proposals (spec §4): score floor, optional class-agnostic NMS, top-M.

The detector's own NMS is per class (torchvision), so one region can come back under two labels and take
two of the M slots. ``nms_iou`` [ours] suppresses, across classes, a box that overlaps a higher-scoring
kept box by IoU >= ``nms_iou`` before the top-M cut; ``None`` keeps the paper's reading (per-class only).
Numpy only: this runs on the ONNX path, which imports no torch.
"""

from __future__ import annotations

import numpy as np


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (x1, y1, x2, y2) box with each row of ``boxes`` [N, 4]."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: np.clip(b[..., 2] - b[..., 0], 0, None) * np.clip(b[..., 3] - b[..., 1], 0, None)
    union = area(box) + area(boxes) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def select_proposals(boxes: np.ndarray, scores: np.ndarray, M: int, min_score: float = 0.0,
                     nms_iou: float | None = None) -> np.ndarray:
    """Indices of the proposals, best score first: ``score >= min_score``, class-agnostic NMS at
    ``nms_iou`` (None = off), then the first ``M``. Ties keep detector order (stable sort)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise ValueError(f"{boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= min_score]
    if nms_iou is None:
        return order[:M]
    keep: list[int] = []
    for i in order:
        if len(keep) >= M:
            break
        if not keep or box_iou(boxes[i], boxes[keep]).max() < nms_iou:
            keep.append(int(i))
    return np.asarray(keep, dtype=np.int64)
