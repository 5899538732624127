"""Decode and validate incoming CT slices (raw pixels, PNG or TIFF bytes) into 2-D numpy arrays.

Transport-free: the station server maps :class:`SliceError` to ``INVALID_ARGUMENT`` and reports
``SliceError.field`` (``id``, ``shape``, ``dtype``, ``encoding``, ``data``) to the client.

Raw pixels are little-endian, row-major, shape ``[H, W]``. For PNG/TIFF the file says its own shape
and dtype; a ``shape`` or ``dtype`` given alongside must agree with it. Every size limit is checked
*before* pixels are decoded, so a small compressed file cannot expand into a huge array.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gsal_edge.errors import GSALError

DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "float32": np.dtype("<f4"),
}
ENCODINGS = ("raw", "png", "tiff")
_ID_RE = re.compile(r"^[\x21-\x7e]+$")  # printable ASCII, no spaces


class SliceError(GSALError, ValueError):
    """A slice is invalid; ``field`` names the offending field (``id``, ``shape``, ``dtype``, ``encoding``, ``data``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class SliceLimits:
    """What a station accepts. Defaults fit a 4096 x 4096 float32 slice (64 MiB).

    ``min_side`` and ``max_aspect`` bound the shapes the scoring preprocessing can handle: the detector
    resizes a slice so its long side fits the model, and a slice thinner than 1 / ``max_aspect`` would be
    resized to zero rows (4 x 4096 does exactly that). 64:1 leaves a wide margin below that point.
    """

    max_side: int = 8192  # pixels along either axis
    max_pixels: int = 4096 * 4096
    max_bytes: int = 64 * 1024 * 1024  # encoded payload size
    min_side: int = 1  # the station asks for more (ServerConfig.min_side, 8)
    max_id_length: int = 256
    max_aspect: float = 64.0  # longer side / shorter side

    def __post_init__(self) -> None:
        for name in ("max_side", "max_pixels", "max_bytes", "min_side", "max_id_length", "max_aspect"):
            if getattr(self, name) < 1:
                raise ValueError(f"SliceLimits.{name} must be >= 1, got {getattr(self, name)}")


DEFAULT_LIMITS = SliceLimits()


def check_slice_id(slice_id: str, limits: SliceLimits = DEFAULT_LIMITS) -> str:
    """Validate a slice id: non-empty printable ASCII without spaces, at most ``max_id_length`` chars."""
    if not slice_id:
        raise SliceError("id", "slice id is empty")
    if len(slice_id) > limits.max_id_length:
        raise SliceError("id", f"slice id has {len(slice_id)} characters, more than {limits.max_id_length}")
    if not _ID_RE.match(slice_id):
        raise SliceError("id", f"slice id {slice_id!r} must be printable ASCII without spaces")
    return slice_id


def _check_dtype(dtype: str | None, encoding: str) -> np.dtype | None:
    if dtype is None or dtype == "":
        if encoding == "raw":
            raise SliceError("dtype", f"dtype is required for raw pixels; one of {sorted(DTYPES)}")
        return None
    if dtype not in DTYPES:
        raise SliceError("dtype", f"unsupported dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[dtype]


def _check_shape(shape: Sequence[int] | None, limits: SliceLimits, required: bool) -> tuple[int, int] | None:
    if shape is None or len(shape) == 0:
        if required:
            raise SliceError("shape", "shape [H, W] is required for raw pixels")
        return None
    if len(shape) != 2:
        raise SliceError("shape", f"a slice is 2-D: shape must be [H, W], got {list(shape)}")
    h, w = (int(v) for v in shape)
    return _check_dims(h, w, limits, "shape")


def _check_dims(h: int, w: int, limits: SliceLimits, field: str) -> tuple[int, int]:
    if h < limits.min_side or w < limits.min_side:
        raise SliceError(field, f"shape [{h}, {w}] is empty or below the minimum side of {limits.min_side} pixels")
    if h > limits.max_side or w > limits.max_side:
        raise SliceError(field, f"shape [{h}, {w}] exceeds the maximum side {limits.max_side}")
    if h * w > limits.max_pixels:
        raise SliceError(field, f"shape [{h}, {w}] has {h * w} pixels, more than the limit {limits.max_pixels}")
    if max(h, w) > limits.max_aspect * min(h, w):
        raise SliceError(
            field, f"shape [{h}, {w}] has aspect ratio {max(h, w) / min(h, w):g}:1, more than the limit "
            f"{limits.max_aspect:g}:1 the scoring preprocessing handles",
        )
    return h, w


_ADDRESS_RE = re.compile(r"<[^<>]*? at 0x[0-9a-fA-F]+>|0x[0-9a-fA-F]{6,}")


def _reason(e: Exception) -> str:
    """A decoder exception as a short text for clients: its type and message, object reprs and heap
    addresses (``<_io.BytesIO object at 0x7f...>``) removed."""
    text = _ADDRESS_RE.sub("", str(e)).replace("  ", " ").strip(" :")
    return f"{type(e).__name__}: {text}"[:200] if text else type(e).__name__


def _check_finite(arr: np.ndarray) -> None:
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(np.isinf(arr).sum())
        raise SliceError("data", f"float32 pixels contain {n_nan} NaN and {n_inf} Inf values")


def _decode_raw(data: bytes, shape: tuple[int, int], dt: np.dtype) -> np.ndarray:
    want = shape[0] * shape[1] * dt.itemsize
    if len(data) != want:
        raise SliceError(
            "data",
            f"{len(data)} bytes do not match shape {list(shape)} x {dt.name} ({dt.itemsize} B/pixel) = {want} bytes",
        )
    return np.frombuffer(data, dtype=dt).reshape(shape).astype(dt.newbyteorder("="), copy=True)


def _decode_png(data: bytes, limits: SliceLimits) -> np.ndarray:
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=["PNG"])
            w, h = img.size  # header only; pixels are not decoded yet
            _check_dims(h, w, limits, "data")
            if img.mode not in ("L", "I;16", "I;16B", "I;16L", "I"):
                raise SliceError("data", f"PNG mode {img.mode!r} is not single-channel 8/16-bit grayscale")
            img.load()
    except SliceError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for corrupt files
        raise SliceError("data", f"bytes are not a decodable PNG ({_reason(e)})") from None
    arr = np.asarray(img)
    if img.mode == "L":
        return arr.astype(np.uint8, copy=False)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:  # mode "I" is int32
        raise SliceError("data", "PNG pixel values do not fit uint16")
    return arr.astype(np.uint16)


def _decode_tiff(data: bytes, limits: SliceLimits) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tf:
            if len(tf.pages) != 1:
                raise SliceError("data", f"TIFF has {len(tf.pages)} pages; send one 2-D slice per message")
            page = tf.pages[0]
            shape = tuple(int(s) for s in page.shape)  # type: ignore[union-attr]
            if len(shape) != 2:
                raise SliceError("data", f"TIFF image has shape {list(shape)}; expected a 2-D [H, W] slice")
            _check_dims(shape[0], shape[1], limits, "data")
            dt = np.dtype(page.dtype)  # type: ignore[union-attr]
            if dt.newbyteorder("<") not in DTYPES.values():
                raise SliceError("data", f"TIFF pixel type {dt.name} is not one of {sorted(DTYPES)}")
            arr = page.asarray()  # type: ignore[union-attr]
    except SliceError:
        raise
    except Exception as e:  # noqa: BLE001 - tifffile raises many types for corrupt files
        raise SliceError("data", f"bytes are not a decodable TIFF ({_reason(e)})") from None
    return np.ascontiguousarray(arr, dtype=dt.newbyteorder("="))


def decode_slice(
    data: bytes,
    shape: Sequence[int] | None,
    dtype: str | None,
    encoding: str = "raw",
    limits: SliceLimits = DEFAULT_LIMITS,
) -> np.ndarray:
    """Decode one slice to a 2-D uint8/uint16/float32 array, validating it; raises :class:`SliceError`.

    ``encoding`` is ``raw``, ``png`` or ``tiff``. ``dtype`` is ``uint8``, ``uint16`` or ``float32``
    (required for raw; optional for PNG/TIFF, where it must match the file). ``shape`` is ``[H, W]``
    (required for raw; optional for PNG/TIFF, where it must match the file).
    """
    if encoding not in ENCODINGS:
        raise SliceError("encoding", f"unsupported encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    dt = _check_dtype(dtype, encoding)
    want_shape = _check_shape(shape, limits, required=encoding == "raw")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SliceError("data", f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise SliceError("data", "no pixel data (0 bytes)")
    if len(data) > limits.max_bytes:
        raise SliceError("data", f"{len(data)} bytes exceed the limit of {limits.max_bytes} bytes")
    data = bytes(data)
    if encoding == "raw":
        assert want_shape is not None and dt is not None
        arr = _decode_raw(data, want_shape, dt)
    else:
        arr = _decode_png(data, limits) if encoding == "png" else _decode_tiff(data, limits)
        if want_shape is not None and tuple(arr.shape) != want_shape:
            raise SliceError("shape", f"shape {list(want_shape)} does not match the {encoding} image {list(arr.shape)}")
        if dt is not None and arr.dtype != dt.newbyteorder("="):
            raise SliceError("dtype", f"dtype {dtype} does not match the {encoding} image's {arr.dtype.name}")
    _check_finite(arr)
    return arr


def encode_slice(arr: np.ndarray, encoding: str = "raw") -> bytes:
    """Inverse of :func:`decode_slice` for clients: raw little-endian bytes, PNG (uint8/16) or TIFF."""
    if arr.ndim != 2:
        raise SliceError("shape", f"a slice is 2-D, got shape {list(arr.shape)}")
    name = arr.dtype.name
    if name not in DTYPES:
        raise SliceError("dtype", f"unsupported dtype {name!r}; expected one of {sorted(DTYPES)}")
    if encoding == "raw":
        return np.ascontiguousarray(arr, dtype=DTYPES[name]).tobytes()
    buf = io.BytesIO()
    if encoding == "png":
        if name == "float32":
            raise SliceError("dtype", "PNG cannot hold float32 pixels; use raw or tiff")
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(arr)).save(buf, format="PNG")
    elif encoding == "tiff":
        import tifffile

        tifffile.imwrite(buf, np.ascontiguousarray(arr))
    else:
        raise SliceError("encoding", f"unsupported encoding {encoding!r}; expected one of {list(ENCODINGS)}")
    return buf.getvalue()


SLICE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


@dataclass(frozen=True)
class SliceFile:
    """A slice read from disk, ready to send: encoded bytes plus what a receiver needs to decode them."""

    data: bytes
    encoding: str
    shape: tuple[int, ...] | None
    dtype: str | None


def read_slice_file(path: str) -> SliceFile:
    """Read ``.png`` / ``.tif(f)`` as file bytes (sent as is) and ``.npy`` as raw pixels with shape and dtype."""
    low = str(path).lower()
    if low.endswith(".npy"):
        arr = np.load(path, allow_pickle=False)
        return SliceFile(encode_slice(arr, "raw"), "raw", tuple(int(v) for v in arr.shape), arr.dtype.name)
    with open(path, "rb") as fh:
        data = fh.read()
    if low.endswith(".png"):
        return SliceFile(data, "png", None, None)
    if low.endswith((".tif", ".tiff")):
        return SliceFile(data, "tiff", None, None)
    raise SliceError("encoding", f"{path}: unsupported file type; expected one of {list(SLICE_SUFFIXES)}")
