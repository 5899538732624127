"""One in-memory form for detection data sets (COCO json, Pascal VOC XML folders, YOLO txt folders).

Boxes are absolute pixel ``(x1, y1, x2, y2)`` in the image's own coordinates; classes are names
(``DetectionDataset.classes`` fixes their order; label index i+1 in the detector, 0 = background).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
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


@dataclass
class DetectionDataset:
    root: Path
    classes: list[str]
    images: list[ImageEntry]
    skipped: list[str] = field(default_factory=list)  # items skipped on load, each with its reason

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, entry: ImageEntry) -> Path:
        return Path(self.root) / entry.file_name

    def subset(self, image_ids: list[str] | set[str]) -> "DetectionDataset":
        """A view over the named images, in this data set's order, sharing root and classes."""
        keep = set(image_ids)
        return DetectionDataset(self.root, list(self.classes), [e for e in self.images if e.image_id in keep])

    def by_id(self) -> dict[str, ImageEntry]:
        return {e.image_id: e for e in self.images}
