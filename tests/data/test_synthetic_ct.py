"""Synthetic thin-film CT generator (gsal_edge.data.synthetic) and contact sheets (gsal_edge.data.preview)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

from gsal_cli.commands.data import app as data_app
from gsal_edge.data.formats import load_dataset
from gsal_edge.data.image_io import load_image
from gsal_edge.data.preview import contact_sheet, pick_images
from gsal_edge.data.synthetic.config import (
    DEFAULT_CONFIG_PATH,
    SynthConfig,
    SynthConfigError,
    conditional_class_rates,
)
from gsal_edge.data.synthetic.generator import generate_dataset, generate_slice, iter_slices, slice_seed
from gsal_edge.data.synthetic.render import gaussian_blur

CFG = SynthConfig()


def _files(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _with_classes(cfg: SynthConfig, **changes: dict) -> SynthConfig:
    classes = {k: c.model_copy(update=changes.get(k, {})) for k, c in cfg.classes.items()}
    return cfg.model_copy(update={"classes": classes})


# ---------------------------------------------------------------------------------------- config


def test_packaged_yaml_equals_defaults() -> None:
    assert SynthConfig.from_yaml(DEFAULT_CONFIG_PATH) == SynthConfig()


def test_yaml_round_trip(tmp_path: Path) -> None:
    cfg = CFG.model_copy(update={"height": 224, "width": 160, "defect_free_share": 0.3})
    cfg.to_yaml(tmp_path / "c.yaml")
    assert SynthConfig.from_yaml(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "text, field",
    [
        ("classes:\n  void: {frequency: 2.0, shape: round, polarity: dark, size: [3, 8], contrast: [3, 6]}\n",
         "classes.void.frequency"),
        ("noize: {sigma: 0.01}\n", "noize"),
        ("noise: {sigma: -1}\n", "noise.sigma"),
        ("classes:\n  void: {frequency: 0.5, shape: round, polarity: dark, size: [8, 3], contrast: [3, 6]}\n",
         "classes.void.size"),
        ("classes:\n  void: {frequency: 0.1, shape: round, polarity: dark, size: [3, 8], contrast: [3, 6]}\n",
         "frequencies sum"),
        ("classes:\n  void: {frequency: 0.5, shape: hexagon, polarity: dark, size: [3, 8], contrast: [3, 6]}\n",
         "classes.void.shape"),
    ],
)
def test_bad_yaml_names_file_and_field(tmp_path: Path, text: str, field: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(SynthConfigError) as e:
        SynthConfig.from_yaml(f)
    assert str(f) in str(e.value) and field in str(e.value)


def test_yaml_that_is_not_a_mapping(tmp_path: Path) -> None:
    f = tmp_path / "list.yaml"
    f.write_text("- 1\n- 2\n")
    with pytest.raises(SynthConfigError, match="mapping"):
        SynthConfig.from_yaml(f)


def _marginals(rates: dict[str, float], q: float) -> dict[str, float]:
    r = np.array(list(rates.values()))
    p_any = 1.0 - np.prod(1.0 - r)
    return {k: (1 - q) * v / p_any for k, v in rates.items()}


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 0.5), min_size=1, max_size=7), st.floats(0.0, 0.9))
def test_conditional_rates_reproduce_the_marginals(freqs: list[float], q: float) -> None:
    f = {f"c{i}": p for i, p in enumerate(freqs)}
    a = np.array(freqs) / (1 - q)
    assume(abs(a.sum() - 1) > 1e-3 and abs(a.max() - 1) > 1e-6)  # no knife-edge cases
    if a.max() > 1 or a.sum() < 1:
        with pytest.raises(ValueError):
            conditional_class_rates(f, q)
        return
    rates = conditional_class_rates(f, q)
    assert all(0.0 <= r <= 1.0 for r in rates.values())
    for k, m in _marginals(rates, q).items():
        assert m == pytest.approx(f[k], abs=1e-7)


def test_default_rates_reproduce_default_frequencies() -> None:
    freqs = {k: c.frequency for k, c in CFG.classes.items()}
    got = _marginals(conditional_class_rates(freqs, CFG.defect_free_share), CFG.defect_free_share)
    assert got == pytest.approx(freqs, abs=1e-9)


def test_slice_seed_depends_on_both_parts() -> None:
    seeds = {slice_seed(s, i) for s in range(5) for i in range(50)}
    assert len(seeds) == 250
    assert slice_seed(3, 7) == slice_seed(3, 7)


def test_gaussian_blur_keeps_mass_and_spreads_a_point() -> None:
    img = np.zeros((21, 21), np.float32)
    img[10, 10] = 1.0
    out = gaussian_blur(img, 1.0)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    assert out[10, 10] < 0.2 and out[10, 11] == pytest.approx(out[11, 10]) and out[10, 11] > out[10, 12]
    assert np.array_equal(gaussian_blur(img, 0.0), img)


# ---------------------------------------------------------------------------------------- slices


def test_slice_contract() -> None:
    names = set(CFG.classes)
    n_ann = 0
    for i, s in enumerate(iter_slices(CFG, 30, seed=11)):
        assert s.image.dtype == np.uint16 and s.image.shape == (CFG.height, CFG.width)
        assert s.image_id == f"slice-{i:06d}"
        assert set(s.meta) == {"product", "line", "ts"}
        assert s.meta["product"] in {p.name for p in CFG.products} and s.meta["line"] in CFG.lines
        for a in s.annotations:
            n_ann += 1
            x1, y1, x2, y2 = a.box
            assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height
            assert a.category in names
            spec = CFG.classes[a.category]
            assert a.attributes["polarity"] == spec.polarity and a.attributes["shape"] == spec.shape
            assert a.attributes["area_fraction"] == pytest.approx((x2 - x1) * (y2 - y1) / (CFG.width * CFG.height))
            assert spec.contrast[0] <= a.attributes["cnr"] <= spec.contrast[1]
        for lk in s.lookalikes:
            assert lk["type"] in {"dust", "wobble", "scratch"}
            x1, y1, x2, y2 = lk["box"]
            assert 0 <= x1 < x2 <= CFG.width and 0 <= y1 < y2 <= CFG.height
    assert n_ann > 0


def test_timestamps_follow_index() -> None:
    a = generate_slice(CFG, 5, index=0).meta["ts"]
    b = generate_slice(CFG, 5, index=2).meta["ts"]
    assert a == CFG.start_time and b == "2025-01-06T06:01:00+00:00"


@pytest.mark.parametrize("cls", list(CFG.classes))
def test_each_class_is_a_local_signal_of_a_few_noise_sigmas(cls: str) -> None:
    """Rendering with and without the defect contrast differs only around the box, with the
    class's polarity, by at least 2 noise sigmas at the peak (the task is learnable)."""
    only = {k: {"frequency": 0.0} for k in CFG.classes if k != cls}
    only[cls] = {"frequency": 1.0}
    on = _with_classes(CFG, **only).model_copy(update={"defect_free_share": 0.0})
    off = _with_classes(on, **{cls: {"frequency": 1.0, "contrast": (0.0, 0.0)}})
    seen = 0
    for i in range(12):
        s_on, s_off = generate_slice(on, slice_seed(1, i), i), generate_slice(off, slice_seed(1, i), i)
        assert [a.box for a in s_on.annotations] == [a.box for a in s_off.annotations]
        diff = s_on.image.astype(np.float64) - s_off.image.astype(np.float64)
        sigma = CFG.noise.sigma * next(p.noise_scale for p in CFG.products if p.name == s_on.meta["product"]) * 65535
        inside = np.zeros(diff.shape, bool)
        for a in s_on.annotations:
            x1, y1, x2, y2 = (int(v) for v in a.box)
            inside[max(0, y1 - 5):y2 + 5, max(0, x1 - 5):x2 + 5] = True  # AA ramp + PSF tail
            sign = -1 if a.attributes["polarity"] == "dark" else 1
            peak = (sign * diff[y1:y2, x1:x2]).max()
            assert peak >= 2.0 * sigma, (cls, i, peak / sigma)
            seen += 1
        assert np.abs(diff[~inside]).max() <= 2.0  # only quantization flips outside the boxes
    assert seen >= 3


