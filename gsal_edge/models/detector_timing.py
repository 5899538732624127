"""Timing of detector training steps (``gsal-edge detector bench``): forward, backward and optimizer
step on real batches, per image, on a named device."""

from __future__ import annotations

import time

import numpy as np
import torch

from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.models.detector import build_detector
from gsal_edge.models.detector_augment import draw_augment
from gsal_edge.models.detector_config import AGNOSTIC_CLASS, DetectorConfig, resolve_config
from gsal_edge.models.detector_training import SliceCache, TrainingError, _batch, _label_map, make_optimizer

__all__ = ["time_train_steps"]


def time_train_steps(dataset: DetectionDataset, cfg: str | DetectorConfig, steps: int = 10, warmup: int = 2,
                     batch_size: int | None = None, seed: int = 0, device: str = "cpu") -> dict[str, float]:
    """Wall time of full training steps (forward, backward, SGD/AdamW step) on real batches of
    ``dataset``, images already on ``device``; returns per-step and per-image medians and minima (s).
    On a GPU each step is timed to a ``torch.cuda.synchronize`` so queued kernels are counted."""
    cfg = resolve_config(cfg)
    dev = torch.device(device)
    bs = batch_size or cfg.train.batch_size
    classes = [AGNOSTIC_CLASS] if cfg.class_agnostic else list(dataset.classes)
    label_of = _label_map(list(dataset.classes), classes, cfg.class_agnostic)
    model = build_detector(cfg, len(classes), seed=seed).train().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.train.model_copy(update={"lr": min(cfg.train.lr, 1e-3)}))
    cache = SliceCache(dataset, None)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(min(steps + warmup, 4)):
        sel = rng.choice(len(dataset), size=bs, replace=len(dataset) < bs)
        no_aug = draw_augment(rng, bs, cfg.train.model_copy(update={"hflip_prob": 0.0, "vflip_prob": 0.0,
                                                                     "intensity_prob": 0.0}))
        images, targets = _batch(dataset, [dataset.images[i] for i in sel], label_of, no_aug, cache)
        batches.append(([im.to(dev) for im in images], [{k: v.to(dev) for k, v in t.items()} for t in targets]))
    torch.manual_seed(seed)
    times = []
    for k in range(steps + warmup):
        images, targets = batches[k % len(batches)]
        sync()
        t0 = time.perf_counter()
        loss = sum(model(images, targets).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    med = float(np.median(times))
    if not np.isfinite(float(loss.detach())):
        raise TrainingError(f"time_train_steps: loss is {float(loss.detach())} on {device}")
    return {"batch_size": float(bs), "threads": float(torch.get_num_threads()), "step_median_s": med,
            "step_min_s": float(min(times)), "per_image_median_s": med / bs, "per_image_min_s": min(times) / bs}


