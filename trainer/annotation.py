"""Annotation round trip: selected images out (COCO, Label Studio), finished labels back in, validated.

Export (one folder per round)::

    <out>/images/<name>.png        display copies of the selected slices (uint8 PNG)
    <out>/coco.json                COCO images + categories (no annotations: nothing is labeled yet)
    <out>/predictions.json         detector pre-annotations, COCO results format (bbox, score)
    <out>/label_studio_tasks.json  Label Studio tasks: data.image + predictions (rectanglelabels, %)
    <out>/label_config.xml         a Label Studio labeling config with the graph's classes
    <out>/manifest.json            round id, image name -> pool key, classes, skipped slices (and why)

The folder is written as a whole: into a temporary sibling that is renamed into place at the end, so a
failed export leaves no half-written folder (an earlier export in ``<out>`` is replaced; any other
non-empty folder is refused). A slice whose pixels cannot be read (a reference outside the station's
roots or with a changed file, a non-image, ...) is skipped, counted and named with its reason in the
manifest and the returned summary: one bad slice never aborts the export.

Import (COCO file or Label Studio JSON export) is all-or-nothing: every image and box is validated
first (known class, box inside the image, image of this round's selection), every problem is
collected and reported with the file and item, and only a file with no problem is written, in one
store transaction. An image listed with no boxes is a checked, defect-free slice.

Label modes (spec section 3): ``typed`` (classes = the graph's fine defect nodes; each box counts for
its class) and ``binary`` (one class, e.g. ``defect``; each box counts for a fine concept assigned by a
:data:`ConceptAssigner`; the default one takes the concept of the stored detector proposal that
overlaps the box best, IoU >= 0.5, else ``unknown``).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import quoteattr

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN, ConceptGraph
from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import fsync_dir
from trainer.images import atomic_write, decode_image, to_display_uint8
from trainer.ref_policy import RefFetcher
from trainer.store.pool_store import PoolStore
from trainer.store.types import ImageLabels, LabelBox, Pick, SliceInfo, StoreError

log = logging.getLogger(__name__)

LabelMode = Literal["typed", "binary"]
#: (slice, boxes) -> one fine concept per box (binary mode)
ConceptAssigner = Callable[[PoolStore, SliceInfo, Sequence[tuple[float, float, float, float]]], list[str]]

MAX_REPORTED_ERRORS = 50
BOX_TOLERANCE_PX = 0.5  # rounding slack of annotation tools at the image border
LS_FROM_NAME = "label"
LS_TO_NAME = "image"
LS_DEFAULT_URL_PREFIX = "/data/local-files/?d="


class AnnotationError(GSALError, ValueError):
    """An annotation file failed validation; ``problems`` lists every problem (file and item named)."""

    def __init__(self, path: str | Path, problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        shown = problems[:MAX_REPORTED_ERRORS]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        super().__init__(
            f"{path}: {len(problems)} problem(s), nothing was imported:\n  " + "\n  ".join(shown) + more
        )


@dataclass
class ImportReport:
    source: str
    round_id: int | None  # None: a seed set imported before any round
    images: int
    boxes: int
    per_class: dict[str, int]
    pending: list[str] = field(default_factory=list)  # selected images the file did not label
    ignored: list[str] = field(default_factory=list)  # e.g. non-rectangle Label Studio results
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# -------------------------------------------------------------------------------------------- helpers


def classes_for(graph: ConceptGraph, mode: LabelMode, binary_class: str = "defect") -> list[str]:
    """The label classes annotators may use."""
    return list(graph.defects) if mode == "typed" else [binary_class]


def image_name(key: str) -> str:
    """A file-name-safe, reversible-by-manifest name for a pool key."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", key.replace("/", "__"))
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]
    return f"{safe}-{digest}.png"


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def proposal_concepts(
    store: PoolStore, info: SliceInfo, boxes: Sequence[tuple[float, float, float, float]], min_iou: float = 0.5
) -> list[str]:
    """Default binary-mode assigner: concept of the best-overlapping stored proposal, else ``unknown``."""
    rec = store.record(info.key, fresh_only=False)
    props = rec.proposals if rec is not None else []
    out = []
    for b in boxes:
        best, best_iou = UNKNOWN, min_iou
        for p in props:
            v = iou(b, p.box)
            if v >= best_iou and p.concept != BACKGROUND:  # a labeled box is a defect, never background
                best, best_iou = p.concept, v
        out.append(best)
    return out


