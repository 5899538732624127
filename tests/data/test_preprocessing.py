"""CT pixel conversion (gsal_edge.data.preprocessing)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gsal_edge.data.preprocessing import resize_image, resize_short_side, to_three_channels, to_unit_float


def test_integer_scaling() -> None:
    u8 = np.array([[0, 51, 255]], np.uint8)
    u16 = np.array([[0, 13107, 65535]], np.uint16)
    for img in (u8, u16):
        out = to_unit_float(img)
        assert out.dtype == np.float32 and out.shape == (1, 3)
        assert np.allclose(out, [[0.0, 0.2, 1.0]], atol=1e-6)


def test_float_taken_as_is_and_clipped() -> None:
    f = np.array([[-0.5, 0.25, 1.5]], np.float32)
    assert np.array_equal(to_unit_float(f), np.array([[0.0, 0.25, 1.0]], np.float32))
    assert to_unit_float(f.astype(np.float64)).dtype == np.float32


def test_window_in_stored_units() -> None:
    u16 = np.array([[1000, 2000, 3000, 5000]], np.uint16)
    assert np.allclose(to_unit_float(u16, window=(2000, 4000)), [[0.0, 0.0, 0.5, 1.0]])
    i16 = np.array([[-1000, 0, 1000]], np.int16)  # e.g. Hounsfield units: only with a window
    assert np.allclose(to_unit_float(i16, window=(-1000, 1000)), [[0.0, 0.5, 1.0]])


def test_channels_to_gray() -> None:
    g = np.arange(12, dtype=np.uint16).reshape(3, 4) * 1000
    assert np.array_equal(to_unit_float(g[..., None]), to_unit_float(g))
    rgb = np.repeat(g[..., None], 3, axis=-1)
    assert np.allclose(to_unit_float(rgb), to_unit_float(g), atol=1e-6)
    red = np.zeros((2, 2, 3), np.uint8)
    red[..., 0] = 255
    assert np.allclose(to_unit_float(red), 0.299, atol=1e-6)


@pytest.mark.parametrize("img, window, match", [
    (np.array([[0.1, np.nan]], np.float32), None, "NaN"),
    (np.array([[0.1, np.inf]], np.float32), None, "Inf"),
    (np.zeros((0, 4), np.uint8), None, "empty"),
    (np.zeros(5, np.uint8), None, "ndim 1"),
    (np.zeros((2, 2, 2, 2), np.uint8), None, "ndim 4"),
    (np.zeros((4, 4, 2), np.uint8), None, "shape"),
    (np.zeros((2, 2), bool), None, "dtype bool"),
    (np.zeros((2, 2), np.complex64), None, "dtype complex64"),
    (np.zeros((2, 2), np.int16), None, "dtype int16 without a window"),
    (np.zeros((2, 2), np.uint16), (5, 5), "lo < hi"),
    (np.zeros((2, 2), np.uint16), (0, np.inf), "finite"),
])
def test_bad_input_names_the_problem(img: np.ndarray, window: tuple | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_unit_float(img, window=window)


def test_not_an_array() -> None:
    with pytest.raises(ValueError, match="numpy array"):
        to_unit_float([[1, 2]])  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(arrays(np.uint16, st.tuples(st.integers(1, 8), st.integers(1, 8))),
       st.tuples(st.integers(0, 60000), st.integers(1, 5000)))
def test_output_always_unit_float32(img: np.ndarray, win: tuple[int, int]) -> None:
    for out in (to_unit_float(img), to_unit_float(img, window=(win[0], win[0] + win[1]))):
        assert out.dtype == np.float32 and out.shape == img.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert np.array_equal(np.argsort(to_unit_float(img).ravel(), kind="stable"),
                          np.argsort(img.ravel(), kind="stable"))  # monotone


def test_to_three_channels() -> None:
    g = np.random.default_rng(0).random((5, 7)).astype(np.float32)
    hwc = to_three_channels(g)
    assert hwc.shape == (5, 7, 3) and all(np.array_equal(hwc[..., c], g) for c in range(3))
    chw = to_three_channels(g[..., None], channels_first=True)
    assert chw.shape == (3, 5, 7) and chw.flags["C_CONTIGUOUS"] and np.array_equal(chw[2], g)
    assert to_three_channels(hwc) is hwc
    with pytest.raises(ValueError, match="shape"):
        to_three_channels(np.zeros((2, 2, 2)))


def test_resize_shapes_dtypes_and_antialiasing() -> None:
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    small = resize_image(checker, 16)
    assert small.shape == (16, 16) and small.dtype == np.float32
    assert np.allclose(small, 0.5, atol=0.05)  # antialiased: no aliasing of the checkerboard
    nearest = resize_image(checker, 16, "nearest")
    assert set(np.unique(nearest)) <= {0.0, 1.0}
    u16 = np.full((10, 20), 40000, np.uint16)
    up = resize_image(u16, (30, 15))
    assert up.shape == (30, 15) and up.dtype == np.uint16 and np.all(up == 40000)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 1] = 200
    r = resize_image(rgb, (4, 6), "area")
    assert r.shape == (4, 6, 3) and np.all(r[..., 1] == 200) and np.all(r[..., 0] == 0)
    with pytest.raises(ValueError, match="interpolation"):
        resize_image(checker, 8, "cubic-ish")
    with pytest.raises(ValueError, match="positive"):
        resize_image(checker, (0, 8))


def test_resize_short_side() -> None:
    img = np.zeros((100, 200), np.float32)
    out, s = resize_short_side(img, 50)
    assert out.shape == (50, 100) and s == 0.5
    out, s = resize_short_side(img, 80, max_size=120)
    assert out.shape == (60, 120) and s == pytest.approx(0.6)


# ------------------------------------------------------------------ declared windows (8/12/16-bit, inverted)


def test_window_declarations_parse_or_name_the_forms() -> None:
    from gsal_edge.data.preprocessing import parse_window, resolve_window

    assert parse_window(None) is None and parse_window("dtype") is None
    assert parse_window("auto") == "auto" and parse_window(" bits:12 ") == "bits:12"
    assert parse_window([10, 20]) == (10.0, 20.0)
    assert resolve_window("bits:12") == (0.0, 4095.0) and resolve_window("bits:8") == (0.0, 255.0)
    for bad in ("bits:17", "bits:0", "median", [3, 3], [1, 2, 3]):
        with pytest.raises(ValueError, match="window"):
            parse_window(bad)
    with pytest.raises(ValueError, match="needs the data set's images"):
        resolve_window("auto")


def test_auto_window_puts_8_12_16_bit_and_inverted_data_on_one_scale() -> None:
    from gsal_edge.data.preprocessing import resolve_window
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_slice, slice_seed

    def unit(**opts: object) -> np.ndarray:
        cfg = SynthConfig(**opts)
        raw = [generate_slice(cfg, slice_seed(5, i), i).image for i in range(4)]
        w = resolve_window("auto", raw)
        return np.stack([to_unit_float(r, w) for r in raw])

    ref = unit()
    assert 0.3 < ref.mean() < 0.7
    for opts in ({"bit_depth": 12}, {"bit_depth": 8}):
        assert abs(unit(**opts).mean() - ref.mean()) < 0.01
    assert abs((1.0 - unit(invert=True)).mean() - ref.mean()) < 0.02
    # the bug this fixes: 12-bit counts in 16-bit files divided by 65535 are near-black
    raw12 = generate_slice(SynthConfig(bit_depth=12), slice_seed(5, 0), 0).image
    assert to_unit_float(raw12).mean() < 0.05


def test_robust_window_ignores_a_few_hot_pixels() -> None:
    from gsal_edge.data.preprocessing import robust_window

    img = np.full((64, 64), 1000, np.uint16)
    img[:32] = 3000
    img[0, :5] = 65535
    lo, hi = robust_window([img])
    assert lo == 1000 and hi == 3000
    with pytest.raises(ValueError, match="constant"):
        robust_window([np.zeros((8, 8), np.uint16)])
    with pytest.raises(ValueError, match="no images"):
        robust_window([])
