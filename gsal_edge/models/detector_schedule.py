"""A training length that scales with the labeled-set size (``DetectorTrainConfig.schedule``).

A fixed iteration count over-trains 15 labeled slices (hundreds of passes over each) and under-trains
1,500. ``scaled_iterations`` grows sub-linearly with the number of labeled images,

    iters(n) = clip(round(ref_iters * (n / ref_images) ** exponent), min_iters, max_iters),

so it is monotone non-decreasing in n and bounded; ``epochs_for_iterations`` turns it into whole epochs.
"""

from __future__ import annotations

import math

from gsal_edge.models.detector_config import DetectorConfig, DetectorTrainConfig

__all__ = ["epochs_for_iterations", "scaled_epochs", "scaled_iterations"]


def _tcfg(cfg: DetectorConfig | DetectorTrainConfig) -> DetectorTrainConfig:
    return cfg.train if isinstance(cfg, DetectorConfig) else cfg


def scaled_iterations(n_labeled: int, cfg: DetectorConfig | DetectorTrainConfig) -> int:
    """Training iterations for ``n_labeled`` images (see module doc); ``n_labeled`` >= 0."""
    if n_labeled < 0:
        raise ValueError(f"n_labeled must be >= 0, got {n_labeled}")
    t = _tcfg(cfg)
    raw = t.schedule_ref_iters * (n_labeled / t.schedule_ref_images) ** t.schedule_exponent if n_labeled else 0.0
    return int(min(max(round(raw), t.schedule_min_iters), t.schedule_max_iters))


def epochs_for_iterations(iters: int, n_samples: int, batch_size: int) -> int:
    """Whole epochs (>= 1) giving about ``iters`` iterations over ``n_samples`` at ``batch_size``."""
    per_epoch = max(1, math.ceil(n_samples / batch_size))
    return max(1, round(iters / per_epoch))


def scaled_epochs(n_labeled: int, cfg: DetectorConfig | DetectorTrainConfig, n_samples: int | None = None) -> int:
    """Epochs of the scaled schedule; ``n_samples`` (default ``n_labeled``) is an epoch's sample count,
    which repeat-factor sampling makes larger than the image count."""
    t = _tcfg(cfg)
    return epochs_for_iterations(scaled_iterations(n_labeled, t), n_samples or n_labeled, t.batch_size)
