"""One in-memory form for detection data sets, whatever file format they came from.

Boxes are absolute pixel ``(x1, y1, x2, y2)`` in the image's own coordinates; classes are names
(``DetectionDataset.classes`` fixes their order; label index i+1 in the detector, 0 = background).
The COCO / VOC / YOLO readers and writers live in ``coco.py``, ``voc.py`` and ``yolo.py``
(``formats.load_dataset`` picks one); how each treats bad input is described in ``formats.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.errors import GSALError

__all__ = ["Annotation", "DatasetError", "DetectionDataset", "ImageEntry", "dataset_stats"]


class DatasetError(GSALError, ValueError):
    """A data set file or item is malformed; the message names the file and the item."""


@dataclass
class Annotation:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 (pixels)
    category: str
    attributes: dict[str, Any] = field(default_factory=dict)  # e.g. polarity, shape (synthetic data)


@dataclass
class ImageEntry:
    image_id: str
    file_name: str  # relative to DetectionDataset.root
    width: int
    height: int
    annotations: list[Annotation] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    lookalikes: list[dict[str, Any]] = field(default_factory=list)  # benign, unlabeled: {"type", "box", ...}


@dataclass
class DetectionDataset:
    root: Path
    classes: list[str]
    images: list[ImageEntry]
    skipped: list[str] = field(default_factory=list)  # items skipped on load, each with its reason
    clipped: list[str] = field(default_factory=list)  # boxes clipped to their image on load

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, entry: ImageEntry) -> Path:
        return Path(self.root) / entry.file_name

    def subset(self, image_ids: list[str] | set[str]) -> DetectionDataset:
        """A view over the named images, in this data set's order, sharing root and classes."""
        keep = set(image_ids)
        return DetectionDataset(self.root, list(self.classes), [e for e in self.images if e.image_id in keep])

    def by_id(self) -> dict[str, ImageEntry]:
        return {e.image_id: e for e in self.images}


def dataset_stats(ds: DetectionDataset) -> dict[str, Any]:
    """Counts and box-size summaries: images and instances per class, defect-free share,
    box area fraction (box area / image area) median and 95th percentile, products, look-alikes."""
    n = len(ds.images)
    per_class: dict[str, dict[str, Any]] = {}
    all_fracs: list[float] = []
    for c in ds.classes:
        fr = [(a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) / (e.width * e.height)
              for e in ds.images for a in e.annotations if a.category == c]
        imgs = sum(1 for e in ds.images if any(a.category == c for a in e.annotations))
        all_fracs += fr
        per_class[c] = {"images": imgs, "image_share": imgs / n if n else 0.0, "instances": len(fr),
                        "area_fraction_median": float(np.median(fr)) if fr else None,
                        "area_fraction_p95": float(np.percentile(fr, 95)) if fr else None}
    free = sum(1 for e in ds.images if not e.annotations)
    products: dict[str, int] = {}
    looks: dict[str, int] = {}
    for e in ds.images:
        if "product" in e.meta:
            products[str(e.meta["product"])] = products.get(str(e.meta["product"]), 0) + 1
        for lk in e.lookalikes:
            looks[str(lk.get("type"))] = looks.get(str(lk.get("type")), 0) + 1
    return {"images": n, "defect_free": free, "defect_free_share": free / n if n else 0.0,
            "instances": len(all_fracs), "classes": per_class,
            "area_fraction_median": float(np.median(all_fracs)) if all_fracs else None,
            "area_fraction_p95": float(np.percentile(all_fracs, 95)) if all_fracs else None,
            "area_fraction_share_below_2pct": float(np.mean(np.array(all_fracs) < 0.02)) if all_fracs else None,
            "products": products, "lookalikes": looks, "skipped": len(ds.skipped), "clipped": len(ds.clipped)}
