"""Live Label Studio round trip against a real server: push, annotate through the API, pull, counts.

The server (PyPI ``label-studio`` in ``.venv-labelstudio/``) runs on 127.0.0.1 with a temp data dir and a
fresh token (tests/support/label_studio_server.py). Annotations are made the way the web UI makes them:
one ``annotations.create`` per task with rectanglelabels results in percent of the image.
"""

from __future__ import annotations

import io
import json
import time

import httpx
import numpy as np
import pytest
from label_studio_server import label_studio_server
from PIL import Image
from test_trainer_helpers import make_item, make_pixels
from typer.testing import CliRunner

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from trainer.annotation import display_png, image_name, prediction_boxes
from trainer.audit_log import read_entries
from trainer.cli import app
from trainer.label_studio import LabelStudio as LiveClient
from trainer.rounds import select_round
from trainer.store.pool_store import PoolStore

pytestmark = pytest.mark.slow
pytest.importorskip("label_studio_sdk", reason="pip install 'gsal-edge[labelstudio]'")

PROJECT = "GSAL live test"
SIZE = 64


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    t0 = time.perf_counter()
    with label_studio_server(tmp_path_factory.mktemp("label-studio")) as srv:
        print(f"\n[label studio] up in {time.perf_counter() - t0:.1f} s at {srv.url}")
        yield srv


@pytest.fixture
def graph():
    return load_graph("thin_film_ct")


def _box_result(box, cls):
    """One rectangle as Label Studio's editor saves it (percent of the image)."""
    x1, y1, x2, y2 = box
    return {"from_name": "label", "to_name": "image", "type": "rectanglelabels", "original_width": SIZE,
            "original_height": SIZE, "image_rotation": 0,
            "value": {"x": 100 * x1 / SIZE, "y": 100 * y1 / SIZE, "width": 100 * (x2 - x1) / SIZE,
                      "height": 100 * (y2 - y1) / SIZE, "rotation": 0, "rectanglelabels": [cls]}}


def _tasks_by_key(ls, project_id):
    return {t.data["gsal_image_id"]: t for t in ls.tasks.list(project=project_id, fields="all")}


