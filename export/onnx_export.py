"""ONNX export of one engine module: fixed names (ENGINE_SIGNATURES), fixed opset, checked, optionally slimmed.

Uses the TorchScript-based exporter (``dynamo=False``): torchvision's Faster R-CNN exports through it
with data-dependent detection counts and dynamic H/W; the same path serves the VAE, UNet and CLIP.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.config import ExportConfig
from gsal_edge.errors import GSALError
from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES

log = logging.getLogger(__name__)

BATCH_AXES = {"batch"}
SPATIAL_AXES = {"height", "width", "h", "w"}
COUNT_AXES = {"n"}  # data-dependent (detections): always dynamic


class OnnxExportError(GSALError, RuntimeError):
    """Export, checking or simplification of an engine failed; the message names engine and file."""


@dataclass
class ExportedModel:
    """One exported engine: its file, how long export took, and the graph's real I/O signature."""

    name: str
    path: Path
    seconds: float
    bytes: int
    opset: int
    simplified: bool
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    fixed_input_shape: list[int] | None = None  # set when an input that could be dynamic was frozen

    def manifest_entry(self, rel_path: str) -> dict[str, Any]:
        d = asdict(self)
        d.pop("path")
        d.pop("name")
        d.pop("bytes")
        d["onnx"] = rel_path
        d["seconds"] = round(self.seconds, 3)
        return d


def dynamic_axes_for(name: str, cfg: ExportConfig) -> dict[str, dict[int, str]]:
    """``torch.onnx.export`` dynamic axes of an engine, from its signature's named axes and ``cfg``."""
    ins, outs = ENGINE_SIGNATURES[name]
    spatial_ok = cfg.detector_dynamic_hw if name == "detector" else cfg.dynamic_spatial
    axes: dict[str, dict[int, str]] = {}
    for spec in (*ins, *outs):
        dyn = {}
        for i, ax in enumerate(spec.shape):
            if not isinstance(ax, str):
                continue
            if ax in COUNT_AXES or (ax in BATCH_AXES and cfg.dynamic_batch) or (ax in SPATIAL_AXES and spatial_ok):
                dyn[i] = ax
        if dyn:
            axes[spec.name] = dyn
    return axes


def _value_info(v: onnx.ValueInfoProto) -> dict[str, Any]:
    tt = v.type.tensor_type
    dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
    shape: list[int | str | None] = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            shape.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            shape.append(d.dim_param)
        else:
            shape.append(None)
    return {"name": v.name, "dtype": dtype, "shape": shape}


def graph_signature(path: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Inputs and outputs (name, dtype, shape with dim names for dynamic axes) of an ONNX file."""
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    ins = [_value_info(v) for v in model.graph.input if v.name not in inits]
    return ins, [_value_info(v) for v in model.graph.output]


def check_signature(name: str, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The graph's I/O must carry exactly the engine's names and dtypes (order-free for inputs)."""
    ins, outs = graph_signature(path)
    want_in, want_out = ENGINE_SIGNATURES[name]
    for got, want, kind in ((ins, want_in, "inputs"), (outs, want_out, "outputs")):
        g = {d["name"]: d["dtype"] for d in got}
        w = {s.name: s.dtype for s in want}
        if g != w:
            raise OnnxExportError(f"{path}: {name} graph {kind} {g} differ from the engine signature {w}")
    return ins, outs


def pin_static_dims(path: Path, name: str, outputs: tuple[torch.Tensor, ...], dynamic: dict[str, dict[int, str]]) -> None:
    """Write the real sizes of output axes that are not dynamic (the tracer may leave them symbolic,
    e.g. ``Sliceeps_dim_1`` for the UNet's channel slice), so the manifest shows them."""
    model = onnx.load(str(path), load_external_data=False)
    specs = ENGINE_SIGNATURES[name][1]
    by_name = {o.name: o for o in model.graph.output}
    changed = False
    for spec, t in zip(specs, outputs):
        out = by_name.get(spec.name)
        if out is None:
            continue
        dims = out.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if axis in dynamic.get(spec.name, {}) or d.HasField("dim_value") or axis >= t.dim():
                continue
            d.dim_value = int(t.shape[axis])
            changed = True
    if changed:
        onnx.save(model, str(path))


def simplify_onnx(path: Path) -> None:
    """Run onnxslim in place (names and dynamic axes are kept); raise naming the file on failure."""
    import onnxslim

    try:
        slim = onnxslim.slim(onnx.load(str(path)))
    except Exception as e:  # onnxslim raises a variety of errors from its passes
        raise OnnxExportError(f"{path}: onnxslim failed ({e})") from e
    if slim is None:
        raise OnnxExportError(f"{path}: onnxslim returned no model")
    onnx.save(slim, str(path))


def export_onnx(
    name: str,
    module: torch.nn.Module,
    sample_feeds: dict[str, np.ndarray],
    path: str | Path,
    cfg: ExportConfig,
) -> ExportedModel:
    """Export ``module`` (inputs positional, in signature order) as engine ``name`` to ``path``."""
    if name not in ENGINE_SIGNATURES:
        raise OnnxExportError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
    ins, outs = ENGINE_SIGNATURES[name]
    missing = [s.name for s in ins if s.name not in sample_feeds]
    if missing:
        raise OnnxExportError(f"{name}: sample inputs lack {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample_feeds[s.name])) for s in ins)
    module = module.eval()
    dyn = dynamic_axes_for(name, cfg)
    t0 = time.perf_counter()
    try:
        # grad stays enabled: under no_grad, nn.MultiheadAttention (open_clip ViT) takes its fused fast
        # path, aten::_native_multi_head_attention, which the ONNX exporter cannot translate
        with warnings.catch_warnings(), torch.enable_grad():
            warnings.simplefilter("ignore")  # tracer warnings about python-constant shapes are expected
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=[s.name for s in ins],
                output_names=[s.name for s in outs],
                dynamic_axes=dyn,
                opset_version=cfg.opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as e:
        first = str(e).strip().splitlines()[0][:400] if str(e).strip() else ""
        raise OnnxExportError(f"{path}: torch.onnx.export of {name} failed ({type(e).__name__}: {first})") from e
    with torch.no_grad():
        ref_out = module(*args)
    pin_static_dims(path, name, (ref_out,) if isinstance(ref_out, torch.Tensor) else tuple(ref_out), dyn)
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise OnnxExportError(f"{path}: onnx.checker rejected the {name} graph ({e})") from e
    if cfg.simplify:
        simplify_onnx(path)
        onnx.checker.check_model(str(path))
    seconds = time.perf_counter() - t0
    gin, gout = check_signature(name, path)
    fixed = None
    if name == "detector" and not cfg.detector_dynamic_hw:
        fixed = [int(d) for d in sample_feeds["image"].shape]
    size = sum(p.stat().st_size for p in path.parent.iterdir() if p.is_file() and p.name.startswith(path.stem))
    log.info("exported %s -> %s in %.2fs (%d bytes)", name, path, seconds, size)
    return ExportedModel(
        name=name,
        path=path,
        seconds=seconds,
        bytes=size,
        opset=cfg.opset,
        simplified=cfg.simplify,
        inputs=gin,
        outputs=gout,
        fixed_input_shape=fixed,
    )
