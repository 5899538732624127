"""Annotation round trip: export (COCO + Label Studio), import (both), bad files, simulated annotator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_trainer_helpers import make_item

from gsal_edge.acquisition.concept_graph import load_graph
from trainer.annotation import (
    AnnotationError,
    export_round,
    image_name,
    import_labels,
    simulate_annotator,
)
from trainer.store.pool_store import PoolStore
from trainer.store.types import Pick


@pytest.fixture
def graph():
    return load_graph("thin_film_ct")


@pytest.fixture
def store_round(tmp_path):
    store = PoolStore(tmp_path / "store")
    store.ingest([make_item(i) for i in range(6)])
    pool = store.unlabeled_records()
    picks = [Pick(pool[i].image_id, i + 1, 1.0 - i / 10, {"sentence": f"because {i}"}) for i in (0, 2, 4)]
    rid = store.record_round(picks, budget=3, strategy="gsal", pool_size=6, params={})
    yield store, rid, [p.key for p in picks]
    store.close()


def _ls_export_from_tasks(tasks):
    """What Label Studio exports after an annotator accepts every pre-annotation unchanged."""
    out = []
    for i, t in enumerate(tasks):
        result = t.get("predictions", [{}])[0].get("result", []) if t.get("predictions") else []
        out.append({"id": i + 1, "data": t["data"], "annotations": [{"id": 1, "result": result,
                                                                         "was_cancelled": False}]})
    return out


def test_export_writes_coco_ls_and_images(store_round, graph, tmp_path):
    store, rid, keys = store_round
    info = export_round(store, rid, tmp_path / "ex", graph)
    assert info["images"] == 3
    coco = json.loads((tmp_path / "ex" / "coco.json").read_text())
    assert [im["gsal_image_id"] for im in coco["images"]] == keys
    assert [c["name"] for c in coco["categories"]] == list(graph.defects)
    for im in coco["images"]:
        assert (tmp_path / "ex" / im["file_name"]).exists()
    tasks = json.loads((tmp_path / "ex" / "label_studio_tasks.json").read_text())
    assert tasks[0]["data"]["image"].endswith(image_name(keys[0]))
    r = tasks[0]["predictions"][0]["result"][0]
    assert r["type"] == "rectanglelabels" and r["value"]["rectanglelabels"][0] in graph.defects
    rec = store.record(keys[0])
    x1 = rec.proposals[0].box[0]
    assert r["value"]["x"] == pytest.approx(100 * x1 / 64)
    assert "RectangleLabels" in (tmp_path / "ex" / "label_config.xml").read_text()
    preds = json.loads((tmp_path / "ex" / "predictions.json").read_text())
    assert len(preds) == sum(len(t["predictions"][0]["result"]) for t in tasks if "predictions" in t)


def test_label_studio_round_trip(store_round, graph, tmp_path):
    store, rid, keys = store_round
    export_round(store, rid, tmp_path / "ex", graph)
    tasks = json.loads((tmp_path / "ex" / "label_studio_tasks.json").read_text())
    exp = tmp_path / "ls_export.json"
    exp.write_text(json.dumps(_ls_export_from_tasks(tasks)))
    rep = import_labels(store, exp, graph, round_id=rid)
    assert rep.images == 3 and rep.pending == []
    assert rep.boxes == 6
    ds = store.labeled_dataset()
    rec = store.record(keys[0], fresh_only=False)
    got = sorted(a.box for a in ds.by_id()[keys[0]].annotations)
    want = sorted(p.box for p in rec.proposals)
    assert np.allclose(np.array(got), np.array(want))
    assert store.rounds()[0]["status"] == "labeled"


def test_coco_import_with_file_names_only(store_round, graph, tmp_path):
    store, _rid, keys = store_round
    doc = {
        "images": [{"id": 10, "file_name": f"images/{image_name(keys[1])}", "width": 64, "height": 64}],
        "categories": [{"id": 7, "name": "crack"}],
        "annotations": [{"id": 1, "image_id": 10, "category_id": 7, "bbox": [3, 4, 10, 5]}],
    }
    f = tmp_path / "done.json"
    f.write_text(json.dumps(doc))
    rep = import_labels(store, f, graph)
    assert rep.per_class == {"crack": 1} and sorted(rep.pending) == sorted([keys[0], keys[2]])
    assert store.coverage_counts() == {"crack": 1}
    (box,) = store.labeled_dataset().by_id()[keys[1]].annotations
    assert box.box == (3.0, 4.0, 13.0, 9.0)


def test_bad_files_name_every_problem_and_write_nothing(store_round, graph, tmp_path):
    store, rid, keys = store_round
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "gsal_image_id": keys[0], "width": 64, "height": 64},
            {"id": 2, "file_name": "b.png", "gsal_image_id": keys[1], "width": 64, "height": 64},
            {"id": 3, "file_name": "nope.png", "width": 64, "height": 64},
            {"id": 4, "file_name": "c.png", "gsal_image_id": "st-01/slice-000001", "width": 64, "height": 64},
        ],
        "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "scratch"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},  # fine on its own
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [1, 1, 5, 5]},  # unknown class
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [60, 60, 10, 10]},  # outside the image
        ],
    }
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(doc))
    with pytest.raises(AnnotationError) as ei:
        import_labels(store, f, graph, round_id=rid)
    msg = str(ei.value)
    assert str(f) in msg and "nothing was imported" in msg
    assert "annotations[1]" in msg and "unknown class 'scratch'" in msg
    assert "annotations[2]" in msg and "outside the 64x64 image" in msg
    assert "images[2]" in msg and "not an image selected in round" in msg
    assert "images[3]" in msg  # st-01/slice-000001 is in the pool but was not selected
    assert store.status()["labeled"] == 0 and store.status()["label_boxes"] == 0


def test_bad_label_studio_export(store_round, graph, tmp_path):
    store, _rid, keys = store_round
    export = [{"id": 1, "data": {"image": "/data/local-files/?d=images/x.png", "gsal_image_id": keys[0]},
               "annotations": [{"result": [{"type": "rectanglelabels", "original_width": 64,
                                            "original_height": 64, "value": {"x": 90, "y": 10, "width": 20,
                                                                            "height": 5,
                                                                            "rectanglelabels": ["void"]}}]}]}]
    f = tmp_path / "ls.json"
    f.write_text(json.dumps(export))
    with pytest.raises(AnnotationError, match=r"tasks\[0\].*result\[0\].*outside"):
        import_labels(store, f, graph)
    f.write_text("{not json")
    with pytest.raises(AnnotationError, match="cannot read"):
        import_labels(store, f, graph, fmt="coco")
    assert store.status()["labeled"] == 0


def _gt_file(tmp_path, n=6):
    images, anns = [], []
    for i in range(n):
        images.append({"id": i, "file_name": f"slice-{i:06d}.png", "width": 64, "height": 64})
        if i % 2 == 0:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1 + (i // 2) % 2,
                         "bbox": [2.0 + i, 3.0, 6.0, 6.0]})
    f = tmp_path / "gt.json"
    f.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "petal"}]}))
    return f


def test_simulated_annotator_reveals_truth(store_round, graph, tmp_path):
    store, _rid, _keys = store_round
    rep = simulate_annotator(store, _gt_file(tmp_path), graph)
    assert rep.images == 3 and rep.boxes == 3
    assert store.coverage_counts("typed") == {"petal": 1, "void": 2}
    assert store.rounds()[0]["status"] == "labeled"


def test_simulated_annotator_binary_mode_counts_assigned_concepts(store_round, graph, tmp_path):
    store, _rid, keys = store_round
    # a ground truth whose boxes coincide with the stored proposals: the assigner finds their concepts
    images, anns = [], []
    for i, key in enumerate(keys):
        rec = store.record(key)
        sid = key.split("/")[1]
        images.append({"id": i, "file_name": f"{sid}.png", "width": 64, "height": 64})
        p = rec.proposals[0]
        anns.append({"id": i + 1, "image_id": i, "category_id": 1,
                     "bbox": [p.box[0], p.box[1], p.box[2] - p.box[0], p.box[3] - p.box[1]]})
    gt = tmp_path / "gt_bin.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": [{"id": 1, "name": "void"}]}))
    simulate_annotator(store, gt, graph, mode="binary")
    assert store.coverage_counts("typed") == {"defect": 3}
    want: dict[str, int] = {}
    for key in keys:
        c = store.record(key).proposals[0].concept
        want[c] = want.get(c, 0) + 1
    assert store.coverage_counts("binary") == want


def test_simulated_annotator_missing_truth_is_an_error(store_round, graph, tmp_path):
    store, _rid, _keys = store_round
    with pytest.raises(AnnotationError, match="no ground-truth image"):
        simulate_annotator(store, _gt_file(tmp_path, n=3), graph)
    assert store.status()["labeled"] == 0


def test_seed_set_before_any_round(tmp_path, graph):
    """A seed set of pool images can be labeled before the first round, only with allow_unselected."""
    store = PoolStore(tmp_path / "store")
    try:
        store.ingest([make_item(i) for i in range(3)])
        key = store.unlabeled_records()[0].image_id
        doc = {
            "images": [{"id": 1, "file_name": "x.png", "gsal_image_id": key, "width": 64, "height": 64}],
            "categories": [{"id": 1, "name": "void"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 6, 6]}],
        }
        f = tmp_path / "seed.json"
        f.write_text(json.dumps(doc))
        with pytest.raises(AnnotationError, match="no selection round"):
            import_labels(store, f, graph)
        assert store.coverage_counts() == {}
        rep = import_labels(store, f, graph, allow_unselected=True)
        assert rep.round_id is None and rep.pending == [] and rep.per_class == {"void": 1}
        assert store.coverage_counts() == {"void": 1} and store.labeled_keys() == [key]
    finally:
        store.close()


def test_binary_mode_never_counts_a_labeled_box_as_background(tmp_path, graph):
    """The default assigner skips background proposals: a labeled box is a defect by definition."""
    from gsal_edge.acquisition.records import ProposalScore
    from trainer.annotation import proposal_concepts
    from trainer.store.types import IngestItem

    store = PoolStore(tmp_path / "store")
    rec = make_item(0).record
    box = (10.0, 10.0, 20.0, 20.0)
    rec.proposals = [ProposalScore(box, 0.9, 0.01, 0.001, "background", label="void"),
                     ProposalScore((11.0, 10.0, 20.0, 20.0), 0.5, 0.01, 0.001, "void", label="void")]
    item = make_item(0)
    store.ingest([IngestItem(item.station, rec, image=item.image, image_format=item.image_format,
                             width=64, height=64)])
    info = store.slice_info(store.unlabeled_records()[0].image_id)
    assert proposal_concepts(store, info, [box]) == ["void"]  # not the better-overlapping background one
    store.close()
