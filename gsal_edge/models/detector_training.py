"""Training and evaluation of the CT Faster R-CNN (a plain loop in the style of torchvision's
``references/detection``): SGD with momentum and weight decay, linear warmup, multistep or cosine
decay per iteration, gradient-norm clipping, seeded.

For data the defaults were not tuned on (issue 16): ``auto`` anchors from the training boxes
(:mod:`gsal_edge.models.anchors`), horizontal / vertical flips and intensity-window jitter
(:mod:`gsal_edge.models.detector_augment`), a window declaration resolved on the training slices
(``"auto"``, ``"bits:N"``), a schedule that scales with the training-set size
(:mod:`gsal_edge.models.detector_schedule`) and a validation share of the labeled images that picks
the best weights (:mod:`gsal_edge.models.detector_validation`).

Resumable: ``out_dir/last.pt`` is written after every epoch (weights + optimizer + epoch); the
epoch order, the flips and torch's sampling RNG are all derived from (seed, epoch), so a run
interrupted and resumed gives the same weights as one that ran through. The finished model is
``out_dir/detector.pt`` (a :func:`gsal_edge.models.detector.save_checkpoint` file), with ``run.json``
(config, data, versions, time) and ``train_log.jsonl`` (one line per epoch) next to it.

Data-parallel (DDP): inside a torch.distributed process group of N >= 2 ranks (e.g. started by
torchrun, see :mod:`gsal_edge.models.distributed`) the same call trains one replica per rank. Every
rank draws the same seeded epoch order; ``DistributedSampler`` shards it so that the N per-process
batches of ``batch_size / N`` together are exactly the one-process batch of ``batch_size`` (the global
batch, the iteration count and the LR schedule are unchanged; no LR scaling). Gradients are averaged
by ``DistributedDataParallel``; the logged losses are averaged over ranks; only rank 0 writes files.
What still differs from one process: BatchNorm statistics are per process (batch / N images), the
RPN / RoI samplers draw per rank, and the per-image loss normalisation is a mean of N means.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from gsal_edge.data.dataset import DetectionDataset, ImageEntry
from gsal_edge.data.image_io import load_image
from gsal_edge.data.preprocessing import WindowSpec, resolve_window, to_unit_float
from gsal_edge.errors import GSALError
from gsal_edge.models import distributed
from gsal_edge.models.anchors import resolve_anchors
from gsal_edge.models.detection_metrics import detection_metrics, ground_truth
from gsal_edge.models.detector import (
    CTFasterRCNN,
    Prediction,
    build_detector,
    load_checkpoint,
    predict,
    save_checkpoint,
)
from gsal_edge.models.detector_augment import AugmentDraw, augment_slice, draw_augment, flip_boxes
from gsal_edge.models.detector_config import (
    AGNOSTIC_CLASS,
    DetectorConfig,
    DetectorTrainConfig,
    resolve_config,
)
from gsal_edge.models.detector_schedule import scaled_epochs
from gsal_edge.models.detector_validation import (  # noqa: F401 - split_ids: re-exported (CLI, benchmark)
    ValidationTracker,
    save_best,
    split_ids,
    validate,
    validation_split,
)
from gsal_edge.provenance import git_state, package_versions

log = logging.getLogger(__name__)

LAST = "last.pt"
FINAL = "detector.pt"
BEST = "best.pt"  # the best weights so far on the labeled validation share (resume)
WINDOW_SAMPLE = 64  # slices read to resolve a window 'auto' of the training set


class TrainingError(GSALError, RuntimeError):
    """Training cannot start or continue; the message says why (and which file or batch)."""


# ----------------------------------------------------------------------------------- pure helpers


def lr_at(it: int, total_iters: int, tcfg: DetectorTrainConfig) -> float:
    """Learning rate at iteration ``it`` (0-based) of ``total_iters``: linear warmup from
    ``warmup_factor * lr`` over ``warmup_iters``, then multistep (x ``lr_gamma`` at each milestone
    fraction of ``total_iters``) or cosine decay to 0."""
    warm = 1.0
    if tcfg.warmup_iters > 0 and it < tcfg.warmup_iters:
        a = it / tcfg.warmup_iters
        warm = tcfg.warmup_factor * (1 - a) + a
    if tcfg.lr_schedule == "cosine":
        decay = 0.5 * (1 + math.cos(math.pi * min(it, total_iters) / max(total_iters, 1)))
    else:
        decay = tcfg.lr_gamma ** sum(it >= m * total_iters for m in tcfg.lr_milestones)
    return tcfg.lr * warm * decay


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's shuffling, flips and torch sampling RNG."""
    return int.from_bytes(hashlib.sha256(f"detector:{seed}:{epoch}".encode()).digest()[:8], "little") >> 1


