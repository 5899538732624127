"""``gsal-edge export``: checkpoints -> ONNX (+ TensorRT) -> parity -> signed bundle.

Steps: load the PyTorch reference; score a few real slices with it while recording every engine's
feeds; trace each engine on a recorded feed and export it; replay the recorded feeds on ONNX Runtime
(per-engine parity) and score the same slices end-to-end (records + top-b); optionally build TensorRT
plans and check them against ORT; write and sign the bundle.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from export.bundle_writer import BundleWriter, dir_size
from export.config import ExportConfig
from export.onnx_export import ExportedModel, export_onnx
from export.parity import (
    EngineParity,
    ParityReport,
    capture_feeds,
    engine_parity,
    records_parity,
)
from export.sources import ModelSources, Reference, hash_source, load_reference, model_files
from gsal_edge.errors import GSALError
from gsal_edge.scoring.bundle import ENGINE_NAMES
from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES

log = logging.getLogger(__name__)


class ExportError(GSALError, RuntimeError):
    """The export could not produce a bundle (parity failed, TensorRT required but missing, ...)."""


@dataclass
class ExportResult:
    """What ``gsal-edge export`` prints: where the bundle is, how long it took, sizes, parity."""

    bundle_dir: Path
    bundle_id: str
    seconds: float
    stage_seconds: dict[str, float]
    sizes: dict[str, int]
    bundle_bytes: int
    parity: ParityReport
    tensorrt: dict[str, Any] = field(default_factory=dict)


def parity_slices(n: int, size: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """``n`` synthetic thin-film CT slices (uint16, as a station receives them) resized to ``size``."""
    from gsal_edge.data.preprocessing import resize_image
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_slice, slice_seed

    cfg = SynthConfig()
    out, ids = [], []
    for i in range(n):
        s = generate_slice(cfg, slice_seed(seed, i), i)
        # resized in their own dtype: a bundle whose window is in raw counts (``window: auto`` of 16-bit data)
        # must see counts, not [0, 1] floats (which that window maps to black, so every record ties)
        img = s.image if s.image.shape == (size, size) else resize_image(s.image, (size, size))
        out.append(np.asarray(img))
        ids.append(f"parity-{i:03d}")
    return out, ids


def _sample(feeds: list[dict[str, np.ndarray]], name: str, batch: int) -> dict[str, np.ndarray]:
    """A tracing input of batch ``batch`` made from the first recorded feed of an engine."""
    if not feeds:
        raise ExportError(f"{name}: the reference scorer never called this engine on the parity slices")
    first = feeds[0]
    if name == "detector":
        return first
    reps = {k: np.concatenate([v] * -(-batch // len(v)))[:batch] for k, v in first.items()}
    return reps


def _detector_feeds(slices: list[np.ndarray], sizes: list[int], window: Any) -> list[dict[str, np.ndarray]]:
    """The detector at extra input sizes (dynamic H/W is checked, not assumed)."""
    from gsal_edge.data.preprocessing import resize_image, to_unit_float

    out = []
    for s in sizes:
        x = resize_image(to_unit_float(slices[0], window=window), (s, s)).astype(np.float32)
        out.append({"image": x[None]})
    return out


def _ort_scorer(ref: Reference, paths: dict[str, Path], providers: list[Any] | None = None) -> Any:
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine
    from gsal_edge.scoring.scorer import GSALScorer

    engines = {n: OrtEngine(n, paths[n], providers=providers) for n in ENGINE_NAMES}
    return GSALScorer(engines, ref.spec, ref.concept_embeddings, backend="onnxruntime", graph_name=ref.graph.name)


def run_export(
    sources: ModelSources,
    out_dir: str | Path,
    cfg: ExportConfig,
    signing_key: Any | None = None,
    progress: Any = None,
) -> ExportResult:
    """Export the four engines from ``sources`` into a signed bundle under ``out_dir``."""
    say = progress or (lambda msg: log.info("%s", msg))
    t_all = time.perf_counter()
    stages: dict[str, float] = {}

    t = time.perf_counter()
    ref = load_reference(sources)
    ref_scorer = ref.scorer()
    slices, ids = parity_slices(cfg.parity.images, cfg.parity.image_size, cfg.parity.seed)
    ref_records, feeds = capture_feeds(ref_scorer, slices, ids)
    if cfg.detector_dynamic_hw:
        feeds["detector"].extend(_detector_feeds(slices, cfg.parity.detector_sizes, ref.spec.window))
    stages["load+reference"] = time.perf_counter() - t

    writer = BundleWriter(out_dir)
    try:
        t = time.perf_counter()
        exported: dict[str, ExportedModel] = {}
        for name in ENGINE_NAMES:
            exported[name] = export_onnx(
                name, ref.modules[name], _sample(feeds[name], name, cfg.export_batch),
                writer.path(f"models/{name}.onnx"), cfg,
            )
            say(f"exported {name}: {exported[name].seconds:.2f}s, {exported[name].bytes / 1e6:.2f} MB")
        stages["onnx_export"] = time.perf_counter() - t

        t = time.perf_counter()
        paths = {n: e.path for n, e in exported.items()}
        ort_scorer = _ort_scorer(ref, paths)
        eng: dict[str, EngineParity] = {
            n: engine_parity(ref_scorer.engines[n], ort_scorer.engines[n], feeds[n], cfg.parity.engines[n])
            for n in ENGINE_NAMES
        }
        rec = records_parity(ref_records, ort_scorer.score(slices, ids), cfg.parity, ref.graph)
        report = ParityReport("torch", "onnxruntime", eng, rec)
        stages["parity"] = time.perf_counter() - t
        if not report.ok:
            from export.parity import format_report

            raise ExportError("ONNX Runtime parity failed:\n" + "\n".join(format_report(report)))

        t = time.perf_counter()
        trt_info = build_tensorrt(ref, exported, feeds, ort_scorer, writer, cfg, say)
        stages["tensorrt"] = time.perf_counter() - t

        quant_info: dict[str, Any] = {"mode": "off"}
        if cfg.quantize.mode == "int8":  # after TensorRT: plans are built from the fp32 graphs
            from export.quantize import quantize_engines

            t = time.perf_counter()
            quant_info = quantize_engines(
                exported, lambda p: _ort_scorer(ref, p), ref_records, slices, ids, cfg.parity, ref.graph,
                cfg.quantize.engines, cfg.quantize.op_types, say,
            )
            stages["quantize"] = time.perf_counter() - t

        t = time.perf_counter()
        writer.add_scorer_parts(ref.spec.to_dict(), ref.graph.to_dict(), ref.concept_embeddings)
        torch_section = {}
        if cfg.torch_weights:
            writer.add_file(sources.detector, "torch/detector.pt")
            for kind, folder in (("prior", sources.prior), ("clip", sources.clip)):
                for f in model_files(kind, folder):
                    writer.add_file(f, f"torch/{kind}/{f.relative_to(folder).as_posix()}")
            torch_section = {"detector": "torch/detector.pt", "prior": "torch/prior", "clip": "torch/clip"}
        engines = {}
        for n, e in exported.items():
            entry = e.manifest_entry(f"models/{n}.onnx")
            ins, outs = ENGINE_SIGNATURES[n]
            entry["signature"] = {
                "inputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in ins],
                "outputs": [{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in outs],
            }
            if n in quant_info.get("engines", {}) and quant_info.get("status") == "applied":
                entry["quantized"] = quant_info["engines"][n]
            if n in trt_info.get("plans", {}):
                entry["tensorrt"] = trt_info["plans"][n]["file"]
                entry["tensorrt_build"] = trt_info["plans"][n]
            engines[n] = entry
        fields: dict[str, Any] = {
            "engines": engines,
            "sources": {k: {"path": v, "sha256": hash_source(k, v)} for k, v in sources.as_dict().items()},
            "models": ref.info,
            "concept_graph": {"name": ref.graph.name, "file": "concept_graph.json", "concepts": list(ref.graph.fine)},
            "scorer_spec": "scorer_spec.json",
            "concept_embeddings": {"file": "concept_embeddings.npy", "shape": list(ref.concept_embeddings.shape)},
            "parity": report.to_dict(),
            "tensorrt": {k: v for k, v in trt_info.items() if k != "plans"},
            "quantize": quant_info,
            "export": {"config": cfg.model_dump(mode="json"), "stage_seconds": {k: round(v, 3) for k, v in stages.items()}},
        }
        if torch_section:
            fields["torch"] = torch_section
        sizes = {p.relative_to(writer.stage).as_posix(): p.stat().st_size
                 for p in sorted((writer.stage / "models").iterdir()) if p.is_file()}
        bundle_dir = writer.finalize(fields, signing_key)
        stages["bundle"] = time.perf_counter() - t
    except BaseException:
        writer.abort()
        raise
    from gsal_edge.scoring.bundle import read_manifest

    return ExportResult(
        bundle_dir=bundle_dir,
        bundle_id=read_manifest(bundle_dir).bundle_id,
        seconds=time.perf_counter() - t_all,
        stage_seconds=stages,
        sizes=sizes,
        bundle_bytes=dir_size(bundle_dir),
        parity=report,
        tensorrt=trt_info,
    )


def build_tensorrt(
    ref: Reference,
    exported: dict[str, ExportedModel],
    feeds: dict[str, list[dict[str, np.ndarray]]],
    ort_scorer: Any,
    writer: BundleWriter,
    cfg: ExportConfig,
    say: Any,
) -> dict[str, Any]:
    """Build TensorRT plans per ``cfg.tensorrt`` and check them against ORT; never fatal in ``auto``."""
    from export.tensorrt_build import TensorRTBuildError, build_plan, profile_for, spatial_ranges
    from gsal_edge.scoring.runtime.tensorrt_backend import TrtEngine, tensorrt_status

    tcfg = cfg.tensorrt
    if tcfg.mode == "off":
        return {"status": "off"}
    ok, why = tensorrt_status()
    if not ok:
        if tcfg.mode == "on":
            raise ExportError(f"--tensorrt on, but {why}")
        say(f"TensorRT skipped: {why}; the bundle has ONNX engines only")
        return {"status": "skipped", "reason": why}
    tol = tcfg.tolerance_fp16 if tcfg.fp16 else tcfg.tolerance_fp32
    down = int(ref.info["prior"].get("downsample", 8))
    plans: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for name in tcfg.engines:
        e = exported[name]
        plan = writer.path(f"models/{name}.plan")
        try:
            prof = profile_for(name, e.inputs, tcfg, spatial_ranges(name, ref.spec, tcfg, down))
            build = build_plan(e.path, plan, prof, fp16=tcfg.fp16, workspace_mib=tcfg.workspace_mib, name=name)
            trt_engine = TrtEngine(name, plan)
            tols = {o: tol for o in cfg.parity.engines[name]}
            par = engine_parity(ort_scorer.engines[name], trt_engine, feeds[name], tols)
        except (TensorRTBuildError, RuntimeError) as err:
            failures[name] = str(err).splitlines()[0][:300]
            plan.unlink(missing_ok=True)
            say(f"TensorRT {name}: build failed, stays on ONNX Runtime ({failures[name]})")
            if tcfg.mode == "on":
                raise ExportError(f"TensorRT build of {name} failed: {err}") from err
            continue
        entry = build.manifest_entry(f"models/{name}.plan")
        entry["parity_vs_onnxruntime"] = par.to_dict()
        if not par.ok:
            failures[name] = "parity vs ONNX Runtime out of tolerance"
            plan.unlink(missing_ok=True)
            say(f"TensorRT {name}: parity failed, plan dropped")
            continue
        plans[name] = entry
        worst = max((c.max_abs for c in par.outputs.values()), default=0.0)
        say(f"TensorRT {name}: {build.seconds:.1f}s, {build.bytes / 1e6:.2f} MB, max_abs vs ORT {worst:.2e}")
    return {"status": "built" if plans else "failed", "reason": why, "fp16": tcfg.fp16, "tolerance": tol.model_dump(),
            "plans": plans, "failures": failures}
