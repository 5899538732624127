"""YOLO txt folders (``images/`` + ``labels/``, normalized ``class cx cy w h``): read and write.

YOLO carries boxes and classes only. An image without a label file is a defect-free image (the YOLO
convention), not an error; a label file without an image is skipped (recorded).
"""

from __future__ import annotations

from pathlib import Path

from gsal_edge.data.dataset import Annotation, DatasetError, DetectionDataset, ImageEntry
from gsal_edge.data.format_common import LoadLog, check_box, coordinate, place_images, read_text, unique_ids
from gsal_edge.data.image_io import IMAGE_EXTS, image_size

__all__ = ["load_yolo", "write_yolo"]


def _yolo_names(root: Path) -> list[str] | None:
    names = None
    if (root / "classes.txt").is_file():
        names = [s.strip() for s in read_text(root / "classes.txt", "class list").splitlines() if s.strip()]
    else:
        for y in ("data.yaml", "dataset.yaml"):
            if (root / y).is_file():
                import yaml

                try:
                    doc = yaml.safe_load(read_text(root / y, "data set YAML")) or {}
                except yaml.YAMLError as exc:
                    raise DatasetError(f"{root / y}: not valid YAML ({exc})") from None
                except RecursionError:
                    raise DatasetError(f"{root / y}: YAML nested too deeply") from None
                raw = doc.get("names") if isinstance(doc, dict) else None
                if isinstance(raw, dict):
                    names = [str(raw[k]) for k in _class_ids(raw, root / y)]
                elif isinstance(raw, list):
                    names = [str(n) for n in raw]
                else:
                    raise DatasetError(f"{root / y}: no 'names' list or mapping")
                break
    return names


def _class_ids(names: dict, where: Path) -> list:
    """The keys of a ``names: {0: a, 1: b}`` mapping in class-id order; they must be 0..n-1."""
    try:
        ids = {int(k): k for k in names if not isinstance(k, bool)}
    except (TypeError, ValueError):
        ids = {}
    if len(ids) != len(names) or sorted(ids) != list(range(len(names))):
        raise DatasetError(f"{where}: 'names' mapping keys must be the class ids 0..{len(names) - 1}, "
                           f"got {sorted(map(str, names))[:10]}")
    return [ids[i] for i in range(len(names))]


def load_yolo(root: str | Path, *, classes: list[str] | None = None, skip_missing: bool = False) -> DetectionDataset:
    """Read a YOLO folder: ``images/**`` with ``labels/**`` mirroring it (or images and .txt side by
    side in ``root``), class names from ``classes``, ``classes.txt`` or ``data.yaml``/``names``.

    Lines are ``class cx cy w h`` (normalized) or a polygon ``class x1 y1 x2 y2 ...`` (its bounding
    box is used). Image sizes come from the image headers. ``skip_missing`` is accepted for a
    uniform signature only: YOLO lists no image files, so none can be missing.
    """
    root = Path(root)
    names = classes if classes is not None else _yolo_names(root)
    if names is None:
        raise DatasetError(f"{root}: YOLO folder without classes.txt or data.yaml 'names'")
    if (root / "images").is_dir():
        img_dir, lbl_dir = root / "images", root / "labels"
        imgs = sorted(p for p in img_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    else:
        img_dir = lbl_dir = root
        imgs = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    log = LoadLog()
    rels = [p.relative_to(img_dir).with_suffix("") for p in imgs]
    ids = unique_ids([r.name for r in rels], [r.as_posix() for r in rels])
    if len(set(ids)) != len(ids):
        raise DatasetError(f"{root}: image names are not unique (same stem, different suffix)")
    entries: list[ImageEntry] = []
    used: set[Path] = set()
    for img, rel, image_id in zip(imgs, rels, ids):
        w, h = image_size(img)
        entry = ImageEntry(image_id=image_id, file_name=img.relative_to(root).as_posix(), width=w, height=h)
        lbl = lbl_dir / rel.with_suffix(".txt")
        if lbl.is_file():
            used.add(lbl.resolve())
            for ln, line in enumerate(read_text(lbl, "label file").splitlines(), start=1):
                tok = line.split()
                if not tok:
                    continue
                where = f"{lbl}: line {ln}"
                if len(tok) < 5 or (len(tok) != 5 and len(tok) % 2 == 0):
                    raise DatasetError(f"{where}: expected 'class cx cy w h' or a polygon, got {line.strip()!r}")
                try:
                    cid = int(tok[0])
                except ValueError:
                    raise DatasetError(f"{where}: class id {tok[0]!r} is not an integer") from None
                if not 0 <= cid < len(names):
                    raise DatasetError(f"{where}: unknown category id {cid} (classes 0..{len(names) - 1})")
                v = [coordinate(t, where) for t in tok[1:]]
                if len(v) == 4:
                    cx, cy, bw, bh = v
                    box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                else:
                    xs, ys = v[0::2], v[1::2]
                    box = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
                box = check_box(box, w, h, where, log)
                if box is not None:
                    entry.annotations.append(Annotation(box=box, category=names[cid]))
        entries.append(entry)
    if lbl_dir.is_dir():
        for lbl in sorted(lbl_dir.rglob("*.txt")):
            if lbl.resolve() not in used and lbl.name != "classes.txt":
                log.skipped.append(f"{lbl}: label file without an image, skipped")
    return DetectionDataset(root=root, classes=list(names), images=entries, skipped=log.skipped, clipped=log.clipped)


def write_yolo(ds: DetectionDataset, out_dir: str | Path, *, progress: bool = False) -> Path:
    """Write a YOLO folder: ``images/``, ``labels/`` (normalized cx cy w h, 6 decimals),
    ``classes.txt`` and ``data.yaml``; attributes, meta and look-alikes are not kept."""
    import yaml

    out = Path(out_dir)
    names = place_images(ds, out, "images", progress)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    cid = {c: i for i, c in enumerate(ds.classes)}
    for e in ds.images:
        lines = []
        for a in e.annotations:
            if a.category not in cid:
                raise DatasetError(f"{e.image_id}: annotation category {a.category!r} not in classes {ds.classes}")
            x1, y1, x2, y2 = a.box
            lines.append(f"{cid[a.category]} {(x1 + x2) / 2 / e.width:.6f} {(y1 + y2) / 2 / e.height:.6f} "
                         f"{(x2 - x1) / e.width:.6f} {(y2 - y1) / e.height:.6f}\n")
        (out / "labels" / f"{Path(names[e.image_id]).stem}.txt").write_text("".join(lines))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in ds.classes))
    (out / "data.yaml").write_text(yaml.safe_dump({"path": str(out.resolve()), "train": "images", "val": "images",
                                                   "names": {i: c for i, c in enumerate(ds.classes)}},
                                                  sort_keys=False))
    return out
