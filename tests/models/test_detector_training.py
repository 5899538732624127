"""Training loop: schedule, flips, split, real training steps, resume, evaluation, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry
from gsal_edge.models.detector import load_checkpoint
from gsal_edge.models.detector_config import get_config
from gsal_edge.models.detector_timing import time_train_steps
from gsal_edge.models.detector_training import (
    FINAL,
    LAST,
    TrainingError,
    epoch_seed,
    evaluate_detector,
    flip_boxes,
    lr_at,
    make_target,
    repeat_factors,
    split_ids,
    train_detector,
)


def _squares_dataset(root: Path, n: int, size: int = 64, seed: int = 0) -> DetectionDataset:
    """Bright squares ("inclusion") and dark squares ("void") on noise, 16-bit PNGs: an easy task."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(n):
        img = 0.45 + 0.03 * rng.standard_normal((size, size))
        anns = []
        for k in range(int(rng.integers(0, 3))):
            s = int(rng.integers(10, 18))
            x, y = (int(v) for v in rng.integers(2, size - s - 2, 2))
            if any(not (x + s < a.box[0] or a.box[2] < x or y + s < a.box[1] or a.box[3] < y) for a in anns):
                continue
            bright = bool(rng.integers(0, 2))
            img[y:y + s, x:x + s] += 0.3 if bright else -0.3
            anns.append(Annotation((x, y, x + s, y + s), "inclusion" if bright else "void"))
        name = f"images/im{i:03d}.png"
        Image.fromarray((np.clip(img, 0, 1) * 65535).astype(np.uint16)).save(root / name)
        entries.append(ImageEntry(f"im{i:03d}", name, size, size, anns))
    return DetectionDataset(root, ["void", "inclusion"], entries)


def test_lr_schedule() -> None:
    t = get_config("cpu").train.model_copy(update={"lr": 0.1, "warmup_iters": 10, "warmup_factor": 0.01,
                                                   "lr_milestones": [0.5, 0.75], "lr_gamma": 0.1,
                                                   "lr_schedule": "multistep"})
    assert lr_at(0, 100, t) == pytest.approx(0.001)
    assert lr_at(5, 100, t) == pytest.approx(0.1 * (0.01 * 0.5 + 0.5))
    assert lr_at(10, 100, t) == pytest.approx(0.1)
    assert lr_at(49, 100, t) == pytest.approx(0.1) and lr_at(50, 100, t) == pytest.approx(0.01)
    assert lr_at(80, 100, t) == pytest.approx(0.001)
    c = t.model_copy(update={"lr_schedule": "cosine", "warmup_iters": 0})
    assert lr_at(0, 100, c) == pytest.approx(0.1) and lr_at(50, 100, c) == pytest.approx(0.05)
    assert lr_at(100, 100, c) == pytest.approx(0.0, abs=1e-12)


def test_flip_boxes() -> None:
    b = np.array([[2, 3, 10, 7]], dtype=np.float32)
    assert flip_boxes(b, 64, 32, True, False).tolist() == [[54, 3, 62, 7]]
    assert flip_boxes(b, 64, 32, False, True).tolist() == [[2, 25, 10, 29]]
    assert np.array_equal(flip_boxes(flip_boxes(b, 64, 32, True, True), 64, 32, True, True), b)


def test_make_target_flips_and_rejects_unknown_class(tmp_path) -> None:
    e = ImageEntry("a", "a.png", 64, 32, [Annotation((2, 3, 10, 7), "void")])
    t = make_target(e, {"void": 2}, hflip=True)
    assert t["boxes"].tolist() == [[54, 3, 62, 7]] and t["labels"].tolist() == [2]
    empty = make_target(ImageEntry("b", "b.png", 8, 8), {"void": 1})
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64
    with pytest.raises(TrainingError, match="image a.*void"):
        make_target(e, {"crack": 1})


def test_split_is_seeded_disjoint_and_keeps_rare_classes_in_both(tmp_path) -> None:
    entries = [ImageEntry(f"i{k}", f"i{k}.png", 8, 8, [Annotation((0, 0, 2, 2), "common")]) for k in range(40)]
    entries += [ImageEntry(f"r{k}", f"r{k}.png", 8, 8, [Annotation((0, 0, 2, 2), "rare"),
                                                          Annotation((3, 3, 5, 5), "common")]) for k in range(3)]
    entries += [ImageEntry(f"n{k}", f"n{k}.png", 8, 8) for k in range(20)]
    ds = DetectionDataset(tmp_path, ["common", "rare"], entries)
    tr, va = split_ids(ds, 0.2, seed=1)
    assert set(tr).isdisjoint(va) and len(tr) + len(va) == len(ds)
    assert split_ids(ds, 0.2, seed=1) == (tr, va) and split_ids(ds, 0.2, seed=2) != (tr, va)
    assert any(i.startswith("r") for i in va) and any(i.startswith("r") for i in tr)
    assert 0.15 * len(ds) < len(va) < 0.25 * len(ds)
    assert split_ids(ds, 0.0, 0) == ([e.image_id for e in entries], [])