def repeat_factors(ds: DetectionDataset, threshold: float | None) -> np.ndarray:
    """Per-image integer repeat counts of repeat-factor sampling: round(max_c sqrt(t / f_c)), >= 1,
    where f_c is the share of ``ds``'s images that hold class c (all ones when ``threshold`` is None)."""
    n = len(ds)
    if threshold is None or n == 0:
        return np.ones(n, dtype=np.int64)
    present = [{a.category for a in e.annotations} for e in ds.images]
    freq: dict[str, float] = {}
    for cats in present:
        for c in cats:
            freq[c] = freq.get(c, 0.0) + 1.0 / n
    r = [max([1.0] + [math.sqrt(threshold / freq[c]) for c in cats]) for cats in present]
    return np.maximum(1, np.round(r)).astype(np.int64)


def _ids_digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def make_optimizer(params: list[torch.nn.Parameter], tcfg: DetectorTrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW (beta1 = ``momentum``), both with ``weight_decay``."""
    if tcfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=tcfg.lr, betas=(tcfg.momentum, 0.999), weight_decay=tcfg.weight_decay)
    return torch.optim.SGD(params, lr=tcfg.lr, momentum=tcfg.momentum, weight_decay=tcfg.weight_decay)


# --------------------------------------------------------------------------------------- data


def load_slice(ds: DetectionDataset, entry: ImageEntry, window: tuple[float, float] | None = None) -> np.ndarray:
    """One slice of the data set as float32 HxW in [0, 1]."""
    try:
        return to_unit_float(load_image(ds.image_path(entry)), window)
    except ValueError as exc:
        raise ValueError(f"{ds.image_path(entry)} (image {entry.image_id}): {exc}") from exc


def make_target(entry: ImageEntry, label_of: dict[str, int], hflip: bool = False, vflip: bool = False
                ) -> dict[str, torch.Tensor]:
    """The torchvision target of one image (boxes float32 [N, 4], labels int64 [N]), flipped as asked."""
    labels = []
    for a in entry.annotations:
        if a.category not in label_of:
            raise TrainingError(f"image {entry.image_id}: class {a.category!r} not in the detector's classes")
        labels.append(label_of[a.category])
    boxes = flip_boxes(np.array([a.box for a in entry.annotations], dtype=np.float32), entry.width, entry.height,
                       hflip, vflip)
    return {"boxes": torch.from_numpy(boxes), "labels": torch.tensor(labels, dtype=torch.int64)}


def _label_map(classes: list[str], model_classes: list[str], agnostic: bool) -> dict[str, int]:
    if agnostic:
        return {c: 1 for c in classes}
    return {c: i + 1 for i, c in enumerate(model_classes)}


class SliceCache:
    """Slices as stored (e.g. uint16), read once: a 2,000-slice 256 px set holds about 260 MB."""

    def __init__(self, ds: DetectionDataset, window: tuple[float, float] | None, enabled: bool = True) -> None:
        self.ds, self.window, self.enabled = ds, window, enabled
        self._raw: dict[str, np.ndarray] = {}

    def get(self, entry: ImageEntry) -> np.ndarray:
        """float32 HxW in [0, 1]."""
        raw = self._raw.get(entry.image_id)
        if raw is None:
            raw = load_image(self.ds.image_path(entry))
            if self.enabled:
                self._raw[entry.image_id] = raw
        try:
            return to_unit_float(raw, self.window)
        except ValueError as exc:
            raise ValueError(f"{self.ds.image_path(entry)} (image {entry.image_id}): {exc}") from exc


def _batch(ds: DetectionDataset, entries: list[ImageEntry], label_of: dict[str, int], aug: AugmentDraw,
           cache: SliceCache) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    images, targets = [], []
    for k, e in enumerate(entries):
        img = cache.get(e)
        if img.shape != (e.height, e.width):
            raise TrainingError(f"{ds.image_path(e)}: image is {img.shape}, annotations say {(e.height, e.width)}")
        h, v, lo, hi, gamma = aug.at(k)
        img, _ = augment_slice(img, np.zeros((0, 4), np.float32), h, v, lo, hi, gamma)
        images.append(torch.from_numpy(img)[None])
        targets.append(make_target(e, label_of, h, v))
    return images, targets


def training_window(ds: DetectionDataset, window: WindowSpec) -> tuple[float, float] | None:
    """The fixed window of a declaration (``None``, ``"auto"``, ``"bits:N"``, ``(lo, hi)``; see
    :func:`gsal_edge.data.preprocessing.parse_window`); ``auto`` reads up to ``WINDOW_SAMPLE`` evenly
    spaced slices of ``ds`` (the training images)."""
    step = max(1, len(ds) // WINDOW_SAMPLE)
    try:
        return resolve_window(window, (load_image(ds.image_path(e)) for e in ds.images[::step]))
    except ValueError as exc:
        raise TrainingError(f"window {window!r}: {exc}") from exc


def _train_boxes(ds: DetectionDataset) -> list[tuple[tuple[float, float, float, float], int, int]]:
    return [(tuple(a.box), e.height, e.width) for e in ds.images for a in e.annotations]  # type: ignore[misc]


def _resolve_anchors(cfg: DetectorConfig, ds: DetectionDataset, init_from: CTFasterRCNN | None) -> DetectorConfig:
    """``auto`` anchors: the fine-tuned model's own (same architecture), else from ``ds``'s boxes."""
    if not cfg.anchors_auto:
        return cfg
    if init_from is not None and getattr(init_from, "config", None) is not None:
        src = init_from.config
        return cfg.model_copy(update={"anchor_sizes": src.anchor_sizes, "aspect_ratios": src.aspect_ratios})
    return resolve_anchors(cfg, _train_boxes(ds))


# ------------------------------------------------------------------------------------ training


def preprocessing_meta(cfg: DetectorConfig, window: tuple[float, float] | None) -> dict[str, Any]:
    """The preprocessing a checkpoint records: raw slice -> float32 [0, 1] (window) -> model input size."""
    return {"to_unit_float": True, "window": list(window) if window else None, "channels": 1,
            "input_size": [cfg.min_size, cfg.max_size], "image_mean": cfg.image_mean, "image_std": cfg.image_std}


def train_detector(
    dataset: DetectionDataset,
    cfg: str | DetectorConfig,
    epochs: int | None = None,
    out_dir: str | Path | None = None,
    seed: int = 0,
    resume: bool = True,
    image_ids: Sequence[str] | None = None,
    *,
    window: WindowSpec = None,
    progress: bool = True,
    max_iters: int | None = None,
    cache_images: bool = True,
    device: str = "cpu",
    init_from: CTFasterRCNN | None = None,
) -> CTFasterRCNN:
    """Train a detector on ``dataset`` (or the ``image_ids`` subset of it) and return it (eval mode).

    ``cfg``: preset name or :class:`DetectorConfig`; ``epochs`` defaults to ``cfg.train.epochs``
    (``train.schedule: scaled``: to :func:`gsal_edge.models.detector_schedule.scaled_epochs` of the
    training-image count). ``window``: a fixed ``(lo, hi)`` or a declaration (``"auto"``,
    ``"bits:N"``), resolved on the training images and recorded in the checkpoint. ``auto`` anchors
    are computed from the training boxes (or taken from ``init_from``). With ``train.val_fraction``
    a share of the given (labeled) images is held out, the weights with the best validation metric
    are returned and the report is ``model.training_summary["validation"]`` (and ``run.json``).
    With ``out_dir``, a checkpoint is written every epoch and, with ``resume``, an existing
    ``last.pt`` there is continued (it must come from the same config, data, classes and seed).
    ``max_iters`` stops early after that many iterations in total (for timing and tests).
    ``cache_images`` keeps the slices in memory as stored after their first read. ``init_from``
    starts from that model's weights (same architecture and classes) instead of a fresh
    initialization: fine-tuning, e.g. the previous active-learning round's detector; the
    optimizer and LR schedule still start fresh. The caller's global torch RNG state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        return _train(dataset, cfg, epochs, out_dir, seed, resume, image_ids, window, progress, max_iters,
                      cache_images, torch.device(device), init_from)