def test_lookalikes_are_not_labeled() -> None:
    cfg = CFG.model_copy(update={"lookalikes": CFG.lookalikes.model_copy(update={
        "dust": CFG.lookalikes.dust.model_copy(update={"frequency": 1.0}),
        "wobble": CFG.lookalikes.wobble.model_copy(update={"frequency": 1.0}),
        "scratch": CFG.lookalikes.scratch.model_copy(update={"frequency": 1.0})})})
    types = set()
    for s in iter_slices(cfg, 10, seed=2):
        types |= {lk["type"] for lk in s.lookalikes}
        labeled = {tuple(a.box) for a in s.annotations}
        assert not any(tuple(lk["box"]) in labeled for lk in s.lookalikes)
    assert types == {"dust", "wobble", "scratch"}


def test_products_differ_in_brightness() -> None:
    means: dict[str, list[float]] = {}
    for s in iter_slices(CFG, 60, seed=4):
        means.setdefault(s.meta["product"], []).append(float(np.median(s.image[-40:])))  # substrate rows
    assert set(means) == {p.name for p in CFG.products}
    med = {k: np.median(v) for k, v in means.items()}
    assert med["film-C"] > med["film-A"] > med["film-B"]


def test_class_frequencies_and_defect_free_share() -> None:
    n = 300
    present = {c: 0 for c in CFG.classes}
    free = 0
    fracs = []
    for s in iter_slices(CFG, n, seed=0):
        cats = {a.category for a in s.annotations}
        free += not cats
        for c in cats:
            present[c] += 1
        fracs += [a.attributes["area_fraction"] for a in s.annotations]
    q = CFG.defect_free_share
    assert abs(free / n - q) < 4 * np.sqrt(q * (1 - q) / n) + 0.02  # + placement failures
    for c, k in present.items():
        p = CFG.classes[c].frequency
        assert abs(k / n - p) < 4 * np.sqrt(p * (1 - p) / n) + 0.01, (c, k / n, p)
    assert np.mean(np.array(fracs) < 0.02) > 0.9  # defects are small


