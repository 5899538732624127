"""Selection rounds over a real store: picks + rationale in DB and audit log, coverage feedback, CLI."""

from __future__ import annotations

import json

import pytest
from test_trainer_helpers import make_item
from typer.testing import CliRunner

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from trainer.audit_log import read_entries, verify
from trainer.cli import app
from trainer.rounds import RoundError, fine_counts, select_round
from trainer.store.pool_store import PoolStore


@pytest.fixture
def graph():
    return load_graph("thin_film_ct")


@pytest.fixture
def store(tmp_path):
    s = PoolStore(tmp_path / "store")
    s.ingest([make_item(i) for i in range(30)])
    yield s
    s.close()


def _gt(tmp_path, n=30):
    """Ground truth whose boxes follow each record's first proposal concept (so coverage is predictable)."""
    images, anns = [], []
    for i in range(n):
        images.append({"id": i, "file_name": f"slice-{i:06d}.png", "width": 64, "height": 64})
        anns.append({"id": i + 1, "image_id": i, "category_id": 1 + i % 2, "bbox": [4, 4, 10, 8]})
    f = tmp_path / "gt.json"
    f.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "crack"}]}))
    return f


def test_select_writes_round_selections_and_chained_audit(store, graph):
    res = select_round(store, graph, GSALConfig(), 5)
    assert len(res.picks) == 5 and res.pool_size == 30
    picks = store.selection(res.round_id)
    assert [p.key for p in picks] == [p["image_id"] for p in res.picks]
    assert all(p.rationale["sentence"] and "path" in p.rationale for p in picks)
    (entry,) = read_entries(store.audit_path, "selection")
    assert entry["data"]["round"] == res.round_id
    assert [p["image_id"] for p in entry["data"]["picks"]] == [p.key for p in picks]
    assert verify(store.audit_path).ok and verify(store.audit_path).head == res.audit_hash
    assert store.rounds()[0]["audit_hash"] == res.audit_hash
    # the next round does not pick the same (still unlabeled) images again
    res2 = select_round(store, graph, GSALConfig(), 5)
    assert res2.pool_size == 25 and not {p["image_id"] for p in res2.picks} & {p.key for p in picks}


def test_a_round_killed_before_its_audit_hash_is_completed_or_discarded(store, graph):
    """select = record the round, append its audit entry, store the hash; a kill between the steps is
    repaired by the next select: logged -> the hash is set; never logged -> discarded, same picks again."""
    from trainer.rounds import complete_interrupted_rounds
    from trainer.store.types import Pick

    ref = select_round(store, graph, GSALConfig(), 5)
    ref_keys = [p["image_id"] for p in ref.picks]
    store.set_round_audit_hash(ref.round_id, None)  # killed after the audit append, before the hash
    assert complete_interrupted_rounds(store) == {"completed": [ref.round_id], "discarded": []}
    assert store.rounds()[0]["audit_hash"] == ref.audit_hash
    # killed after recording a round, before its audit append: the picks must come back to the pool
    half = store.record_round([Pick(k, i + 1, 1.0, {}) for i, k in enumerate(
        p.image_id for p in store.unlabeled_records()[:5])], budget=5, strategy="gsal", pool_size=25, params={})
    again = select_round(store, graph, GSALConfig(), 5)  # repairs first, under the round lock
    assert half not in [r["id"] for r in store.rounds() if r["id"] != again.round_id]
    assert again.pool_size == 25 and [r["id"] for r in store.rounds()] == [ref.round_id, again.round_id]
    assert not set(ref_keys) & {p["image_id"] for p in again.picks}
    assert verify(store.audit_path).ok


def test_labels_feed_back_into_coverage_and_the_next_round(store, graph, tmp_path):
    from trainer.rounds import import_labels

    r1 = select_round(store, graph, GSALConfig(), 6)
    rep = import_labels(store, graph, _gt(tmp_path), simulate=True)
    assert rep.images == 6 and rep.pending == []
    counts = fine_counts(store, graph, "typed")
    assert counts["void"] + counts["crack"] == 6 and counts["petal"] == 0
    r2 = select_round(store, graph, GSALConfig(), 4)
    assert r2.counts == counts
    sel = read_entries(store.audit_path, "selection")
    assert [e["data"]["round"] for e in sel] == [r1.round_id, r2.round_id]
    assert sel[1]["data"]["counts"]["void"] == counts["void"]
    lab = read_entries(store.audit_path, "labels")[0]["data"]
    assert lab["coverage"] == counts and lab["round_id"] == r1.round_id
    assert verify(store.audit_path).entries == 3