def _train(dataset: DetectionDataset, cfg: str | DetectorConfig, epochs: int | None, out_dir: str | Path | None,
           seed: int, resume: bool, image_ids: Sequence[str] | None, window_spec: WindowSpec,
           progress: bool, max_iters: int | None, cache_images: bool, device: torch.device,
           init_from: CTFasterRCNN | None = None) -> CTFasterRCNN:
    cfg = resolve_config(cfg)
    tcfg = cfg.train
    if epochs is not None and int(epochs) < 1:
        raise TrainingError(f"epochs must be >= 1, got {epochs}")
    labeled = dataset.subset(image_ids) if image_ids is not None else dataset
    if image_ids is not None and len(labeled) != len(set(image_ids)):
        known = {e.image_id for e in dataset.images}
        missing = [i for i in image_ids if i not in known]
        raise TrainingError(f"image_ids not in the data set: {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if len(labeled) == 0:
        raise TrainingError("no training images")
    train_ids, val_ids = validation_split(labeled, tcfg, seed)  # val: a share of the LABELED ids only
    ds = labeled.subset(train_ids) if val_ids else labeled
    window = training_window(labeled, window_spec)
    cfg = _resolve_anchors(cfg, ds, init_from)
    classes = [AGNOSTIC_CLASS] if cfg.class_agnostic else list(dataset.classes)
    label_of = _label_map(list(dataset.classes), classes, cfg.class_agnostic)
    ids = [e.image_id for e in ds.images]
    bs = tcfg.batch_size
    ddp = distributed.current()  # None: one process (the default path)
    world, rank = (ddp.world_size, ddp.rank) if ddp else (1, 0)
    if bs % world:
        raise TrainingError(f"batch_size {bs} does not split over {world} processes: the global batch stays "
                            f"batch_size, each process takes batch_size / {world}; pick a multiple of {world}")
    pb = bs // world  # per-process batch; the global batch (and so the LR schedule) is the one-process one
    if world > 1 and val_ids and tcfg.val_patience is not None:
        raise TrainingError("train.val_patience (early stop) runs in one process only: BatchNorm statistics "
                            "differ per rank, so ranks could stop at different iterations")
    pool = np.repeat(np.arange(len(ds)), repeat_factors(ds, tcfg.repeat_factor_threshold))  # epoch's samples
    if epochs is None:
        epochs = scaled_epochs(len(ds), tcfg, len(pool)) if tcfg.schedule == "scaled" else tcfg.epochs
    epochs = int(epochs)
    iters_per_epoch = math.ceil(len(pool) / bs)
    total_iters = epochs * iters_per_epoch
    fingerprint = {"config": cfg.model_dump(mode="json"), "classes": classes, "ids": _ids_digest(ids),
                   "seed": int(seed), "window": list(window) if window else None, "val": _ids_digest(val_ids)}

    model = build_detector(cfg, len(classes), seed=seed)
    if init_from is not None:
        _load_init(model, init_from, cfg, classes)
    model = model.to(device)
    model.classes = classes
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, tcfg)
    tracker = ValidationTracker(val_ids, min(total_iters, max_iters or total_iters), tcfg)
    start_epoch, history = 0, []
    out = Path(out_dir) if out_dir is not None else None
    writes = out is not None and rank == 0  # only rank 0 writes checkpoints and logs
    if out is not None:
        if writes:
            out.mkdir(parents=True, exist_ok=True)
        last = out / LAST
        if resume and last.is_file():
            start_epoch, history = _restore(last, model, opt, fingerprint, epochs, tracker)
    net = distributed.wrap_model(model, ddp)  # trains; `model` (the same weights) is what gets saved
    pre = preprocessing_meta(cfg, window)
    cache = SliceCache(labeled, window, cache_images)  # the validation slices are read through it too
    t_start = time.perf_counter()
    it_global = start_epoch * iters_per_epoch
    net.train()
    positions = distributed.shard_positions(len(pool), ddp)  # this rank's share of each epoch's order
    for epoch in range(start_epoch, epochs):
        if tracker.stopped_early:
            break
        es = epoch_seed(seed, epoch)
        rng = np.random.default_rng(es)  # the same order and augmentation on every rank
        torch.manual_seed(es + rank)  # the RPN / RoI samplers draw independently per rank
        order = pool[rng.permutation(len(pool))]
        aug = draw_augment(rng, len(pool), tcfg)
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        n_done = 0
        bar = tqdm(range(iters_per_epoch), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None if progress and rank == 0 else True)  # None: a bar on a terminal only
        for b in bar:
            if max_iters is not None and it_global >= max_iters or tracker.stopped_early:
                break
            pos = positions[b * pb:(b + 1) * pb]
            entries = [ds.images[i] for i in order[pos]]
            images, targets = _batch(ds, entries, label_of, aug.take(pos), cache)
            if device.type != "cpu":
                images = [im.to(device) for im in images]
                targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
            lr = lr_at(it_global, total_iters, tcfg)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = net(images, targets)
            loss = sum(losses.values())
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss {loss.item()} at epoch {epoch + 1}, iteration {b} (lr {lr:.3g}); images "
                    f"{[e.image_id for e in entries]}; parts {({k: float(v) for k, v in losses.items()})}"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tcfg.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, tcfg.clip_grad_norm)
            opt.step()
            it_global += 1
            n_done += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())
            bar.set_postfix(loss=f"{sums['loss'] / n_done:.3f}", lr=f"{lr:.2g}")
            if tracker.due(it_global):
                validate(model, labeled, tracker, it_global, cache.get, device)
                net.train()
        bar.close()
        if n_done == 0:
            break
        sums = distributed.all_reduce_mean(sums, ddp)  # logged losses: the mean over ranks
        rec = {"epoch": epoch + 1, "iters": n_done, "lr": lr, "seconds": time.perf_counter() - t0,
               **{k: v / n_done for k, v in sums.items()}}
        history.append(rec)
        if rank == 0:
            log.info("epoch %d/%d loss %.4f (%.1fs)", epoch + 1, epochs, rec["loss"], rec["seconds"])
        if writes:
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps(rec) + "\n")
            if n_done == iters_per_epoch:  # only whole epochs are resumable
                if tracker.best_state is not None and tracker.best_iter is not None:
                    save_best(out / BEST, model, tracker, cfg, classes, pre)
                save_checkpoint(out / LAST, model, cfg, classes, pre, extra={
                    "train_state": {"epoch": epoch + 1, "epochs": epochs, "optimizer": opt.state_dict(),
                                    "fingerprint": json.dumps(fingerprint, sort_keys=True), "history": history,
                                    "validation": tracker.state()}})
    if tracker.enabled and it_global > 0 and (not tracker.records or tracker.records[-1]["iter"] != it_global):
        validate(model, labeled, tracker, it_global, cache.get, device)  # the last weights count too
    if tracker.best_state is not None:
        model.load_state_dict(tracker.best_state)
    model.eval().cpu()
    model.config = cfg
    model.training_summary = {"epochs": epochs, "iterations": it_global, "total_iters": total_iters,
                              "n_train_images": len(ds), "window": list(window) if window else None,
                              "anchor_sizes": cfg.anchor_sizes, "aspect_ratios": cfg.aspect_ratios,
                              "validation": tracker.summary() if tracker.enabled else None}
    if writes:
        save_checkpoint(out / FINAL, model, cfg, classes, pre, extra={"seed": int(seed), "epochs": epochs})
        run = {"config": cfg.model_dump(mode="json"), "classes": classes, "seed": seed, "epochs": epochs,
               "n_train_images": len(ds), "train_ids_digest": _ids_digest(ids), "data_root": str(dataset.root),
               "iters_per_epoch": iters_per_epoch, "threads": torch.get_num_threads(),
               "processes": world, "batch_per_process": pb, "window": list(window) if window else None,
               "validation": model.training_summary["validation"],
               "seconds_this_session": time.perf_counter() - t_start,
               "seconds_total": sum(h["seconds"] for h in history), "history": history,
               "versions": package_versions(("torch", "torchvision", "numpy")),
               "git_commit": git_state()["commit"]}
        (out / "run.json").write_text(json.dumps(run, indent=2))
    return model


