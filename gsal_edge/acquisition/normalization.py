"""Eq. 11 z-score normalization (spec §6, conventions of spec §10).

    z(s) = (s - mean_U(s)) / (std_U(s) + 1e-8)        std with ddof = 0

over the named population of the current unlabeled pool. **[ours]** ``group_by``: the statistics are
taken within each group (e.g. per product), given here as integer group codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["EPS", "group_codes", "zscore", "zscore_scale"]

EPS = 1e-8


def zscore(s: np.ndarray, groups: np.ndarray | None = None, n_groups: int | None = None) -> np.ndarray:
    """z(s) = (s - mean(s)) / (std(s, ddof=0) + 1e-8), per group if ``groups`` (int codes) is given.

    A constant population (std 0) gives z = 0 (up to rounding of the mean, < 1e-6). An empty input
    returns an empty float64 array.
    """
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, dtype=np.float64)
    if groups is None:
        mean = s.mean()
        d = s - mean
        std = np.sqrt(np.mean(d * d))
        return d / (std + EPS)
    g = np.asarray(groups, dtype=np.int64)
    if g.shape != s.shape:
        raise ValueError(f"groups shape {g.shape} does not match scores shape {s.shape}")
    k = int(n_groups if n_groups is not None else g.max() + 1)
    cnt = np.bincount(g, minlength=k).astype(np.float64)
    safe = np.maximum(cnt, 1.0)
    mean = np.bincount(g, weights=s, minlength=k) / safe
    d = s - mean[g]
    std = np.sqrt(np.bincount(g, weights=d * d, minlength=k) / safe)
    return d / (std[g] + EPS)


def group_codes(keys: Sequence[str] | np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Integer codes for group keys (sorted key order) and the key names."""
    arr = np.asarray(keys, dtype=object).astype(str)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64), []
    names, codes = np.unique(arr, return_inverse=True)
    return codes.astype(np.int64).ravel(), [str(n) for n in names]


def zscore_scale(s: np.ndarray, groups: np.ndarray | None = None, n_groups: int | None = None) -> np.ndarray:
    """Per element, the denominator std_U(s) + 1e-8 that `zscore` divides by (within its group)."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 0:
        return np.zeros(0, dtype=np.float64)
    if groups is None:
        return np.full(s.shape, s.std() + EPS)
    g = np.asarray(groups, dtype=np.int64)
    k = int(n_groups if n_groups is not None else g.max() + 1)
    safe = np.maximum(np.bincount(g, minlength=k).astype(np.float64), 1.0)
    mean = np.bincount(g, weights=s, minlength=k) / safe
    d = s - mean[g]
    return (np.sqrt(np.bincount(g, weights=d * d, minlength=k) / safe) + EPS)[g]
