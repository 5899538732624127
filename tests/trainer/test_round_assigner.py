"""`trainer select` with the issue-16 round assigner (trainer/round_assigner.py), on the real path: a toy ONNX
bundle really exported (tests/scoring/test_bundle.py) scores real slices, the records (with their proposal
embeddings) go into a real SQLite store with their pixels, the bundle is the serving one, labels are stored;
then the round re-assigns the pool from prototypes of the labeled crops and fuses the re-assigned records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_bundle import write_toy_bundle

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.scoring.bundle import load_bundle
from trainer.audit_log import read_entries, verify
from trainer.images import encode_pixels
from trainer.rounds import RoundError, select_round
from trainer.store.pool_store import PoolStore
from trainer.store.types import ImageLabels, IngestItem, LabelBox

N, LABELED = 24, 8
HYBRID = {"assigner": "hybrid", "exemplars": "boxes+proposals", "calibration": "temperature",
          "assignment": "confidence", "hybrid_k": 5, "exemplar_iou": 0.5, "calibration_min_crops": 10}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundles"), None, seed=3)


def _pixels(i: int) -> np.ndarray:
    """A dark noisy slice with a bright blob where the toy detector's first box is (x, y in [6, 26))."""
    rng = np.random.default_rng(i)
    a = rng.integers(0, 40, (64, 64)).astype(np.uint16)
    a[6:26, 6:26] += np.uint16(3000 + 40 * i)
    a[40:60, 30:40] = np.uint16(200 * (i % 5))
    return a


@pytest.fixture
def store(tmp_path: Path, bundle: Path):  # type: ignore[no-untyped-def]
    scorer = load_bundle(bundle, allow_unsigned=True, threads=1)
    recs = scorer.score([_pixels(i) for i in range(N)], [f"s{i:02d}" for i in range(N)])
    s = PoolStore(tmp_path / "store")
    items = []
    for i, r in enumerate(recs):
        data, fmt = encode_pixels(_pixels(i))
        items.append(IngestItem("st-01", r, image=data, image_format=fmt, width=64, height=64))
    s.ingest(items)
    yield s, scorer
    s.close()


def _serve(s: PoolStore, scorer, bundle: Path) -> None:  # type: ignore[no-untyped-def]
    s.add_bundle(scorer.bundle_id, str(bundle), "candidate")
    s.promote_bundle(scorer.bundle_id)


def _label(s: PoolStore) -> None:
    """The first LABELED slices: their first proposal's box is a void (the blob), nothing else."""
    labels = []
    for i in range(LABELED):
        rec = s.record(f"st-01/s{i:02d}")
        labels.append(ImageLabels(rec.image_id, 64, 64, [LabelBox(rec.proposals[0].box, "void")]))
    s.write_labels(labels, source="test")


def test_records_carry_proposal_embeddings_into_the_store(store) -> None:  # type: ignore[no-untyped-def]
    s, scorer = store
    rec = s.record("st-01/s03")
    assert rec is not None and rec.proposals and all(p.embedding is not None for p in rec.proposals)
    assert {len(p.embedding) for p in rec.proposals} == {scorer.assigner.embeddings.shape[1]}
    np.testing.assert_allclose(np.linalg.norm(rec.proposals[0].embedding), 1.0, atol=1e-5)


def test_select_with_labeled_slices_uses_the_void_prototype(store, bundle) -> None:  # type: ignore[no-untyped-def]
    s, scorer = store
    graph = load_graph("thin_film_ct")
    _serve(s, scorer, bundle)
    _label(s)
    station = {r.image_id: r for r in s.unlabeled_records()}
    res = select_round(s, graph, GSALConfig(**HYBRID), 5)
    a = res.info["assigner"]
    # the void prototype: 8 box crops + 8 proposals on them; background: the other 16 proposals
    assert a["from_boxes"] == {"void": LABELED} and a["from_proposals"] == {"void": LABELED, "background": 2 * LABELED}
    assert a["sources"]["void"] == "prototype" and a["sources"]["background"] == "prototype"
    assert a["sources"]["crack"] == "text"
    assert a["fit"]["fitted"] == 1.0 and a["fit"]["crops"] == 4 * LABELED
    assert a["temperature"] is not None and 0.002 <= a["temperature"] <= 0.5
    assert a["reassigned"]["reassigned"] == 3 * (N - LABELED) and a["reassigned"]["without_embedding"] == 0

    # the independent check: the void prototype is the mean of the labeled crops' normalised f_I
    crops = [scorer.embed_regions([_pixels(i)], [np.array([station_box(s, i)])])[0][0] for i in range(LABELED)]
    crops += [s.record(f"st-01/s{i:02d}").proposals[0].embedding for i in range(LABELED)]
    proto = np.mean([np.asarray(c) / np.linalg.norm(c) for c in crops], axis=0)
    proto /= np.linalg.norm(proto)
    picks = s.selection(res.round_id)
    driven = [p for p in picks if p.rationale.get("proposal")]
    assert driven, [p.rationale["sentence"] for p in picks]
    changed = 0
    for p in driven:
        prop = p.rationale["proposal"]
        emb = np.asarray(station[p.key].proposals[prop["index"]].embedding)
        assert prop["similarity"]["void"] == pytest.approx(float(emb @ proto), abs=2e-5)
        assert prop["record_concept"] == max(prop["similarity"], key=prop["similarity"].get)
        assert p.rationale["assigner"]["source"] == a["sources"][prop["record_concept"]]
        changed += prop["record_concept"] != station[p.key].proposals[prop["index"]].concept
    assert changed >= 1  # the text assignment of the stations would have said something else
    assert any(p.rationale["proposal"]["record_concept"] == "void" for p in driven)
    (entry,) = read_entries(s.audit_path, "selection")
    assert entry["data"]["assigner"]["sources"] == a["sources"]
    assert entry["data"]["config"]["temperature"] == pytest.approx(a["temperature"])
    assert verify(s.audit_path).ok


def station_box(s: PoolStore, i: int) -> list[float]:
    return list(s.record(f"st-01/s{i:02d}").proposals[0].box)


def test_text_config_keeps_the_stations_assignment_and_needs_no_bundle(store) -> None:  # type: ignore[no-untyped-def]
    s, _ = store
    _label(s)
    graph = load_graph("thin_film_ct")
    res = select_round(s, graph, GSALConfig(), 3)
    assert "assigner" not in res.info
    with pytest.raises(RoundError, match="needs a serving bundle"):
        select_round(s, graph, GSALConfig(**HYBRID), 3)
    # binary label mode has no typed exemplars: the documented fallback to the stations' text assignment
    res = select_round(s, graph, GSALConfig(**HYBRID, label_mode="binary"), 3)
    assert res.info["assigner"]["kind"] == "text" and "no typed exemplars" in res.info["assigner"]["note"]


def test_cli_select_with_the_packaged_exemplars_config(store, bundle) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from trainer.cli import app

    s, scorer = store
    _serve(s, scorer, bundle)
    _label(s)
    root = str(s.root)
    s.close()
    r = CliRunner().invoke(app, ["select", "--budget", "3", "--store", root, "--config", "exemplars"])
    assert r.exit_code == 0, r.output
    assert "assigner hybrid: void=prototype, inclusion=text" in r.output and "fitted T = " in r.output
    assert f"{3 * (N - LABELED)} proposal(s) re-assigned, 0 without embedding kept" in r.output
