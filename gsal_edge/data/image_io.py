"""Reading slice image files: the one image-file reader of the project (PNG, TIFF, JPEG, BMP, NPY).

``load_image`` returns a slice as stored (2-D uint8 / uint16 / float32, or HxWx3 for colour files);
``image_size`` reads only the header. Both raise :class:`DatasetError` naming the file when it is
missing, corrupt, truncated or not a slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.data.dataset import DatasetError

__all__ = ["IMAGE_EXTS", "image_size", "load_image"]

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")  # what the VOC / YOLO readers look for


def load_image(path: str | Path) -> np.ndarray:
    """Read a PNG / TIFF / JPEG / BMP / NPY slice as stored.

    Grayscale -> 2-D uint8, uint16 or float32; RGB(A) -> HxWx3 (alpha dropped). Other integer
    or float sample types (int16, int32, float64, ...) become float32 with their values kept.
    ``.npy`` files are read without pickles and pass the same shape and sample-type checks.
    Raises DatasetError naming the file when it is missing, corrupt, truncated or not an image.
    """
    p = _existing(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                arr = _pil_array(im)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL/tifffile raise many types (OSError, SyntaxError, zlib.error...)
        raise DatasetError(f"{p}: corrupt, truncated or unsupported image ({type(exc).__name__}: {exc})") from None
    return _as_stored(np.asarray(arr), p)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: image file not found")
    return p


def _pil_array(im: Any) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB"):
        return np.asarray(im)
    if mode == "I":
        a = np.asarray(im)
        return a.astype(np.uint16) if a.size and a.min() >= 0 and a.max() <= 65535 else a
    if mode in ("1", "LA"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # P, RGBA, CMYK, YCbCr, ...


def _as_stored(a: np.ndarray, p: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise DatasetError(f"{p}: unsupported image shape {a.shape} (expected HxW or HxWx3; volumes are not slices)")
    if a.size == 0:
        raise DatasetError(f"{p}: empty image")
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize == 1:
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return np.ascontiguousarray(a, dtype=np.uint16)  # also turns big-endian '>u2' native
    if a.dtype.kind in "uif":
        return np.ascontiguousarray(a, dtype=np.float32)
    raise DatasetError(f"{p}: unsupported sample type {a.dtype}")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header (no decoding); DatasetError naming the file if unreadable."""
    p = _existing(path)
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            shape = np.load(p, mmap_mode="r", allow_pickle=False).shape  # header only, pixels stay on disk
        elif suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                shape = tf.pages[0].shape
        else:
            from PIL import Image

            with Image.open(p) as im:
                return int(im.size[0]), int(im.size[1])
        if len(shape) == 3 and shape[-1] not in (1, 3, 4):
            shape = shape[1:]
        return int(shape[1]), int(shape[0])
    except Exception as exc:  # noqa: BLE001 - as in load_image: PIL raises many types for a bad header
        raise DatasetError(f"{p}: corrupt or unsupported image header ({type(exc).__name__}: {exc})") from None
