"""Dataset IO (gsal_edge.data: dataset, image_io, coco, voc, yolo, formats): COCO / VOC / YOLO round trips, image loading, bad input, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from gsal_cli.commands.data import app as data_app
from gsal_edge.data.coco import load_coco, write_coco
from gsal_edge.data.dataset import Annotation, DatasetError, DetectionDataset, ImageEntry, dataset_stats
from gsal_edge.data.formats import detect_format, load_dataset, save_dataset
from gsal_edge.data.image_io import image_size, load_image
from gsal_edge.data.synthetic.generator import generate_dataset
from gsal_edge.data.voc import load_voc, write_voc
from gsal_edge.data.yolo import load_yolo, write_yolo


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> DetectionDataset:
    return generate_dataset(tmp_path_factory.mktemp("synth"), 16, seed=21, progress=False)


def _boxes(ds: DetectionDataset) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    return {e.image_id: [(a.category, a.box) for a in e.annotations] for e in ds.images}


def _same_boxes(a: DetectionDataset, b: DetectionDataset, tol: float) -> None:
    ba, bb = _boxes(a), _boxes(b)
    assert ba.keys() == bb.keys()
    for k in ba:
        assert [c for c, _ in ba[k]] == [c for c, _ in bb[k]], k
        for (_, x), (_, y) in zip(ba[k], bb[k]):
            assert np.allclose(x, y, atol=tol), (k, x, y)


def _tiny(tmp_path: Path, w: int = 40, h: int = 30) -> DetectionDataset:
    """A hand-made 2-image data set with real 8-bit PNG files."""
    (tmp_path / "img").mkdir(parents=True, exist_ok=True)
    for name in ("a", "b"):
        Image.fromarray(np.full((h, w), 100, np.uint8)).save(tmp_path / "img" / f"{name}.png")
    return DetectionDataset(tmp_path, ["cat", "dog"], [
        ImageEntry("a", "img/a.png", w, h, [Annotation((1.5, 2.0, 10.25, 12.0), "dog", {"difficult": True}),
                                          Annotation((0.0, 0.0, 40.0, 30.0), "cat")], meta={"product": "p"}),
        ImageEntry("b", "img/b.png", w, h, [])])


# ---------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fmt, tol", [("coco", 0.0), ("voc", 1e-4), ("yolo", 1e-3)])
def test_round_trip_each_format(synth: DetectionDataset, tmp_path: Path, fmt: str, tol: float) -> None:
    out = save_dataset(synth, tmp_path / fmt, fmt)
    assert detect_format(tmp_path / fmt) == fmt
    back = load_dataset(tmp_path / fmt)
    assert back.classes == synth.classes and back.skipped == [] and back.clipped == []
    assert [(e.image_id, e.width, e.height) for e in back.images] == \
           [(e.image_id, e.width, e.height) for e in synth.images]
    _same_boxes(synth, back, tol)
    for e in back.images:  # images copied byte for byte, still 16-bit
        src = synth.by_id()[e.image_id]
        assert back.image_path(e).read_bytes() == synth.image_path(src).read_bytes()
    if fmt in ("coco", "voc"):  # these two carry attributes, meta and look-alikes
        for e, b in zip(synth.images, back.images):
            assert b.meta == e.meta and b.lookalikes == e.lookalikes
            assert [a.attributes for a in b.annotations] == [a.attributes for a in e.annotations]
    assert out.exists()


def test_conversion_chain_keeps_boxes(synth: DetectionDataset, tmp_path: Path) -> None:
    voc = load_voc(write_voc(synth, tmp_path / "v"))
    yolo = load_yolo(write_yolo(voc, tmp_path / "y"))
    coco = load_coco(write_coco(yolo, tmp_path / "c"))
    _same_boxes(synth, coco, 1e-3)


def test_hand_made_float_boxes_round_trip(tmp_path: Path) -> None:
    ds = _tiny(tmp_path / "src")
    for fmt, tol in (("coco", 1e-9), ("voc", 1e-4), ("yolo", 1e-3)):
        back = load_dataset(save_dataset(ds, tmp_path / fmt, fmt) if fmt != "coco" else
                            write_coco(ds, tmp_path / fmt), fmt=fmt)
        _same_boxes(ds, back, tol)
        if fmt == "voc":
            assert back.images[0].annotations[0].attributes == {"difficult": True}
            xml = (tmp_path / "voc" / "Annotations" / "a.xml").read_text()
            assert "<xmin>2.5</xmin>" in xml and "<xmax>10.25</xmax>" in xml  # 1-based VOC convention


def test_write_rejects_category_outside_classes(tmp_path: Path) -> None:
    ds = _tiny(tmp_path / "src")
    ds.images[0].annotations.append(Annotation((1, 1, 5, 5), "horse"))
    for fmt in ("coco", "voc", "yolo"):
        with pytest.raises(DatasetError, match="horse"):
            save_dataset(ds, tmp_path / fmt, fmt)


def test_write_coco_without_copy_points_at_originals(synth: DetectionDataset, tmp_path: Path) -> None:
    write_coco(synth, tmp_path / "c", copy_images=False)
    assert not (tmp_path / "c" / "images").exists()
    back = load_coco(tmp_path / "c" / "annotations.json")
    assert back.image_path(back.images[3]).resolve() == synth.image_path(synth.images[3]).resolve()


def test_standard_coco_layout_and_missing_uid(tmp_path: Path) -> None:
    """COCO written by other tools: ids are ints, no uid, images in images/ next to the json."""
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "images" / "000123.jpg")
    doc = {"images": [{"id": 7, "file_name": "000123.jpg", "width": 30, "height": 20}],
           "categories": [{"id": 3, "name": "b"}, {"id": 1, "name": "a"}],
           "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [1, 2, 3, 4]}]}
    (tmp_path / "instances.json").write_text(json.dumps(doc))
    ds = load_dataset(tmp_path)
    assert ds.classes == ["a", "b"]  # ordered by category id
    e = ds.images[0]
    assert (e.image_id, e.file_name) == ("000123", "images/000123.jpg")
    assert e.annotations[0].box == (1.0, 2.0, 4.0, 6.0) and e.annotations[0].category == "b"


def test_voc_split_and_labelmap(tmp_path: Path) -> None:
    write_voc(_tiny(tmp_path / "src"), tmp_path / "v")
    (tmp_path / "v" / "classes.txt").unlink()
    (tmp_path / "v" / "labelmap.txt").write_text("background:0,0,0::\ncat:1,1,1::\ndog:2,2,2::\n")
    (tmp_path / "v" / "ImageSets" / "Main" / "val.txt").write_text("b\n")
    ds = load_voc(tmp_path / "v", split="val")
    assert ds.classes == ["cat", "dog"] and [e.image_id for e in ds.images] == ["b"]
    with pytest.raises(DatasetError, match="test.txt"):
        load_voc(tmp_path / "v", split="test")


def test_yolo_flat_layout_polygons_and_data_yaml(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((50, 100), np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "x.txt").write_text("1 0.1 0.2 0.3 0.2 0.3 0.6\n\n0 0.5 0.5 0.2 0.4\n")
    (tmp_path / "data.yaml").write_text("names: {0: a, 1: b}\n")
    ds = load_yolo(tmp_path)
    assert ds.classes == ["a", "b"]
    (c1, b1), (c2, b2) = [(a.category, a.box) for a in ds.images[0].annotations]
    assert c1 == "b" and np.allclose(b1, (10, 10, 30, 30))
    assert c2 == "a" and np.allclose(b2, (40, 15, 60, 35))


# ---------------------------------------------------------------------------------------- images


def test_load_image_types(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u16 = rng.integers(0, 65536, (12, 9), dtype=np.uint16)
    Image.fromarray(u16).save(tmp_path / "a.png")
    u8 = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    Image.fromarray(u8).save(tmp_path / "b.png")
    rgb = rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    f32 = rng.random((12, 9), dtype=np.float32)
    tifffile.imwrite(tmp_path / "d.tif", f32)
    tifffile.imwrite(tmp_path / "e.tiff", u16)
    i16 = rng.integers(-1000, 1000, (12, 9)).astype(np.int16)
    tifffile.imwrite(tmp_path / "f.tif", i16)
    Image.fromarray(u8).save(tmp_path / "g.jpg", quality=95)
    cases = [("a.png", np.uint16, u16), ("b.png", np.uint8, u8), ("c.png", np.uint8, rgb), ("d.tif", np.float32, f32),
             ("e.tiff", np.uint16, u16), ("f.tif", np.float32, i16.astype(np.float32))]
    for name, dt, ref in cases:
        got = load_image(tmp_path / name)
        assert got.dtype == dt and np.array_equal(got, ref), name
    jpg = load_image(tmp_path / "g.jpg")
    assert jpg.dtype == np.uint8 and jpg.shape == (12, 9) and np.abs(jpg.astype(int) - u8).mean() < 20
    assert image_size(tmp_path / "a.png") == (9, 12) and image_size(tmp_path / "e.tiff") == (9, 12)


def _truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def test_corrupt_images_name_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65536, (64, 64), dtype=np.uint16)
    Image.fromarray(img).save(tmp_path / "ok.png")
    tifffile.imwrite(tmp_path / "ok.tif", img)
    Image.fromarray((img >> 8).astype(np.uint8)).save(tmp_path / "ok.jpg")
    bad = [_truncate(tmp_path / "ok.png", tmp_path / "trunc.png"),
           _truncate(tmp_path / "ok.tif", tmp_path / "trunc.tif"),
           _truncate(tmp_path / "ok.jpg", tmp_path / "trunc.jpg", 0.3),
           tmp_path / "zero.png", tmp_path / "text.png", tmp_path / "missing.png"]
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image at all")
    for p in bad:
        with pytest.raises(DatasetError) as e:
            load_image(p)
        assert str(p) in str(e.value), e.value


def test_volume_is_not_a_slice(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((5, 8, 8), np.uint16))
    with pytest.raises(DatasetError, match="vol.tif.*shape"):
        load_image(tmp_path / "vol.tif")


def test_load_image_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    u16 = rng.integers(0, 65536, (12, 9), dtype=np.uint16)
    f32 = rng.random((12, 9), dtype=np.float32)
    i16 = rng.integers(-1000, 1000, (12, 9)).astype(np.int16)
    cases = [("u16.npy", u16, np.uint16, u16), ("be.npy", u16.astype(">u2"), np.uint16, u16),
             ("f32.npy", f32, np.float32, f32), ("i16.npy", i16, np.float32, i16.astype(np.float32)),
             ("one.npy", u16[None], np.uint16, u16)]
    for name, arr, dt, ref in cases:
        np.save(tmp_path / name, arr)
        got = load_image(tmp_path / name)
        assert got.dtype == dt and np.array_equal(got, ref), name
    assert image_size(tmp_path / "u16.npy") == (9, 12)
    np.save(tmp_path / "vol.npy", np.zeros((5, 8, 8), np.uint16))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _truncate(tmp_path / "u16.npy", tmp_path / "trunc.npy")
    for name, match in (("vol.npy", "shape"), ("obj.npy", "corrupt"), ("trunc.npy", "corrupt")):
        with pytest.raises(DatasetError, match=f"{name}.*{match}"):
            load_image(tmp_path / name)


# ---------------------------------------------------------------------------------------- bad input


def _coco(tmp_path: Path, anns: list[dict], **extra: object) -> Path:
    _tiny(tmp_path)
    doc = {"images": [{"id": 1, "file_name": "img/a.png", "width": 40, "height": 30},
                      {"id": 2, "file_name": "img/b.png", "width": 40, "height": 30}],
           "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}], "annotations": anns, **extra}
    p = tmp_path / "annotations.json"
    p.write_text(json.dumps(doc))
    return p


def test_coco_box_handling_is_counted(tmp_path: Path) -> None:
    p = _coco(tmp_path, [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [30, 20, 20, 20]},   # partly outside -> clipped
        {"id": 11, "image_id": 1, "category_id": 1, "bbox": [50, 5, 5, 5]},      # fully outside -> skipped
        {"id": 12, "image_id": 2, "category_id": 2, "bbox": [5, 5, 0, 5]},       # degenerate -> skipped
        {"id": 13, "image_id": 2, "category_id": 2, "bbox": [5, 5, 4, 4], "iscrowd": 1},  # crowd -> skipped
        {"id": 14, "image_id": 2, "category_id": 2, "bbox": [5, 5, 4, 4]},       # fine
    ])
    ds = load_coco(p)
    assert ds.images[0].annotations[0].box == (30.0, 20.0, 40.0, 30.0)
    assert len(ds.clipped) == 1 and "annotation id 10" in ds.clipped[0] and str(p) in ds.clipped[0]
    assert len(ds.skipped) == 3
    assert ["annotation id 11" in ds.skipped[0], "annotation id 12" in ds.skipped[1],
            "iscrowd" in ds.skipped[2]] == [True, True, True]
    assert [len(e.annotations) for e in ds.images] == [1, 1]
    st = dataset_stats(ds)
    assert st["skipped"] == 3 and st["clipped"] == 1


@pytest.mark.parametrize("anns, match", [
    ([{"id": 5, "image_id": 1, "category_id": 9, "bbox": [1, 1, 2, 2]}], r"annotation id 5.*unknown category_id 9"),
    ([{"id": 6, "image_id": 99, "category_id": 1, "bbox": [1, 1, 2, 2]}], r"annotation id 6.*unknown image id 99"),
    ([{"id": 7, "image_id": 1, "category_id": 1, "bbox": [1, "x", 2, 2]}], r"annotation id 7.*'x' is not a number"),
    ([{"id": 8, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2]}], r"annotation id 8.*bbox"),
    ([{"id": 9, "image_id": 1, "category_id": 1}], r"annotation id 9.*needs"),
])
def test_coco_errors_name_file_and_item(tmp_path: Path, anns: list[dict], match: str) -> None:
    p = _coco(tmp_path, anns)
    with pytest.raises(DatasetError, match=match) as e:
        load_coco(p)
    assert str(p) in str(e.value)


def test_coco_nan_coordinate_is_an_error(tmp_path: Path) -> None:
    p = _coco(tmp_path, [])
    p.write_text(p.read_text().replace('"annotations": []',
                                       '"annotations": [{"id": 3, "image_id": 1, "category_id": 1, "bbox": [NaN, 1, 2, 2]}]'))
    with pytest.raises(DatasetError, match="annotation id 3.*not finite"):
        load_coco(p)


def test_coco_file_level_errors(tmp_path: Path) -> None:
    p = tmp_path / "annotations.json"
    p.write_text("   \n")
    with pytest.raises(DatasetError, match=f"{p}: empty annotation file"):
        load_coco(p)
    p.write_text('{"images": [}')
    with pytest.raises(DatasetError, match=r"not valid JSON \(line 1"):
        load_coco(p)
    p.write_text('{"annotations": []}')
    with pytest.raises(DatasetError, match="no 'images'"):
        load_coco(p)


def test_coco_missing_image_error_or_counted_skip(tmp_path: Path) -> None:
    p = _coco(tmp_path, [{"id": 1, "image_id": 2, "category_id": 1, "bbox": [1, 1, 2, 2]}])
    (tmp_path / "img" / "b.png").unlink()
    with pytest.raises(DatasetError, match=r"image b: file .*b.png not found"):
        load_coco(p)
    ds = load_coco(p, skip_missing=True)
    assert [e.image_id for e in ds.images] == ["a"] and len(ds.skipped) == 1 and "b.png" in ds.skipped[0]


def test_voc_bad_input(tmp_path: Path) -> None:
    write_voc(_tiny(tmp_path / "src"), tmp_path / "v")
    xml = tmp_path / "v" / "Annotations" / "a.xml"
    good = xml.read_text()
    xml.write_text(good.replace("<name>dog</name>", "<name>horse</name>"))
    with pytest.raises(DatasetError, match=rf"{xml}: object 0 \(horse\): unknown category 'horse'"):
        load_voc(tmp_path / "v")
    xml.write_text(good.replace("<xmax>10.25</xmax>", "<xmax>ten</xmax>"))
    with pytest.raises(DatasetError, match=rf"{xml}: object 0 \(dog\) <xmax>.*not a number"):
        load_voc(tmp_path / "v")
    xml.write_text("")
    with pytest.raises(DatasetError, match=rf"{xml}: empty annotation file"):
        load_voc(tmp_path / "v")
    xml.write_text("<annotation><object>")
    with pytest.raises(DatasetError, match=rf"{xml}: not valid XML"):
        load_voc(tmp_path / "v")
    xml.write_text(good.replace("<xmin>2.5</xmin>", "<xmin>-20</xmin>").replace("<xmax>10.25</xmax>", "<xmax>5</xmax>"))
    ds = load_voc(tmp_path / "v")
    assert ds.images[0].annotations[0].box == (0.0, 2.0, 5.0, 12.0) and len(ds.clipped) == 1
    shutil.rmtree(tmp_path / "v" / "JPEGImages")
    with pytest.raises(DatasetError, match="a.png not found"):
        load_voc(tmp_path / "v")
    assert len(load_voc(tmp_path / "v", skip_missing=True).skipped) == 2


def test_yolo_bad_input(tmp_path: Path) -> None:
    write_yolo(_tiny(tmp_path / "src"), tmp_path / "y")
    lbl = tmp_path / "y" / "labels" / "a.txt"
    good = lbl.read_text()
    lbl.write_text(good + "5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=rf"{lbl}: line 3: unknown category id 5"):
        load_yolo(tmp_path / "y")
    lbl.write_text("0 0.5 0.5\n")
    with pytest.raises(DatasetError, match=rf"{lbl}: line 1: expected"):
        load_yolo(tmp_path / "y")
    lbl.write_text("cat 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DatasetError, match=rf"{lbl}: line 1: class id 'cat'"):
        load_yolo(tmp_path / "y")
    lbl.write_text("")  # empty label file: a defect-free image
    (tmp_path / "y" / "labels" / "orphan.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (tmp_path / "y" / "labels" / "b.txt").write_text("0 1.5 1.5 0.1 0.1\n0 0.95 0.5 0.2 0.2\n")
    ds = load_yolo(tmp_path / "y")
    assert [len(e.annotations) for e in ds.images] == [0, 1]
    assert len(ds.clipped) == 1 and "b.txt: line 2" in ds.clipped[0]
    assert len(ds.skipped) == 2 and any("orphan.txt" in s for s in ds.skipped)
    (tmp_path / "y" / "classes.txt").unlink()
    (tmp_path / "y" / "data.yaml").unlink()
    with pytest.raises(DatasetError, match="classes.txt or data.yaml"):
        load_yolo(tmp_path / "y")


def test_yolo_corrupt_image_names_the_file(tmp_path: Path) -> None:
    write_yolo(_tiny(tmp_path / "src"), tmp_path / "y")
    (tmp_path / "y" / "images" / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(DatasetError, match=r"images/b.png: corrupt"):
        load_yolo(tmp_path / "y")


def test_detect_format_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cannot tell the format"):
        detect_format(tmp_path)
    with pytest.raises(DatasetError, match="no such"):
        load_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="unknown data set format 'xml'"):
        load_dataset(tmp_path, fmt="xml")


# ---------------------------------------------------------------------------------------- stats + CLI


def test_dataset_stats_counts(tmp_path: Path) -> None:
    ds = _tiny(tmp_path)
    st = dataset_stats(ds)
    assert st["images"] == 2 and st["defect_free"] == 1 and st["defect_free_share"] == 0.5
    assert st["classes"]["dog"]["instances"] == 1 and st["classes"]["cat"]["images"] == 1
    assert st["classes"]["cat"]["area_fraction_median"] == pytest.approx(1.0)
    dog = (10.25 - 1.5) * 10 / 1200
    assert st["area_fraction_median"] == pytest.approx((1.0 + dog) / 2)


def test_cli_stats_and_convert(synth: DetectionDataset, tmp_path: Path) -> None:
    r = CliRunner().invoke(data_app, ["stats", "--data", str(synth.root), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output) == json.loads(json.dumps(dataset_stats(synth)))
    r = CliRunner().invoke(data_app, ["stats", "--data", str(synth.root)])
    assert r.exit_code == 0 and "defect-free images" in r.output
    r = CliRunner().invoke(data_app, ["convert", "--src", str(synth.root), "--dst", str(tmp_path / "v"), "--to", "voc"])
    assert r.exit_code == 0, r.output
    _same_boxes(synth, load_voc(tmp_path / "v"), 1e-4)
    r = CliRunner().invoke(data_app, ["convert", "--src", str(synth.root), "--dst", str(tmp_path / "z"), "--to", "xml"])
    assert r.exit_code == 2 and "--to must be one of" in r.output
    r = CliRunner().invoke(data_app, ["stats", "--data", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "no such data set folder" in r.output
