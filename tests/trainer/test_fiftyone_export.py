"""`trainer export-fiftyone` over a real store with two rounds and labels; loaded back with FiftyOne itself.

FiftyOne lives in its own venv (.ci/install/40-fiftyone.sh: <repo>/.venv-fiftyone); the slow test runs
tests/trainer/fiftyone_loader.py with that venv's python, on a temp database folder.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from external_tools import REPO, require
from test_trainer_helpers import make_item
from typer.testing import CliRunner

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from trainer.cli import app
from trainer.fiftyone_export import FiftyOneExportError, export_fiftyone
from trainer.rounds import import_labels, select_round
from trainer.store.pool_store import PoolStore

N = 30


def _gt(tmp_path: Path) -> Path:
    images, anns = [], []
    for i in range(N):
        images.append({"id": i, "file_name": f"slice-{i:06d}.png", "width": 64, "height": 64})
        anns.append({"id": 2 * i + 1, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 4, 10, 8]})
        if i % 3 == 0:
            anns.append({"id": 2 * i + 2, "image_id": i, "category_id": 1, "bbox": [30, 30, 6, 6]})
    f = tmp_path / "gt.json"
    f.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "crack"}]}))
    return f


@pytest.fixture
def two_rounds(tmp_path: Path):
    """30 slices; round 1 picks 6 (then labeled), round 2 picks 4 from the 24 left."""
    graph = load_graph("thin_film_ct")
    s = PoolStore(tmp_path / "store")
    s.ingest([make_item(i) for i in range(N)])
    r1 = select_round(s, graph, GSALConfig(), 6)
    import_labels(s, graph, _gt(tmp_path), simulate=True)
    r2 = select_round(s, graph, GSALConfig(), 4)
    yield s, graph, r1, r2
    s.close()


def test_export_holds_pool_picks_truth_and_the_rounds_scores(two_rounds, tmp_path: Path) -> None:
    s, graph, r1, r2 = two_rounds
    info = export_fiftyone(s, graph, tmp_path / "fo")
    assert info["round"] == r2.round_id and info["samples"] == N and info["skipped"] == []
    assert (info["pool"], info["picks"], info["labeled"]) == (24, 4, 6)
    samples = json.loads((tmp_path / "fo" / "samples.json").read_text())["samples"]
    meta = json.loads((tmp_path / "fo" / "metadata.json").read_text())
    assert "version" not in meta and meta["media_type"] == "image" and meta["info"]["round"] == r2.round_id
    by_key = {x["gsal_key"]: x for x in samples}
    for p in r2.picks:  # A(x) recomputed over the rebuilt pool is the A(x) the round stored
        x = by_key[p["image_id"]]
        assert x["picked"] and x["rank"] == p["rank"] and x["rationale"] == p["sentence"]
        assert x["acquisition"] == pytest.approx(p["acquisition"], abs=1e-12) == x["round_acquisition"]
        assert "pick" in x["tags"] and "pool" in x["tags"]
    labeled = [x for x in samples if x["labeled"]]
    assert {x["gsal_key"] for x in labeled} == {p["image_id"] for p in r1.picks}
    assert all(x["acquisition"] is None and x["label_round"] == r1.round_id for x in labeled)
    want_boxes = sum(1 + (int(k.split("-")[-1]) % 3 == 0) for k in (x["gsal_key"] for x in labeled))
    assert sum(len(x["ground_truth"]["detections"]) for x in labeled) == want_boxes
    pooled = [x for x in samples if x["acquisition"] is not None]
    assert all(d["D"] is not None and d["label"] for x in pooled for d in x["proposals"]["detections"])
    for x in samples:
        assert (tmp_path / "fo" / x["filepath"]).is_file()
        for d in x["proposals"]["detections"]:
            bx, by, bw, bh = d["bounding_box"]
            assert 0 <= bx <= 1 and 0 <= by <= 1 and 0 <= bw and bx + bw <= 1 + 1e-9 and by + bh <= 1 + 1e-9
    # round 1: the whole pool, its 6 picks, labeled since
    info1 = export_fiftyone(s, graph, tmp_path / "fo1", round_id=r1.round_id)
    assert (info1["pool"], info1["picks"], info1["labeled"]) == (N, 6, 6)


def test_cli_errors_name_the_problem(two_rounds, tmp_path: Path) -> None:
    s, graph, _, _ = two_rounds
    with pytest.raises(FiftyOneExportError, match="no round 9"):
        export_fiftyone(s, graph, tmp_path / "x", round_id=9)
    with pytest.raises(FiftyOneExportError, match="graph"):
        export_fiftyone(s, load_graph("voc"), tmp_path / "x")
    assert not (tmp_path / "x" / "samples.json").exists()
    r = CliRunner().invoke(app, ["export-fiftyone", "--store", str(s.root), "--out", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    assert "30 samples (24 in the round's pool, 4 picks, 6 labeled)" in r.output
    empty = PoolStore(tmp_path / "empty")
    empty.close()
    r = CliRunner().invoke(app, ["export-fiftyone", "--store", str(tmp_path / "empty"), "--out", str(tmp_path / "e")])
    assert r.exit_code == 2 and "no selection round yet" in r.output


@pytest.mark.slow
def test_fiftyone_loads_the_export(two_rounds, tmp_path: Path) -> None:
    py = require("FiftyOne (side venv)", ".venv-fiftyone/bin/python", install="bash .ci/install/40-fiftyone.sh")
    s, graph, _, r2 = two_rounds
    export_fiftyone(s, graph, tmp_path / "fo")
    env = dict(os.environ, FIFTYONE_DO_NOT_TRACK="true", FIFTYONE_DATABASE_DIR=str(tmp_path / "fodb"),
               FIFTYONE_DATABASE_VALIDATION="false")
    run = subprocess.run([str(py), str(REPO / "tests/trainer/fiftyone_loader.py"), str(tmp_path / "fo")], env=env,
                         capture_output=True, text=True, timeout=240, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["count"] == N
    assert {"acquisition", "rationale", "picked", "rank", "proposals", "ground_truth"} <= set(got["fields"])
    assert got["proposals_type"] == "EmbeddedDocumentField:Detections"
    assert got["tag_counts"] == {"pool": 24, "pick": 4, "labeled": 6}
    assert got["top_by_acquisition"] == [p["image_id"] for p in r2.picks[:3]]  # sorting by A(x) in FiftyOne
    by_key = {x["key"]: x for x in got["samples"]}
    for p in r2.picks:
        x = by_key[p["image_id"]]
        assert x["picked"] and x["rank"] == p["rank"] and x["rationale"] == p["sentence"]
        assert x["acquisition"] == pytest.approx(p["acquisition"])
        rec = s.record(p["image_id"], fresh_only=False)
        assert [d[0] for d in x["proposals"]] == [q.concept for q in rec.proposals]
        assert all(d[2] is not None for d in x["proposals"])  # D(p)
        assert Path(x["filepath"]).is_file()
    gt = [x["ground_truth"] for x in got["samples"] if x["ground_truth"] is not None]
    assert len(gt) == 6 and {k for g in gt for k, _ in g} <= {"void", "crack"}
    assert sum(len(g) for g in gt) == sum(len(e.annotations) for e in s.labeled_dataset().images)
