"""Pascal VOC folders (``Annotations/*.xml`` + ``JPEGImages/``): read and write.

VOC boxes are 1-based inclusive (``x1 = xmin - 1``, ``x2 = xmax``). Files written here carry
annotation attributes, image meta and look-alikes as JSON-text elements and read them back.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from gsal_edge.data.dataset import Annotation, DatasetError, DetectionDataset, ImageEntry
from gsal_edge.data.format_common import LoadLog, check_box, coordinate, place_images, read_text, safe_name
from gsal_edge.data.image_io import IMAGE_EXTS, image_size

__all__ = ["load_voc", "write_voc"]


def _read_class_file(root: Path) -> list[str] | None:
    for name in ("classes.txt", "labelmap.txt", "labels.txt"):
        f = root / name
        if f.is_file():
            out = []
            for line in read_text(f, "class list").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append(line.split(":")[0] if name == "labelmap.txt" else line)
            if name == "labelmap.txt" and out and out[0] == "background":
                out = out[1:]
            return out
    return None


def _find_voc_image(root: Path, filename: str | None, stem: str) -> Path | None:
    dirs = [root / "JPEGImages", root / "images", root / "PNGImages", root]
    if filename and (Path(filename).is_absolute() or ".." in Path(filename).parts):
        filename = None  # never read outside the data set: fall back to the annotation file's stem
    for d in dirs:
        if filename and (d / filename).is_file():
            return d / filename
    for d in dirs:
        for ext in IMAGE_EXTS:
            for cand in (d / f"{stem}{ext}", d / f"{stem}{ext.upper()}"):
                if cand.is_file():
                    return cand
    return None


def _json_elem(node: ET.Element, tag: str, where: str, kind: type) -> Any:
    """The JSON text of ``<tag>`` as a ``kind`` (dict or list); empty ``kind()`` when absent."""
    el = node.find(tag)
    if el is None or not (el.text or "").strip():
        return kind()
    try:
        v = json.loads(el.text)  # type: ignore[arg-type]
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: <{tag}> is not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DatasetError(f"{where}: <{tag}> JSON is nested too deeply") from None
    if v is None:
        return kind()
    if not isinstance(v, kind):
        raise DatasetError(f"{where}: <{tag}> must hold a JSON {'object' if kind is dict else 'list'}, "
                           f"got {type(v).__name__}")
    return v


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
        xmls = [ann_dir / f"{s.split()[0]}.xml" for s in read_text(lst, "split list").splitlines() if s.strip()]
    else:
        xmls = sorted(ann_dir.glob("*.xml"))
    fixed = classes if classes is not None else _read_class_file(root)
    log = LoadLog()
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
        except (LookupError, ValueError) as exc:  # e.g. <?xml encoding="nonsense"?>
            raise DatasetError(f"{xml}: not readable XML ({type(exc).__name__}: {exc})") from None
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
        except (AttributeError, TypeError, ValueError, OverflowError):
            w, h = image_size(img)
        try:
            rel = img.relative_to(root).as_posix()
        except ValueError:  # <filename> is an absolute path elsewhere: refuse to read outside the data set
            raise DatasetError(f"{xml}: <filename> {node.findtext('filename')!r} is outside {root}") from None
        entry = ImageEntry(image_id=xml.stem, file_name=rel, width=w, height=h,
                           meta=_json_elem(node, "meta", str(xml), dict),
                           lookalikes=_json_elem(node, "lookalikes", str(xml), list))
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
            xmin, ymin, xmax, ymax = (coordinate(bb.findtext(t), f"{where} <{t}>") for t in ("xmin", "ymin", "xmax", "ymax"))
            box = check_box((xmin - 1, ymin - 1, xmax, ymax), w, h, where, log)
            if box is None:
                continue
            attrs = _json_elem(obj, "attributes", where, dict)
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
    names = place_images(ds, out, "JPEGImages", progress)
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
        ET.ElementTree(r).write(out / "Annotations" / f"{safe_name(e.image_id)}.xml", encoding="unicode")
    (out / "ImageSets" / "Main" / "trainval.txt").write_text("".join(f"{safe_name(e.image_id)}\n" for e in ds.images))
    (out / "classes.txt").write_text("".join(f"{c}\n" for c in ds.classes))
    return out
