"""Issue 16, the detector on data it was not tuned on: anchors from the labeled boxes (kept by the
checkpoint), flips and intensity jitter that move boxes exactly, a window that reaches the detector
input for 12-bit counts in 16-bit files, a bounded monotone schedule, validation on labeled ids only."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry
from gsal_edge.models.anchors import auto_anchor_sizes, auto_aspect_ratios, box_statistics, resolve_anchors
from gsal_edge.models.detector import DetectorWrapper, build_detector, load_checkpoint, model_anchors
from gsal_edge.models.detector_augment import apply_intensity, augment_slice, draw_augment
from gsal_edge.models.detector_config import DetectorConfigError, get_config
from gsal_edge.models.detector_schedule import scaled_epochs, scaled_iterations
from gsal_edge.models.detector_training import FINAL, SliceCache, _batch, train_detector, training_window
from gsal_edge.models.detector_validation import validation_split

AUTO = {"anchor_sizes": "auto", "aspect_ratios": "auto"}


def _boxes(sizes: list[float], ratios: list[float], img: int = 256) -> list[tuple[tuple[float, ...], int, int]]:
    """Boxes of sqrt-area ``s`` and h / w ``r`` (pairs) in a square ``img`` slice."""
    out = []
    for s, r in zip(sizes, ratios):
        w, h = s / math.sqrt(r), s * math.sqrt(r)
        out.append(((10.0, 10.0, 10.0 + w, 10.0 + h), img, img))
    return out


# ----------------------------------------------------------------------------------------- anchors


def test_auto_anchors_cover_the_labeled_boxes_and_are_deterministic() -> None:
    cfg = get_config("cpu", AUTO)
    rng = np.random.default_rng(0)
    sizes = list(rng.uniform(5, 20, 200))
    ratios = list(np.exp(rng.uniform(np.log(0.2), np.log(3.0), 200)))
    a = resolve_anchors(cfg, _boxes(sizes, ratios))
    b = resolve_anchors(cfg, list(reversed(_boxes(sizes, ratios))))
    assert a.anchor_sizes == b.anchor_sizes and a.aspect_ratios == b.aspect_ratios  # order-free, deterministic
    (s,) = a.anchor_sizes
    assert len(s) == 3 and s == sorted(s)
    # the 2nd-98th percentile of the boxes' sizes lies inside the anchors' span (within one geometric step)
    q_lo, q_hi = np.quantile(sizes, [0.02, 0.98])
    assert s[0] <= q_lo * 1.01 and s[-1] >= q_hi * 0.99 and s[0] >= 4.0 and s[-1] <= 64.0
    r = a.aspect_ratios
    assert len(r) == 5 and 1.0 in r and r == sorted(r)
    assert r[0] <= np.quantile(ratios, 0.02) * 1.01 and r[-1] >= np.quantile(ratios, 0.98) * 0.99


def test_auto_anchors_follow_the_input_resize_and_clip_to_the_range() -> None:
    cfg = get_config("cpu", AUTO)  # 256 px input: a 512 px slice is halved, a 128 px one doubled
    big = resolve_anchors(cfg, _boxes([20.0] * 10, [1.0] * 10, img=512)).anchor_sizes
    small = resolve_anchors(cfg, _boxes([5.0] * 10, [1.0] * 10, img=128)).anchor_sizes
    assert big == small  # both are 10 px boxes at the input size
    # one size only: widened to the minimum span (x4) about it: 5, 10, 20
    assert big == [[5.0, 10.0, 20.0]]
    # tiny boxes: clipped into [4, 64] keeping the span; huge boxes likewise
    assert resolve_anchors(cfg, _boxes([1.0] * 5, [1.0] * 5)).anchor_sizes == [[4.0, 8.0, 16.0]]
    assert resolve_anchors(cfg, _boxes([200.0] * 5, [1.0] * 5)).anchor_sizes == [[16.0, 32.0, 64.0]]
    # no boxes at all: the whole range and ratios 1/2 .. 2
    none = resolve_anchors(cfg)
    assert none.anchor_sizes == [[4.0, 16.0, 64.0]] and none.aspect_ratios == [0.5, 0.707, 1.0, 1.414, 2.0]


def test_auto_ratios_keep_thin_lines_and_tall_holes() -> None:
    cfg = get_config("cpu", AUTO)
    # a 40 x 1 px delamination line and a 3 x 24 px drill hole among round voids
    boxes = _boxes([6.0] * 20, [1.0] * 20) + [((0, 0, 40, 1), 256, 256)] * 3 + [((0, 0, 3, 24), 256, 256)] * 3
    _, ratios = box_statistics(boxes, cfg.min_size, cfg.max_size)
    r = auto_aspect_ratios(ratios, cfg)
    assert r[0] == pytest.approx(0.1)  # 1 / 40, clipped to ratio_range and r[-1] == pytest.approx(8.0, rel=0.01) and 1.0 in r


def test_fpn_presets_get_one_size_list_per_map() -> None:
    cfg = get_config("edge", AUTO)
    sizes = auto_anchor_sizes(np.array([8.0, 30.0]), cfg)
    assert len(sizes) == 4 and all(len(s) == 3 for s in sizes)
    flat = [v for s in sizes for v in s]
    assert flat == sorted(flat)
    build_detector(cfg.model_copy(update={"anchor_sizes": sizes}), 2)  # fits the backbone's maps


def _squares(root: Path, n: int, size: int = 64, seed: int = 0, bits: int = 16) -> DetectionDataset:
    """Bright / dark rectangles on noise, counts up to 2**bits - 1 in 16-bit PNGs."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    top = (1 << bits) - 1
    for i in range(n):
        img = 0.45 + 0.03 * rng.standard_normal((size, size))
        anns = []
        for k in range(1 + i % 2):
            w, h = int(rng.integers(6, 14)), int(rng.integers(4, 20))
            x, y = 4 + 28 * k, int(rng.integers(2, size - h - 2))
            bright = bool((i + k) % 2)
            img[y:y + h, x:x + w] += 0.3 if bright else -0.3
            anns.append(Annotation((x, y, x + w, y + h), "inclusion" if bright else "void"))
        name = f"images/im{i:03d}.png"
        Image.fromarray((np.clip(img, 0, 1) * top).astype(np.uint16)).save(root / name)
        entries.append(ImageEntry(f"im{i:03d}", name, size, size, anns))
    return DetectionDataset(root, ["void", "inclusion"], entries)


