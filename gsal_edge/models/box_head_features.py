"""The detector's box-head internals that the BADGE and PPAL baselines read (spec section 8).

One deterministic inference pass per image through the project's torchvision Faster R-CNN
(:class:`~gsal_edge.models.detector.CTFasterRCNN`): transform, backbone, RPN (test-time proposals),
RoI pool, box head -> h (the penultimate feature, input of the class-score layer), box predictor ->
class logits and per-class box regression. Nothing is trained and the global RNG is not touched.

* :func:`box_head_outputs`: per image, the proposals ranked by detector score (max foreground
  probability, label = its argmax class, box = that class's regressed box), above ``min_score``,
  after class-aware NMS, top ``top_k``; each with h and the softmax row. Unlike torchvision's
  postprocess a proposal yields one detection (its argmax class), not one per class above the
  threshold, so every kept row has exactly one h.
* :func:`class_quality_sums`: PPAL's per-class detection quality on labeled images,
  q = p_c^xi * IoU(regressed class-c box, GT)^(1 - xi) over the proposals whose best GT overlap is
  >= the detector's own foreground IoU threshold (c = that GT's class).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou
from torchvision.ops import boxes as box_ops

from gsal_edge.acquisition.box_outputs import BoxHeadOutputs

__all__ = ["box_head_outputs", "class_quality_sums"]


def _check_model(model: Any) -> None:
    rh = getattr(model, "roi_heads", None)
    if rh is None or not hasattr(rh, "box_predictor") or not hasattr(model, "rpn"):
        raise TypeError("box-head features need a torchvision two-stage detector (gsal_edge.models.detector)")


def _as_tensor(img: np.ndarray, index: int) -> torch.Tensor:
    a = np.asarray(img)
    if a.ndim != 2 or a.dtype != np.float32:
        raise ValueError(f"image {index}: expected float32 HxW in [0, 1], got {a.dtype} {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a))[None]


def _roi_forward(model: Any, imgs: Sequence[np.ndarray], start: int) -> list[dict[str, torch.Tensor]]:
    """Per image: proposals [P, 4], h [P, d], probs [P, C+1], per-class boxes [P, C+1, 4] (image pixels)."""
    dev = next(model.parameters()).device
    x = [_as_tensor(im, start + i).to(dev) for i, im in enumerate(imgs)]
    original = [(int(im.shape[0]), int(im.shape[1])) for im in imgs]
    images, _ = model.transform(x)
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    rh = model.roi_heads
    h = rh.box_head(rh.box_roi_pool(features, proposals, images.image_sizes))
    logits, reg = rh.box_predictor(h)
    per_class = rh.box_coder.decode(reg, proposals).reshape(h.shape[0], -1, 4)
    probs = torch.softmax(logits, -1)
    out = []
    sizes = [p.shape[0] for p in proposals]
    for props, hh, pp, bb, size, orig in zip(proposals, h.split(sizes), probs.split(sizes), per_class.split(sizes),
                                             images.image_sizes, original):
        bb = box_ops.clip_boxes_to_image(bb, size)
        out.append({"proposals": resize_boxes(props, size, orig), "h": hh, "probs": pp,
                    "boxes": resize_boxes(bb.reshape(-1, 4), size, orig).reshape(bb.shape)})
    return out


def _run(model: Any, images: Sequence[np.ndarray], batch_size: int, fn: Any) -> None:
    _check_model(model)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                for j, r in enumerate(_roi_forward(model, images[s:s + batch_size], s)):
                    fn(s + j, r)
    finally:
        model.train(was_training)


def box_head_outputs(model: Any, images: Sequence[np.ndarray], top_k: int, min_score: float = 0.0,
                     nms_iou: float | None = None, batch_size: int = 8) -> list[BoxHeadOutputs]:
    """The ``top_k`` highest-scoring proposals of each image with h and softmax row (see module doc).

    ``min_score``: keep proposals whose max foreground probability is > this; ``nms_iou``: class-aware
    NMS threshold (default: the detector's own ``box_nms_thresh``)."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    iou = float(model.roi_heads.nms_thresh if nms_iou is None else nms_iou)
    out: list[BoxHeadOutputs | None] = [None] * len(images)

    def keep(i: int, r: dict[str, torch.Tensor]) -> None:
        probs = r["probs"]
        scores, lab = probs[:, 1:].max(dim=1)
        labels = lab + 1
        boxes = r["boxes"][torch.arange(probs.shape[0], device=probs.device), labels]
        idx = torch.where(scores > min_score)[0]
        idx = idx[box_ops.remove_small_boxes(boxes[idx], min_size=1e-2)]
        idx = idx[box_ops.batched_nms(boxes[idx], scores[idx], labels[idx], iou)][:top_k]  # score-descending
        out[i] = BoxHeadOutputs(r["h"][idx].float().cpu().numpy(), probs[idx].float().cpu().numpy(),
                                scores[idx].float().cpu().numpy(), labels[idx].long().cpu().numpy(),
                                boxes[idx].float().cpu().numpy())

    _run(model, images, batch_size, keep)
    return [o for o in out if o is not None]


def class_quality_sums(model: Any, images: Sequence[np.ndarray], gt_boxes: Sequence[np.ndarray],
                       gt_labels: Sequence[np.ndarray], xi: float, fg_iou: float | None = None,
                       batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per foreground class (index label - 1): the sum and count of q = p_c^xi * IoU^(1 - xi) over the
    proposals of labeled images matched to a GT box of class c (best IoU >= ``fg_iou``, default the
    detector's ``box_fg_iou_thresh``). ``gt_boxes[i]`` [G, 4] image pixels, ``gt_labels[i]`` [G] in 1..C."""
    if not 0 <= xi <= 1:
        raise ValueError(f"quality xi must be in [0, 1], got {xi}")
    if not (len(images) == len(gt_boxes) == len(gt_labels)):
        raise ValueError(f"{len(images)} images, {len(gt_boxes)} box sets, {len(gt_labels)} label sets")
    n_cls = int(model.roi_heads.box_predictor.cls_score.out_features) - 1
    thr = float(model.roi_heads.proposal_matcher.high_threshold if fg_iou is None else fg_iou)
    sums, counts = np.zeros(n_cls), np.zeros(n_cls)

    def add(i: int, r: dict[str, torch.Tensor]) -> None:
        labels = np.asarray(gt_labels[i], dtype=np.int64).reshape(-1)
        if labels.size == 0 or r["proposals"].shape[0] == 0:
            return
        if labels.min() < 1 or labels.max() > n_cls:
            raise ValueError(f"image {i}: GT labels must be in 1..{n_cls}, got {sorted(set(labels.tolist()))}")
        dev = r["proposals"].device
        gt = torch.as_tensor(np.asarray(gt_boxes[i], dtype=np.float32).reshape(-1, 4), device=dev)
        best, which = box_iou(r["proposals"], gt).max(dim=1)
        pos = torch.where(best >= thr)[0]
        if pos.numel() == 0:
            return
        g = which[pos]
        c = torch.as_tensor(labels, device=dev)[g]
        pred = r["boxes"][pos, c]
        iou = box_iou(pred, gt[g]).diagonal().clamp(0, 1)
        p = r["probs"][pos, c]
        q = (p.clamp(min=0) ** xi * iou ** (1 - xi)).double().cpu().numpy()
        np.add.at(sums, c.cpu().numpy() - 1, q)
        np.add.at(counts, c.cpu().numpy() - 1, 1.0)

    _run(model, images, batch_size, add)
    return sums, counts
