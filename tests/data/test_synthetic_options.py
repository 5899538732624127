"""Generator output options (bit depth, flips, inversion), the interface (delamination) shape, and the
promise that none of them changes the default data set by a single byte."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.benchmark.fingerprints import digest
from gsal_edge.data.image_io import load_image
from gsal_edge.data.synthetic.config import DefectClassSpec, SynthConfig
from gsal_edge.data.synthetic.generator import SynthSlice, generate_dataset, generate_slice, slice_seed

# sha256[:16] of every file of `generate_dataset(dir, 8, seed=7, SynthConfig())`, written by the generator
# before these options existed (commit 0515522): the default output must never move.
GOLDEN = {
    "annotations.json": "27d21fb7b01919a1",
    "images/slice-000000.png": "9f31cfb827b5d749", "images/slice-000001.png": "741efb99c3d8d50a",
    "images/slice-000002.png": "ad319f2a1360d63c", "images/slice-000003.png": "61ebe04948b2b8be",
    "images/slice-000004.png": "e230b5f7734725fa", "images/slice-000005.png": "b3d7b0e3b85a98da",
    "images/slice-000006.png": "5e43518e048ec407", "images/slice-000007.png": "13e659bfb1790529",
}
GOLDEN_CONFIG_DIGEST = "082b8ba5b7808f7a"  # digest(SynthConfig().model_dump(mode="json"), 16) at 0515522


def _seeded(cfg: SynthConfig, i: int = 0) -> SynthSlice:
    return generate_slice(cfg, slice_seed(11, i), i)


def test_default_dataset_is_byte_identical_to_before_the_options(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 8, 7, SynthConfig(), progress=False)
    got = {p.relative_to(tmp_path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
           for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    assert got == GOLDEN
    # the benchmark's cache key of the default data set hashes this dump: it must not move either
    assert digest(SynthConfig().model_dump(mode="json"), 16) == GOLDEN_CONFIG_DIGEST
    assert not {"bit_depth", "flip", "invert"} & set(SynthConfig().model_dump())
    dev = SynthConfig(bit_depth=12, flip="random", invert=True)
    assert {"bit_depth", "flip", "invert"} <= set(dev.model_dump())
    assert SynthConfig.model_validate(dev.model_dump(mode="json")) == dev


def test_bit_depths_store_the_same_slice_in_their_range(tmp_path: Path) -> None:
    s16 = _seeded(SynthConfig())
    s12 = _seeded(SynthConfig(bit_depth=12))
    s8 = _seeded(SynthConfig(bit_depth=8))
    assert s12.image.dtype == np.uint16 and s12.image.max() <= 4095
    assert s8.image.dtype == np.uint8
    unit = s16.image.astype(np.float64) / 65535
    assert np.abs(s12.image - unit * 4095).max() <= 0.51 + 4095 / 65535
    assert np.abs(s8.image - unit * 255).max() <= 0.51 + 255 / 65535
    assert [a.box for a in s12.annotations] == [a.box for a in s16.annotations]
    ds = generate_dataset(tmp_path / "d8", 2, 3, SynthConfig(bit_depth=8), progress=False)
    assert load_image(ds.image_path(ds.images[0])).dtype == np.uint8
    ds = generate_dataset(tmp_path / "d12", 2, 3, SynthConfig(bit_depth=12), progress=False)
    img = load_image(ds.image_path(ds.images[0]))
    assert img.dtype == np.uint16 and 2000 < img.max() <= 4095


def _find(cfg: SynthConfig, want: Callable[[SynthSlice], bool]) -> tuple[int, SynthSlice]:
    for i in range(40):
        base = _seeded(cfg, i)
        if want(base):
            return i, base
    raise AssertionError("no slice with the wanted content in 40 draws")


@pytest.mark.parametrize("flip, axes", [("vertical", (0,)), ("horizontal", (1,))])
def test_flips_mirror_image_and_boxes_together(flip: str, axes: tuple[int, ...]) -> None:
    i, base = _find(SynthConfig(), lambda s: len(s.annotations) >= 1 and len(s.lookalikes) >= 1)
    f = _seeded(SynthConfig(flip=flip), i)
    assert np.array_equal(f.image, np.flip(base.image, axes))
    assert f.meta["flip"] == flip and "flip" not in base.meta
    H, W = base.image.shape
    for a, b in zip(base.annotations, f.annotations):
        x1, y1, x2, y2 = a.box
        assert b.box == ((W - x2, y1, W - x1, y2) if flip == "horizontal" else (x1, H - y2, x2, H - y1))
        # the pixels under the flipped box are the original's, flipped
        crop = base.image[int(y1):int(y2), int(x1):int(x2)]
        fx1, fy1, fx2, fy2 = (int(v) for v in b.box)
        assert np.array_equal(f.image[fy1:fy2, fx1:fx2], np.flip(crop, axes))
    assert len(f.lookalikes) == len(base.lookalikes)


def test_random_flip_is_recorded_and_keeps_the_content() -> None:
    seen = set()
    for i in range(12):
        base, f = _seeded(SynthConfig(), i), _seeded(SynthConfig(flip="random"), i)
        axes = {"none": (), "vertical": (0,), "horizontal": (1,), "both": (0, 1)}[f.meta["flip"]]
        assert np.array_equal(f.image, np.flip(base.image, axes) if axes else base.image)
        seen.add(f.meta["flip"])
    assert len(seen) >= 3  # 12 draws of four equally likely outcomes


def test_invert_mirrors_intensities() -> None:
    base, inv = _seeded(SynthConfig()), _seeded(SynthConfig(invert=True))
    both = base.image.astype(np.int64) + inv.image.astype(np.int64)
    unclipped = (base.image > 0) & (base.image < 65535)
    assert np.abs(both[unclipped] - 65535).max() <= 1
    assert [a.box for a in inv.annotations] == [a.box for a in base.annotations]


def _delamination_cfg(contrast: tuple[float, float]) -> SynthConfig:
    spec = DefectClassSpec(frequency=0.6, count=(1, 1), shape="interface", polarity="dark", size=(20, 40),
                           width=(1.0, 1.6), contrast=contrast)
    return SynthConfig(classes={"delamination": spec}, defect_free_share=0.4)


def test_delamination_is_a_thin_dark_line_on_an_inner_interface() -> None:
    cfg = _delamination_cfg((6.0, 8.0))
    i, s = _find(cfg, lambda s: len(s.annotations) == 1)
    flat = _seeded(_delamination_cfg((0.0, 0.0)), i)  # same draws, the defect drawn at zero contrast
    a = s.annotations[0]
    assert a.category == "delamination" and a.attributes["shape"] == "interface"
    k = a.attributes["interface"]
    assert k >= 1 and a.attributes["region"] == f"interface-{k}"  # never the top surface (k = 0)
    x1, y1, x2, y2 = (int(v) for v in a.box)
    assert x2 - x1 >= 18 and y2 - y1 <= 8  # long and thin
    diff = s.image.astype(np.float64) - flat.image.astype(np.float64)
    near = np.zeros_like(diff, dtype=bool)
    near[max(0, y1 - 4):y2 + 4, max(0, x1 - 4):x2 + 4] = True
    assert diff[near].sum() < 0  # dark
    assert np.abs(diff[~near]).sum() <= 0.05 * np.abs(diff).sum()  # local: the rest of the slice is unchanged


def test_dev_graph_extends_the_packaged_one_by_delamination() -> None:
    base, dev = load_graph("thin_film_ct"), load_graph("thin_film_ct_dev")
    assert set(dev.defects) == set(base.defects) | {"delamination"}