def _load_init(model: CTFasterRCNN, init_from: CTFasterRCNN, cfg: DetectorConfig, classes: list[str]) -> None:
    """Copy ``init_from``'s weights into the fresh ``model``; refuse another architecture or class list."""
    src_classes = list(getattr(init_from, "classes", []) or [])
    if src_classes != classes:
        raise TrainingError(f"init_from: the model has classes {src_classes}, training needs {classes}")
    src_cfg = getattr(init_from, "config", None)
    skip = {"train", "weights", "weights_backbone"}  # how to train / where weights came from, not the architecture
    if src_cfg is not None and src_cfg.model_dump(exclude=skip) != cfg.model_dump(exclude=skip):
        raise TrainingError("init_from: the model was built from another detector config (only `train` may differ)")
    model.load_state_dict({k: v.detach().cpu().clone() for k, v in init_from.state_dict().items()})


def _restore(last: Path, model: CTFasterRCNN, opt: torch.optim.Optimizer, fingerprint: dict[str, Any],
             epochs: int, tracker: ValidationTracker) -> tuple[int, list[dict[str, Any]]]:
    loaded, meta = load_checkpoint(last, map_location=str(next(model.parameters()).device))
    state = meta["extra"].get("train_state")
    if not state:
        raise TrainingError(f"{last}: no training state to resume from (pass resume=False / --no-resume)")
    old = json.loads(state["fingerprint"])
    diff = [k for k in fingerprint if old.get(k) != fingerprint[k]]
    if diff:
        raise TrainingError(f"{last}: cannot resume, it was trained with a different {', '.join(diff)}; "
                            f"use another --out or --no-resume")
    model.load_state_dict(loaded.state_dict())
    opt.load_state_dict(state["optimizer"])
    if state["epochs"] != epochs:
        log.warning("%s: resuming a %d-epoch run as %d epochs: the LR schedule changes", last, state["epochs"], epochs)
    if tracker.enabled and state.get("validation"):
        best = last.with_name(BEST)
        best_sd = load_checkpoint(best)[0].state_dict() if best.is_file() else None
        tracker.restore(state["validation"], best_sd)
    log.info("resuming %s after epoch %d", last, state["epoch"])
    return int(state["epoch"]), list(state.get("history", []))


