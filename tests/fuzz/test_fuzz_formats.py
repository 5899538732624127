"""Fuzzing the COCO, VOC and YOLO readers on files written to a tmp dir.

Contract (``gsal_edge/data/formats.py``): a malformed file or item raises ``DatasetError`` naming the
file; never another exception, never a hang (each read is bounded by the test timeout). What loads
is sane: every box lies inside its image with positive size.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fuzz_support import Tally, fuzz_settings, json_values, mutated, seed_decorator
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from gsal_edge.data.coco import load_coco
from gsal_edge.data.dataset import DatasetError, DetectionDataset
from gsal_edge.data.voc import load_voc
from gsal_edge.data.yolo import load_yolo

W, H = 12, 8  # the test image


def _png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(W * H, dtype=np.uint8).reshape(H, W)).save(buf, format="PNG")
    return buf.getvalue()


PNG = _png()
# an image file is the real PNG, or (rarely) bytes that only look like one
image_bytes = st.one_of(st.just(PNG), st.just(PNG), st.just(PNG), st.just(PNG), st.just(PNG), st.binary(max_size=64),
                        st.just(PNG[:40]), st.just(b"\x89PNG\r\n\x1a\n" + bytes(30)))
# text tokens that break number parsers
number_text = st.one_of(
    st.integers(-50, 50).map(str), st.floats(-2, 20).map(repr), st.sampled_from(
        ["nan", "inf", "-inf", "1e999", "1e-999", "0x10", "", " ", "1,5", "½", "10" * 200, "-0", "+3", "1_000"]),
    st.text(max_size=8))


def _sane(ds: DetectionDataset) -> None:
    for e in ds.images:
        assert e.width > 0 and e.height > 0
        for a in e.annotations:
            x1, y1, x2, y2 = a.box
            assert 0 <= x1 < x2 <= e.width and 0 <= y1 < y2 <= e.height, (e.image_id, a.box)


class Runner:
    """One fresh folder per input; calls ``load`` and checks the contract."""

    def __init__(self, tmp: Path, target: str) -> None:
        self.tmp, self.tally, self.n = tmp, Tally(target), 0

    def folder(self) -> Path:
        self.n += 1
        d = self.tmp / f"in{self.n}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        return d

    def load(self, fn: Callable[[], DetectionDataset], root: Path) -> None:
        try:
            ds = fn()
        except DatasetError as e:
            assert str(root) in str(e), f"the error does not name the file: {e}"
            self.tally.tick("DatasetError")
            return
        finally:
            shutil.rmtree(root, ignore_errors=True)
        _sane(ds)
        self.tally.tick("loaded")


# ---- COCO -------------------------------------------------------------------------------------------
@st.composite
def coco_docs(draw: st.DrawFn) -> dict[str, Any]:
    anns = []
    for k in range(draw(st.integers(0, 4))):
        x, y = draw(st.floats(-5, W + 5)), draw(st.floats(-5, H + 5))
        anns.append({"id": k + 1, "image_id": 1, "category_id": draw(st.sampled_from([1, 2])),
                     "bbox": [x, y, draw(st.floats(-2, 15)), draw(st.floats(-2, 15))],
                     "iscrowd": draw(st.sampled_from([0, 0, 1])), "attributes": {"polarity": "dark"}})
    return {"images": [{"id": 1, "file_name": "a.png", "width": W, "height": H, "uid": "a",
                        "meta": {"line": "L1"}, "lookalikes": []}],
            "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "crack"}], "annotations": anns}


coco_files = st.one_of(
    coco_docs().map(json.dumps), mutated(coco_docs()).map(json.dumps), mutated(coco_docs(), 6).map(json.dumps),
    json_values().map(json.dumps), st.binary(max_size=80).map(lambda b: b.decode("latin-1")),
    st.integers(50, 3000).map(lambda d: '{"images": ' + "[" * d + "]" * d + "}"),
)


def test_fuzz_coco(tmp_path: Path) -> None:
    r = Runner(tmp_path, "coco")

    @fuzz_settings(200)
    @seed_decorator()
    @given(coco_files, image_bytes, st.booleans())
    def run(doc: str, img: bytes, latin1: bool) -> None:
        d = r.folder()
        (d / "images").mkdir()
        (d / "images" / "a.png").write_bytes(img)
        (d / "annotations.json").write_bytes(doc.encode("latin-1", "replace") if latin1 else doc.encode())
        r.load(lambda: load_coco(d), d)

    run()
    r.tally.report(tmp_path)
    assert r.tally.outcomes["loaded"] and r.tally.outcomes["DatasetError"]


# ---- VOC --------------------------------------------------------------------------------------------
def _esc(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


json_text = st.one_of(json_values().map(json.dumps), st.text(max_size=10),
                      st.integers(50, 3000).map(lambda d: "[" * d + "]" * d))
mostly_valid_json = st.one_of(st.just('{"line": "L1"}'), st.just("{}"), st.just("null"), json_text)
pixel_text = st.one_of(st.integers(-3, W + 3).map(str), st.integers(-3, H + 3).map(str), number_text)


@st.composite
def voc_xml(draw: st.DrawFn) -> bytes:
    objs = []
    for _ in range(draw(st.integers(0, 3))):
        bb = "".join(f"<{t}>{_esc(draw(pixel_text))}</{t}>" for t in ("xmin", "ymin", "xmax", "ymax")
                     if draw(st.integers(0, 19)) != 7)  # Hypothesis favours 0: test another value
        extra = f"<attributes>{_esc(draw(mostly_valid_json))}</attributes>" if draw(st.booleans()) else ""
        flags = "".join(f"<{f}>{draw(st.sampled_from(['0', '1', 'x']))}</{f}>" for f in ("difficult", "truncated"))
        name = draw(st.sampled_from(["void", "crack", "void", "crack", "", "unknown_thing", "  void  "]))
        objs.append(f"<object><name>{_esc(name)}</name>{flags}{extra}<bndbox>{bb}</bndbox></object>")
    fname = draw(st.sampled_from(["a.png", "a.png", "a.png", "", "missing.png", "/etc/hostname", "../a.png",
                                  "b/../a.png"]))
    size = (f"<size><width>{_esc(draw(pixel_text))}</width><height>{_esc(draw(pixel_text))}</height></size>"
            if draw(st.booleans()) else "")
    meta = f"<meta>{_esc(draw(mostly_valid_json))}</meta>" if draw(st.integers(0, 3)) == 2 else ""
    looks = f"<lookalikes>{_esc(draw(json_text))}</lookalikes>" if draw(st.integers(0, 5)) == 3 else ""
    enc = draw(st.sampled_from(["", "", "", "", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="utf-8"?>',
                                '<?xml version="1.0" encoding="nonsense"?>', '<?xml version="1.0" encoding="utf-16"?>']))
    doc = f"{enc}<annotation><filename>{_esc(fname)}</filename>{size}{meta}{looks}{''.join(objs)}</annotation>"
    data = doc.encode()
    if draw(st.integers(0, 9)) == 7:  # damage the bytes
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + draw(st.binary(max_size=8)) + data[cut + 1:]
    return data


def test_fuzz_voc(tmp_path: Path) -> None:
    r = Runner(tmp_path, "voc")

    @fuzz_settings(200)
    @seed_decorator()
    @given(voc_xml(), image_bytes, st.one_of(st.none(), st.binary(max_size=30),
                                             st.just(b"void\ncrack\n"), st.just(b"\xff\xfe")))
    def run(xml: bytes, img: bytes, class_file: bytes | None) -> None:
        d = r.folder()
        (d / "Annotations").mkdir()
        (d / "JPEGImages").mkdir()
        (d / "JPEGImages" / "a.png").write_bytes(img)
        (d / "Annotations" / "a.xml").write_bytes(xml)
        if class_file is not None:
            (d / "classes.txt").write_bytes(class_file)
        r.load(lambda: load_voc(d), d)

    run()
    r.tally.report(tmp_path)
    assert r.tally.outcomes["loaded"] and r.tally.outcomes["DatasetError"]


# ---- YOLO -------------------------------------------------------------------------------------------
@st.composite
def yolo_labels(draw: st.DrawFn) -> bytes:
    lines = []
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.sampled_from([5, 5, 5, 5, 5, 4, 6, 7, 9, 1]))
        toks = [draw(st.sampled_from(["0", "1", "0", "1", "2", "-1", "x", "1.0", "99999999999999999999"]))]
        toks += [draw(st.one_of(st.floats(-0.2, 1.2).map(repr), st.floats(0, 1).map(repr), number_text))
                 for _ in range(n - 1)]
        lines.append(" ".join(t.replace(" ", "") or "0" for t in toks))
    data = "\n".join(lines).encode()
    if draw(st.integers(0, 9)) == 7:
        data += draw(st.binary(max_size=10))
    return data


names_files = st.one_of(
    st.tuples(st.just("classes.txt"), st.sampled_from([b"void\ncrack\n", b"void\ncrack\n", b"void\ncrack\n", b"",
                                                       b"\xff\xfe", b"void\n\n"])),
    st.tuples(st.just("data.yaml"), st.one_of(
        st.sampled_from([b"names: [void, crack]", b"names: {0: void, 1: crack}", b"names: {1: void, 2: crack}",
                         b"names: {a: void}", b"names: {0: void, '0': crack}", b"names: 3", b"- 1", b"a: &a [*a]",
                         b"names: !!python/object:os.system x", b"\t\x00", b"names: [" * 2000]),
        st.binary(max_size=30))),
    st.tuples(st.just("none"), st.just(b"")),
)


def test_fuzz_yolo(tmp_path: Path) -> None:
    r = Runner(tmp_path, "yolo")

    @fuzz_settings(200)
    @seed_decorator()
    @given(yolo_labels(), image_bytes, names_files, st.booleans())
    def run(labels: bytes, img: bytes, names: tuple[str, bytes], orphan: bool) -> None:
        d = r.folder()
        (d / "images").mkdir()
        (d / "labels").mkdir()
        (d / "images" / "a.png").write_bytes(img)
        (d / "labels" / "a.txt").write_bytes(labels)
        if orphan:
            (d / "labels" / "ghost.txt").write_bytes(labels)
        if names[0] != "none":
            (d / names[0]).write_bytes(names[1])
        r.load(lambda: load_yolo(d), d)

    run()
    r.tally.report(tmp_path)
    assert r.tally.outcomes["loaded"] and r.tally.outcomes["DatasetError"]