# ---------------------------------------------------------------------------------------- data sets


def test_dataset_is_byte_identical_per_seed_and_streamable(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 10, seed=5, progress=False)
    generate_dataset(tmp_path / "b", 10, seed=5, workers=2, progress=False)
    generate_dataset(tmp_path / "c", 10, seed=6, progress=False)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert len(fa) == 11 and fa == fb
    assert fa["annotations.json"] != fc["annotations.json"]
    # image 7 alone, without generating the others, equals image 7 of the data set
    s7 = next(iter_slices(CFG, 1, seed=5, start=7))
    assert np.array_equal(load_image(tmp_path / "a" / "images" / "slice-000007.png"), s7.image)
    assert [x.box for x in a.images[7].annotations] == [x.box for x in s7.annotations]


def test_written_coco_reads_back_with_attributes_meta_and_lookalikes(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path, 12, seed=9, progress=False)
    doc = json.loads((tmp_path / "annotations.json").read_text())
    assert [c["name"] for c in doc["categories"]] == list(CFG.classes)
    assert doc["info"]["seed"] == 9 and SynthConfig.model_validate(doc["info"]["config"]) == CFG
    back = load_dataset(tmp_path)
    assert back.classes == ds.classes and back.skipped == [] and back.clipped == []
    for e, b in zip(ds.images, back.images):
        assert (b.image_id, b.file_name, b.width, b.height, b.meta, b.lookalikes) == \
               (e.image_id, e.file_name, e.width, e.height, e.meta, e.lookalikes)
        assert [(x.box, x.category, x.attributes) for x in b.annotations] == \
               [(x.box, x.category, x.attributes) for x in e.annotations]
    img = load_image(back.image_path(back.images[0]))
    assert img.dtype == np.uint16 and img.shape == (CFG.height, CFG.width)


def test_generate_dataset_rejects_negative_n(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate_dataset(tmp_path, -1, seed=0, progress=False)


# ---------------------------------------------------------------------------------------- preview and CLI


def test_contact_sheet_shows_every_class_first(tmp_path: Path) -> None:
    ds = generate_dataset(tmp_path / "d", 40, seed=3, progress=False)
    present = {a.category for e in ds.images for a in e.annotations}
    idx = pick_images(ds, 8, seed=0)
    assert len(set(idx)) == 8
    shown = {a.category for i in idx for a in ds.images[i].annotations}
    assert present <= shown or len(present) > 8
    ids = contact_sheet(ds, tmp_path / "sheet.png", n=8, seed=0)
    assert ids == [ds.images[i].image_id for i in idx]
    with Image.open(tmp_path / "sheet.png") as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 400


def test_cli_synth_and_preview(tmp_path: Path) -> None:
    r = CliRunner().invoke(data_app, ["synth", "--out", str(tmp_path / "s"), "--n", "6", "--seed", "1"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "s" / "images").glob("*.png"))) == 6
    r = CliRunner().invoke(data_app, ["preview", "--data", str(tmp_path / "s"), "--out", str(tmp_path / "p.png"),
                                      "--n", "4"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    bad = tmp_path / "bad.yaml"
    bad.write_text("noise: {sigma: 0}\n")
    r = CliRunner().invoke(data_app, ["synth", "--out", str(tmp_path / "x"), "--n", "1", "--config", str(bad)])
    assert r.exit_code == 2 and "noise.sigma" in r.output