# ---------------------------------------------------------------------------------- evaluation


def predict_dataset(model: CTFasterRCNN, dataset: DetectionDataset, *, window: tuple[float, float] | None = None,
                    batch_size: int = 8, progress: bool = False, device: str = "cpu") -> list[Prediction]:
    """Predictions for every image of ``dataset`` (in its order)."""
    preds: list[Prediction] = []
    bar = tqdm(total=len(dataset), desc="predict", disable=None if progress else True, leave=False)
    for start in range(0, len(dataset), batch_size):
        entries = dataset.images[start:start + batch_size]
        preds.extend(predict(model, [load_slice(dataset, e, window) for e in entries], batch_size=batch_size,
                             device=device))
        bar.update(len(entries))
    bar.close()
    return preds


def evaluate_detector(model: CTFasterRCNN, dataset: DetectionDataset, image_ids: Sequence[str] | None = None, *,
                      classes: list[str] | None = None, window: tuple[float, float] | None = None,
                      batch_size: int = 8, iou_thr: float = 0.5, progress: bool = False,
                      device: str = "cpu", score_threshold: Any = None) -> dict[str, Any]:
    """F1@IoU (best threshold), mAP@50 and COCO AP, overall and per class (see :mod:`gsal_edge.models.detection_metrics`).

    ``classes`` are the model's classes in label order (default: the model's, else the data set's);
    a class-agnostic model is scored against all annotations as one class. ``score_threshold`` (a
    ``detection_metrics.FixedThresholds`` or one float): F1 at thresholds fixed beforehand (e.g. on a
    validation split) instead of the best one on these images.
    """
    ds = dataset.subset(image_ids) if image_ids is not None else dataset
    classes = list(classes or getattr(model, "classes", None) or dataset.classes)
    agnostic = model.config.class_agnostic or classes == [AGNOSTIC_CLASS]
    gts = ground_truth(ds, classes, agnostic=agnostic)
    preds = predict_dataset(model, ds, window=window, batch_size=batch_size, progress=progress, device=device)
    return detection_metrics(gts, preds, classes, iou_thr, [(e.height, e.width) for e in ds.images],
                             thresholds=score_threshold)