def test_checkpoint_keeps_the_trained_auto_anchors(tmp_path: Path) -> None:
    ds = _squares(tmp_path / "d", 8)
    cfg = get_config("tiny", AUTO)
    model = train_detector(ds, cfg, 1, tmp_path / "run", seed=0, progress=False)
    expected = resolve_anchors(cfg, [(a.box, e.height, e.width) for e in ds.images for a in e.annotations])
    assert model.config.anchor_sizes == expected.anchor_sizes != resolve_anchors(cfg).anchor_sizes
    loaded, meta = load_checkpoint(tmp_path / "run" / FINAL)
    assert meta["config"].anchor_sizes == expected.anchor_sizes  # concrete in the file, not "auto"
    assert meta["config"].aspect_ratios == expected.aspect_ratios
    assert model_anchors(loaded) == model_anchors(model)
    x = torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0))
    for a, b in zip(DetectorWrapper(model)(x), DetectorWrapper(loaded)(x)):
        assert torch.allclose(a.float(), b.float())
    # fine-tuning an auto config starts from (and keeps) the source model's anchors, whatever the new boxes
    tuned = train_detector(ds, cfg, 1, seed=1, image_ids=["im000", "im001"], progress=False, init_from=loaded)
    assert model_anchors(tuned) == model_anchors(loaded)


def test_save_checkpoint_refuses_anchors_that_are_not_the_models(tmp_path: Path) -> None:
    from gsal_edge.models.detector import save_checkpoint

    model = build_detector("tiny", 2, seed=0)
    other = model.config.model_copy(update={"anchor_sizes": [[5.0, 10.0, 20.0]]})
    with pytest.raises(DetectorConfigError, match="anchors"):
        save_checkpoint(tmp_path / "x.pt", model, other, ["a", "b"], {})


