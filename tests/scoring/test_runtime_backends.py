"""ONNX Runtime engine against the PyTorch engine on the same module; TensorRT's absence is explained."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from export.config import ExportConfig
from export.onnx_export import export_onnx
from gsal_edge.scoring.runtime import Engine, EngineError
from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine, available_providers, gpu_providers
from gsal_edge.scoring.runtime.tensorrt_backend import TrtEngine, tensorrt_status
from gsal_edge.scoring.runtime.torch_backend import TorchEngine


class TinyUnet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.emb = nn.Embedding(100, 4)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.conv(latent) + self.emb(timestep)[:, :, None, None]


@pytest.fixture(scope="module")
def unet_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    mod = TinyUnet().eval()
    sample = {"latent": np.zeros((2, 4, 8, 8), np.float32), "timestep": np.array([1, 2], np.int64)}
    path = tmp_path_factory.mktemp("rt") / "unet.onnx"
    export_onnx("unet", mod, sample, path, ExportConfig())
    return path, mod


def test_ort_matches_torch_at_other_batch_and_size(unet_onnx: tuple[Path, nn.Module]) -> None:
    path, mod = unet_onnx
    ort_e, torch_e = OrtEngine("unet", path, threads=1), TorchEngine("unet", mod)
    assert isinstance(ort_e, Engine) and ort_e.providers == ["CPUExecutionProvider"]
    rng = np.random.default_rng(0)
    for b, s in ((1, 8), (5, 12)):
        feeds = {"latent": rng.standard_normal((b, 4, s, s)).astype(np.float32),
                 "timestep": rng.integers(0, 100, b).astype(np.int64)}
        a, r = ort_e.run(feeds)["eps"], torch_e.run(feeds)["eps"]
        assert a.shape == (b, 4, s, s)
        np.testing.assert_allclose(a, r, atol=1e-5, rtol=1e-4)


def test_ort_checks_feeds_and_graph_names(unet_onnx: tuple[Path, nn.Module], tmp_path: Path) -> None:
    path, _ = unet_onnx
    e = OrtEngine("unet", path, threads=1)
    with pytest.raises(EngineError, match=r"unet\.timestep: dtype int32, expected int64"):
        e.run({"latent": np.zeros((1, 4, 8, 8), np.float32), "timestep": np.zeros(1, np.int32)})
    with pytest.raises(EngineError, match="missing input"):
        e.run({"latent": np.zeros((1, 4, 8, 8), np.float32)})
    # the right file under the wrong engine name fails at load time, naming the file
    with pytest.raises(EngineError, match=r"unet\.onnx: graph has inputs .* engine 'vae_encoder' needs"):
        OrtEngine("vae_encoder", path)
    with pytest.raises(EngineError, match="not found"):
        OrtEngine("unet", tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(EngineError, match=r"bad\.onnx: onnxruntime could not load it"):
        OrtEngine("unet", bad)


def test_ort_runtime_error_names_engine_and_shapes(unet_onnx: tuple[Path, nn.Module]) -> None:
    path, _ = unet_onnx
    e = OrtEngine("unet", path, threads=1)
    with pytest.raises(EngineError, match=r"unet \(unet\.onnx\): onnxruntime failed on inputs"):
        e.run({"latent": np.zeros((2, 3, 8, 8), np.float32), "timestep": np.zeros(2, np.int64)})


def test_providers() -> None:
    assert "CPUExecutionProvider" in available_providers()
    assert gpu_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(EngineError, match="none of the providers"):
        OrtEngine("unet", Path(__file__), providers=["NoSuchExecutionProvider"])


def test_exported_graph_is_opset_17_and_checked(unet_onnx: tuple[Path, nn.Module]) -> None:
    path, _ = unet_onnx
    m = onnx.load(str(path))
    onnx.checker.check_model(m)
    assert {o.domain: o.version for o in m.opset_import}[""] == 17


@pytest.mark.skipif(tensorrt_status()[0], reason="TensorRT and a GPU are present")
def test_tensorrt_absent_is_one_clear_line(tmp_path: Path) -> None:
    ok, why = tensorrt_status()
    assert not ok and "\n" not in why and ("TensorRT" in why)
    with pytest.raises(EngineError, match=r"model\.plan: cannot run engine 'unet': TensorRT"):
        TrtEngine("unet", tmp_path / "model.plan")


def test_set_cuda_tf32_sets_both_process_wide_flags() -> None:
    from gsal_edge.scoring.runtime.torch_backend import set_cuda_tf32

    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        set_cuda_tf32(True)
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
        set_cuda_tf32(False)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_ort_session_settings_are_explicit_and_validated(
    unet_onnx: tuple[Path, nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtSessionSettings, available_cores

    path, _ = unet_onnx
    monkeypatch.setenv("GSAL_ORT_THREADS", "0")
    monkeypatch.delenv("GSAL_ORT_SPINNING", raising=False)
    e = OrtEngine("unet", path)
    opts = e.session.get_session_options()
    assert opts.intra_op_num_threads == available_cores() == e.settings.threads  # set, not left at 0
    assert opts.inter_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    monkeypatch.setenv("GSAL_ORT_SPINNING", "1")
    monkeypatch.setenv("GSAL_ORT_EXECUTION_MODE", "parallel")
    e2 = OrtEngine("unet", path, threads=1)
    o2 = e2.session.get_session_options()
    assert o2.intra_op_num_threads == 1 and o2.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert e2.settings.execution_mode == "parallel"
    for bad in ({"intra_op_threads": -1}, {"inter_op_threads": 0}, {"execution_mode": "fast"},
                {"graph_optimization": "max"}):
        with pytest.raises(EngineError, match=next(iter(bad)).split("_")[0]):
            OrtSessionSettings(**bad)  # type: ignore[arg-type]
    monkeypatch.setenv("GSAL_ORT_THREADS", "two")
    with pytest.raises(EngineError, match="GSAL_ORT_THREADS"):
        OrtSessionSettings.from_env()


def test_ort_profiling_writes_per_node_json(unet_onnx: tuple[Path, nn.Module], tmp_path: Path) -> None:
    import json

    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtSessionSettings

    path, _ = unet_onnx
    e = OrtEngine("unet", path, settings=OrtSessionSettings(intra_op_threads=1, profile_dir=str(tmp_path / "prof")))
    e.run({"latent": np.zeros((3, 4, 8, 8), np.float32), "timestep": np.array([1, 2, 3], np.int64)})
    prof = e.end_profiling()
    assert prof is not None and prof.parent == tmp_path / "prof"
    events = json.loads(prof.read_text())
    assert any(ev.get("cat") == "Node" and ev["args"].get("op_name") == "Conv" for ev in events)
    assert OrtEngine("unet", path, threads=1).end_profiling() is None


@pytest.mark.slow
def test_ort_scorer_matches_torch_with_issue16_crop_modes(tmp_path: Path) -> None:
    """The masked / reflected crops and K_image are numpy around the engines: ONNX Runtime scores alike."""
    import dataclasses

    from export.config import ParityConfig
    from export.parity import capture_feeds, records_parity
    from export.pipeline import _sample, parity_slices
    from gsal_edge.scoring.scorer import GSALScorer
    from gsal_edge.scoring.torch_scorer import untrained_scorer

    ref = untrained_scorer(seed=5, image_size=48)
    ref.spec = dataclasses.replace(ref.spec, crop_shape="masked", crop_border="reflect", K_image=3, noise="common")
    slices, ids = parity_slices(3, 48, seed=11)
    ref_records, feeds = capture_feeds(ref, slices, ids)
    engines = {}
    for name, eng in ref.engines.items():
        path = tmp_path / f"{name}.onnx"
        export_onnx(name, eng.module, _sample(feeds[name], name, 2), path, ExportConfig())
        engines[name] = OrtEngine(name, path, threads=1)
    ort = GSALScorer(engines, ref.spec, np.asarray(ref.assigner.embeddings), backend="onnxruntime")
    assert any(r.proposals for r in ref_records)
    rp = records_parity(ref_records, ort.score(slices, ids), ParityConfig(top_b=2))
    assert rp.ok, rp.to_dict()
