"""Retrain -> gate -> export -> deploy (LoadBundle) -> re-score -> rollback, against a real station.

Real parts throughout: tiny models written by the real builders and exported by the real pipeline,
a real station server (ONNX Runtime) on 127.0.0.1, synthetic CT data, the real detector training loop.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.retrain import RetrainError, gate

ADMIN = "admin-token-for-tests-0123456789"


def test_gate_is_not_worse_with_tolerance():
    assert gate({"f1": 0.50}, {"f1": 0.50}, "f1", 0.0).passed
    assert gate({"f1": 0.49}, {"f1": 0.50}, "f1", 0.02).passed
    g = gate({"f1": 0.49}, {"f1": 0.50}, "f1", 0.0)
    assert not g.passed and "FAILED" in g.sentence() and "0.4900" in g.sentence()
    with pytest.raises(RetrainError, match="not in the evaluation"):
        gate({"f1": 1.0}, {"f1": 1.0}, "ap50", 0.0)


@pytest.mark.slow
def test_retrain_gate_deploy_rescore_rollback(tmp_path: Path):
    import torch

    torch.set_num_threads(1)
    from export.config import load_export_config
    from export.pipeline import run_export
    from export.tiny import write_tiny_models
    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.acquisition.config import GSALConfig
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset
    from gsal_wire.scorer_client import ScorerClient
    from server.app import StationServer
    from server.config import ServerConfig
    from server.station import default_scorer_factory
    from trainer.audit_log import read_entries, verify
    from trainer.deploy import StationAccess, bundle_identity, deploy, rescore_stale, rollback
    from trainer.images import decode_image
    from trainer.retrain import RetrainOptions, retrain
    from trainer.rounds import import_labels, select_round
    from trainer.store.pool_store import PoolStore
    from trainer.store.types import IngestItem

    synth = SynthConfig(height=192, width=192)
    pool_ds = generate_dataset(tmp_path / "pool", 20, seed=1, cfg=synth, progress=False)
    generate_dataset(tmp_path / "val", 8, seed=2, cfg=synth, progress=False)
    sources = write_tiny_models(tmp_path / "models")
    b1 = run_export(sources, tmp_path / "bundles", load_export_config(None), None)

    station = StationServer(
        ServerConfig(insecure=True, port=0, admin_token=ADMIN, station_id="st-01", grace_s=1.0),
        default_scorer_factory(backend="onnxruntime", allow_unsigned=True, station="st-01", threads=1),
    )
    station.start()
    station.load_bundle(str(b1.bundle_dir))
    access = StationAccess(insecure=True, admin_token=ADMIN, timeout_s=300)
    store = PoolStore(tmp_path / "store")
    try:
        store.register_station("st-01", station.address)
        bid1, path1 = bundle_identity(b1.bundle_dir)
        rep = deploy(store, bid1, path1, access)
        assert rep.stations["st-01"]["ok"] and store.current_bundle == bid1

        # the pool: slices scored by the station, stored with their pixels
        with ScorerClient(station.address, insecure=True) as cli:
            items = [(e.image_id, decode_image(pool_ds.image_path(e)), {}) for e in pool_ds.images]
            recs = list(cli.score(items))
        store.ingest([IngestItem("st-01", r, image=pool_ds.image_path(e).read_bytes())
                      for r, e in zip(recs, pool_ds.images)])
        graph = load_graph("thin_film_ct")
        select_round(store, graph, GSALConfig(), 8)
        import_labels(store, graph, tmp_path / "pool" / "annotations.json", simulate=True)
        assert store.status()["labeled"] == 8

        # binary label mode: the serving bundle's CLIP assigns each labeled box crop a fine concept (Eq. 3)
        from trainer.annotation import bundle_clip_assigner

        clip = bundle_clip_assigner(path1)
        ds = store.labeled_dataset()
        entry = next(e for e in ds.images if e.annotations)
        got = clip(store, store.slice_info(entry.image_id), [a.box for a in entry.annotations])
        assert len(got) == len(entry.annotations) and set(got) <= set(graph.fine) | {"unknown"}

        # a gate that cannot pass (new must beat serving by 1.0): nothing is exported or deployed
        failing = retrain(store, RetrainOptions(val=tmp_path / "val", max_iters=1, tolerance=-1.0))
        assert not failing.gate.passed and failing.bundle_id is None
        with ScorerClient(station.address, insecure=True) as cli:
            assert cli.model_info().bundle_id == bid1

        # a passing gate: export, LoadBundle on the station, promote; the old bundle is kept
        ok = retrain(store, RetrainOptions(val=tmp_path / "val", max_iters=2, tolerance=1.0, warm_start=True),
                     access)
        assert ok.gate.passed and ok.bundle_id and ok.bundle_id != bid1
        assert ok.deploy is not None and ok.deploy.stations["st-01"]["ok"]
        with ScorerClient(station.address, insecure=True) as cli:
            assert cli.model_info().bundle_id == ok.bundle_id
        assert store.current_bundle == ok.bundle_id
        assert store.bundle_with_role("previous")["bundle_id"] == bid1
        assert store.unlabeled_records() == [] and len(store.stale_slices()) == 12

        # re-score the stale pool through the station: selectable again under the new bundle
        res = rescore_stale(store, station.address, access)
        assert res == {"rescored": 12, "failed": 0, "remaining_stale": 0}
        pool = store.unlabeled_records()
        assert len(pool) == 12 and {r.model["bundle"] for r in pool} == {ok.bundle_id}

        # rollback: the station serves the first bundle again and its records are fresh again
        rb = rollback(store, access)
        assert rb.bundle_id == bid1 and rb.stations["st-01"]["ok"]
        with ScorerClient(station.address, insecure=True) as cli:
            assert cli.model_info().bundle_id == bid1
        assert {r.model["bundle"] for r in store.unlabeled_records()} == {bid1}

        kinds = [e["kind"] for e in read_entries(store.audit_path)]
        assert kinds == ["deploy", "selection", "labels", "retrain", "retrain", "deploy", "rescore", "rollback"]
        gates = [e["data"]["gate"] for e in read_entries(store.audit_path, "retrain")]
        assert [g["passed"] for g in gates] == [False, True]
        assert all(isinstance(g["new"], float) and isinstance(g["serving"], float) for g in gates)
        assert verify(store.audit_path).ok
        print(f"\ngates: {gates}; train {failing.train_seconds:.1f}s/{ok.train_seconds:.1f}s, "
              f"export {ok.export_seconds:.1f}s")
    finally:
        store.close()
        station.stop(1.0)
