"""One bad record or reference never blocks the others (issue 18): graph checks and the quarantine at
ingest (real Trainer on 127.0.0.1), rounds that skip what does not fit, exports that skip unreadable slices
and are written atomically (a SIGKILLed export leaves no half-written folder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_trainer_helpers import make_item, make_pixels, make_record
from typer.testing import CliRunner

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_wire.trainer_client import PushItem, TrainerPushClient
from trainer.annotation import export_round
from trainer.cli import app
from trainer.images import encode_pixels, sha256_bytes
from trainer.ingest_service import IngestConfig, start_server
from trainer.ref_policy import RefPolicy
from trainer.rounds import select_round
from trainer.store.pool_store import PoolStore
from trainer.store.types import IngestItem, Pick

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def graph():
    return load_graph("thin_film_ct")


def _bad_concept(i, station="st-02"):
    rec = make_record(i, station)
    rec.proposals[0].concept = "alien_defect"
    return rec


def _bad_similarity(i, station="st-02"):
    rec = make_record(i, station)
    rec.proposals[1].similarity = dict(rec.proposals[1].similarity) | {"zzz": 0.5}
    return rec


def test_records_that_do_not_fit_the_graph_are_quarantined_at_ingest(tmp_path, graph):
    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0), graph=graph)
    try:
        with TrainerPushClient(srv.address, "st-02", insecure=True) as cli:
            res = cli.push([PushItem(make_record(i, "st-02"), pixels=make_pixels(i)) for i in range(3)]
                           + [PushItem(_bad_concept(3), pixels=make_pixels(3)),
                              PushItem(_bad_similarity(4), pixels=make_pixels(4))])
    finally:
        srv.stop(1.0)
    assert res.committed == 3
    assert sorted((r[0], r[1]) for r in res.rejected) == [("slice-000003", "INVALID_ARGUMENT"),
                                                          ("slice-000004", "INVALID_ARGUMENT")]
    assert "alien_defect" in {r[0]: r[2] for r in res.rejected}["slice-000003"]
    assert store.status()["records"] == 3
    store.close()
    r = CliRunner().invoke(app, ["status", "--store", str(tmp_path / "store"), "--json"])
    assert r.exit_code == 0, r.output
    q = json.loads(r.stdout)["quarantine"]
    assert q["count"] == 2 and q["by_kind"] == {"graph": 2} and q["by_station"] == {"st-02": 2}
    assert {e["field"] for e in q["latest"]} == {"record.proposals[0].concept", "record.proposals[1].similarity"}
    kept = [json.loads(line) for line in (tmp_path / "store" / "quarantine.jsonl").read_text().splitlines()]
    assert kept[0]["record"]["proposals"][0]["concept"] == "alien_defect"  # stored aside, whole
    text = CliRunner().invoke(app, ["status", "--store", str(tmp_path / "store")]).output
    assert "quarantine: 2 item(s)" in text


def test_one_stations_bad_records_do_not_block_selection(tmp_path, graph):
    store = PoolStore(tmp_path / "store")
    # records already in the pool (ingested before the check, or under another graph)
    store.ingest([make_item(i) for i in range(8)]
                 + [IngestItem("st-02", _bad_concept(20), image=encode_pixels(make_pixels(20))[0]),
                    IngestItem("st-02", _bad_similarity(21), image=encode_pixels(make_pixels(21))[0])])
    res = select_round(store, graph, GSALConfig(), 4)
    picked = {p["image_id"] for p in res.picks}
    assert len(picked) == 4 and not picked & {"st-02/slice-000020", "st-02/slice-000021"}
    sk = res.info["skipped_records"]
    assert sk["count"] == 2 and {e["image_id"] for e in sk["examples"]} == {"st-02/slice-000020",
                                                                            "st-02/slice-000021"}
    assert res.pool_size == 8
    # with missing_concept=unknown the same records fit (mapped), as the fusion maps them
    res2 = select_round(store, graph, GSALConfig().with_overrides(["missing_concept=unknown"]), 2)
    assert res2.info["skipped_records"]["count"] == 0 and res2.pool_size == 6
    store.close()


def _ref_store(tmp_path, n_good=3):
    """A store with n_good PNG slices and one reference to a (hashed) file that is not an image."""
    store = PoolStore(tmp_path / "store")
    root = tmp_path / "st-01"
    root.mkdir()
    RefPolicy().with_root("st-01", str(root)).save(store.root)
    junk = root / "slice-000050.png"
    junk.write_bytes(b"this is not an image, just text named .png\n" * 10)
    items = [make_item(i) for i in range(n_good)]
    ref_rec = make_record(50)
    items.append(IngestItem("st-01", ref_rec, image_ref=f"file://{junk}#sha256={sha256_bytes(junk.read_bytes())}",
                            width=64, height=64))
    store.ingest(items)
    keys = [f"st-01/slice-{i:06d}" for i in (0, 50, 1, 2)][: n_good + 1]
    rid = store.record_round([Pick(k, n, 1.0 - n / 100, {"sentence": "s"}) for n, k in enumerate(keys, 1)],
                             budget=len(keys), strategy="gsal", pool_size=len(keys), params={})
    return store, rid


def test_export_skips_a_non_image_reference_and_names_it(tmp_path, graph):
    store, rid = _ref_store(tmp_path)
    out = tmp_path / "ex"
    info = export_round(store, rid, out, graph)
    assert info["images"] == 3 and [s["key"] for s in info["skipped"]] == ["st-01/slice-000050"]
    assert " at 0x" not in info["skipped"][0]["reason"]
    man = json.loads((out / "manifest.json").read_text())
    assert man["skipped"] == info["skipped"] and len(man["images"]) == 3
    coco = json.loads((out / "coco.json").read_text())
    assert [im["id"] for im in coco["images"]] == [1, 2, 3]
    assert all((out / im["file_name"]).is_file() for im in coco["images"])
    assert len(json.loads((out / "label_studio_tasks.json").read_text())) == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".ex.")]  # no temp folders left
    store.close()


def test_export_replaces_an_earlier_export_and_refuses_a_foreign_folder(tmp_path, graph):
    store, rid = _ref_store(tmp_path)
    out = tmp_path / "ex"
    export_round(store, rid, out, graph)
    (out / "images" / "stray.png").write_bytes(b"x")
    export_round(store, rid, out, graph)
    assert not (out / "images" / "stray.png").exists() and (out / "manifest.json").is_file()
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(Exception, match="holds no earlier export"):
        export_round(store, rid, foreign, graph)
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    store.close()


@pytest.mark.slow
def test_a_killed_export_leaves_no_half_written_folder(tmp_path):
    """SIGKILL export-tasks while it writes images: the target folder is either absent or complete."""
    store = PoolStore(tmp_path / "store")
    rng = np.random.default_rng(0)
    n = 40
    items = []
    for i in range(n):  # large uint16 slices: each display PNG takes a while to encode
        rec = make_record(i)
        data, fmt = encode_pixels(rng.integers(0, 65535, size=(512, 512), dtype=np.uint16))
        items.append(IngestItem("st-01", rec, image=data, image_format=fmt, width=512, height=512))
    store.ingest(items)
    keys = [f"st-01/slice-{i:06d}" for i in range(n)]
    rid = store.record_round([Pick(k, j, 1.0, {"sentence": "s"}) for j, k in enumerate(keys, 1)], budget=n,
                             strategy="gsal", pool_size=n, params={})
    store.close()
    out = tmp_path / "ex"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "trainer.cli", "export-tasks", "--out", str(out), "--store",
                             str(tmp_path / "store"), "--round", str(rid)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            tmp = [p for p in tmp_path.iterdir() if p.name.startswith(".ex.tmp-")]
            if tmp and len(list((tmp[0] / "images").glob("*.png"))) >= 3:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "export finished before it could be killed; make the slices larger"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert not out.exists(), f"half-written export left at {out}: {sorted(p.name for p in out.rglob('*'))[:5]}"


def test_quarantine_file_is_bounded_and_survives_a_torn_line(tmp_path):
    from trainer.quarantine import Quarantine, quarantine_summary

    q = Quarantine(tmp_path, max_bytes=200)
    rec = make_record(1).to_dict()
    q.add([{"kind": "graph", "station": "st-01", "image_id": "a", "field": "f", "reason": "r", "record": rec}])
    q.add([{"kind": "graph", "station": "st-01", "image_id": "b", "field": "f", "reason": "r", "record": rec}])
    with open(q.path, "ab") as fh:
        fh.write(b'{"kind": "graph", "stat')  # a crash mid-append
    q.add([{"kind": "ref", "station": "st-01", "image_id": "c", "field": "ref.uri", "reason": "r"}])
    got = q.entries()
    assert [e["image_id"] for e in got] == ["a", "b", "c"]
    assert got[0]["record"] == rec and "record" not in got[1] and got[1]["record_dropped"] is True
    assert quarantine_summary(tmp_path)["by_kind"] == {"graph": 2, "ref": 1}


def test_serve_refuses_an_unknown_ingest_graph_before_listening(tmp_path):
    r = CliRunner().invoke(app, ["serve", "--store", str(tmp_path / "store"), "--insecure", "--port", "0",
                                 "--graph", str(tmp_path / "no-such-graph.yaml")])
    assert r.exit_code == 2 and "no-such-graph" in r.output
