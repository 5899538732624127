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

MC-dropout, which needs the PyTorch detector, lives in :mod:`gsal_edge.models.mc_dropout`.

:data:`RANK_SIGN` is the one place that says which way each score ranks: the baselines in
:mod:`gsal_edge.acquisition.strategies` multiply by it, so a score and its direction cannot drift apart.
"""

from __future__ import annotations

import numpy as np

# +1: higher = more uncertain = picked first; -1: lower first. ``mc_dropout`` is filled by
# gsal_edge.models.mc_dropout (mean predictive entropy over T passes: higher = more uncertain).
RANK_SIGN: dict[str, float] = {"entropy": +1.0, "entropy_mean": +1.0, "margin": +1.0,
                               "least_confidence": +1.0, "mc_dropout": +1.0, "max_score": -1.0}


def rank_sign(key: str) -> float:
    """+1 if a higher ``uncertainty[key]`` means more worth labeling, -1 if lower does."""
    try:
        return RANK_SIGN[key]
    except KeyError:
        raise KeyError(f"no ranking direction for uncertainty {key!r}; known: {', '.join(sorted(RANK_SIGN))}") from None


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
