"""Training augmentation of the detector: flips (boxes moved alike) and intensity-window jitter.

A user's stack may be mirrored, stored upside down or windowed differently from the labeled one; the
detector sees each training slice as ``augment_slice`` makes it, with per-sample parameters drawn by
``draw_augment`` from the epoch's seeded generator (so an interrupted run resumes identically).

Intensity jitter works in unit intensity (after the slice's window): ``x -> clip((x - lo) / (hi - lo),
0, 1) ** gamma`` with ``lo ~ U(-w, w)``, ``hi ~ 1 + U(-w, w)`` and ``log gamma ~ U(-g, g)``: a window a
little narrower or wider and shifted, and a gamma, as another scanner's reconstruction would give.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gsal_edge.models.detector_config import DetectorTrainConfig

__all__ = ["AugmentDraw", "apply_intensity", "augment_slice", "draw_augment", "flip_boxes"]


@dataclass(frozen=True)
class AugmentDraw:
    """Per-sample augmentation parameters of one epoch (arrays of length n)."""

    hflip: np.ndarray  # bool
    vflip: np.ndarray  # bool
    lo: np.ndarray  # float: unit intensity mapped to 0
    hi: np.ndarray  # float: unit intensity mapped to 1
    gamma: np.ndarray  # float

    def __len__(self) -> int:
        return int(self.hflip.shape[0])

    def at(self, i: int) -> tuple[bool, bool, float, float, float]:
        """Sample ``i``'s (hflip, vflip, lo, hi, gamma)."""
        return bool(self.hflip[i]), bool(self.vflip[i]), float(self.lo[i]), float(self.hi[i]), float(self.gamma[i])

    def take(self, idx: np.ndarray) -> AugmentDraw:
        """The draws at positions ``idx``."""
        return AugmentDraw(self.hflip[idx], self.vflip[idx], self.lo[idx], self.hi[idx], self.gamma[idx])


def flip_boxes(boxes: np.ndarray, width: int, height: int, hflip: bool, vflip: bool) -> np.ndarray:
    """Boxes (x1, y1, x2, y2) of an image flipped horizontally and/or vertically."""
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).copy()
    if hflip:
        b[:, [0, 2]] = width - b[:, [2, 0]]
    if vflip:
        b[:, [1, 3]] = height - b[:, [3, 1]]
    return b


def draw_augment(rng: np.random.Generator, n: int, tcfg: DetectorTrainConfig) -> AugmentDraw:
    """The parameters of ``n`` samples. The flips are drawn first and alone when intensity jitter is
    off, so configs without it draw the same flips as before it existed."""
    hflip = rng.random(n) < tcfg.hflip_prob
    vflip = rng.random(n) < tcfg.vflip_prob
    lo, hi, gamma = np.zeros(n), np.ones(n), np.ones(n)
    if tcfg.intensity_prob > 0 and (tcfg.window_jitter > 0 or tcfg.gamma_jitter > 0):
        on = rng.random(n) < tcfg.intensity_prob
        w, g = tcfg.window_jitter, tcfg.gamma_jitter
        lo = np.where(on, rng.uniform(-w, w, n), 0.0)
        hi = np.where(on, 1.0 + rng.uniform(-w, w, n), 1.0)
        gamma = np.where(on, np.exp(rng.uniform(-g, g, n)), 1.0)
    return AugmentDraw(hflip, vflip, lo, hi, gamma)


def apply_intensity(img: np.ndarray, lo: float, hi: float, gamma: float) -> np.ndarray:
    """``clip((img - lo) / (hi - lo), 0, 1) ** gamma`` as float32 (identity for 0, 1, 1)."""
    if lo == 0.0 and hi == 1.0 and gamma == 1.0:
        return img
    if hi <= lo:
        raise ValueError(f"intensity window needs lo < hi, got ({lo}, {hi})")
    x = np.clip((img.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0)
    return (x ** np.float32(gamma) if gamma != 1.0 else x).astype(np.float32, copy=False)


def augment_slice(img: np.ndarray, boxes: np.ndarray, hflip: bool, vflip: bool, lo: float = 0.0,
                  hi: float = 1.0, gamma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A unit-float HxW slice and its boxes, flipped and intensity-jittered alike (contiguous copy)."""
    h, w = img.shape
    out = img[:, ::-1] if hflip else img
    out = out[::-1, :] if vflip else out
    out = apply_intensity(np.ascontiguousarray(out), lo, hi, gamma)
    return np.ascontiguousarray(out), flip_boxes(boxes, w, h, hflip, vflip)
