"""Dynamic INT8 quantization of exported engines (``gsal-edge export --quantize int8``).

``onnxruntime.quantization.quantize_dynamic`` stores the weights of the chosen op types as INT8 and
quantizes activations on the fly. By default only ``MatMul``/``Gemm`` are quantized: dynamically
quantized convolutions (``ConvInteger``) ran 3.7x (detector) and 4x (UNet) *slower* than fp32 on
ONNX Runtime's CPU provider here (BENCHMARKS.md). A quantized engine is kept only where the end-to-end
parity that matters still holds against the PyTorch reference: the same proposals, concepts and
labels, and the same top-b picks; the records' numeric deviations are reported, not gated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsal_edge.errors import GSALError

DEFAULT_ENGINES = ("detector", "clip_image")
DEFAULT_OP_TYPES = ("MatMul", "Gemm")


class QuantizeError(GSALError, RuntimeError):
    """Quantization could not run (onnxruntime.quantization missing or the graph refused)."""


def quantize_int8(src: str | Path, dst: str | Path, op_types: Sequence[str] = DEFAULT_OP_TYPES) -> dict[str, Any]:
    """Write ``src`` dynamically INT8-quantized (weights QInt8, ops ``op_types``) to ``dst``; returns
    what the manifest records (op types, seconds, bytes before/after)."""
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as e:  # pragma: no cover - onnxruntime always ships it
        raise QuantizeError(f"onnxruntime.quantization is not available ({e})") from e
    src, dst = Path(src), Path(dst)
    t = time.perf_counter()
    try:
        quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=list(op_types))
    except Exception as e:  # onnx / onnxruntime raise their own types
        raise QuantizeError(f"{src}: dynamic INT8 quantization failed ({e})") from e
    return {"mode": "int8-dynamic", "op_types": list(op_types), "seconds": round(time.perf_counter() - t, 3),
            "bytes_fp32": src.stat().st_size, "bytes_int8": dst.stat().st_size}


def parity_holds(records_parity: Any) -> bool:
    """INT8's gate on a :class:`export.parity.RecordsParity`: same structure (proposals, concepts,
    labels) and the same top-b selection as the reference."""
    return bool(records_parity.structure_ok and records_parity.selection_ok)


def parity_summary(records_parity: Any) -> dict[str, Any]:
    """The numbers reported next to INT8's speed: gate, picks, worst relative error per record field."""
    rp = records_parity
    return {
        "holds": parity_holds(rp),
        "selection_same": rp.selection_ok,
        "structure_same": rp.structure_ok,
        "structure_notes": list(rp.structure_notes[:5]),
        "max_rel": {k: float(c.max_rel) for k, c in rp.fields.items() if c.n},
        "max_abs": {k: float(c.max_abs) for k, c in rp.fields.items() if c.n},
    }


def quantize_engines(
    exported: dict[str, Any],
    make_scorer: Any,
    reference_records: Sequence[Any],
    slices: Sequence[Any],
    ids: Sequence[str],
    parity_cfg: Any,
    graph: Any,
    engines: Sequence[str] = DEFAULT_ENGINES,
    op_types: Sequence[str] = DEFAULT_OP_TYPES,
    say: Any = print,
) -> dict[str, Any]:
    """Quantize ``engines`` of ``exported`` (name -> ExportedModel) in place where parity holds.

    ``make_scorer(paths)`` builds an ORT scorer on engine files; the all-INT8 scorer's records are
    compared with ``reference_records``. If parity does not hold the fp32 files stay (recorded).
    """
    from export.parity import records_parity

    unknown = sorted(set(engines) - set(exported))
    if unknown:
        raise QuantizeError(f"quantize.engines: unknown engine(s) {unknown}; known: {sorted(exported)}")
    info: dict[str, Any] = {"mode": "int8-dynamic", "engines": {}, "op_types": list(op_types)}
    tmp: dict[str, Path] = {}
    for name in engines:
        src = Path(exported[name].path)
        tmp[name] = src.with_name(f"{name}.int8.onnx")
        info["engines"][name] = quantize_int8(src, tmp[name], op_types)
    paths = {n: Path(e.path) for n, e in exported.items()} | tmp
    rp = records_parity(reference_records, make_scorer(paths).score(list(slices), list(ids)), parity_cfg, graph)
    info["parity_vs_torch"] = parity_summary(rp)
    if not parity_holds(rp):
        for p in tmp.values():
            p.unlink(missing_ok=True)
        info["status"] = "dropped"
        say(f"INT8 dropped, fp32 engines kept: parity vs PyTorch does not hold ({rp.structure_notes[:2]}, "
            f"top-b same: {rp.selection_ok})")
        return info
    for name, p in tmp.items():
        p.replace(exported[name].path)
        exported[name].bytes = Path(exported[name].path).stat().st_size
    info["status"] = "applied"
    say(f"INT8 applied to {sorted(tmp)}: top-b same, concepts same; max rel e_rec "
        f"{info['parity_vs_torch']['max_rel'].get('e_rec', 0):.1e}")
    return info
