"""`trainer retrain --nproc N`: the retrain job trains with DDP over torchrun, then gates as before.

The equivalence of 2 processes and 1 is tested in tests/models/test_distributed_training.py; here the
trainer's side: the store's labels reach the workers, rank 0's detector comes back and is gated,
the audit log says how it was trained, and impossible options fail before any work.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_annotation import _gt_file
from test_trainer_helpers import make_item

from trainer.retrain import RetrainError, RetrainOptions


def test_launcher_options_are_checked() -> None:
    assert not RetrainOptions(val=Path("v")).uses_torchrun()
    assert RetrainOptions(val=Path("v"), nproc=2).uses_torchrun()
    assert RetrainOptions(val=Path("v"), launcher="torchrun").uses_torchrun()
    with pytest.raises(RetrainError, match="needs torchrun"):
        RetrainOptions(val=Path("v"), nproc=2, launcher="inprocess").uses_torchrun()
    with pytest.raises(RetrainError, match="launcher must be one of"):
        RetrainOptions(val=Path("v"), launcher="mpirun").uses_torchrun()


def test_cli_refuses_inprocess_with_several_processes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from trainer.cli import app

    r = CliRunner().invoke(app, ["retrain", "--val", str(tmp_path), "--store", str(tmp_path / "store"),
                                 "--nproc", "2", "--launcher", "inprocess"])
    assert r.exit_code == 1 and "needs torchrun" in r.output, r.output
    r = CliRunner().invoke(app, ["retrain", "--val", str(tmp_path), "--nproc", "0"])
    assert r.exit_code == 2


@pytest.mark.slow
def test_retrain_with_two_torchrun_processes(tmp_path: Path) -> None:
    from export.tiny import write_tiny_models
    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset
    from trainer.annotation import simulate_annotator
    from trainer.audit_log import read_entries
    from trainer.retrain import retrain
    from trainer.store.pool_store import PoolStore
    from trainer.store.types import Pick

    sources = write_tiny_models(tmp_path / "models")
    generate_dataset(tmp_path / "val", 4, seed=2, cfg=SynthConfig(height=192, width=192), progress=False)
    store = PoolStore(tmp_path / "store")
    try:
        store.ingest([make_item(i) for i in range(6)])
        pool = store.unlabeled_records()
        picks = [Pick(pool[i].image_id, i + 1, 1.0 - i / 10, {}) for i in range(6)]
        store.record_round(picks, budget=6, strategy="gsal", pool_size=6, params={})
        simulate_annotator(store, _gt_file(tmp_path), load_graph("thin_film_ct"))
        assert store.status()["labeled"] == 6
        # a gate that cannot pass (new must beat serving by 1.0): nothing is exported
        rep = retrain(store, RetrainOptions(val=tmp_path / "val", models_dir=tmp_path / "models", epochs=2,
                                            tolerance=-1.0, nproc=2, threads=1))
        assert not rep.gate.passed and rep.bundle_id is None
        assert sources.detector.is_file()
        ddp = json.loads((rep.run_dir / "ddp.json").read_text())
        assert ddp["world_size"] == 2 and ddp["backend"] == "gloo" and ddp["replicas_in_sync"]
        train_set = json.loads((rep.run_dir / "train_set" / "annotations.json").read_text())
        assert len(train_set["images"]) == 6 and len(train_set["annotations"]) == 3
        run = json.loads((rep.run_dir / "run.json").read_text())
        assert run["processes"] == 2 and run["batch_per_process"] == 2 and run["n_train_images"] == 6
        assert len((rep.run_dir / "train_log.jsonl").read_text().splitlines()) == 2  # rank 0 only
        assert rep.new["n_images"] == 4 and isinstance(rep.new["f1"], float)
        entry = read_entries(store.audit_path, "retrain")[-1]["data"]
        assert entry["processes"] == 2 and entry["launcher"] == "torchrun"
    finally:
        store.close()
