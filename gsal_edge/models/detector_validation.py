"""Validation on labeled data only: a held-out share of the LABELED images picks the detector's best
weights and may stop training early (``DetectorTrainConfig.val_*``).

No test image is ever looked at: ``validation_split`` splits the ids the detector was given to train
on, and :class:`ValidationTracker` keeps the weights with the best validation metric, evaluated at a
fixed share of the schedule.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsal_edge.data.dataset import DetectionDataset, ImageEntry
from gsal_edge.models.detector_config import DetectorConfig, DetectorTrainConfig

__all__ = ["ValidationTracker", "save_best", "split_ids", "validate", "validation_split"]

log = logging.getLogger(__name__)


def split_ids(ds: DetectionDataset, val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded train/val split of image ids, stratified by each image's rarest class (or "none"),
    so rare classes land in both parts when they have >= 2 images. Returns (train_ids, val_ids)."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    counts: dict[str, int] = {}
    for e in ds.images:
        for c in {a.category for a in e.annotations}:
            counts[c] = counts.get(c, 0) + 1
    strata: dict[str, list[str]] = {}
    for e in ds.images:
        cats = {a.category for a in e.annotations}
        key = min(cats, key=lambda c: (counts[c], c)) if cats else "none"
        strata.setdefault(key, []).append(e.image_id)
    rng = np.random.default_rng(seed)
    val: set[str] = set()
    for key in sorted(strata):
        ids = sorted(strata[key])
        n_val = round(len(ids) * val_fraction)
        if val_fraction > 0 and n_val == 0 and len(ids) >= 2:
            n_val = 1
        if n_val >= len(ids) and len(ids) >= 2:
            n_val = len(ids) - 1
        val.update(ids[i] for i in rng.permutation(len(ids))[:n_val])
    train = [e.image_id for e in ds.images if e.image_id not in val]
    return train, [e.image_id for e in ds.images if e.image_id in val]


def validation_split(labeled: DetectionDataset, tcfg: DetectorTrainConfig, seed: int) -> tuple[list[str], list[str]]:
    """(train_ids, val_ids) of the labeled set ``labeled``: no validation (all ids train) when
    ``val_fraction`` is 0 or would hold out fewer than ``val_min_images``."""
    ids = [e.image_id for e in labeled.images]
    if tcfg.val_fraction <= 0 or round(len(ids) * tcfg.val_fraction) < tcfg.val_min_images:
        return ids, []
    return split_ids(labeled, tcfg.val_fraction, seed)


class ValidationTracker:
    """Evaluations at every ``val_every`` share of ``total_iters``; keeps the best weights (a CPU copy)."""

    def __init__(self, val_ids: list[str], total_iters: int, tcfg: DetectorTrainConfig) -> None:
        self.val_ids = list(val_ids)
        self.metric = tcfg.val_metric
        self.patience = tcfg.val_patience
        self.interval = max(1, math.ceil(tcfg.val_every * total_iters))
        self.total_iters = total_iters
        self.records: list[dict[str, Any]] = []
        self.best_score = -math.inf
        self.best_iter: int | None = None
        self.best_state: dict[str, torch.Tensor] | None = None
        self.stale = 0
        self.stopped_early = False

    @property
    def enabled(self) -> bool:
        """Whether there is a validation set."""
        return bool(self.val_ids)

    def due(self, it: int) -> bool:
        """Whether to evaluate after iteration count ``it`` (every interval, and at the end)."""
        return self.enabled and it > 0 and (it % self.interval == 0 or it == self.total_iters)

    def update(self, it: int, metrics: dict[str, Any], model: torch.nn.Module) -> bool:
        """Record the evaluation after ``it`` iterations; returns True when training should stop."""
        raw = metrics.get(self.metric)
        score = float(raw) if raw is not None and math.isfinite(float(raw)) else 0.0
        self.records.append({"iter": it, self.metric: score, "f1": metrics.get("f1"),
                             "map50": metrics.get("map50"), "f1_macro": metrics.get("f1_macro")})
        if score >= self.best_score:  # a tie keeps the later (longer-trained) weights, but is no gain
            self.stale = 0 if score > self.best_score else self.stale + 1
            self.best_score, self.best_iter = score, it
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            self.stale += 1
        if self.patience is not None and self.stale >= self.patience:
            self.stopped_early = True
        return self.stopped_early

    def state(self) -> dict[str, Any]:
        """What a resumed run needs back (the best weights travel separately)."""
        return {"records": self.records, "best_score": self.best_score, "best_iter": self.best_iter,
                "stale": self.stale, "stopped_early": self.stopped_early}

    def restore(self, state: dict[str, Any], best_state: dict[str, torch.Tensor] | None) -> None:
        """Continue from :meth:`state` and the best weights saved with it."""
        self.records = list(state.get("records", []))
        self.best_score = float(state.get("best_score", -math.inf))
        self.best_iter = state.get("best_iter")
        self.stale = int(state.get("stale", 0))
        self.stopped_early = bool(state.get("stopped_early", False))
        self.best_state = best_state

    def summary(self) -> dict[str, Any]:
        """The report: validation ids, metric, every evaluation, the chosen iteration."""
        return {"n_val": len(self.val_ids), "val_ids": self.val_ids, "metric": self.metric,
                "best_iter": self.best_iter, "best_score": None if self.best_iter is None else self.best_score,
                "stopped_early": self.stopped_early, "evaluations": self.records}


def validate(model: torch.nn.Module, labeled: DetectionDataset, tracker: ValidationTracker, it: int,
             get_slice: Callable[[ImageEntry], np.ndarray], device: torch.device) -> None:
    """Evaluate ``model`` on the labeled validation share (F1 / mAP@50 at IoU 0.5) and let ``tracker``
    keep the best weights; ``get_slice`` gives an entry's unit-float slice (the training window)."""
    from gsal_edge.models.detection_metrics import detection_metrics, ground_truth
    from gsal_edge.models.detector import predict

    val = labeled.subset(tracker.val_ids)
    classes = list(getattr(model, "classes", None) or [])
    gts = ground_truth(val, classes, agnostic=model.config.class_agnostic)
    preds = predict(model, [get_slice(e) for e in val.images], device=device)
    metrics = detection_metrics(gts, preds, classes, 0.5, [(e.height, e.width) for e in val.images])
    tracker.update(it, metrics, model)
    log.info("validation after %d iterations: %s %.4f", it, tracker.metric, tracker.records[-1][tracker.metric])


def save_best(path: Path, model: torch.nn.Module, tracker: ValidationTracker, cfg: DetectorConfig,
              classes: list[str], pre: dict[str, Any]) -> None:
    """Write the tracker's best weights as a checkpoint (a resumed run reads them back)."""
    from gsal_edge.models.detector import build_detector, save_checkpoint

    best = build_detector(cfg, len(classes))
    best.load_state_dict(tracker.best_state)  # type: ignore[arg-type]
    save_checkpoint(path, best, cfg, classes, pre, extra={"best_iter": tracker.best_iter})
