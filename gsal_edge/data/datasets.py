"""One in-memory form for detection data sets (COCO json, Pascal VOC XML folders, YOLO txt folders).

Boxes are absolute pixel ``(x1, y1, x2, y2)`` in the image's own coordinates; classes are names
(``DetectionDataset.classes`` fixes their order; label index i+1 in the detector, 0 = background).

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

import json
import math
import os
import shutil
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
Format = Literal["coco", "voc", "yolo"]
FORMATS: tuple[str, ...] = ("coco", "voc", "yolo")


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


# ----------------------------------------------------------------------------------------------
# images


def load_image(path: str | Path) -> np.ndarray:
    """Read a PNG / TIFF / JPEG / BMP slice as stored.

    Grayscale -> 2-D uint8, uint16 or float32; RGB(A) -> HxWx3 (alpha dropped). Other integer
    or float sample types (int16, int32, float64, ...) become float32 with their values kept.
    Raises DatasetError naming the file when it is missing, corrupt, truncated or not an image.
    """
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: image file not found")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(p)
        else:
            from PIL import Image

            with Image.open(p) as im:
                im.load()
                arr = _pil_array(im)
    except DatasetError:
        raise
    except Exception as exc:  # noqa: BLE001 - PIL/tifffile raise many types (OSError, SyntaxError, zlib.error...)
        raise DatasetError(f"{p}: corrupt, truncated or unsupported image ({type(exc).__name__}: {exc})") from None
    return _as_stored(np.asarray(arr), p)


def _pil_array(im: Any) -> np.ndarray:
    mode = im.mode
    if mode in ("L", "I;16", "I;16L", "I;16B", "I;16N", "F", "RGB"):
        return np.asarray(im)
    if mode == "I":
        a = np.asarray(im)
        return a.astype(np.uint16) if a.size and a.min() >= 0 and a.max() <= 65535 else a
    if mode in ("1", "LA"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))  # P, RGBA, CMYK, YCbCr, ...


def _as_stored(a: np.ndarray, p: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)):
        raise DatasetError(f"{p}: unsupported image shape {a.shape} (expected HxW or HxWx3; volumes are not slices)")
    if a.size == 0:
        raise DatasetError(f"{p}: empty image")
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if a.dtype.kind == "u" and a.dtype.itemsize == 1:
        return np.ascontiguousarray(a, dtype=np.uint8)
    if a.dtype.kind == "u" and a.dtype.itemsize == 2:
        return np.ascontiguousarray(a, dtype=np.uint16)  # also turns big-endian '>u2' native
    if a.dtype.kind in "uif":
        return np.ascontiguousarray(a, dtype=np.float32)
    raise DatasetError(f"{p}: unsupported sample type {a.dtype}")


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the image header (no decoding); DatasetError naming the file if unreadable."""
    p = Path(path)
    if not p.is_file():
        raise DatasetError(f"{p}: image file not found")
    try:
        if p.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tf:
                shape = tf.pages[0].shape
            if len(shape) == 3 and shape[-1] not in (1, 3, 4):
                shape = shape[1:]
            return int(shape[1]), int(shape[0])
        from PIL import Image

        with Image.open(p) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception as exc:  # noqa: BLE001 - as in load_image: PIL raises many types for a bad header
        raise DatasetError(f"{p}: corrupt or unsupported image header ({type(exc).__name__}: {exc})") from None


# ----------------------------------------------------------------------------------------------
# shared checks


class _Log:
    def __init__(self) -> None:
        self.skipped: list[str] = []
        self.clipped: list[str] = []