def test_push_annotate_pull_round_trip(server, graph, tmp_path):
    from label_studio_sdk import LabelStudio

    root = tmp_path / "store"
    token_file = tmp_path / "ls.token"
    token_file.write_text(server.token + "\n")
    store = PoolStore(root)
    store.ingest([make_item(i) for i in range(10)])
    r1 = select_round(store, graph, GSALConfig(), 4)
    store.close()
    cli = ["--label-studio", server.url, "--token-file", str(token_file), "--project", PROJECT, "--store", str(root)]
    run = CliRunner().invoke
    times = {}

    # push: a new project with the round's 4 picks, each with its image, prediction and rationale
    t0 = time.perf_counter()
    res = run(app, ["push", *cli])
    times["push (4 tasks, new project)"] = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert "4 new task(s), 0 completed, 0 already there" in res.output and "created" in res.output
    ls = LabelStudio(base_url=server.url, api_key=server.token)
    (proj,) = [p for p in ls.projects.list() if p.title == PROJECT]
    config = ls.projects.get(proj.id).label_config
    assert all(f'value="{c}"' in config for c in graph.defects) and "RectangleLabels" in config
    store = PoolStore(root)
    picks = store.selection(r1.round_id)
    tasks = _tasks_by_key(ls, proj.id)
    assert sorted(tasks) == sorted(p.key for p in picks)
    classes = list(graph.defects)
    for p in picks:
        t = tasks[p.key]
        assert t.data["gsal_round"] == r1.round_id and t.data["rank"] == p.rank
        assert t.data["why"] == p.rationale["sentence"] and t.data["why"].startswith("picked for")
        assert t.data["terms"] == pytest.approx(p.rationale["terms"])
        want = prediction_boxes(store.record(p.key, fresh_only=False), SIZE, SIZE, classes)
        (pred,) = ls.predictions.list(task=t.id)
        assert len(pred.result) == len(want) > 0
        assert sorted(r["value"]["rectanglelabels"][0] for r in pred.result) == sorted(w[1] for w in want)
        # the image is served by Label Studio to a logged-in user, and is the stored slice
        img = httpx.get(server.url + t.data["image"], headers={"Authorization": f"Token {server.token}"})
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        i = int(p.key.rpartition("-")[2])
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(img.content))), make_pixels(i))
    store.close()

    # pushing the same round again adds nothing
    t0 = time.perf_counter()
    res = run(app, ["push", *cli, "--round", str(r1.round_id)])
    times["re-push (4 tasks, all there)"] = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert "0 new task(s), 0 completed, 4 already there" in res.output
    assert f"({PROJECT!r}, updated)" in res.output  # same classes: the labeling config is left alone
    assert len(_tasks_by_key(ls, proj.id)) == 4 and len(list(ls.tasks.list(project=proj.id))) == 4

    # a person annotates 3 of the 4 tasks: accepts one pre-annotation as is, draws a crack, draws a box
    # with a class the graph does not know
    k = [p.key for p in picks]
    accepted = [dict(r) for r in ls.predictions.list(task=tasks[k[0]].id)[0].result]
    ls.annotations.create(id=tasks[k[0]].id, result=accepted)
    ls.annotations.create(id=tasks[k[1]].id, result=[_box_result((8, 10, 20, 16), "crack")])
    bad = ls.annotations.create(id=tasks[k[2]].id, result=[_box_result((30, 30, 40, 44), "scratch")])

    t0 = time.perf_counter()
    res = run(app, ["pull", *cli])
    times["pull rejected (3 annotated)"] = time.perf_counter() - t0
    assert res.exit_code == 1
    assert "unknown class 'scratch'" in res.output and "nothing was imported" in res.output
    store = PoolStore(root)
    assert store.status()["labeled"] == 0 and store.status()["label_boxes"] == 0
    assert not (root / "label-studio").exists()
    store.close()

    # the annotator fixes the box's class; the pull goes through
    ls.annotations.update(id=bad.id, result=[_box_result((30, 30, 40, 44), "void")])
    t0 = time.perf_counter()
    res = run(app, ["pull", *cli])
    times["pull (3 annotated)"] = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert f"round {r1.round_id}: imported 3 images / {len(accepted) + 2} boxes" in res.output
    store = PoolStore(root)
    want: dict[str, int] = {"crack": 1}
    for r in accepted:
        c = r["value"]["rectanglelabels"][0]
        want[c] = want.get(c, 0) + 1
    want["void"] = want.get("void", 0) + 1
    assert store.coverage_counts() == dict(sorted(want.items()))
    ds = store.labeled_dataset().by_id()
    assert [a.box for a in ds[k[1]].annotations] == [pytest.approx((8.0, 10.0, 20.0, 16.0))]
    assert sorted(store.labeled_keys()) == sorted(k[:3])
    (entry,) = read_entries(store.audit_path, "labels")
    assert entry["data"]["round_id"] == r1.round_id and entry["data"]["source"].startswith("label-studio:")

    # the next round goes into the same project (one of its images was uploaded by a push that crashed
    # right after the upload: that task is completed, not duplicated); one of its tasks is annotated;
    # pull imports it and re-imports round 1 unchanged
    r2 = select_round(store, graph, GSALConfig(), 3)
    k2 = [p.key for p in store.selection(r2.round_id)]
    png, _w, _h = display_png(store.slice_info(k2[2]))
    store.close()
    LiveClient(server.url, server.token).upload_image(proj.id, image_name(k2[2]), png)
    t0 = time.perf_counter()
    res = run(app, ["push", *cli])
    times["push (3 tasks, existing project)"] = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert "2 new task(s), 1 completed, 0 already there, 3 pre-annotation(s)" in res.output
    tasks = _tasks_by_key(ls, proj.id)
    assert len(tasks) == 7 and len(list(ls.tasks.list(project=proj.id))) == 7
    assert len(ls.predictions.list(task=tasks[k2[2]].id)) == 1
    ls.annotations.create(id=tasks[k2[0]].id, result=[_box_result((2, 2, 12, 9), "drill_hole"),
                                                       _box_result((40, 5, 50, 15), "crack")])
    ls.annotations.create(id=tasks[k2[1]].id, result=[], was_cancelled=True)  # skipped by the annotator
    ls.annotations.create(id=tasks[k2[2]].id, result=[])  # submitted with no box: a clean slice
    t0 = time.perf_counter()
    res = run(app, ["pull", *cli])
    times["pull (2 rounds, 5 finished + 1 skipped)"] = time.perf_counter() - t0
    assert res.exit_code == 0, res.output
    assert f"round {r2.round_id}: imported 2 images / 2 boxes" in res.output
    store = PoolStore(root)
    want["crack"] += 1
    want["drill_hole"] = want.get("drill_hole", 0) + 1
    assert store.coverage_counts() == dict(sorted(want.items()))
    assert sorted(store.labeled_keys()) == sorted(k[:3] + [k2[0], k2[2]])
    assert store.labeled_dataset().by_id()[k2[2]].annotations == []
    rounds = {r["id"]: r for r in store.rounds()}
    assert rounds[r1.round_id]["n_labeled"] == 3 and rounds[r2.round_id]["n_labeled"] == 2
    assert rounds[r2.round_id]["status"] == "selected"
    store.close()
    print("\n[label studio] " + json.dumps({name: round(t, 2) for name, t in times.items()}))
    print(f"[label studio] final counts {want}")


def test_clear_errors_and_a_changed_label_config(server, graph, tmp_path):
    root = tmp_path / "store"
    store = PoolStore(root)
    store.ingest([make_item(i) for i in range(3)])
    store.close()
    bad = tmp_path / "bad.token"
    bad.write_text("0" * 40)
    run = CliRunner().invoke
    res = run(app, ["push", "--label-studio", server.url, "--token-file", str(bad), "--store", str(root)])
    assert res.exit_code == 1 and "HTTP 401" in res.output and "--token-file" in res.output
    good = tmp_path / "good.token"
    good.write_text(server.token)
    res = run(app, ["push", "--label-studio", server.url, "--token-file", str(good), "--store", str(root)])
    assert res.exit_code == 1 and "no selection round yet" in res.output
    res = run(app, ["pull", "--label-studio", server.url, "--token-file", str(good), "--project", "nope",
                    "--store", str(root)])
    assert res.exit_code == 1 and "no project titled 'nope'" in res.output
    # the graph's classes change (here: binary label mode): the project gets the new labeling config
    store = PoolStore(root)
    select_round(store, graph, GSALConfig(), 2)
    store.close()
    cli = ["--label-studio", server.url, "--token-file", str(good), "--project", "GSAL config test",
           "--store", str(root)]
    assert run(app, ["push", *cli]).exit_code == 0
    res = run(app, ["push", *cli, "--set", "label_mode=binary"])
    assert res.exit_code == 0, res.output
    assert "labeling config updated" in res.output and "2 already there" in res.output
    from label_studio_sdk import LabelStudio

    ls = LabelStudio(base_url=server.url, api_key=server.token)
    (proj,) = [p for p in ls.projects.list() if p.title == "GSAL config test"]
    config = ls.projects.get(proj.id).label_config
    assert 'value="defect"' in config and 'value="void"' not in config
