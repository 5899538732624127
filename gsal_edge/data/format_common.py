"""What the COCO, VOC and YOLO readers and writers share: box checks, the load log, image ids, image copies."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from gsal_edge.data.dataset import DatasetError, DetectionDataset

__all__ = ["LoadLog", "check_box", "coordinate", "image_dim", "place_images", "read_text", "safe_name",
           "short_repr", "unique_ids"]


class LoadLog:
    """What a reader skipped and clipped, one line per item (becomes ``DetectionDataset.skipped/clipped``)."""

    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.clipped: list[str] = []


def coordinate(v: Any, where: str) -> float:
    """``v`` as a finite float; DatasetError naming ``where`` otherwise."""
    try:
        x = float(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond the double range
        raise DatasetError(f"{where}: coordinate {short_repr(v)} is not a number") from None
    if not math.isfinite(x):
        raise DatasetError(f"{where}: coordinate {short_repr(v)} is not finite")
    return x


def short_repr(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters (messages name a bad value without pasting all of it)."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of ``path``; DatasetError naming the file when it cannot be read or decoded."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None


def image_dim(v: Any, where: str) -> int:
    """A positive integer image width/height (an integral float such as 640.0 is accepted)."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise DatasetError(f"{where}: must be a positive integer, got {short_repr(v)}")
    try:
        x = float(v)
    except (ValueError, OverflowError):
        raise DatasetError(f"{where}: must be a positive integer, got {short_repr(v)}") from None
    if not math.isfinite(x) or x != int(x) or x < 1:
        raise DatasetError(f"{where}: must be a positive integer, got {short_repr(v)}")
    return int(x)


def check_box(box: tuple[float, float, float, float], w: int, h: int, where: str,
              log: LoadLog) -> tuple[float, float, float, float] | None:
    """Clip a box partly outside the image (recorded); None for degenerate or fully outside ones (recorded)."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        log.skipped.append(f"{where}: degenerate box {list(box)} skipped")
        return None
    if x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
        log.skipped.append(f"{where}: box {list(box)} entirely outside the {w}x{h} image skipped")
        return None
    c = (max(0.0, x1), max(0.0, y1), min(float(w), x2), min(float(h), y2))
    if c != (x1, y1, x2, y2):
        if c[2] <= c[0] or c[3] <= c[1]:
            log.skipped.append(f"{where}: box {list(box)} degenerate after clipping skipped")
            return None
        log.clipped.append(f"{where}: box {list(box)} clipped to {list(c)}")
    return c


def unique_ids(ids: list[str], fallbacks: list[str]) -> list[str]:
    """``ids`` if unique, else the (unique) fallbacks; ids are image ids across formats."""
    if len(set(ids)) == len(ids):
        return ids
    return fallbacks


def safe_name(image_id: str) -> str:
    """An image id as a file name (path separators replaced)."""
    return image_id.replace("/", "__").replace("\\", "__")


def place_images(ds: DetectionDataset, out: Path, sub: str, progress: bool = False) -> dict[str, str]:
    """Copy every image to ``out/sub/<image_id><suffix>``; returns image_id -> new relative name."""
    from tqdm import tqdm

    (out / sub).mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for e in tqdm(ds.images, desc=f"copy images to {out / sub}", unit="img", disable=not progress):
        src = ds.image_path(e)
        rel = f"{sub}/{safe_name(e.image_id)}{Path(e.file_name).suffix.lower()}"
        dst = out / rel
        if not src.is_file():
            raise DatasetError(f"{src}: image file of {e.image_id} not found")
        if not (dst.exists() and os.path.samefile(src, dst)):
            shutil.copyfile(src, dst)
        names[e.image_id] = rel
    return names
