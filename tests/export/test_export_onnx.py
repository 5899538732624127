"""ONNX export of the real engine wrappers (built tiny, random init, through the real builders) and
the Polygraphy-style comparison the parity checks rely on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from export.config import ExportConfig, ExportConfigError, Tolerance, load_export_config
from export.onnx_export import dynamic_axes_for, export_onnx, graph_signature
from export.parity import compare, compare_exact, engine_parity

# ---------------------------------------------------------------------------------- fast: comparisons


def test_compare_is_elementwise_abs_or_rel() -> None:
    tol = Tolerance(atol=1e-3, rtol=1e-2)
    ref = np.array([0.0, 1.0, 100.0])
    assert compare(ref + [5e-4, 5e-4, 0.5], ref, tol).ok  # abs, abs, rel (0.5%)
    bad = compare(ref + [0.0, 0.0, 2.0], ref, tol)  # 2% off and 2.0 absolute: fails both
    assert not bad.ok and bad.max_abs == pytest.approx(2.0) and bad.max_rel == pytest.approx(0.02)
    assert not compare(np.zeros(2), np.zeros(3), tol).ok
    assert not compare(np.array([np.nan]), np.array([1.0]), tol).ok
    assert compare_exact(np.array([1, 2]), np.array([1, 2])).ok
    assert not compare_exact(np.array([1, 3]), np.array([1, 2])).ok


def test_dynamic_axes_follow_signature_and_config() -> None:
    cfg = ExportConfig()
    assert dynamic_axes_for("clip_image", cfg) == {"image": {0: "batch"}, "embedding": {0: "batch"}}
    assert dynamic_axes_for("detector", cfg)["image"] == {1: "height", 2: "width"}
    assert dynamic_axes_for("unet", cfg)["timestep"] == {0: "batch"}
    fixed = ExportConfig(detector_dynamic_hw=False, dynamic_spatial=False)
    assert "image" not in dynamic_axes_for("detector", fixed)
    assert dynamic_axes_for("detector", fixed)["boxes"] == {0: "n"}  # detection count is data-dependent
    assert dynamic_axes_for("vae_encoder", fixed)["image"] == {0: "batch"}


def test_export_config_errors_name_field(tmp_path: Path) -> None:
    p = tmp_path / "x.yaml"
    p.write_text("parity:\n  images: 0\n")
    with pytest.raises(ExportConfigError, match=r"x\.yaml: field 'parity.images'"):
        load_export_config(p)
    p.write_text("opset: 17\nsimplify: true\nnot_a_field: 1\n")
    with pytest.raises(ExportConfigError, match="not_a_field"):
        load_export_config(p)
    cfg = load_export_config(None, fp16=True, tensorrt_mode="off")
    assert cfg.tensorrt.fp16 and cfg.tensorrt.mode == "off" and cfg.opset == 17


# ---------------------------------------------------------------------------------- slow: real wrappers


@pytest.fixture(scope="module")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from export.tiny import write_tiny_models
    from gsal_edge.scoring.bundle import build_torch_modules

    src = write_tiny_models(tmp_path_factory.mktemp("tiny"))
    return build_torch_modules({"detector": str(src.detector), "prior": str(src.prior), "clip": str(src.clip)})


def _feeds(rng: np.random.Generator) -> dict[str, tuple[dict, list[dict]]]:
    """(tracing sample, check feeds at other batch sizes / spatial sizes) per engine."""
    f = lambda *s: rng.standard_normal(s).astype(np.float32)
    u = lambda *s: rng.uniform(0, 1, s).astype(np.float32)
    return {
        "vae_encoder": ({"image": f(2, 3, 32, 32)}, [{"image": f(5, 3, 32, 32)}, {"image": f(1, 3, 16, 16)}]),
        "unet": (
            {"latent": f(2, 4, 16, 16), "timestep": np.array([25, 25])},
            [{"latent": f(7, 4, 16, 16), "timestep": np.full(7, 25)}, {"latent": f(1, 4, 8, 8), "timestep": np.array([3])}],
        ),
        "clip_image": ({"image": f(2, 3, 32, 32)}, [{"image": f(9, 3, 32, 32)}, {"image": f(1, 3, 32, 32)}]),
        "detector": ({"image": u(1, 128, 128)}, [{"image": u(1, 96, 160)}, {"image": u(1, 200, 200)}]),
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vae_encoder", "unet", "clip_image", "detector"])
def test_real_wrapper_exports_with_dynamic_axes_and_parity(modules: dict, name: str, tmp_path: Path) -> None:
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine
    from gsal_edge.scoring.runtime.torch_backend import TorchEngine

    cfg = ExportConfig()
    sample, checks = _feeds(np.random.default_rng(0))[name]
    sample = {k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in sample.items()}
    checks = [{k: (v.astype(np.int64) if v.dtype.kind == "i" else v) for k, v in c.items()} for c in checks]
    e = export_onnx(name, modules[name], sample, tmp_path / f"{name}.onnx", cfg)
    onnx.checker.check_model(str(e.path))
    ins, outs = graph_signature(e.path)
    assert {d["name"] for d in ins} == set(sample)
    if name != "detector":
        assert ins[0]["shape"][0] == "batch"
    else:
        assert ins[0]["shape"] == [1, "height", "width"] and outs[0]["shape"] == ["n", 4]
    rep = engine_parity(TorchEngine(name, modules[name]), OrtEngine(name, e.path, threads=1), checks,
                        cfg.parity.engines[name])
    assert rep.ok, rep.to_dict()


@pytest.mark.slow
def test_detector_fixed_size_and_zero_detections(tmp_path: Path) -> None:
    from gsal_edge.models.detector import DetectorWrapper, build_detector
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine
    from gsal_edge.scoring.runtime.torch_backend import TorchEngine

    mod = DetectorWrapper(build_detector("tiny", 3, seed=0, box_score_thresh=0.99))  # nothing passes
    x = np.random.default_rng(1).uniform(0, 1, (1, 64, 64)).astype(np.float32)
    e = export_onnx("detector", mod, {"image": x}, tmp_path / "det.onnx", ExportConfig(detector_dynamic_hw=False))
    assert e.fixed_input_shape == [1, 64, 64]
    assert graph_signature(e.path)[0][0]["shape"] == [1, 64, 64]
    out = OrtEngine("detector", e.path, threads=1).run({"image": x})
    ref = TorchEngine("detector", mod).run({"image": x})
    assert out["boxes"].shape == ref["boxes"].shape == (0, 4) and out["class_probs"].shape == (0, 4)


@pytest.mark.slow
def test_simplify_keeps_names_and_results(modules: dict, tmp_path: Path) -> None:
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine

    pytest.importorskip("onnxslim", reason="--simplify needs onnxslim")
    sample, checks = _feeds(np.random.default_rng(0))["vae_encoder"]
    plain = export_onnx("vae_encoder", modules["vae_encoder"], sample, tmp_path / "a.onnx", ExportConfig())
    slim = export_onnx("vae_encoder", modules["vae_encoder"], sample, tmp_path / "b.onnx", ExportConfig(simplify=True))
    assert slim.simplified and graph_signature(slim.path) == graph_signature(plain.path)
    a = OrtEngine("vae_encoder", plain.path, threads=1).run(checks[0])["latent"]
    b = OrtEngine("vae_encoder", slim.path, threads=1).run(checks[0])["latent"]
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_model_files_ship_what_loaders_read(tmp_path: Path) -> None:
    import json

    from export.sources import hash_source, model_files

    prior = tmp_path / "prior"
    for rel in ("vae/config.json", "unet/config.json", "scheduler/scheduler_config.json", "gsal_prior.json",
                "checkpoints/train_state.pt", "run.json"):
        (prior / rel).parent.mkdir(parents=True, exist_ok=True)
        (prior / rel).write_text(rel)
    got = {p.relative_to(prior).as_posix() for p in model_files("prior", prior)}
    assert got == {"vae/config.json", "unet/config.json", "scheduler/scheduler_config.json", "gsal_prior.json"}
    h = hash_source("prior", prior)
    (prior / "checkpoints" / "train_state.pt").write_text("changed")  # not part of the model
    assert hash_source("prior", prior) == h
    (prior / "vae" / "config.json").write_text("changed")
    assert hash_source("prior", prior) != h
    clip = tmp_path / "clip"
    clip.mkdir()
    (clip / "gsal_clip.json").write_text(json.dumps({"model_name": "m", "config_file": "m.json", "checkpoint": "w.bin"}))
    for n in ("m.json", "w.bin", "notes.txt"):
        (clip / n).write_text(n)
    assert sorted(p.name for p in model_files("clip", clip)) == ["gsal_clip.json", "m.json", "w.bin"]
