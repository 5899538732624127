"""MC-dropout uncertainty of the detector (an uncertainty baseline, spec section 8).

The backbone and RPN run once (deterministic), then the box head runs T times on the same proposals
with dropout switched on; per proposal, the variance over passes of each class probability is summed
over background + classes; the image score is the max of that over the ``top_k`` proposals with the
highest mean foreground probability (0 without proposals).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from gsal_edge.models.detector import CTFasterRCNN
from gsal_edge.models.detector_layers import DropoutTwoMLPHead


def _box_head(model: Any) -> DropoutTwoMLPHead:
    head = getattr(getattr(model, "roi_heads", None), "box_head", None)
    if not isinstance(head, DropoutTwoMLPHead):
        raise TypeError("MC-dropout needs a gsal_edge.models.detector model (box head DropoutTwoMLPHead)")
    return head


def mc_dropout_probs(model: CTFasterRCNN, image: np.ndarray, T: int = 10, seed: int = 0,
                     p: float | None = None) -> np.ndarray:
    """Class probabilities [T, P, C+1] of the model's test-time proposals over T dropout passes.

    ``image`` is float32 HxW in [0, 1]; ``p`` defaults to the config's ``mc_dropout_p``. Seeded:
    the same (image, T, seed, p) gives the same array; the global torch RNG is left untouched.
    """
    if T < 2:
        raise ValueError(f"MC-dropout needs T >= 2 passes, got {T}")
    head = _box_head(model)
    p = float(model.config.mc_dropout_p if p is None else p)
    if not 0 < p < 1:
        raise ValueError(f"MC-dropout p must be in (0, 1), got {p}")
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype != np.float32:
        raise ValueError(f"image must be float32 HxW in [0, 1], got {img.dtype} {img.shape}")
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device  # dropout draws come from this device's RNG (seeded either way)
    x = [torch.from_numpy(np.ascontiguousarray(img))[None].to(dev)]
    try:
        with torch.inference_mode():
            images, _ = model.transform(x)
            features = model.backbone(images.tensors)
            proposals, _ = model.rpn(images, features)
            pooled = model.roi_heads.box_roi_pool(features, proposals, images.image_sizes)
            head.mc_p = p
            out = []
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
                torch.manual_seed(seed)
                for _ in range(T):
                    logits, _ = model.roi_heads.box_predictor(head(pooled))
                    out.append(torch.softmax(logits, -1))
    finally:
        head.mc_p = 0.0
        model.train(was_training)
    return torch.stack(out).cpu().numpy()


def mc_dropout_uncertainty(model: CTFasterRCNN, image: np.ndarray, T: int = 10, seed: int = 0,
                           p: float | None = None, top_k: int = 10) -> float:
    """MC-dropout score of one image: max over the ``top_k`` most foreground-like proposals of the
    summed per-class variance of the class probabilities over T dropout passes (see module doc)."""
    probs = mc_dropout_probs(model, image, T, seed, p)
    return mc_dropout_score(probs, top_k)


def mc_dropout_score(probs: np.ndarray, top_k: int = 10) -> float:
    """Aggregate [T, P, C+1] dropout-pass probabilities into one image score (pure)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 3:
        raise ValueError(f"expected [T, P, C+1] probabilities, got shape {probs.shape}")
    if probs.shape[1] == 0:
        return 0.0
    var = probs.var(axis=0).sum(axis=1)  # [P]
    fg = 1.0 - probs[:, :, 0].mean(axis=0)  # [P]
    keep = np.argsort(-fg, kind="stable")[: max(1, top_k)]
    return float(var[keep].max())