def bundle_clip_assigner(bundle_dir: str | Path, *, trusted_keys: Sequence[str | Path] = (),
                         backend: str = "onnxruntime") -> ConceptAssigner:
    """Binary-mode assigner of spec section 3: Eq. 3 on each ground-truth box crop, with a bundle's CLIP.

    The crop is cut exactly as the station cuts proposal regions (context margin, CLIP resolution), so a
    labeled box and a proposal covering it get the same concept. Unsigned bundles are accepted only when
    no ``trusted_keys`` are given (the trainer's own exports).
    """
    import numpy as np

    from gsal_edge.scoring.bundle import load_bundle, trusted_keys_from

    keys = trusted_keys_from(trusted_keys) if trusted_keys else None
    scorer = load_bundle(bundle_dir, backend=backend, trusted_keys=keys, allow_unsigned=not trusted_keys)

    def assign(store: PoolStore, info: SliceInfo, boxes: Sequence[tuple[float, float, float, float]]) -> list[str]:
        src = RefFetcher.for_store(store).local_image(info)  # a reference: confined and hash-verified
        if not src.exists():
            raise StoreError(f"slice {info.key!r}: no local image to crop for concept assignment")
        emb = scorer.embed_regions([decode_image(src)], [np.asarray(boxes, dtype=np.float64)])[0]
        # a labeled box is a defect by definition: background is never its concept (else it drops out of n(v))
        return list(scorer.assigner(emb, exclude=(BACKGROUND,)).concepts)

    return assign


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=1, ensure_ascii=False).encode("utf-8"))


# -------------------------------------------------------------------------------------------- export


def label_config_xml(classes: Sequence[str]) -> str:
    """The Label Studio labeling config: the slice, why it was picked, one rectangle label per class."""
    labels_xml = "".join(f"\n    <Label value={quoteattr(c)}/>" for c in classes)
    return (f'<View>\n  <Header value="$why"/>\n  <Image name="{LS_TO_NAME}" value="$image" zoom="true"/>\n'
            f'  <RectangleLabels name="{LS_FROM_NAME}" toName="{LS_TO_NAME}">{labels_xml}\n'
            '  </RectangleLabels>\n</View>\n')


def task_data(pick: Pick, image_url: str, round_id: int) -> dict[str, Any]:
    """A Label Studio task's ``data``: the image, the pool key, the round, and why it was picked."""
    r = pick.rationale
    prop = r.get("proposal") or {}
    return {"image": image_url, "gsal_image_id": pick.key, "gsal_round": round_id, "rank": pick.rank,
            "acquisition": pick.score, "why": r.get("sentence", ""), "driver": r.get("driver", ""),
            "concept": prop.get("concept", ""), "terms": r.get("terms", {})}


def prediction_boxes(
    rec: ScoreRecord | None, width: int, height: int, classes: Sequence[str], *, mode: LabelMode = "typed",
    binary_class: str = "defect", min_score: float = 0.0,
) -> list[tuple[int, str, tuple[float, float, float, float], float]]:
    """The detector pre-annotations of a record: (proposal index, class, box clipped to the image, score)."""
    out = []
    for j, p in enumerate(rec.proposals if rec is not None else []):
        if p.score < min_score or p.concept == "background":
            continue
        label = binary_class if mode == "binary" else (p.label if p.label in classes else p.concept)
        if label not in classes:
            continue
        x1, y1, x2, y2 = (max(0.0, p.box[0]), max(0.0, p.box[1]), min(width, p.box[2]), min(height, p.box[3]))
        if x2 > x1 and y2 > y1:
            out.append((j, label, (x1, y1, x2, y2), p.score))
    return out