def test_repeat_factors(tmp_path) -> None:
    # 10 images: 8 "common" (f = 0.8), 1 "rare" (f = 0.1), 1 empty; t = 0.4
    entries = [ImageEntry(f"c{k}", "x.png", 8, 8, [Annotation((0, 0, 2, 2), "common")]) for k in range(8)]
    entries += [ImageEntry("r", "x.png", 8, 8, [Annotation((0, 0, 2, 2), "rare"), Annotation((3, 3, 5, 5), "common")]),
                ImageEntry("e", "x.png", 8, 8)]
    ds = DetectionDataset(tmp_path, ["common", "rare"], entries)
    assert repeat_factors(ds, None).tolist() == [1] * 10
    r = repeat_factors(ds, 0.4)  # common: sqrt(0.4 / 0.9) < 1 -> 1; rare: sqrt(0.4 / 0.1) = 2
    assert r.tolist() == [1] * 8 + [2, 1]


def test_repeat_factor_sampling_lengthens_the_epoch(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 8)
    first = next(e for e in ds.images if e.annotations)
    for e in ds.images:  # "void" only in one image: f = 1/8, repeat round(sqrt(8)) = 3
        for a in e.annotations:
            a.category = "void" if e is first else "inclusion"
    cfg = get_config("tiny", {"train": {"batch_size": 2, "repeat_factor_threshold": 1.0}})
    train_detector(ds, cfg, 1, tmp_path / "run", seed=0, progress=False)
    n = int(repeat_factors(ds, 1.0).sum())
    assert n > len(ds)
    assert json.loads((tmp_path / "run" / "train_log.jsonl").read_text())["iters"] == -(-n // 2)


def test_time_train_steps_times_real_steps_on_the_named_device(tmp_path) -> None:
    ds = _squares_dataset(tmp_path, 6)
    r = time_train_steps(ds, "tiny", steps=2, warmup=1, batch_size=2, device="cpu")
    assert r["batch_size"] == 2 and 0 < r["step_min_s"] <= r["step_median_s"]
    assert r["per_image_median_s"] == pytest.approx(r["step_median_s"] / 2)
    if not torch.cuda.is_available():  # torch names the missing device; no silent fallback to the CPU
        with pytest.raises((RuntimeError, AssertionError)):
            time_train_steps(ds, "tiny", steps=1, warmup=0, batch_size=2, device="cuda")


def test_epoch_seed_differs_per_epoch_and_seed() -> None:
    assert len({epoch_seed(s, e) for s in range(3) for e in range(5)}) == 15


def test_training_lowers_the_loss(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 16)
    cfg = get_config("tiny", {"train": {"epochs": 6, "batch_size": 4, "lr": 0.02, "warmup_iters": 4}})
    train_detector(ds, cfg, out_dir=tmp_path / "run", seed=0, progress=False)
    hist = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert len(hist) == 6 and hist[-1]["loss"] < 0.7 * hist[0]["loss"]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["n_train_images"] == 16 and run["classes"] == ["void", "inclusion"] and run["versions"]["torch"]
    _model, meta = load_checkpoint(tmp_path / "run" / FINAL)
    assert meta["classes"] == ["void", "inclusion"] and meta["preprocessing"]["input_size"] == [64, 64]


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 12)
    cfg = get_config("tiny", {"train": {"batch_size": 4}})
    ids = [e.image_id for e in ds.images[:10]]
    full = train_detector(ds, cfg, 2, tmp_path / "a", seed=5, image_ids=ids, progress=False)
    # "interrupted" after epoch 1 of 2 (3 iterations of 4 images), then resumed
    half = train_detector(ds, cfg, 2, tmp_path / "c", seed=5, image_ids=ids, progress=False, max_iters=3)
    assert load_checkpoint(tmp_path / "c" / LAST)[1]["extra"]["train_state"]["epoch"] == 1
    resumed = train_detector(ds, cfg, 2, tmp_path / "c", seed=5, image_ids=ids, progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-6) for k in a)
    assert not all(torch.equal(a[k], half.state_dict()[k]) for k in a if a[k].is_floating_point())
    # a finished run resumes to itself without training
    again = train_detector(ds, cfg, 2, tmp_path / "a", seed=5, image_ids=ids, progress=False)
    assert all(torch.equal(a[k], again.state_dict()[k]) for k in a)


