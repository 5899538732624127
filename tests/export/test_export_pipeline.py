"""`gsal-edge export` end to end on tiny real models: CLI -> signed bundle -> verify -> load -> score."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.cli import app
from export.config import ParityConfig
from export.parity import records_parity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from export.tiny import write_tiny_models

    root = tmp_path_factory.mktemp("export")
    write_tiny_models(root / "models")
    key = root / "keys" / "signing.pem"
    runner = CliRunner()
    res = runner.invoke(app, ["keygen", "--key", str(key)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["--models", str(root / "models"), "--out", str(root / "bundles"), "--key", str(key),
                              "--tensorrt", "auto"])
    assert res.exit_code == 0, res.output
    bundle = Path(res.output.split("bundle  ", 1)[1].split()[0])
    return {"root": root, "bundle": bundle, "key": key, "pub": key.with_name("signing.pub.pem"), "output": res.output}


def test_export_prints_time_sizes_parity(exported: dict) -> None:
    out = exported["output"]
    assert "parity onnxruntime vs torch: OK" in out
    for name in ("detector", "vae_encoder", "unet", "clip_image"):
        assert f"models/{name}.onnx" in out
    assert "top-3 selection (gsal_select" in out and ": same [" in out
    assert "size " in out and "time " in out


def test_manifest_records_sources_signatures_parity(exported: dict) -> None:
    from gsal_edge.scoring.bundle import read_manifest
    from gsal_edge.scoring.scorer import ScorerSpec

    m = read_manifest(exported["bundle"])
    assert set(m.data["sources"]) >= {"detector", "prior", "clip", "graph"}
    assert len(m.data["sources"]["detector"]["sha256"]) == 64
    det = m.engines["detector"]
    assert det["opset"] == 17 and det["inputs"][0]["shape"] == [1, "height", "width"]
    assert [o["name"] for o in det["signature"]["outputs"]] == ["boxes", "scores", "labels", "class_probs"]
    assert m.data["parity"]["ok"] and m.data["parity"]["records"]["selection"]["same"]
    spec = ScorerSpec.from_dict(json.loads((exported["bundle"] / "scorer_spec.json").read_text()))
    emb = np.load(exported["bundle"] / "concept_embeddings.npy")
    assert emb.shape[0] == len(spec.concepts) == len(m.data["concept_graph"]["concepts"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    from gsal_edge.scoring.runtime.tensorrt_backend import tensorrt_status

    if not tensorrt_status()[0]:
        assert m.data["tensorrt"]["status"] == "skipped" and "TensorRT" in exported["output"]


def test_onnxruntime_and_torch_backends_score_alike(exported: dict) -> None:
    from export.pipeline import parity_slices
    from gsal_edge.scoring.bundle import load_bundle

    ort = load_bundle(exported["bundle"], "onnxruntime", [exported["pub"]], threads=1)
    pt = load_bundle(exported["bundle"], "torch", [exported["pub"]])
    slices, ids = parity_slices(4, 96, seed=7)  # other slices and size than the export's parity run
    rp = records_parity(pt.score(slices, ids), ort.score(slices, ids), ParityConfig(top_b=2))
    assert rp.ok, rp.to_dict()
    assert ort.bundle_id == pt.bundle_id


def test_verify_cli_accepts_good_and_refuses_tampered(exported: dict, tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["verify", str(exported["bundle"]), "--pub", str(exported["pub"]), "--load"])
    assert ok.exit_code == 0 and ok.output.startswith("OK "), ok.output
    bad = tmp_path / "b"
    shutil.copytree(exported["bundle"], bad)
    f = bad / "torch" / "detector.pt"
    f.write_bytes(f.read_bytes() + b"\0")
    res = runner.invoke(app, ["verify", str(bad), "--pub", str(exported["pub"])])
    assert res.exit_code == 1 and "REFUSED" in res.output and "torch/detector.pt" in res.output


def test_export_missing_models_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    res = CliRunner().invoke(app, ["--models", str(tmp_path / "empty"), "--out", str(tmp_path / "o"), "--unsigned"])
    assert res.exit_code == 1 and "export failed" in res.output and "no detector checkpoint found" in res.output


def test_parity_slices_stay_raw_counts_when_resized() -> None:
    """The parity probe is what a station receives: uint16 counts, also after the resize. As [0, 1] floats, a
    bundle whose window is in counts (``window: auto`` of 16-bit data) saw black slices whose records all tie,
    and the export's top-b parity check failed on noise (found by `make demo`)."""
    from export.pipeline import parity_slices
    from gsal_edge.data.preprocessing import to_unit_float

    slices, _ = parity_slices(3, 96, seed=7)
    for s in slices:
        assert s.dtype == np.uint16 and s.shape == (96, 96) and s.max() > 1000
    window = (1557.0, 49499.0)  # the demo detector's `auto` window
    spread = [float(to_unit_float(s, window=window).std()) for s in slices]
    assert min(spread) > 0.05, spread  # the slices reach the models with their structure, not clipped to 0