# ------------------------------------------------------------------------------------ augmentation


def test_flips_move_pixels_and_boxes_exactly() -> None:
    img = np.zeros((32, 48), np.float32)
    img[4:10, 6:20] = 1.0  # a 14 x 6 block at x 6..20, y 4..10
    box = np.array([[6, 4, 20, 10]], np.float32)
    for h, v, want in [(True, False, [28, 4, 42, 10]), (False, True, [6, 22, 20, 28]),
                       (True, True, [28, 22, 42, 28]), (False, False, [6, 4, 20, 10])]:
        out, b = augment_slice(img, box, h, v)
        assert b.tolist() == [want]
        x1, y1, x2, y2 = (int(c) for c in want)
        assert out[y1:y2, x1:x2].min() == 1.0 and out.sum() == img.sum()  # the block sits inside its box


def test_intensity_jitter_is_a_window_and_gamma_in_unit_intensity() -> None:
    x = np.linspace(0, 1, 11, dtype=np.float32)[None]
    assert apply_intensity(x, 0.0, 1.0, 1.0) is x
    y = apply_intensity(x, 0.1, 0.9, 1.0)
    assert y[0, 1] == 0.0 and y[0, 9] == pytest.approx(1.0) and y[0, 5] == pytest.approx(0.5)
    g = apply_intensity(x, 0.0, 1.0, 2.0)
    assert g[0, 5] == pytest.approx(0.25) and g.dtype == np.float32
    t = get_config("cpu").train.model_copy(update={"intensity_prob": 1.0, "window_jitter": 0.1,
                                                   "gamma_jitter": 0.3})
    d = draw_augment(np.random.default_rng(0), 500, t)
    assert np.all(np.abs(d.lo) <= 0.1) and np.all(np.abs(d.hi - 1) <= 0.1) and d.lo.std() > 0.03
    assert np.all(np.abs(np.log(d.gamma)) <= 0.3 + 1e-9)
    # without jitter the flips are the same draws as before intensity jitter existed
    off = draw_augment(np.random.default_rng(3), 50, get_config("cpu").train.model_copy(
        update={"vflip_prob": 0.0, "intensity_prob": 0.0}))
    r = np.random.default_rng(3)
    assert np.array_equal(off.hflip, r.random(50) < 0.5) and np.all(off.lo == 0) and np.all(off.gamma == 1)


# -------------------------------------------------------------------------------------- windowing


def test_12_bit_counts_in_16_bit_files_reach_the_detector_windowed(tmp_path: Path) -> None:
    ds = _squares(tmp_path / "d", 6, bits=12)
    raw_max = max(int(np.asarray(Image.open(ds.image_path(e))).max()) for e in ds.images)
    assert raw_max <= 4095
    no_aug = draw_augment(np.random.default_rng(0), 6, get_config("tiny").train.model_copy(
        update={"hflip_prob": 0.0}))
    label_of = {"void": 1, "inclusion": 2}
    dtype_imgs, _ = _batch(ds, ds.images, label_of, no_aug, SliceCache(ds, training_window(ds, None)))
    assert float(torch.stack(dtype_imgs).mean()) < 0.04  # the old default: 16-bit range, near-black
    for spec in ("auto", "bits:12"):
        w = training_window(ds, spec)
        assert w is not None and 0 <= w[0] < w[1] <= 4095
        imgs, _ = _batch(ds, ds.images, label_of, no_aug, SliceCache(ds, w))
        x = torch.stack(imgs)
        assert 0.3 < float(x.mean()) < 0.7 and float(x.max()) > 0.7 and float(x.min()) < 0.3, spec
    model = train_detector(ds, get_config("tiny"), 1, tmp_path / "run", seed=0, window="auto", progress=False)
    _, meta = load_checkpoint(tmp_path / "run" / FINAL)
    assert meta["preprocessing"]["window"] == list(training_window(ds, "auto"))
    assert model.training_summary["window"] == meta["preprocessing"]["window"]


# --------------------------------------------------------------------------------------- schedule