def test_empty_pool_and_bad_budget_are_clear_errors(tmp_path, graph):
    s = PoolStore(tmp_path / "empty")
    with pytest.raises(RoundError, match="unlabeled pool is empty"):
        select_round(s, graph, GSALConfig(), 3)
    s.ingest([make_item(0)])
    with pytest.raises(RoundError, match="budget"):
        select_round(s, graph, GSALConfig(), 0)
    s.close()


def test_cli_round_trip(store, graph, tmp_path):
    root = str(store.root)
    store.close()
    run = CliRunner().invoke
    r = run(app, ["select", "--budget", "4", "--store", root])
    assert r.exit_code == 0, r.output
    assert "round 1: 4 picks from a pool of 30" in r.output and "picked for" in r.output
    r = run(app, ["export-tasks", "--out", str(tmp_path / "tasks"), "--store", root])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "tasks" / "label_studio_tasks.json").read_text())[0]["data"]["image"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"images": [{"id": 1, "file_name": "x.png", "width": 64, "height": 64}],
                               "annotations": [], "categories": []}))
    r = run(app, ["import-labels", str(bad), "--store", root])
    assert r.exit_code == 1 and "not an image selected in round 1" in r.output
    r = run(app, ["import-labels", "--simulate-annotator", str(_gt(tmp_path)), "--store", root])
    assert r.exit_code == 0, r.output
    assert "imported 4 images / 4 boxes" in r.output
    r = run(app, ["status", "--json", "--store", root])
    st = json.loads(r.output)
    assert st["pool"]["labeled"] == 4 and st["audit_ok"] and st["rounds"][0]["status"] == "labeled"
    r = run(app, ["audit", "--store", root])
    assert r.exit_code == 0 and "ok: 3 entries" in r.output
    r = run(app, ["backup", "--out", str(tmp_path / "b.sqlite"), "--store", root])
    assert r.exit_code == 0 and (tmp_path / "b.sqlite").stat().st_size > 0
    # tampering with the log is caught by `trainer audit`
    log = store.audit_path
    lines = log.read_text().splitlines()
    lines[0] = lines[0].replace('"budget":4', '"budget":5')
    log.write_text("\n".join(lines) + "\n")
    r = run(app, ["audit", "--store", root])
    assert r.exit_code == 1 and "broken at line" in r.output
    # even an edit of the last selection entry (no successor to break) is caught: the store kept its hash
    log.write_text("\n".join(lines[:1]) + "\n")  # the log is now just the (edited) selection entry
    st = json.loads(run(app, ["status", "--json", "--store", root]).output)
    assert not st["audit_ok"] and st["rounds_not_in_audit"] == [1]


def test_binary_mode_counts_assigned_concepts_and_logs_the_assigner(store, graph, tmp_path):
    from trainer.rounds import import_labels

    cfg = GSALConfig(label_mode="binary")
    r = select_round(store, graph, cfg, 3)
    with pytest.raises(RoundError, match="needs a serving bundle"):
        import_labels(store, graph, _gt(tmp_path), simulate=True, label_mode="binary", concepts="clip")
    assert store.status()["labeled"] == 0
    rep = import_labels(store, graph, _gt(tmp_path), simulate=True, label_mode="binary")  # auto -> proposals
    assert rep.per_class == {"defect": 3}
    entry = read_entries(store.audit_path, "labels")[0]["data"]
    assert entry["concept_assigner"] == "proposals" and entry["label_mode"] == "binary"
    # the gt boxes overlap no stored proposal well enough here, so every box counts as 'unknown'
    assert store.coverage_counts("binary") == {"unknown": 3}
    assert fine_counts(store, graph, "binary") == {f: 0.0 for f in graph.defects}
    assert r.counts == fine_counts(store, graph, "binary")
