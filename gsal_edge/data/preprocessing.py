"""CT pixel conversion shared by the detector, diffusion and CLIP code.

``to_unit_float`` maps a stored slice (uint8 / uint16 / float) to float32 HxW in [0, 1];
``to_three_channels`` replicates gray into 3 channels for backbones that need them;
``resize_image`` / ``resize_short_side`` resample with antialiasing (PIL, per channel, float32).
"""

from __future__ import annotations

import math

import numpy as np

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601


def _to_gray(img: np.ndarray) -> np.ndarray:
    if img.ndim == 2:
        return img
    if img.ndim == 3 and img.shape[-1] == 1:
        return img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        if img.dtype.kind == "f":
            return (img.astype(np.float32) @ _LUMA).astype(np.float32)
        return img.astype(np.float32) @ _LUMA  # integer RGB: keep the dtype's scale, float math
    raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {img.shape}")


def to_unit_float(img: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """A slice as float32 HxW in [0, 1].

    Without ``window``: uint8 / 255, uint16 / 65535, floats taken as-is and clipped to [0, 1].
    With ``window=(lo, hi)`` (in the stored units, e.g. uint16 counts): (x - lo) / (hi - lo),
    clipped; any integer dtype is then accepted. HxWx1 is squeezed, HxWx3 converted to gray
    (BT.601 luma). Raises ValueError naming the problem: not an array, empty, wrong ndim /
    channel count, unsupported dtype, NaN or Inf values, a bad window.
    """
    if not isinstance(img, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(img).__name__}")  # noqa: TRY004 - callers map ValueError to a bad-input reply
    if img.size == 0:
        raise ValueError(f"image is empty (shape {img.shape})")
    if img.ndim not in (2, 3):
        raise ValueError(f"image must be 2-D (HxW) or HxWxC, got ndim {img.ndim} (shape {img.shape})")
    kind, dt = img.dtype.kind, img.dtype
    if kind not in "uif":
        raise ValueError(f"unsupported dtype {dt} (expected uint8, uint16 or float)")
    if kind in "ui" and window is None and dt not in (np.uint8, np.uint16):
        raise ValueError(f"unsupported dtype {dt} without a window (uint8 and uint16 are scaled by their range; "
                         f"pass window=(lo, hi) for other integer types)")
    if kind == "f" and not np.all(np.isfinite(img)):
        bad = "NaN" if np.isnan(img).any() else "Inf"
        raise ValueError(f"image contains {bad} values")
    gray = _to_gray(img)
    if window is not None:
        lo, hi = (float(v) for v in window)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError(f"window must be finite (lo, hi) with lo < hi, got {window}")
        out = (gray.astype(np.float64) - lo) / (hi - lo)
    elif dt == np.uint8:
        out = gray.astype(np.float32) / np.float32(255.0)
    elif dt == np.uint16:
        out = gray.astype(np.float32) / np.float32(65535.0)
    else:
        out = gray
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


def to_three_channels(img: np.ndarray, channels_first: bool = False) -> np.ndarray:
    """Replicate a gray HxW (or HxWx1) image to HxWx3 (``channels_first``: 3xHxW); HxWx3 passes through."""
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        out = np.repeat(img[..., None], 3, axis=-1)
    elif img.ndim == 3 and img.shape[-1] == 3:
        out = img
    else:
        raise ValueError(f"image must be HxW, HxWx1 or HxWx3, got shape {img.shape}")
    return np.ascontiguousarray(np.moveaxis(out, -1, 0)) if channels_first else out


_FILTERS = {"nearest": 0, "bilinear": 2, "bicubic": 3, "area": 4, "lanczos": 1}  # PIL Resampling codes


def resize_image(img: np.ndarray, size: int | tuple[int, int], interpolation: str = "bilinear") -> np.ndarray:
    """Resample HxW or HxWxC to ``size`` = (height, width) (an int means square), keeping the dtype.

    Downscaling is antialiased (PIL filters over float32 channels); integer dtypes are rounded
    and clipped back to their range. ``interpolation``: nearest, bilinear, bicubic, area, lanczos.
    """
    from PIL import Image

    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation must be one of {sorted(_FILTERS)}, got {interpolation!r}")
    oh, ow = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if oh <= 0 or ow <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"image must be a non-empty HxW or HxWxC array, got shape {img.shape}")
    if img.shape[:2] == (oh, ow):
        return img.copy()
    chans = [img] if img.ndim == 2 else [img[..., c] for c in range(img.shape[-1])]
    res = [np.asarray(Image.fromarray(np.ascontiguousarray(ch, dtype=np.float32)).resize(
        (ow, oh), resample=_FILTERS[interpolation])) for ch in chans]
    out = res[0] if img.ndim == 2 else np.stack(res, axis=-1)
    if img.dtype.kind in "ui":
        info = np.iinfo(img.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(img.dtype)
    return out.astype(img.dtype, copy=False)


def resize_short_side(img: np.ndarray, short_side: int, max_size: int | None = None,
                      interpolation: str = "bilinear") -> tuple[np.ndarray, float]:
    """Resize so the shorter side is ``short_side`` (long side capped at ``max_size``); returns
    (image, scale) where scale multiplies box coordinates of the input to those of the output."""
    h, w = img.shape[:2]
    scale = short_side / min(h, w)
    if max_size is not None and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    oh, ow = max(1, round(h * scale)), max(1, round(w * scale))
    return resize_image(img, (oh, ow), interpolation), scale