def test_resume_refuses_other_data_or_config(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 8)
    cfg = get_config("tiny", {"train": {"batch_size": 4}})
    train_detector(ds, cfg, 1, tmp_path / "r", seed=0, progress=False)
    with pytest.raises(TrainingError, match="ids"):
        train_detector(ds, cfg, 1, tmp_path / "r", seed=0, image_ids=["im000", "im001"], progress=False)
    with pytest.raises(TrainingError, match="config"):
        train_detector(ds, get_config("tiny", {"train": {"lr": 0.001}}), 1, tmp_path / "r", seed=0, progress=False)
    train_detector(ds, get_config("tiny"), 1, tmp_path / "r", seed=0, resume=False, progress=False)


def test_init_from_fine_tunes_and_refuses_another_architecture(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 12)
    cfg = get_config("tiny", {"train": {"batch_size": 4, "lr": 0.02, "warmup_iters": 2}})
    first = train_detector(ds, cfg, 3, seed=1, progress=False)
    before = {k: v.clone() for k, v in first.state_dict().items()}
    # zero iterations of fine-tuning (max_iters=0) returns the source's weights exactly: they were copied
    copy = train_detector(ds, cfg, 1, seed=2, progress=False, init_from=first, max_iters=0)
    assert all(torch.equal(before[k], v) for k, v in copy.state_dict().items())
    tuned = train_detector(ds, cfg, 2, seed=2, progress=False, init_from=first)
    fresh = train_detector(ds, cfg, 2, seed=2, progress=False)
    changed = [k for k, v in tuned.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    assert changed, "fine-tuning left every weight as it was"
    assert all(torch.equal(before[k], v) for k, v in first.state_dict().items()), "the source model was modified"
    w = "backbone.body.0.0.weight"
    assert w in before and not torch.allclose(tuned.state_dict()[w], fresh.state_dict()[w])
    with pytest.raises(TrainingError, match="another detector config"):
        train_detector(ds, get_config("tiny", {"small_widths": [4, 12]}), 1, progress=False, init_from=first)
    agnostic = get_config("tiny", {"class_agnostic": True})
    with pytest.raises(TrainingError, match="classes"):
        train_detector(ds, agnostic, 1, progress=False, init_from=first)


def test_bad_inputs_are_named(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 4)
    with pytest.raises(TrainingError, match="nope"):
        train_detector(ds, "tiny", 1, image_ids=["im000", "nope"], progress=False)
    (tmp_path / "d" / "images" / "im002.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="im002.png"):
        train_detector(ds, "tiny", 1, progress=False)


def test_class_agnostic_training_and_evaluation(tmp_path) -> None:
    ds = _squares_dataset(tmp_path / "d", 8)
    m = train_detector(ds, get_config("tiny", {"class_agnostic": True}), 1, seed=0, progress=False)
    assert m.classes == ["defect"] and m.num_classes == 1
    r = evaluate_detector(m, ds)
    assert list(r["per_class"]) == ["defect"]
    assert r["per_class"]["defect"]["n_gt"] == sum(len(e.annotations) for e in ds.images)


@pytest.mark.slow
def test_cpu_preset_learns_an_easy_task(tmp_path) -> None:
    """Real training of the `cpu` preset on bright/dark squares: the held-out F1 must be high."""
    ds = _squares_dataset(tmp_path / "d", 96, size=96, seed=1)
    cfg = get_config("cpu", {"min_size": 96, "max_size": 96, "train": {"epochs": 30, "warmup_iters": 20}})
    tr, va = split_ids(ds, 0.25, 0)
    model = train_detector(ds, cfg, seed=0, image_ids=tr, progress=False)
    r = evaluate_detector(model, ds, va)
    assert r["per_class"]["void"]["n_gt"] > 0 and r["per_class"]["inclusion"]["n_gt"] > 0
    assert r["f1"] > 0.9, r
    assert r["map50"] > 0.85, r


@pytest.mark.slow
def test_cli_train_resume_and_eval(tmp_path) -> None:
    from typer.testing import CliRunner

    from gsal_cli.commands.detector import app
    from gsal_edge.data.synthetic.generator import generate_dataset

    generate_dataset(tmp_path / "data", 10, seed=0, progress=False)
    runner = CliRunner()
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--epochs", "1", "--val-split", "0.3", "--set", "train.batch_size=4", "--threads", "1"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert 1 <= len(split["val"]) <= 4 and len(split["train"]) + len(split["val"]) == 10
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "macro F1" in r.output
    args2 = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--preset", "tiny",
             "--epochs", "2", "--set", "train.batch_size=4"]
    r = runner.invoke(app, args2)
    assert r.exit_code == 0, r.output
    lines = (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]  # resumed: epoch 1 was not redone
    r = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "run" / FINAL), "--data", str(tmp_path / "data"),
                            "--split", str(tmp_path / "run" / "split.json")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, args2 + ["--set", "train.lr=-1"])
    assert r.exit_code == 2 and "lr" in r.output
