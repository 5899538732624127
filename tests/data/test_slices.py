"""Slice decoding and validation (gsal_edge.data.slices): every accepted form round-trips, every bad one names its field."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest

from gsal_edge.data.slices import (
    SliceError,
    SliceLimits,
    check_slice_id,
    decode_slice,
    encode_slice,
    read_slice_file,
)


def _img(rng: np.random.Generator, dtype: str, shape: tuple[int, int] = (24, 40)) -> np.ndarray:
    if dtype == "float32":
        return rng.random(shape, dtype=np.float32)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_raw_round_trip(rng: np.random.Generator, dtype: str) -> None:
    a = _img(rng, dtype)
    out = decode_slice(encode_slice(a, "raw"), a.shape, dtype, "raw")
    assert out.dtype == a.dtype and out.shape == a.shape
    np.testing.assert_array_equal(out, a)
    assert out.flags.writeable  # a copy, not a view of the message buffer


def test_raw_is_little_endian() -> None:
    out = decode_slice(b"\x01\x02", (1, 1), "uint16", "raw")
    assert int(out[0, 0]) == 0x0201


@pytest.mark.parametrize("dtype,encoding", [("uint8", "png"), ("uint16", "png"), ("uint8", "tiff"),
                                            ("uint16", "tiff"), ("float32", "tiff")])
def test_encoded_round_trip(rng: np.random.Generator, dtype: str, encoding: str) -> None:
    a = _img(rng, dtype)
    data = encode_slice(a, encoding)
    for shape, dt in [(None, None), (a.shape, dtype)]:
        out = decode_slice(data, shape, dt, encoding)
        assert out.dtype == a.dtype
        np.testing.assert_array_equal(out, a)


def _err(field: str, *args: object, **kw: object) -> SliceError:
    with pytest.raises(SliceError) as ei:
        decode_slice(*args, **kw)  # type: ignore[arg-type]
    assert ei.value.field == field, str(ei.value)
    assert str(ei.value).startswith(field + ":")
    return ei.value


def test_wrong_dtype() -> None:
    e = _err("dtype", b"\0" * 8, (2, 2), "int16", "raw")
    assert "int16" in e.message
    _err("dtype", b"\0" * 8, (2, 2), None, "raw")  # required for raw


def test_dtype_mismatch_with_file(rng: np.random.Generator) -> None:
    data = encode_slice(_img(rng, "uint8"), "png")
    _err("dtype", data, None, "uint16", "png")


def test_shape_size_mismatch() -> None:
    e = _err("data", b"\0" * 7, (2, 2), "uint16", "raw")
    assert "7 bytes" in e.message and "8 bytes" in e.message
    _err("shape", b"\0" * 8, (2, 2, 2), "uint8", "raw")
    _err("shape", b"\0" * 8, None, "uint8", "raw")


def test_shape_mismatch_with_file(rng: np.random.Generator) -> None:
    data = encode_slice(_img(rng, "uint16", (10, 12)), "tiff")
    _err("shape", data, (12, 10), None, "tiff")


def test_empty() -> None:
    _err("data", b"", (1, 1), "uint8", "raw")
    _err("shape", b"", (0, 5), "uint8", "raw")


def test_oversized() -> None:
    lim = SliceLimits(max_side=64, max_pixels=1000, max_bytes=4096)
    _err("shape", b"\0" * 65, (1, 65), "uint8", "raw", limits=lim)
    _err("shape", b"\0" * 1024, (32, 32), "uint8", "raw", limits=lim)
    _err("data", b"\0" * 5000, (50, 25), "float32", "raw", limits=SliceLimits(max_bytes=4096))


def test_oversized_png_checked_before_decoding() -> None:
    # A 9000 x 9000 PNG header with almost no data: must be refused from the header alone.
    import struct

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", 9000, 9000, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    e = _err("data", png, None, None, "png")
    assert "maximum side" in e.message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_inf(bad: float) -> None:
    a = np.zeros((4, 4), np.float32)
    a[1, 2] = bad
    _err("data", encode_slice(a, "raw"), a.shape, "float32", "raw")
    _err("data", encode_slice(a, "tiff"), None, None, "tiff")


@pytest.mark.parametrize("encoding", ["png", "tiff"])
def test_undecodable(encoding: str) -> None:
    e = _err("data", b"this is not an image at all", None, None, encoding)
    assert encoding.upper() in e.message


def test_truncated_png(rng: np.random.Generator) -> None:
    data = encode_slice(_img(rng, "uint8", (64, 64)), "png")
    _err("data", data[: len(data) // 2], None, None, "png")


def test_rgb_png_refused(rng: np.random.Generator) -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    e = _err("data", buf.getvalue(), None, None, "png")
    assert "RGB" in e.message


def test_unknown_encoding() -> None:
    _err("encoding", b"\0", (1, 1), "uint8", "jpeg")


def test_slice_id() -> None:
    assert check_slice_id("slice-000123") == "slice-000123"
    for bad in ["", "has space", "x" * 300, "tab\t", "é"]:
        with pytest.raises(SliceError) as ei:
            check_slice_id(bad)
        assert ei.value.field == "id"


def test_read_slice_file(tmp_path, rng: np.random.Generator) -> None:  # type: ignore[no-untyped-def]
    a = _img(rng, "uint16")
    np.save(tmp_path / "a.npy", a)
    (tmp_path / "b.png").write_bytes(encode_slice(a, "png"))
    (tmp_path / "c.txt").write_text("x")
    f = read_slice_file(str(tmp_path / "a.npy"))
    np.testing.assert_array_equal(decode_slice(f.data, f.shape, f.dtype, f.encoding), a)
    f = read_slice_file(str(tmp_path / "b.png"))
    np.testing.assert_array_equal(decode_slice(f.data, f.shape, f.dtype, f.encoding), a)
    with pytest.raises(SliceError):
        read_slice_file(str(tmp_path / "c.txt"))
