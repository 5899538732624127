"""Windowed 8-bit PNG thumbnails of stored slices, for the gallery of picks.

Each slice gets its own display window over the material (``gsal_edge.data.preview.display_window``, the
window an operator would set on a CT slice), is scaled to uint8 and shrunk to at most ``size`` pixels on
its longer side. Only content-addressed images under the store's ``images/`` are rendered, never a
station's image reference (a path the station chose).
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np

from gsal_edge.data.preview import display_window
from trainer.images import decode_image

THUMB_SIZE = 224


def windowed_uint8(pixels: np.ndarray) -> np.ndarray:
    """A 2-D slice (any dtype) -> uint8 through its display window (first channel of a 3-D image)."""
    img = pixels[..., 0] if pixels.ndim == 3 else pixels
    x = img.astype(np.float64)
    lo, hi = display_window(x)
    return np.round(np.clip((x - lo) / (hi - lo), 0.0, 1.0) * 255.0).astype(np.uint8)


@lru_cache(maxsize=256)
def _render(path: str, size: int, mtime_ns: int) -> bytes:
    from PIL import Image

    im = Image.fromarray(windowed_uint8(decode_image(path)))
    im.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def thumbnail_png(path: str | Path, size: int = THUMB_SIZE) -> bytes:
    """PNG bytes of the windowed thumbnail of the image file ``path`` (cached per file version)."""
    p = Path(path)
    return _render(str(p), int(size), p.stat().st_mtime_ns)
