"""`gsal-edge export --quantize int8`: dynamic INT8 engines, kept only where records' parity holds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from export.cli import app
from export.quantize import QuantizeError, quantize_int8

pytestmark = pytest.mark.slow


def test_export_quantize_int8_records_parity_and_loads(tmp_path: Path) -> None:
    from export.tiny import write_tiny_models
    from gsal_edge.scoring.bundle import load_bundle

    write_tiny_models(tmp_path / "models")
    runner = CliRunner()
    key = tmp_path / "k.pem"
    assert runner.invoke(app, ["keygen", "--key", str(key)]).exit_code == 0
    res = runner.invoke(app, ["--models", str(tmp_path / "models"), "--out", str(tmp_path / "b"), "--key", str(key),
                              "--tensorrt", "off", "--no-torch-weights", "--quantize", "int8"])
    assert res.exit_code == 0, res.output
    assert "INT8 " in res.output
    bundle = Path(res.output.split("bundle  ", 1)[1].split()[0])
    man = json.loads((bundle / "manifest.json").read_text())
    q = man["quantize"]
    assert q["mode"] == "int8-dynamic" and q["status"] in ("applied", "dropped")
    par = q["parity_vs_torch"]
    assert par["holds"] == (par["selection_same"] and par["structure_same"])
    assert "e_rec" in par["max_rel"]
    ops = {n.op_type for n in onnx.load(bundle / "models" / "detector.onnx").graph.node}
    if q["status"] == "applied":
        assert man["engines"]["detector"]["quantized"]["op_types"] == ["MatMul", "Gemm"]
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    else:
        assert not ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    assert not list((bundle / "models").glob("*.int8.onnx"))
    scorer = load_bundle(bundle, trusted_keys=[key.with_name("k.pub.pem")], threads=1)
    img = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert scorer.score([img], ["a"])[0].image_id == "a"


def test_quantize_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(QuantizeError, match="bad.onnx"):
        quantize_int8(bad, tmp_path / "out.onnx")
    res = CliRunner().invoke(app, ["--models", str(tmp_path), "--out", str(tmp_path / "b"), "--quantize", "int4"])
    assert res.exit_code != 0 and "int8" in res.output
