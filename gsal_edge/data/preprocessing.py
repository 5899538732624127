"""CT pixel conversion shared by the detector, diffusion and CLIP code.

``to_unit_float`` maps a stored slice (uint8 / uint16 / float) to float32 HxW in [0, 1]: it is the one
function that turns raw slices into model inputs (detector training and evaluation, the benchmark's prior
and CLIP inputs, the station scorer via ``ScorerSpec.window``, the benchmark gallery), and the intensity
window it applies is the one normalization knob. A window is declared (``parse_window``) as

* ``None`` / ``"dtype"``: the stored dtype's full range (uint8 / 255, uint16 / 65535): today's default;
  right for data that uses the whole range, near-black for 12-bit counts stored in 16-bit files;
* ``"bits:N"``: counts 0 .. 2^N - 1 (``"bits:12"``: 12-bit data in 16-bit files);
* ``"auto"``: robust percentiles (p0.5, p99.5) of a data set's pixels, computed once from a sample of
  its pool (``robust_window``), so 8/12/16-bit and inverted stacks all land on the same [0, 1] scale;
* ``(lo, hi)``: explicit, in stored units.

``resolve_window`` turns a declaration into the fixed ``(lo, hi)`` (or None) that everything downstream
receives and that a detector checkpoint and an exported bundle record.

``to_three_channels`` replicates gray into 3 channels for backbones that need them;
``resize_image`` / ``resize_short_side`` resample with antialiasing (PIL, per channel, float32).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import numpy as np

WindowSpec = tuple[float, float] | str | None
AUTO_PERCENTILES = (0.5, 99.5)  # robust_window's default: ignores hot pixels and specks at both ends
_BITS = re.compile(r"bits:(\d{1,2})")

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


def parse_window(spec: object) -> tuple[float, float] | str | None:
    """Validate a window declaration: None / "dtype" -> None, "auto", "bits:N" (1 <= N <= 16), or (lo, hi).

    Raises ValueError naming the accepted forms.
    """
    if spec is None or spec == "dtype":
        return None
    if isinstance(spec, str):
        m = _BITS.fullmatch(spec.strip())
        if spec.strip() == "auto":
            return "auto"
        if m and 1 <= int(m.group(1)) <= 16:
            return f"bits:{int(m.group(1))}"
        raise ValueError(f"window {spec!r}: expected 'auto', 'dtype', 'bits:N' (1-16) or [lo, hi]")
    if isinstance(spec, (list, tuple)) and len(spec) == 2:
        lo, hi = (float(v) for v in spec)
        if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
            raise ValueError(f"window must be finite (lo, hi) with lo < hi, got {list(spec)}")
        return (lo, hi)
    raise ValueError(f"window {spec!r}: expected 'auto', 'dtype', 'bits:N' (1-16) or [lo, hi]")


def bits_window(bits: int) -> tuple[float, float]:
    """The window of ``bits``-bit counts: (0, 2^bits - 1)."""
    return (0.0, float((1 << int(bits)) - 1))


def robust_window(images: Iterable[np.ndarray], percentiles: tuple[float, float] = AUTO_PERCENTILES,
                  max_pixels: int = 65_536) -> tuple[float, float]:
    """(lo, hi) = the ``percentiles`` of the pooled pixels of ``images`` (stored units, gray).

    Each image contributes at most ``max_pixels`` pixels (a regular stride), so a large slice does
    not outweigh the others. Raises ValueError when no image is given or the pixels are constant.
    """
    parts = []
    for img in images:
        g = np.asarray(_to_gray(np.asarray(img)), dtype=np.float64).ravel()
        parts.append(g[::max(1, g.size // max_pixels)])
    if not parts:
        raise ValueError("robust_window: no images to compute the window from")
    vals = np.concatenate(parts)
    if not np.all(np.isfinite(vals)):
        raise ValueError("robust_window: images contain NaN or Inf values")
    lo, hi = (float(v) for v in np.percentile(vals, percentiles))
    if hi <= lo:
        raise ValueError(f"robust_window: the pixels are constant ({lo:g}); declare the window instead")
    return (lo, hi)


def resolve_window(spec: object, images: Iterable[np.ndarray] | None = None) -> tuple[float, float] | None:
    """The fixed window of a declaration (see ``parse_window``); ``"auto"`` needs ``images`` (a sample
    of the data set's pool, read lazily only then)."""
    w = parse_window(spec)
    if w is None or isinstance(w, tuple):
        return w
    if w == "auto":
        if images is None:
            raise ValueError("window 'auto' needs the data set's images to compute it from")
        return robust_window(images)
    return bits_window(int(w.split(":", 1)[1]))


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