def _number(v: Any, where: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise DatasetError(f"{where}: coordinate {v!r} is not a number") from None
    if not math.isfinite(x):
        raise DatasetError(f"{where}: coordinate {v!r} is not finite")
    return x


def _check_box(box: tuple[float, float, float, float], w: int, h: int, where: str,
               log: _Log) -> tuple[float, float, float, float] | None:
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


def _unique_ids(ids: list[str], fallbacks: list[str]) -> list[str]:
    """``ids`` if unique, else the (unique) fallbacks; ids are image ids across formats."""
    if len(set(ids)) == len(ids):
        return ids
    return fallbacks


def _safe(image_id: str) -> str:
    return image_id.replace("/", "__").replace("\\", "__")


# ----------------------------------------------------------------------------------------------
# COCO


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
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from None
    if not text.strip():
        raise DatasetError(f"{path}: empty annotation file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO file (no 'images' list at the top level)")
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DatasetError(f"{path}: no 'categories' list")
    id2name: dict[int, str] = {}
    for k, c in enumerate(cats):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: categories[{k}] needs 'id' and 'name'")
        if c["id"] in id2name or str(c["name"]) in id2name.values():
            raise DatasetError(f"{path}: categories[{k}] duplicates id {c['id']} or name {c['name']!r}")
        id2name[c["id"]] = str(c["name"])
    classes = [id2name[i] for i in sorted(id2name)]
    log = _Log()

    recs = data["images"]
    for k, im in enumerate(recs):
        if not isinstance(im, dict) or "id" not in im or "file_name" not in im:
            raise DatasetError(f"{path}: images[{k}] needs 'id' and 'file_name'")
    names = [str(im["file_name"]) for im in recs]
    stems = [str(im.get("uid") or Path(n).stem) for im, n in zip(recs, names)]
    ids = _unique_ids(stems, [str(im.get("uid") or Path(n).with_suffix("").as_posix()) for im, n in zip(recs, names)])
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
            w, h = int(im["width"]), int(im["height"])
        else:
            w, h = image_size(root / rel)
        entries[im["id"]] = ImageEntry(image_id=image_id, file_name=rel, width=w, height=h,
                                       meta=dict(im.get("meta") or {}), lookalikes=list(im.get("lookalikes") or []))

    anns = data.get("annotations", [])
    if not isinstance(anns, list):
        raise DatasetError(f"{path}: 'annotations' must be a list")
    for k, a in enumerate(anns):
        aid = a.get("id", k) if isinstance(a, dict) else k
        where = f"{path}: annotation id {aid}"
        if not isinstance(a, dict) or "image_id" not in a or "category_id" not in a or "bbox" not in a:
            raise DatasetError(f"{where}: needs 'image_id', 'category_id' and 'bbox'")
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
            raise DatasetError(f"{where}: bbox must be [x, y, w, h], got {bb!r}")
        x, y, bw, bh = (_number(v, where) for v in bb)
        box = _check_box((x, y, x + bw, y + bh), entry.width, entry.height, where, log)
        if box is not None:
            entry.annotations.append(Annotation(box=box, category=id2name[a["category_id"]],
                                                attributes=dict(a.get("attributes") or {})))
    return DetectionDataset(root=root, classes=classes, images=[e for e in entries.values() if e is not None],
                            skipped=log.skipped, clipped=log.clipped)


def _place_images(ds: DetectionDataset, out: Path, sub: str, progress: bool = False) -> dict[str, str]:
    """Copy every image to ``out/sub/<image_id><suffix>``; returns image_id -> new relative name."""
    from tqdm import tqdm

    (out / sub).mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    for e in tqdm(ds.images, desc=f"copy images to {out / sub}", unit="img", disable=not progress):
        src = ds.image_path(e)
        rel = f"{sub}/{_safe(e.image_id)}{Path(e.file_name).suffix.lower()}"
        dst = out / rel
        if not src.is_file():
            raise DatasetError(f"{src}: image file of {e.image_id} not found")
        if not (dst.exists() and os.path.samefile(src, dst)):
            shutil.copyfile(src, dst)
        names[e.image_id] = rel
    return names


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
        names = _place_images(ds, out, "images", progress)
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
    doc = {"info": info or {"description": "written by gsal_edge.data.datasets"},
           "categories": [{"id": i, "name": c, "supercategory": "object"} for c, i in cat_id.items()],
           "images": images, "annotations": anns}
    path = out / file_name
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


# ----------------------------------------------------------------------------------------------
# Pascal VOC


def _read_class_file(root: Path) -> list[str] | None:
    for name in ("classes.txt", "labelmap.txt", "labels.txt"):
        f = root / name
        if f.is_file():
            out = []
            for line in f.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append(line.split(":")[0] if name == "labelmap.txt" else line)
            if name == "labelmap.txt" and out and out[0] == "background":
                out = out[1:]
            return out
    return None


def _find_voc_image(root: Path, filename: str | None, stem: str) -> Path | None:
    dirs = [root / "JPEGImages", root / "images", root / "PNGImages", root]
    for d in dirs:
        if filename and (d / filename).is_file():
            return d / filename
    for d in dirs:
        for ext in IMAGE_EXTS:
            for cand in (d / f"{stem}{ext}", d / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _json_elem(node: ET.Element, tag: str, where: str) -> Any:
    el = node.find(tag)
    if el is None or not (el.text or "").strip():
        return None
    try:
        return json.loads(el.text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: <{tag}> is not valid JSON ({exc.msg})") from None


def load_voc(root: str | Path, *, classes: list[str] | None = None, split: str | None = None,
             skip_missing: bool = False) -> DetectionDataset:
    """Read a Pascal VOC folder: ``Annotations/*.xml`` plus images in ``JPEGImages/`` (or ``images/``).

    ``split`` reads only the ids in ``ImageSets/Main/<split>.txt``. Class order: ``classes``, else
    ``classes.txt`` / ``labelmap.txt`` in ``root`` (names outside it are an error), else the
    sorted set of object names.
    """
    root = Path(root)
    ann_dir = root / "Annotations"
    if not ann_dir.is_dir():
        raise DatasetError(f"{root}: not a VOC folder (no Annotations/)")
    if split is not None:
        lst = root / "ImageSets" / "Main" / f"{split}.txt"
        if not lst.is_file():
            raise DatasetError(f"{lst}: split list not found")
        xmls = [ann_dir / f"{s.split()[0]}.xml" for s in lst.read_text().splitlines() if s.strip()]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    fixed = classes if classes is not None else _read_class_file(root)
    log = _Log()
    entries: list[ImageEntry] = []
    seen: set[str] = set()
    for xml in xmls:
        if not xml.is_file():
            raise DatasetError(f"{xml}: listed in the split but not found")
        if xml.stat().st_size == 0:
            raise DatasetError(f"{xml}: empty annotation file")
        try:
            node = ET.parse(xml).getroot()
        except ET.ParseError as exc:
            raise DatasetError(f"{xml}: not valid XML ({exc})") from None
        img = _find_voc_image(root, (node.findtext("filename") or "").strip() or None, xml.stem)
        if img is None:
            if skip_missing:
                log.skipped.append(f"{xml}: image file {node.findtext('filename') or xml.stem} missing, skipped")
                continue
            raise DatasetError(f"{xml}: image file {node.findtext('filename') or xml.stem} not found under {root}")
        size = node.find("size")
        try:
            w, h = int(float(size.findtext("width"))), int(float(size.findtext("height")))  # type: ignore[union-attr,arg-type]
            if w <= 0 or h <= 0:
                raise ValueError
        except (AttributeError, TypeError, ValueError):
            w, h = image_size(img)
        entry = ImageEntry(image_id=xml.stem, file_name=img.relative_to(root).as_posix(), width=w, height=h,
                           meta=_json_elem(node, "meta", str(xml)) or {},
                           lookalikes=_json_elem(node, "lookalikes", str(xml)) or [])
        if entry.image_id in seen:
            raise DatasetError(f"{xml}: image id {entry.image_id} appears twice")
        seen.add(entry.image_id)
        for k, obj in enumerate(node.findall("object")):
            where = f"{xml}: object {k}"
            name = (obj.findtext("name") or "").strip()
            if not name:
                raise DatasetError(f"{where}: no <name>")
            where = f"{xml}: object {k} ({name})"
            if fixed is not None and name not in fixed:
                raise DatasetError(f"{where}: unknown category {name!r} (known: {fixed})")
            bb = obj.find("bndbox")
            if bb is None:
                raise DatasetError(f"{where}: no <bndbox>")
            xmin, ymin, xmax, ymax = (_number(bb.findtext(t), f"{where} <{t}>") for t in ("xmin", "ymin", "xmax", "ymax"))
            box = _check_box((xmin - 1, ymin - 1, xmax, ymax), w, h, where, log)
            if box is None:
                continue
            attrs = _json_elem(obj, "attributes", where) or {}
            for flag in ("difficult", "truncated"):
                if (obj.findtext(flag) or "0").strip() == "1":
                    attrs[flag] = True
            entry.annotations.append(Annotation(box=box, category=name, attributes=attrs))
        entries.append(entry)
    if fixed is None:
        fixed = sorted({a.category for e in entries for a in e.annotations})
    return DetectionDataset(root=root, classes=list(fixed), images=entries, skipped=log.skipped, clipped=log.clipped)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4f}".rstrip("0").rstrip(".")


def write_voc(ds: DetectionDataset, out_dir: str | Path, *, progress: bool = False) -> Path:
    """Write a VOC folder: ``Annotations/``, ``JPEGImages/`` (images copied as they are, any format),
    ``ImageSets/Main/trainval.txt`` and ``classes.txt``; returns ``out_dir``."""
    out = Path(out_dir)
    names = _place_images(ds, out, "JPEGImages", progress)
    (out / "Annotations").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for e in ds.images:
        r = ET.Element("annotation")
        ET.SubElement(r, "folder").text = "JPEGImages"
        ET.SubElement(r, "filename").text = Path(names[e.image_id]).name
        size = ET.SubElement(r, "size")
        ET.SubElement(size, "width").text = str(e.width)
        ET.SubElement(size, "height").text = str(e.height)
        ET.SubElement(size, "depth").text = "1"
        ET.SubElement(r, "segmented").text = "0"
        if e.meta:
            ET.SubElement(r, "meta").text = json.dumps(e.meta)
        if e.lookalikes:
            ET.SubElement(r, "lookalikes").text = json.dumps(e.lookalikes)
        for a in e.annotations:
            if a.category not in ds.classes:
                raise DatasetError(f"{e.image_id}: annotation category {a.category!r} not in classes {ds.classes}")
            o = ET.SubElement(r, "object")
            ET.SubElement(o, "name").text = a.category
            ET.SubElement(o, "pose").text = "Unspecified"
            ET.SubElement(o, "truncated").text = "1" if a.attributes.get("truncated") else "0"
            ET.SubElement(o, "difficult").text = "1" if a.attributes.get("difficult") else "0"
            bb = ET.SubElement(o, "bndbox")
            x1, y1, x2, y2 = a.box
            for tag, v in (("xmin", x1 + 1), ("ymin", y1 + 1), ("xmax", x2), ("ymax", y2)):
                ET.SubElement(bb, tag).text = _fmt(v)
            extra = {k: v for k, v in a.attributes.items() if k not in ("difficult", "truncated")}
            if extra:
                ET.SubElement(o, "attributes").text = json.dumps(extra)
        ET.indent(r)
        ET.ElementTree(r).write(out / "Annotations" / f"{_safe(e.image_id)}.xml", encoding="unicode")
    (out / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{_safe(e.image_id)}\n" for e in ds.images))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in ds.classes))
    return out


# ----------------------------------------------------------------------------------------------
# YOLO


def _yolo_names(root: Path) -> list[str] | None:
    names = None
    if (root / "classes.txt").is_file():
        names = [s.strip() for s in (root / "classes.txt").read_text().splitlines() if s.strip()]
    else:
        for y in ("data.yaml", "dataset.yaml"):
            if (root / y).is_file():
                import yaml

                try:
                    doc = yaml.safe_load((root / y).read_text()) or {}
                except yaml.YAMLError as exc:
                    raise DatasetError(f"{root / y}: not valid YAML ({exc})") from None
                raw = doc.get("names") if isinstance(doc, dict) else None
                if isinstance(raw, dict):
                    names = [str(raw[k]) for k in sorted(raw, key=int)]
                elif isinstance(raw, list):
                    names = [str(n) for n in raw]
                else:
                    raise DatasetError(f"{root / y}: no 'names' list or mapping")
                break
    return names


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
    log = _Log()
    rels = [p.relative_to(img_dir).with_suffix("") for p in imgs]
    ids = _unique_ids([r.name for r in rels], [r.as_posix() for r in rels])
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
            for ln, line in enumerate(lbl.read_text().splitlines(), start=1):
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
                v = [_number(t, where) for t in tok[1:]]
                if len(v) == 4:
                    cx, cy, bw, bh = v
                    box = ((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)
                else:
                    xs, ys = v[0::2], v[1::2]
                    box = (min(xs) * w, min(ys) * h, max(xs) * w, max(ys) * h)
                box = _check_box(box, w, h, where, log)
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
    names = _place_images(ds, out, "images", progress)
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


# ----------------------------------------------------------------------------------------------
# dispatch and summaries


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
