"""Per-image uncertainty of a detector, for the uncertainty baselines (spec section 8).

All scores are raw (never pool-normalized) and higher means "more worth labeling", except
``max_score`` which is the plain detector confidence. Aggregation over an image's detections:

* ``entropy``  — max over detections of the Shannon entropy (nats) of ``class_probs``
  (background + classes); 0 for an image without detections.
* ``entropy_mean`` — the mean of the same entropies; 0 without detections.
* ``margin``   — 1 - min over detections of (p_top1 - p_top2) of ``class_probs``: 1 when some
  detection is a coin toss between its two best labels; 0 without detections.
* ``max_score`` — max detection score; 0 without detections.
* ``least_confidence`` — 1 - max_score.
* ``n_det``    — the number of detections.

MC-dropout (:func:`mc_dropout_uncertainty`): the backbone and RPN run once (deterministic), then
the box head runs T times on the same proposals with dropout switched on; per proposal, the
variance over passes of each class probability is summed over background + classes; the image
score is the max of that over the ``top_k`` proposals with the highest mean foreground
probability (0 without proposals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch stays out of the import path of the numpy-only image_uncertainty
    from gsal_edge.models.detector import CTFasterRCNN, DropoutTwoMLPHead


def _entropies(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=1)


def image_uncertainty(class_probs: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Entropy / margin / confidence aggregates of one image's detections (see module doc).

    ``class_probs`` [N, C+1] (rows are softmax distributions), ``scores`` [N]; N may be 0.
    """
    probs = np.asarray(class_probs, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    if probs.size == 0:
        probs = probs.reshape(0, max(probs.shape[-1] if probs.ndim == 2 else 2, 2))
    if probs.ndim != 2 or probs.shape[0] != sc.shape[0]:
        raise ValueError(f"class_probs {probs.shape} and scores {sc.shape} disagree (expected [N, C+1] and [N])")
    n = probs.shape[0]
    if n == 0:
        return {"entropy": 0.0, "entropy_mean": 0.0, "margin": 0.0, "max_score": 0.0,
                "least_confidence": 1.0, "n_det": 0.0}
    ent = _entropies(probs)
    top2 = np.sort(probs, axis=1)[:, -2:] if probs.shape[1] >= 2 else np.c_[np.zeros(n), probs[:, -1]]
    margins = top2[:, 1] - top2[:, 0]
    max_score = float(sc.max())
    return {"entropy": float(ent.max()), "entropy_mean": float(ent.mean()), "margin": float(1.0 - margins.min()),
            "max_score": max_score, "least_confidence": 1.0 - max_score, "n_det": float(n)}


def _box_head(model: Any) -> DropoutTwoMLPHead:
    from gsal_edge.models.detector import DropoutTwoMLPHead

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
    import torch

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