def ls_prediction(rec: ScoreRecord | None, boxes: Sequence[tuple[int, str, tuple[float, float, float, float], float]],
                  width: int, height: int, id_prefix: str) -> dict[str, Any] | None:
    """One Label Studio prediction (rectanglelabels in percent) from :func:`prediction_boxes`; None if empty."""
    results = [
        {
            "id": f"{id_prefix}-{j}", "from_name": LS_FROM_NAME, "to_name": LS_TO_NAME, "type": "rectanglelabels",
            "original_width": width, "original_height": height, "image_rotation": 0, "score": score,
            "value": {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height, "width": 100.0 * (x2 - x1) / width,
                      "height": 100.0 * (y2 - y1) / height, "rotation": 0, "rectanglelabels": [label]},
        }
        for j, label, (x1, y1, x2, y2), score in boxes
    ]
    if not results:
        return None
    return {"model_version": rec.model.get("bundle", "") if rec else "", "result": results,
            "score": max(r["score"] for r in results)}


def export_round(
    store: PoolStore,
    round_id: int,
    out_dir: str | Path,
    graph: ConceptGraph,
    *,
    mode: LabelMode = "typed",
    binary_class: str = "defect",
    image_url_prefix: str = LS_DEFAULT_URL_PREFIX,
    min_prediction_score: float = 0.0,
) -> dict[str, Any]:
    """Write the round's selected images as COCO + Label Studio tasks (with pre-annotations), atomically.

    Slices that cannot be read are skipped (``skipped`` in the summary and the manifest: key and reason).
    """
    final = Path(out_dir)
    _check_export_target(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        info = _write_round(store, round_id, out, graph, mode=mode, binary_class=binary_class,
                            image_url_prefix=image_url_prefix, min_prediction_score=min_prediction_score)
        _replace_dir(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return info | {"out": str(final)}


def _check_export_target(final: Path) -> None:
    """Refuse to replace a non-empty folder that is not an earlier export (it has no manifest.json)."""
    if final.is_symlink() or (final.exists() and not final.is_dir()):
        raise StoreError(f"export folder {final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / "manifest.json").is_file():
        raise StoreError(f"export folder {final} is not empty and holds no earlier export (no manifest.json); "
                         "give a new or empty folder")


def _replace_dir(new: Path, final: Path) -> None:
    """Put the finished folder ``new`` at ``final`` (an earlier export there is moved aside, then removed)."""
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old / final.name)
    os.replace(new, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def _skip_reason(exc: BaseException) -> str:
    """A one-line reason without object addresses (PIL prints heap addresses in some messages)."""
    return re.sub(r" at 0x[0-9a-fA-F]+", "", f"{type(exc).__name__}: {exc}")[:500]


def _write_round(
    store: PoolStore, round_id: int, out: Path, graph: ConceptGraph, *, mode: LabelMode, binary_class: str,
    image_url_prefix: str, min_prediction_score: float,
) -> dict[str, Any]:
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    picks = store.selection(round_id)
    classes = classes_for(graph, mode, binary_class)
    cat_id = {c: i + 1 for i, c in enumerate(classes)}
    fetcher = RefFetcher.for_store(store)
    coco_images, coco_preds, ls_tasks, names = [], [], [], {}
    skipped: list[dict[str, str]] = []
    n = 0
    for pick in picks:
        try:  # everything of one slice first, so a failure leaves no trace of it in the export
            png, width, height = display_png(store.slice_info(pick.key), fetcher)
            rec = store.record(pick.key, fresh_only=False)
            boxes = prediction_boxes(rec, width, height, classes, mode=mode, binary_class=binary_class,
                                     min_score=min_prediction_score)
            prediction = ls_prediction(rec, boxes, width, height, f"p{n + 1}")
        except Exception as e:  # noqa: BLE001 - one unreadable slice must not abort the export (issue 18)
            skipped.append({"key": pick.key, "reason": _skip_reason(e)})
            log.warning("export round %d: skipped %s: %s", round_id, pick.key, skipped[-1]["reason"])
            continue
        n += 1
        name = image_name(pick.key)
        names[name] = pick.key
        atomic_write(img_dir / name, png)
        coco_images.append(
            {"id": n, "file_name": f"images/{name}", "width": width, "height": height,
             "gsal_image_id": pick.key, "gsal_rank": pick.rank}
        )
        coco_preds += [{"image_id": n, "category_id": cat_id[label], "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "score": score} for _j, label, (x1, y1, x2, y2), score in boxes]
        task: dict[str, Any] = {"data": task_data(pick, f"{image_url_prefix}images/{name}", round_id)}
        if prediction is not None:
            task["predictions"] = [prediction]
        ls_tasks.append(task)
    categories = [{"id": cat_id[c], "name": c, "supercategory": graph.coarse_of(c) if mode == "typed" else c}
                  for c in classes]
    _write_json(out / "coco.json", {"info": {"description": f"GSAL round {round_id}"}, "images": coco_images,
                                    "annotations": [], "categories": categories})
    _write_json(out / "predictions.json", coco_preds)
    _write_json(out / "label_studio_tasks.json", ls_tasks)
    atomic_write(out / "label_config.xml", label_config_xml(classes).encode())
    manifest = {"round": round_id, "mode": mode, "classes": classes, "images": names, "skipped": skipped}
    _write_json(out / "manifest.json", manifest)
    return {"round": round_id, "images": n, "predictions": len(coco_preds), "skipped": skipped}


def display_png(info: SliceInfo, fetcher: RefFetcher | None = None) -> tuple[bytes, int, int]:
    """The slice as an 8-bit PNG a browser shows (uint8 PNGs as stored, others min-max windowed per slice).

    A slice known only by reference is read through ``fetcher`` (:class:`trainer.ref_policy.RefFetcher`:
    confined to the station's roots, hash-verified); without one, such a slice is refused.
    Returns (PNG bytes, width, height).
    """
    src = info.image_path
    if src is None:
        if fetcher is None:
            raise StoreError(f"slice {info.key!r} is known only by reference: read it through the store's "
                             "RefFetcher (trainer.ref_policy), which checks the station's roots and the sha256")
        src = fetcher.local_image(info)
    if not src.exists():
        raise StoreError(f"slice {info.key!r}: its stored image {src} is missing")
    pixels = decode_image(src)
    if pixels.ndim == 3:
        pixels = pixels[..., 0]
    if src.suffix.lower() == ".png" and pixels.dtype.name == "uint8":
        data = src.read_bytes()
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(to_display_uint8(pixels)).save(buf, format="PNG")
        data = buf.getvalue()
    return data, int(pixels.shape[1]), int(pixels.shape[0])


# -------------------------------------------------------------------------------------------- import


@dataclass
class _Parsed:
    """One image's labels as read from a file, before validation against the store."""

    item: str  # how to name it in errors, e.g. "images[3] (file_name='x.png')"
    ref_ids: list[str]  # candidate identifiers (gsal_image_id, file name, ...), first match wins
    width: float | None
    height: float | None
    boxes: list[tuple[str, tuple[float, float, float, float], str]]  # (item name, box, class)


def parse_coco(path: Path, problems: list[str]) -> list[_Parsed]:
    """COCO: images + annotations (bbox = x, y, w, h) + categories."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(path, [f"cannot read COCO JSON: {e}"]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list):
        raise AnnotationError(path, ["not a COCO file: no 'images' list"])
    cats = {}
    for i, c in enumerate(doc.get("categories") or []):
        if not isinstance(c, dict) or "id" not in c or not isinstance(c.get("name"), str):
            problems.append(f"categories[{i}]: needs 'id' and 'name'")
            continue
        cats[c["id"]] = c["name"]
    images: dict[Any, _Parsed] = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or "id" not in im:
            problems.append(f"images[{i}]: needs an 'id'")
            continue
        fname = str(im.get("file_name", ""))
        refs = [str(im["gsal_image_id"])] if im.get("gsal_image_id") else []
        refs += [Path(fname).name, str(im["id"])] if fname else [str(im["id"])]
        if im["id"] in images:
            problems.append(f"images[{i}] (id={im['id']!r}): duplicate image id")
            continue
        images[im["id"]] = _Parsed(f"images[{i}] (id={im['id']!r}, file_name={fname!r})", refs,
                                   im.get("width"), im.get("height"), [])
    for i, a in enumerate(doc.get("annotations") or []):
        where = f"annotations[{i}]"
        if not isinstance(a, dict):
            problems.append(f"{where}: expected an object")
            continue
        if a.get("image_id") not in images:
            problems.append(f"{where}: image_id={a.get('image_id')!r} is not in this file's images")
            continue
        if a.get("category_id") not in cats:
            problems.append(f"{where}: category_id={a.get('category_id')!r} is not in this file's categories")
            continue
        bbox = a.get("bbox")
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox)):
            problems.append(f"{where}: bbox must be [x, y, width, height] numbers, got {bbox!r}")
            continue
        x, y, w, h = (float(v) for v in bbox)
        images[a["image_id"]].boxes.append((where, (x, y, x + w, y + h), cats[a["category_id"]]))
    return list(images.values())


def parse_label_studio(path: Path, problems: list[str], ignored: list[str]) -> list[_Parsed]:
    """Label Studio JSON export: tasks with ``annotations[].result[]`` of type rectanglelabels (percent)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise AnnotationError(path, [f"cannot read Label Studio JSON: {e}"]) from None
    except RecursionError:
        raise AnnotationError(path, ["cannot read Label Studio JSON: nested too deeply"]) from None
    if not isinstance(doc, list):
        raise AnnotationError(path, ["not a Label Studio export: expected a JSON list of tasks"])
    return parse_label_studio_tasks(enumerate(doc), problems, ignored)


def parse_label_studio_tasks(tasks: Iterable[tuple[int, Any]], problems: list[str],
                             ignored: list[str]) -> list[_Parsed]:
    """Label Studio tasks (with their index in the export) -> parsed labels of each finished task."""
    out = []
    for i, task in tasks:
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(f"tasks[{i}]: needs a 'data' object")
            continue
        data = task["data"]
        image_url = str(data.get("image", ""))
        item = f"tasks[{i}] (id={task.get('id')!r}, image={image_url!r})"
        raw_anns = task.get("annotations") or []
        if not isinstance(raw_anns, list):
            problems.append(f"{item}: 'annotations' must be a list")
            continue
        anns = [a for a in raw_anns if isinstance(a, dict) and not a.get("was_cancelled")]
        if not anns:
            ignored.append(f"{item}: no finished annotation (left pending)")
            continue
        ann = anns[-1]  # the latest finished annotation of the task
        refs = [str(data["gsal_image_id"])] if data.get("gsal_image_id") else []
        if image_url:
            try:
                query = urlparse(image_url).query
            except ValueError:  # e.g. an unclosed IPv6 bracket: use the text itself
                query = ""
            refs.append(Path(unquote(query.partition("d=")[2] or image_url)).name)
        parsed = _Parsed(item, refs, None, None, [])
        results = ann.get("result") or []
        if not isinstance(results, list):
            problems.append(f"{item}: 'result' must be a list")
            continue
        for j, r in enumerate(results):
            where = f"{item} result[{j}]"
            if not isinstance(r, dict):
                problems.append(f"{where}: expected an object")
                continue
            if r.get("type") != "rectanglelabels":
                ignored.append(f"{where}: type {r.get('type')!r} ignored")
                continue
            v = r.get("value") or {}
            try:
                W, H = float(r["original_width"]), float(r["original_height"])
                x, y, w, h = (float(v[k]) for k in ("x", "y", "width", "height"))
                rotation = float(v.get("rotation") or 0.0)
            except (KeyError, TypeError, ValueError, OverflowError, AttributeError):
                problems.append(f"{where}: needs original_width/height and value x, y, width, height "
                                "(numbers) and a numeric rotation")
                continue
            if not all(math.isfinite(t) for t in (W, H, x, y, w, h)):
                problems.append(f"{where}: coordinates must be finite numbers")
                continue
            if rotation != 0.0:
                problems.append(f"{where}: rotated boxes are not supported (rotation={v.get('rotation')})")
                continue
            labels = v.get("rectanglelabels") or []
            if not isinstance(labels, list) or len(labels) != 1:
                problems.append(f"{where}: expected exactly one rectangle label, got {labels!r}")
                continue
            parsed.width, parsed.height = W, H
            box = (x / 100 * W, y / 100 * H, (x + w) / 100 * W, (y + h) / 100 * H)
            parsed.boxes.append((where, box, str(labels[0])))
        out.append(parsed)
    return out


def _detect_format(path: Path) -> str:
    try:
        head = path.read_text(encoding="utf-8").lstrip()[:1]
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationError(path, [f"cannot read: {e}"]) from None
    return "label-studio" if head == "[" else "coco"


def validate(
    store: PoolStore,
    parsed: list[_Parsed],
    round_id: int | None,
    classes: Sequence[str],
    *,
    mode: LabelMode,
    assigner: ConceptAssigner,
    allow_unselected: bool,
    problems: list[str],
) -> list[ImageLabels]:
    """Check every parsed image and box against the store and the round; collect every problem.

    ``round_id`` None (only with ``allow_unselected``): a seed set labeled before any round.
    """
    picks = {p.key for p in store.selection(round_id)} if round_id is not None else set()
    by_name = {image_name(k): k for k in picks}
    allowed = set(classes)
    out: list[ImageLabels] = []
    seen: dict[str, str] = {}
    for im in parsed:
        key = None
        for ref in im.ref_ids:
            if ref in picks:
                key = ref
            elif ref in by_name:
                key = by_name[ref]
            elif allow_unselected and "/" in ref:
                try:
                    store.slice_info(ref)
                    key = ref
                except StoreError:
                    pass
            if key:
                break
        if key is None:
            problems.append(f"{im.item}: not an image selected in round {round_id} (tried {im.ref_ids})")
            continue
        if key in seen:
            problems.append(f"{im.item}: labels image {key!r} a second time (first: {seen[key]})")
            continue
        seen[key] = im.item
        info = store.slice_info(key)
        W = info.width if info.width is not None else im.width
        H = info.height if info.height is not None else im.height
        if W is None or H is None:
            problems.append(f"{im.item}: image size unknown (not stored, not in the file)")
            continue
        if im.width is not None and im.height is not None and (
            abs(float(im.width) - W) > 0.5 or abs(float(im.height) - H) > 0.5
        ):
            problems.append(f"{im.item}: size {im.width}x{im.height} differs from the slice's {W}x{H}")
            continue
        boxes: list[LabelBox] = []
        ok = True
        for where, (x1, y1, x2, y2), cls in im.boxes:
            if cls not in allowed:
                problems.append(f"{where} (image {key!r}): unknown class {cls!r} (classes: {', '.join(classes)})")
                ok = False
                continue
            tol = BOX_TOLERANCE_PX
            if not (x2 > x1 and y2 > y1):
                problems.append(f"{where} (image {key!r}): empty box {[x1, y1, x2, y2]}")
                ok = False
            elif x1 < -tol or y1 < -tol or x2 > W + tol or y2 > H + tol:
                problems.append(
                    f"{where} (image {key!r}): box {[round(v, 2) for v in (x1, y1, x2, y2)]} is outside the "
                    f"{W}x{H} image"
                )
                ok = False
            else:
                boxes.append(LabelBox((max(0.0, x1), max(0.0, y1), min(float(W), x2), min(float(H), y2)), cls))
        if not ok:
            continue
        if mode == "binary" and boxes:
            for b, concept in zip(boxes, assigner(store, info, [b.box for b in boxes])):
                b.concept = concept
        out.append(ImageLabels(key, int(W), int(H), boxes))
    return out


def import_labels(
    store: PoolStore,
    path: str | Path,
    graph: ConceptGraph,
    *,
    round_id: int | None = None,
    fmt: str | None = None,
    mode: LabelMode = "typed",
    binary_class: str = "defect",
    assigner: ConceptAssigner = proposal_concepts,
    allow_unselected: bool = False,
) -> ImportReport:
    """Validate a COCO or Label Studio export completely, then store it in one transaction.

    Raises :class:`AnnotationError` (every problem, nothing written) when anything is wrong.
    """
    path = Path(path)
    round_id = round_id if round_id is not None else store.latest_round()
    if round_id is None and not allow_unselected:
        raise AnnotationError(path, [("the store has no selection round to import labels for (a seed set "
                                     "of pool images can be imported with allow_unselected)")])
    fmt = fmt or _detect_format(path)
    problems: list[str] = []
    ignored: list[str] = []
    if fmt == "coco":
        parsed = parse_coco(path, problems)
    elif fmt in ("label-studio", "labelstudio", "ls"):
        parsed = parse_label_studio(path, problems, ignored)
    else:
        raise AnnotationError(path, [f"unknown format {fmt!r} (coco, label-studio)"])
    classes = classes_for(graph, mode, binary_class)
    labels = validate(store, parsed, round_id, classes, mode=mode, assigner=assigner,
                      allow_unselected=allow_unselected, problems=problems)
    if problems:
        raise AnnotationError(path, problems)
    return _commit(store, labels, round_id, f"{fmt}:{path.name}", _file_sha(path), ignored)


def _commit(store: PoolStore, labels: list[ImageLabels], round_id: int | None, source: str, sha: str,
            ignored: list[str]) -> ImportReport:
    n_boxes = store.write_labels(labels, source=source, round_id=round_id)
    per_class: dict[str, int] = {}
    for lab in labels:
        for b in lab.boxes:
            per_class[b.category] = per_class.get(b.category, 0) + 1
    done = {lab.key for lab in labels} | set(store.labeled_keys())
    pending = [p.key for p in store.selection(round_id) if p.key not in done] if round_id is not None else []
    return ImportReport(source, round_id, len(labels), n_boxes, dict(sorted(per_class.items())), pending,
                        ignored, sha)


def import_label_studio_tasks(
    store: PoolStore,
    tasks: Any,
    graph: ConceptGraph,
    *,
    source: str,
    sha256: str,
    rounds: Sequence[int] | None = None,
    mode: LabelMode = "typed",
    binary_class: str = "defect",
    assigner: ConceptAssigner = proposal_concepts,
) -> list[ImportReport]:
    """Import a Label Studio export whose tasks span rounds (``data.gsal_round``, as ``trainer push`` writes).

    Every task of every round is validated first (as :func:`import_labels` does for one round); any problem
    raises :class:`AnnotationError` naming ``source`` and nothing is written. Then each round's labels are
    stored in one transaction. ``rounds``: import only these (other rounds' tasks are listed as ignored).
    """
    if not isinstance(tasks, list):
        raise AnnotationError(source, ["not a Label Studio export: expected a JSON list of tasks"])
    problems: list[str] = []
    ignored: list[str] = []
    by_round: dict[int, list[tuple[int, Any]]] = {}
    for i, task in enumerate(tasks):
        data = task.get("data") if isinstance(task, dict) else None
        rid = data.get("gsal_round") if isinstance(data, dict) else None
        where = f"tasks[{i}] (id={task.get('id') if isinstance(task, dict) else None!r})"
        if not isinstance(rid, int) or isinstance(rid, bool):
            problems.append(f"{where}: no integer data.gsal_round (a task not pushed by `gsal-edge trainer push`)")
        elif rounds is not None and rid not in rounds:
            ignored.append(f"{where}: round {rid} not requested")
        else:
            by_round.setdefault(rid, []).append((i, task))
    classes = classes_for(graph, mode, binary_class)
    validated: dict[int, list[ImageLabels]] = {}
    round_ignored: dict[int, list[str]] = {}
    for rid, group in sorted(by_round.items()):
        try:
            store.selection(rid)
        except StoreError:
            problems.append(f"tasks {[i for i, _ in group][:10]}: round {rid} does not exist in {store.db_path}")
            continue
        round_ignored[rid] = []
        parsed = parse_label_studio_tasks(group, problems, round_ignored[rid])
        validated[rid] = validate(store, parsed, rid, classes, mode=mode, assigner=assigner,
                                  allow_unselected=False, problems=problems)
    if problems:
        raise AnnotationError(source, problems)
    return [_commit(store, labels, rid, source, sha256, ignored + round_ignored[rid])
            for rid, labels in validated.items()]


# ----------------------------------------------------------------------------------- simulated annotator


def simulate_annotator(
    store: PoolStore,
    ground_truth: str | Path,
    graph: ConceptGraph,
    *,
    round_id: int | None = None,
    mode: LabelMode = "typed",
    binary_class: str = "defect",
    assigner: ConceptAssigner = proposal_concepts,
) -> ImportReport:
    """Reveal the true labels of the round's selected images from a ground-truth COCO file.

    A selected slice matches a ground-truth image whose ``id``, ``file_name`` or file-name stem equals
    its slice id. In ``binary`` mode every true box becomes ``binary_class`` (its true class is not
    revealed; its concept comes from ``assigner``). Validated and committed like a real import.
    """
    gt_path = Path(ground_truth)
    round_id = round_id if round_id is not None else store.latest_round()
    if round_id is None:
        raise AnnotationError(gt_path, ["the store has no selection round to annotate"])
    problems: list[str] = []
    gt = parse_coco(gt_path, problems)
    if problems:
        raise AnnotationError(gt_path, problems)
    index: dict[str, _Parsed] = {}
    for im in gt:
        for ref in im.ref_ids:
            index.setdefault(ref, im)
            index.setdefault(Path(ref).stem, im)
    parsed = []
    for pick in store.selection(round_id):
        slice_id = pick.key.partition("/")[2]
        im = index.get(slice_id) or index.get(Path(slice_id).stem)
        if im is None:
            problems.append(f"selected image {pick.key!r}: no ground-truth image with id/file name {slice_id!r}")
            continue
        boxes = [(w, b, binary_class if mode == "binary" else c) for w, b, c in im.boxes]
        parsed.append(_Parsed(f"{im.item} for {pick.key!r}", [pick.key], im.width, im.height, boxes))
    if problems:
        raise AnnotationError(gt_path, problems)
    labels = validate(store, parsed, round_id, classes_for(graph, mode, binary_class), mode=mode,
                      assigner=assigner, allow_unselected=False, problems=problems)
    if problems:
        raise AnnotationError(gt_path, problems)
    return _commit(store, labels, round_id, f"simulated:{gt_path.name}", _file_sha(gt_path), [])
