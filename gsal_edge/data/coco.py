"""COCO detection json: read (a file, or a folder holding ``annotations.json``) and write.

Image records written here carry ``uid`` (the image id), ``meta`` and ``lookalikes``; annotations
carry ``attributes``; all are read back. ``iscrowd`` regions are skipped (recorded).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gsal_edge.data.dataset import Annotation, DatasetError, DetectionDataset, ImageEntry
from gsal_edge.data.format_common import (
    LoadLog,
    check_box,
    coordinate,
    image_dim,
    place_images,
    read_text,
    short_repr,
    unique_ids,
)
from gsal_edge.data.image_io import image_size

__all__ = ["load_coco", "write_coco"]


def _find_coco_json(d: Path) -> Path:
    cands = [d / "annotations.json"]
    if not cands[0].is_file():
        cands = sorted(d.glob("*.json")) or sorted((d / "annotations").glob("instances_*.json"))
    if len(cands) != 1 or not cands[0].is_file():
        raise DatasetError(f"{d}: expected one COCO json (annotations.json), found {[c.name for c in cands]}")
    return cands[0]


def load_coco(path: str | Path, image_root: str | Path | None = None, *,
              skip_missing: bool = False) -> DetectionDataset:
    """Read a COCO detection json (a file, or a folder holding ``annotations.json``).

    Image files are looked up relative to ``image_root`` (default: the json's folder), then
    under its ``images/``. Image ids are the ``uid`` field written by ``write_coco`` when present,
    else the file name stem (else the relative path without suffix when stems collide).
    """
    path = Path(path)
    if path.is_dir():
        path = _find_coco_json(path)
    root = Path(image_root) if image_root is not None else path.parent
    text = read_text(path, "annotation file")
    if not text.strip():
        raise DatasetError(f"{path}: empty annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO file (no 'images' list at the top level)")
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{path}: no 'categories' list")
    id2name: dict[int, str] = {}
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: categories[{k}] needs 'id' and 'name'")
        _id_key(c["id"], f"{path}: categories[{k}] 'id'")
        if c["id"] in id2name or str(c["name"]) in id2name.values():
            raise DatasetError(f"{path}: categories[{k}] duplicates id {c['id']} or name {c['name']!r}")
        id2name[c["id"]] = str(c["name"])
    classes = [id2name[i] for i in sorted(id2name, key=lambda i: (isinstance(i, str), i))]
    log = LoadLog()

    recs = data["images"]
    for k, im in enumerate(recs):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetError(f"{path}: images[{k}] needs 'id' and 'file_name'")
        _id_key(im["id"], f"{path}: images[{k}] 'id'")
        if not isinstance(im["file_name"], str) or not im["file_name"].strip():
            raise DatasetError(f"{path}: images[{k}] 'file_name' must be a non-empty string")
    names = [str(im["file_name"]) for im in recs]
    stems = [str(im.get("uid") or Path(n).stem) for im, n in zip(recs, names)]
    ids = unique_ids(stems, [str(im.get("uid") or _without_suffix(n)) for im, n in zip(recs, names)])
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{path}: image file names / uids are not unique")
    entries: dict[Any, ImageEntry] = {}
    for im, image_id, fname in zip(recs, ids, names):
        if im["id"] in entries:
            raise DatasetError(f"{path}: image id {im['id']} appears twice")
        rel = fname
        if not (root / rel).is_file() and (root / "images" / rel).is_file():
            rel = f"images/{rel}"
        if not (root / rel).is_file():
            if skip_missing:
                log.skipped.append(f"{path}: image {image_id}: file {root / rel} missing, skipped")
                entries[im["id"]] = None  # type: ignore[assignment]
                continue
            raise DatasetError(f"{path}: image {image_id}: file {root / rel} not found")
        if "width" in im and "height" in im:
            w = image_dim(im["width"], f"{path}: image {image_id} 'width'")
            h = image_dim(im["height"], f"{path}: image {image_id} 'height'")
        else:
            w, h = image_size(root / rel)
        entries[im["id"]] = ImageEntry(image_id=image_id, file_name=rel, width=w, height=h,
                                       meta=_typed(im, "meta", dict, f"{path}: image {image_id}"),
                                       lookalikes=_typed(im, "lookalikes", list, f"{path}: image {image_id}"))

    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    for k, a in enumerate(anns):
        aid = short_repr(a.get("id", k)) if isinstance(a, dict) else k
        where = f"{path}: annotation id {aid}"
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a or "bbox" not in a:
            raise DatasetError(f"{where}: needs 'image_id', 'category_id' and 'bbox'")
        _id_key(a["image_id"], f"{where}: 'image_id'")
        _id_key(a["category_id"], f"{where}: 'category_id'")
        if a["image_id"] not in entries:
            raise DatasetError(f"{where}: refers to unknown image id {a['image_id']!r}")
        entry = entries[a["image_id"]]
        if entry is None:
            continue
        where = f"{path}: image {entry.image_id} annotation id {aid}"
        if a["category_id"] not in id2name:
            raise DatasetError(f"{where}: unknown category_id {a['category_id']!r} (known: {sorted(id2name)})")
        if a.get("iscrowd", 0):
            log.skipped.append(f"{where}: iscrowd region skipped")
            continue
        bb = a["bbox"]
        if not isinstance(bb, (list, tuple)) or len(bb) != 4:
            raise DatasetError(f"{where}: bbox must be [x, y, w, h], got {short_repr(bb)}")
        x, y, bw, bh = (coordinate(v, where) for v in bb)
        box = check_box((x, y, x + bw, y + bh), entry.width, entry.height, where, log)
        if box is not None:
            entry.annotations.append(Annotation(box=box, category=id2name[a["category_id"]],
                                                attributes=_typed(a, "attributes", dict, where)))
    return DetectionDataset(root=root, classes=classes, images=[e for e in entries.values() if e is not None],
                            skipped=log.skipped, clipped=log.clipped)


def _id_key(v: Any, where: str) -> None:
    """COCO ids are integers (strings tolerated); anything else is a DatasetError naming the field."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise DatasetError(f"{where} must be an integer id, got {short_repr(v)}")


def _typed(d: dict[str, Any], key: str, kind: type, where: str) -> Any:
    """``d[key]`` copied when it is a ``kind`` (dict or list); absent or null: empty; else DatasetError."""
    v = d.get(key)
    if v is None:
        return kind()
    if not isinstance(v, kind):
        raise DatasetError(f"{where}: '{key}' must be a JSON {'object' if kind is dict else 'list'}, "
                           f"got {type(v).__name__}")
    return kind(v)


def _without_suffix(name: str) -> str:
    """``name`` without its file suffix (as posix text); ``name`` itself where it has no file name part."""
    try:
        return Path(name).with_suffix("").as_posix()
    except ValueError:  # "", "/", "..": no name to strip a suffix from
        return name


def write_coco(ds: DetectionDataset, out_dir: str | Path, *, copy_images: bool = True,
               info: dict[str, Any] | None = None, file_name: str = "annotations.json",
               progress: bool = False) -> Path:
    """Write ``out_dir/annotations.json`` (+ ``out_dir/images/`` when ``copy_images``); returns the json path.

    Each image record carries ``uid`` (the image id), ``meta`` and ``lookalikes``; each annotation
    its ``attributes``. Without ``copy_images`` file names point at the images where they are.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if copy_images:
        names = place_images(ds, out, "images", progress)
    else:
        names = {e.image_id: Path(os.path.relpath(ds.image_path(e), out)).as_posix() for e in ds.images}
    cat_id = {c: i + 1 for i, c in enumerate(ds.classes)}
    images, anns = [], []
    for k, e in enumerate(ds.images, start=1):
        rec: dict[str, Any] = {"id": k, "uid": e.image_id, "file_name": names[e.image_id],
                               "width": int(e.width), "height": int(e.height)}
        if e.meta:
            rec["meta"] = e.meta
        if e.lookalikes:
            rec["lookalikes"] = e.lookalikes
        images.append(rec)
        for a in e.annotations:
            if a.category not in cat_id:
                raise DatasetError(f"{e.image_id}: annotation category {a.category!r} not in classes {ds.classes}")
            x1, y1, x2, y2 = (float(v) for v in a.box)
            ann: dict[str, Any] = {"id": len(anns) + 1, "image_id": k, "category_id": cat_id[a.category],
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
            if a.attributes:
                ann["attributes"] = a.attributes
            anns.append(ann)
    # the old module name stays in the default description: written files stay byte-identical
    doc = {"info": info or {"description": "written by gsal_edge.data.datasets"},
           "categories": [{"id": i, "name": c, "supercategory": "object"} for c, i in cat_id.items()],
           "images": images, "annotations": anns}
    path = out / file_name
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path
