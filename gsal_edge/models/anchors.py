"""Anchors derived from the labeled boxes: ``anchor_sizes: auto`` / ``aspect_ratios: auto``.

A user's defects are not the generator's: their sizes and shapes decide which anchors the RPN can
match. With ``auto`` the detector's anchors are computed once, at train time, from the training
set's boxes measured in the detector's input frame (the slice resized as ``CTTransform`` resizes it):

* sizes: ``n_sizes`` per feature map, geometrically spaced between the ``quantiles`` of sqrt(w h),
  the span widened to at least ``min_size_span`` (few boxes) and clipped to ``size_range``;
* aspect ratios (height / width): ``n_ratios`` geometrically spaced between the ``quantiles`` of
  h / w, the range widened to hold ``[1 / min_ratio_span, min_ratio_span]`` and clipped to
  ``ratio_range``; an odd ``n_ratios`` holds 1.0 with half the others on each side of it.

With no boxes the result covers ``size_range`` and the minimum ratio span. The resolved values are
written into the config, so the checkpoint (and an export made from it) carries the exact anchors.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from gsal_edge.models.detector_config import AUTO, DetectorConfig, DetectorConfigError

__all__ = [
    "auto_anchor_sizes",
    "auto_aspect_ratios",
    "box_statistics",
    "input_scale",
    "n_feature_maps",
    "resolve_anchors",
]


def n_feature_maps(cfg: DetectorConfig) -> int:
    """How many feature maps the backbone feeds the RPN (one anchor-size list per map)."""
    if cfg.backbone == "small_cnn":
        return 1
    if cfg.backbone == "resnet50_fpn":
        return len(cfg.fpn_returned_layers or [1, 2, 3, 4]) + 1  # + the FPN's max-pool level
    return (len(cfg.fpn_returned_layers) if cfg.fpn_returned_layers else 2) + 1


def input_scale(height: int, width: int, min_size: int, max_size: int) -> float:
    """The factor ``GeneralizedRCNNTransform`` resizes an HxW slice by (short side to ``min_size``,
    long side capped at ``max_size``)."""
    scale = min_size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return float(scale)


def box_statistics(boxes: Iterable[tuple[Sequence[float], int, int]], min_size: int,
                   max_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(w h), h / w) of boxes ``(x1, y1, x2, y2), image_height, image_width`` in the input frame;
    boxes thinner than 1 px are taken as 1 px wide (a line label)."""
    sizes, ratios = [], []
    for box, h_img, w_img in boxes:
        s = input_scale(h_img, w_img, min_size, max_size)
        w = max((float(box[2]) - float(box[0])) * s, 1.0)
        h = max((float(box[3]) - float(box[1])) * s, 1.0)
        sizes.append(math.sqrt(w * h))
        ratios.append(h / w)
    return np.asarray(sizes, np.float64), np.asarray(ratios, np.float64)


def _geometric(lo: float, hi: float, n: int) -> list[float]:
    if n == 1:
        return [math.sqrt(lo * hi)]
    return [float(v) for v in np.geomspace(lo, hi, n)]


def _widen(lo: float, hi: float, span: float) -> tuple[float, float]:
    """Widen [lo, hi] about its geometric centre until hi / lo >= span."""
    if hi / lo >= span:
        return lo, hi
    c = math.sqrt(lo * hi)
    return c / math.sqrt(span), c * math.sqrt(span)


def _clip_range(lo: float, hi: float, rng: tuple[float, float]) -> tuple[float, float]:
    """[lo, hi] moved inside ``rng`` keeping its log span where it fits."""
    a, b = rng
    span = min(hi / lo, b / a)
    if lo < a:
        lo, hi = a, a * span
    if hi > b:
        lo, hi = b / span, b
    return lo, hi


def auto_anchor_sizes(sizes: np.ndarray, cfg: DetectorConfig) -> list[list[float]]:
    """Anchor sizes per feature map (px in the input frame) from the boxes' sqrt(area) (see module doc)."""
    a = cfg.anchor_auto
    n_maps = n_feature_maps(cfg)
    lo, hi = a.size_range
    if len(sizes):
        q_lo, q_hi = (float(v) for v in np.quantile(sizes, a.quantiles))
        lo, hi = _clip_range(*_widen(max(q_lo, 1e-3), max(q_hi, q_lo, 1e-3), a.min_size_span), a.size_range)
    flat = _geometric(lo, hi, a.n_sizes * n_maps)
    flat = [round(v, 1) for v in flat]
    return [flat[i * a.n_sizes:(i + 1) * a.n_sizes] for i in range(n_maps)]


def auto_aspect_ratios(ratios: np.ndarray, cfg: DetectorConfig) -> list[float]:
    """Aspect ratios (h / w) from the boxes' h / w (see module doc)."""
    a = cfg.anchor_auto
    lo, hi = 1.0 / a.min_ratio_span, a.min_ratio_span
    if len(ratios):
        q_lo, q_hi = (float(v) for v in np.quantile(ratios, a.quantiles))
        lo, hi = min(lo, q_lo), max(hi, q_hi)
    lo, hi = max(lo, a.ratio_range[0]), min(hi, a.ratio_range[1])
    if a.n_ratios % 2 == 1 and lo < 1.0 < hi:  # half below 1.0, half above, and 1.0 itself
        k = a.n_ratios // 2
        out = _geometric(lo, 1.0, k + 1)[:-1] + [1.0] + _geometric(1.0, hi, k + 1)[1:]
    else:
        out = _geometric(lo, hi, a.n_ratios)
    return [round(v, 3) for v in out]


def resolve_anchors(cfg: DetectorConfig, boxes: Iterable[tuple[Sequence[float], int, int]] = ()) -> DetectorConfig:
    """``cfg`` with ``auto`` anchor sizes / aspect ratios replaced by values computed from ``boxes``
    (``(x1, y1, x2, y2), image_height, image_width`` of the training annotations); deterministic.
    A config without ``auto`` comes back unchanged (a copy)."""
    if cfg.anchor_sizes != AUTO and cfg.aspect_ratios != AUTO:
        return cfg.model_copy(deep=True)
    sizes, ratios = box_statistics(boxes, cfg.min_size, cfg.max_size)
    upd: dict[str, object] = {}
    if cfg.anchor_sizes == AUTO:
        upd["anchor_sizes"] = auto_anchor_sizes(sizes, cfg)
    if cfg.aspect_ratios == AUTO:
        upd["aspect_ratios"] = auto_aspect_ratios(ratios, cfg)
    try:
        return DetectorConfig.model_validate({**cfg.model_dump(), **upd})
    except ValueError as exc:
        raise DetectorConfigError(f"auto anchors {upd}: {exc}") from exc
