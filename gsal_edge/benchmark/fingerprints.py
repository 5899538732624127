"""Content keys of the benchmark: short sha256 digests naming its caches, shared files and inputs.

Their exact bytes are part of existing run folders (a resume compares them, a cache is looked up by
them), so none of these may change: ``digest`` keeps its ``json.dumps(sort_keys=True, default=str)``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gsal_edge.benchmark.config import BenchError
from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.jsonio import read_json

__all__ = ["dataset_fingerprint", "digest", "folder_fingerprint", "sha"]


def sha(data: bytes | str, n: int = 16) -> str:
    """The first ``n`` hex digits of the sha256 of ``data`` (text as UTF-8)."""
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:n]


def digest(obj: Any, n: int = 12) -> str:
    """:func:`sha` of ``obj`` as sorted-key JSON (anything JSON cannot encode as its ``str``)."""
    return sha(json.dumps(obj, sort_keys=True, default=str), n)


def folder_fingerprint(folder: Path, skip: Iterable[str] = ("checkpoints",), provenance: bool = False) -> str:
    """sha256 over the relative paths and contents of a model folder: its weights and the configs that load them.

    Training provenance is left out unless ``provenance``: ``checkpoints/``, the top-level ``run.json`` and the
    ``train`` section of a top-level JSON descriptor (``gsal_prior.json``, ``gsal_clip.json``: wall times,
    losses). So a retrain that gives bit-identical weights keeps the fingerprint, and with it the run folders
    and diffusion caches made with it. ``provenance=True`` is the old fingerprint (every file but checkpoints),
    still accepted when resuming run folders started before this rule.
    """
    h = hashlib.sha256()
    skip = set(skip)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or (rel.parts and rel.parts[0] in skip):
            continue
        if not provenance and len(rel.parts) == 1 and p.suffix == ".json":
            if p.name == "run.json":
                continue
            doc = read_json(p, BenchError)
            if isinstance(doc, dict) and "train" in doc:
                h.update(str(rel).encode())
                h.update(json.dumps({k: v for k, v in doc.items() if k != "train"}, sort_keys=True).encode())
                continue
        h.update(str(rel).encode())
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def dataset_fingerprint(ds: DetectionDataset) -> str:
    """Hash of image ids, sizes and annotations (not pixels)."""
    rows = [[e.image_id, e.file_name, e.width, e.height, [[list(a.box), a.category] for a in e.annotations]]
            for e in ds.images]
    return digest([ds.classes, rows], 16)