def test_scaled_schedule_is_monotone_and_bounded() -> None:
    t = get_config("cpu").train
    its = [scaled_iterations(n, t) for n in range(0, 5001, 7)]
    assert all(a <= b for a, b in itertools.pairwise(its))
    assert min(its) == t.schedule_min_iters and max(its) == t.schedule_max_iters
    assert scaled_iterations(t.schedule_ref_images, t) == t.schedule_ref_iters
    assert scaled_iterations(4 * t.schedule_ref_images, t) == round(t.schedule_ref_iters * 4 ** t.schedule_exponent)
    e = scaled_epochs(80, t)
    assert abs(e * math.ceil(80 / t.batch_size) - scaled_iterations(80, t)) <= math.ceil(80 / t.batch_size) / 2
    with pytest.raises(ValueError, match="n_labeled"):
        scaled_iterations(-1, t)
    with pytest.raises(ValueError, match="schedule_min_iters"):
        get_config("cpu", {"train": {"schedule_min_iters": 5000}})


def test_training_without_epochs_follows_the_scaled_schedule(tmp_path: Path) -> None:
    ds = _squares(tmp_path / "d", 12)
    cfg = get_config("tiny", {"train": {"schedule": "scaled", "schedule_ref_images": 12, "schedule_ref_iters": 9,
                                        "schedule_min_iters": 1, "batch_size": 4}})
    m = train_detector(ds, cfg, seed=0, progress=False)
    assert m.training_summary["iterations"] == 9 and m.training_summary["epochs"] == 3


# ------------------------------------------------------------------------------------- validation


def test_validation_uses_only_labeled_ids_and_returns_the_best_weights(tmp_path: Path) -> None:
    ds = _squares(tmp_path / "d", 40)
    labeled = [e.image_id for e in ds.images[:24]]  # im024.. are "unlabeled / test": never touched
    cfg = get_config("tiny", {"train": {"val_fraction": 0.34, "val_min_images": 4, "val_every": 0.25,
                                        "batch_size": 4, "lr": 0.02}})
    tr, va = validation_split(ds.subset(labeled), cfg.train, seed=3)
    assert set(va) < set(labeled) and not set(tr) & set(va) and set(tr) | set(va) == set(labeled)
    m = train_detector(ds, cfg, 4, tmp_path / "run", seed=3, image_ids=labeled, progress=False)
    v = m.training_summary["validation"]
    assert v["val_ids"] == va and m.training_summary["n_train_images"] == len(tr)
    total = 4 * math.ceil(len(tr) / 4)  # 4 epochs; an evaluation every 25% of them
    assert [r["iter"] for r in v["evaluations"]] == list(range(math.ceil(total / 4), total + 1, math.ceil(total / 4)))
    best = max(v["evaluations"], key=lambda r: (r["map50"], r["iter"]))
    assert v["best_iter"] == best["iter"] and v["best_score"] == best["map50"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["validation"]["val_ids"] == va
    # too few labeled images for val_min_images: no validation, every labeled image trains
    tr2, va2 = validation_split(ds.subset(labeled[:6]), cfg.train, seed=3)
    assert va2 == [] and tr2 == labeled[:6]


def test_tracker_keeps_the_best_weights_and_stops_after_patience() -> None:
    from gsal_edge.models.detector_validation import ValidationTracker

    t = get_config("tiny").train.model_copy(update={"val_patience": 2, "val_every": 0.25})
    tr = ValidationTracker(["a", "b"], 100, t)
    assert tr.interval == 25 and tr.due(25) and not tr.due(30) and tr.due(100)
    net = torch.nn.Linear(1, 1)
    stops = []
    for it, score in [(25, 0.2), (50, 0.5), (75, 0.5), (100, 0.4)]:
        with torch.no_grad():
            net.weight.fill_(it)
        stops.append(tr.update(it, {"map50": score}, net))
    assert stops == [False, False, False, True]  # 0.5 again is no gain; 0.4 is the second without one
    assert tr.best_iter == 75 and tr.best_score == 0.5 and float(tr.best_state["weight"]) == 75.0
    assert tr.summary()["stopped_early"] and [r["iter"] for r in tr.summary()["evaluations"]] == [25, 50, 75, 100]
    assert not ValidationTracker([], 100, t).due(25)
