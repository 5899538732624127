"""What goes into and comes out of the pool store: items, labels, picks, slices, and their keys.

Pool keys. Records handed to selection carry ``image_id = "<station>/<slice id>"`` (:func:`pool_key`) so two
stations may reuse a slice id; the station's own id stays in ``model["station"]``. A score record's identity
is its content digest (:func:`record_digest`, sha256 of the canonical record JSON) and the bundle that made
it (:func:`bundle_of`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import canonical_json
from gsal_wire import STATION_ID_RE

UNKNOWN_BUNDLE = "unknown"


class StoreError(GSALError, ValueError):
    """A store operation was refused; the message names the store file and the item."""


class StoreDatabaseError(GSALError, RuntimeError):
    """The database server failed or refused a statement (connection lost, ...); the write is not acknowledged."""


@dataclass
class IngestItem:
    """One score record as it arrives from a station, with its pixels (encoded) or a reference."""

    station: str
    record: ScoreRecord
    image: bytes | None = None  # PNG / TIFF / NPY bytes (see trainer.images.encode_pixels)
    image_format: str | None = None  # sniffed from the bytes when None
    image_ref: str | None = None  # where the station stored the pixels, when not sent
    width: int | None = None
    height: int | None = None


Outcome = Literal["inserted", "duplicate", "conflict"]


@dataclass
class IngestResult:
    """What one committed ingest batch did, item by item (same order as the input)."""

    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def inserted(self) -> int:
        return self.outcomes.count("inserted")

    @property
    def duplicates(self) -> int:
        return self.outcomes.count("duplicate")

    @property
    def conflicts(self) -> int:
        return self.outcomes.count("conflict")


@dataclass
class LabelBox:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 pixels
    category: str
    concept: str | None = None  # the fine concept this box counts for; None -> category


@dataclass
class ImageLabels:
    """The finished labels of one pool image (zero boxes = a checked, defect-free slice)."""

    key: str
    width: int
    height: int
    boxes: list[LabelBox] = field(default_factory=list)


@dataclass
class Pick:
    key: str
    rank: int
    score: float
    rationale: dict[str, Any]


@dataclass
class SliceInfo:
    key: str
    pk: int
    station: str
    slice_id: str
    image_path: Path | None
    image_ref: str | None
    width: int | None
    height: int | None
    meta: dict[str, Any]


def pool_key(station: str, slice_id: str) -> str:
    """The image id selection sees for a station's slice."""
    return f"{station}/{slice_id}"


def split_key(key: str) -> tuple[str, str]:
    station, sep, slice_id = key.partition("/")
    if not sep or not station or not slice_id:
        raise StoreError(f"pool key {key!r} is not '<station>/<slice id>'")
    return station, slice_id


def check_station(station: str, where: str) -> None:
    """StoreError naming ``where`` unless ``station`` is a valid station id (:data:`STATION_ID_RE`)."""
    if not isinstance(station, str) or not STATION_ID_RE.match(station):
        raise StoreError(f"{where}: station id {station!r} must match {STATION_ID_RE.pattern}")


def record_digest(record: ScoreRecord) -> str:
    return hashlib.sha256(canonical_json(record.to_dict()).encode("utf-8")).hexdigest()


def bundle_of(record: ScoreRecord) -> str:
    return record.model.get("bundle") or UNKNOWN_BUNDLE
