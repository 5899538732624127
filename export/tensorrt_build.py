"""TensorRT engine builds from the exported ONNX files (``tensorrt`` Python API, imported lazily).

One optimization profile per engine covers the batch sizes the server batches to (``TensorRTConfig.batch``)
and the spatial sizes the scorer feeds (image vs crop resolution; the detector's side range). A plan is
checked against ONNX Runtime on the same real feeds the ORT parity used (Polygraphy-style tolerances,
looser for FP16). A build that fails leaves that engine on ORT; the manifest records which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from export.config import TensorRTConfig
from gsal_edge.errors import GSALError
from gsal_edge.scoring.runtime.tensorrt_backend import tensorrt_status

Shape = tuple[int, ...]


class TensorRTBuildError(GSALError, RuntimeError):
    """The ONNX parser or the builder failed; the message names the ONNX file."""


@dataclass
class TrtBuild:
    """One plan: where, how long, how big, and the profile it was built for."""

    name: str
    path: Path
    seconds: float
    bytes: int
    fp16: bool
    profile: dict[str, list[list[int]]] = field(default_factory=dict)

    def manifest_entry(self, rel: str) -> dict[str, Any]:
        return {"file": rel, "fp16": self.fp16, "seconds": round(self.seconds, 3), "profile": self.profile}


def _side(sides: tuple[int, int, int], down: int) -> tuple[int, int, int]:
    return tuple(max(1, s // down) for s in sides)  # type: ignore[return-value]


def profile_for(
    name: str,
    inputs: list[dict[str, Any]],
    cfg: TensorRTConfig,
    spatial: dict[str, tuple[int, int, int]],
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """min/opt/max shapes per input from the graph's dims: ``batch`` from ``cfg.batch``, named
    spatial dims from ``spatial`` (``height``/``width``/``h``/``w`` -> (min, opt, max)), ints as they are."""
    prof: dict[str, tuple[Shape, Shape, Shape]] = {}
    for spec in inputs:
        lo, mid, hi = [], [], []
        for d in spec["shape"]:
            if isinstance(d, int):
                rng = (d, d, d)
            elif d == "batch":
                b = cfg.batch.get(name)
                if b is None:
                    raise TensorRTBuildError(f"tensorrt.batch has no profile for engine {name!r}")
                rng = (b.min, b.opt, b.max)
            elif d in spatial:
                rng = spatial[d]
            else:
                raise TensorRTBuildError(f"{name}.{spec['name']}: no profile range for dynamic dim {d!r}")
            lo.append(rng[0])
            mid.append(rng[1])
            hi.append(rng[2])
        prof[spec["name"]] = (tuple(lo), tuple(mid), tuple(hi))
    return prof


def spatial_ranges(name: str, spec: Any, cfg: TensorRTConfig, downsample: int) -> dict[str, tuple[int, int, int]]:
    """Spatial (min, opt, max) per engine from the scorer spec: VAE sees image and crop resolutions,
    the UNet their latents, the detector ``cfg.detector_side``."""
    res = sorted({int(spec.prior_resolution), int(spec.crop_resolution)})
    img = (res[0], int(spec.prior_resolution), res[-1])
    if name == "vae_encoder":
        return {"height": img, "width": img}
    if name == "unet":
        lat = _side(img, downsample)
        return {"h": lat, "w": lat}
    if name == "detector":
        d = cfg.detector_side
        return {"height": (d.min, d.opt, d.max), "width": (d.min, d.opt, d.max)}
    return {}


def build_plan(
    onnx_path: str | Path,
    plan_path: str | Path,
    profile: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool = False,
    workspace_mib: int = 2048,
    name: str = "",
) -> TrtBuild:
    """Parse ``onnx_path`` and build a serialized engine with one optimization profile."""
    ok, why = tensorrt_status()
    if not ok:
        raise TensorRTBuildError(why)
    import tensorrt as trt

    onnx_path, plan_path = Path(onnx_path), Path(plan_path)
    logger = trt.Logger(trt.Logger.WARNING)
    t0 = time.perf_counter()
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implicit in 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"{onnx_path}: TensorRT's ONNX parser failed: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mib) << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    prof = builder.create_optimization_profile()
    for inp, (lo, opt, hi) in profile.items():
        prof.set_shape(inp, lo, opt, hi)
    config.add_optimization_profile(prof)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise TensorRTBuildError(f"{onnx_path}: TensorRT builder returned no engine (see its log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(blob))
    return TrtBuild(
        name=name or onnx_path.stem,
        path=plan_path,
        seconds=time.perf_counter() - t0,
        bytes=plan_path.stat().st_size,
        fp16=fp16,
        profile={k: [list(s) for s in v] for k, v in profile.items()},
    )
