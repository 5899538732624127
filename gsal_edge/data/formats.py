"""Data set formats: tell COCO / VOC / YOLO apart, load and save any of them.

Bad input, per case (every message names the file and the item):

- unreadable / empty / malformed annotation file, unknown category id or name, box with a
  non-numeric or non-finite coordinate, annotation of an unknown image: ``DatasetError``;
- a box partly outside its image: clipped to the image and recorded in ``DetectionDataset.clipped``;
- a box entirely outside its image, or degenerate (zero or negative width/height, also after
  clipping), a COCO ``iscrowd`` region, a YOLO label file without an image: skipped and recorded
  in ``DetectionDataset.skipped``;
- an image file that does not exist: ``DatasetError``, or (``skip_missing=True``) skipped and
  recorded in ``skipped``;
- a corrupt or truncated image file: ``DatasetError`` from ``load_image`` when it is read (loaders
  read image headers only where the annotation format lacks the size, i.e. YOLO).

Format notes: VOC boxes are 1-based inclusive (``x1 = xmin - 1``, ``x2 = xmax``); VOC and COCO
files written here carry annotation attributes, image meta and look-alikes (as extra fields /
JSON-text elements) and read them back; YOLO carries boxes and classes only. A YOLO image without
a label file is a defect-free image (the YOLO convention), not an error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from gsal_edge.data.coco import load_coco, write_coco
from gsal_edge.data.dataset import DatasetError, DetectionDataset
from gsal_edge.data.voc import load_voc, write_voc
from gsal_edge.data.yolo import load_yolo, write_yolo

__all__ = ["FORMATS", "Format", "detect_format", "load_dataset", "save_dataset"]

Format = Literal["coco", "voc", "yolo"]
FORMATS: tuple[str, ...] = ("coco", "voc", "yolo")


def detect_format(path: str | Path) -> str:
    """'coco', 'voc' or 'yolo' from the folder layout (or a .json file); DatasetError if none fits."""
    p = Path(path)
    if p.is_file() and p.suffix.lower() == ".json":
        return "coco"
    if not p.is_dir():
        raise DatasetError(f"{p}: no such data set folder or COCO json")
    if (p / "Annotations").is_dir():
        return "voc"
    if (p / "annotations.json").is_file() or (p / "annotations").is_dir():
        return "coco"
    if (p / "labels").is_dir() or (p / "classes.txt").is_file() or (p / "data.yaml").is_file():
        return "yolo"
    if len(list(p.glob("*.json"))) == 1:
        return "coco"
    raise DatasetError(f"{p}: cannot tell the format (expected annotations.json [COCO], Annotations/ [VOC], "
                       f"or labels/ + classes.txt or data.yaml [YOLO])")


def load_dataset(path: str | Path, fmt: str = "auto", **kwargs: Any) -> DetectionDataset:
    """Load a COCO, VOC or YOLO data set; ``fmt='auto'`` detects it from the layout."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "coco":
        return load_coco(path, **kwargs)
    if fmt == "voc":
        return load_voc(path, **kwargs)
    if fmt == "yolo":
        return load_yolo(path, **kwargs)
    raise DatasetError(f"unknown data set format {fmt!r} (expected one of {FORMATS} or 'auto')")


def save_dataset(ds: DetectionDataset, out_dir: str | Path, fmt: str, *, progress: bool = False) -> Path:
    """Write ``ds`` to ``out_dir`` as 'coco', 'voc' or 'yolo' (images copied)."""
    if fmt == "coco":
        return write_coco(ds, out_dir, progress=progress)
    if fmt == "voc":
        return write_voc(ds, out_dir, progress=progress)
    if fmt == "yolo":
        return write_yolo(ds, out_dir, progress=progress)
    raise DatasetError(f"unknown data set format {fmt!r} (expected one of {FORMATS})")
