"""Benchmark: images/s of full GSAL scoring (detector + VAE + K UNet trajectories + CLIP) per backend.

Every backend scores the same synthetic CT slices from the same bundle, at batch 1 and batched, in one
run, so the numbers sit side by side. CPU: PyTorch vs ONNX Runtime. With a CUDA GPU: PyTorch-CUDA,
ONNX Runtime CUDA EP and TensorRT (plans in the bundle) as well; a backend that cannot run here gets
one line saying why. The end-to-end records of every backend are also compared with PyTorch's.

    .venv/bin/python bench/bench_runtime.py                        # tiny models, bundle built on the fly
    .venv/bin/python bench/bench_runtime.py --bundle artifacts/bundles --pub artifacts/keys/gsal_signing_key.pub.pem
    .venv/bin/python bench/bench_runtime.py --model-size small --images 16 --batch 8

Without ``--bundle`` it exports models made by ``export.tiny`` (random init, real builders) into
``artifacts/bench_runtime/``; numbers for those say how the backends compare, not what the trained
embedded defaults cost.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from export.pipeline import parity_slices

MODEL_SIZES = {
    "tiny": {},
    "small": {"detector_preset": "cpu", "prior_resolution": 64, "crop_resolution": 32, "vae_channels": (32, 64, 64),
              "unet_channels": (32, 64), "timesteps": 1000, "clip_image_size": 64, "clip_width": 64,
              "clip_layers": 2, "clip_embed_dim": 32},
}


def build_bundle(work: Path, model_size: str, tensorrt: str, fp16: bool) -> tuple[Path, Path]:
    """Tiny/small random-init models -> signed bundle under ``work``; returns (bundle, public key)."""
    from export.config import load_export_config
    from export.pipeline import run_export
    from export.signing import generate_keypair, load_private_key, public_key_path
    from export.tiny import TinySizes, write_tiny_models

    key = work / "keys" / "bench.pem"
    if not key.exists():
        generate_keypair(key)
    src = write_tiny_models(work / f"models-{model_size}", sizes=TinySizes(**MODEL_SIZES[model_size]))
    cfg = load_export_config(None, tensorrt_mode=tensorrt, fp16=fp16 or None)
    res = run_export(src, work / "bundles", cfg, load_private_key(key), progress=print)
    print(f"bundle {res.bundle_dir}: export {res.seconds:.1f}s, {res.bundle_bytes / 1e6:.2f} MB")
    return res.bundle_dir, public_key_path(key)


def candidates(bundle: Path, threads: int) -> list[tuple[str, dict[str, Any] | None, str]]:
    """(label, load_bundle kwargs or None, note) for every backend; None = cannot run here (note says why)."""
    import onnxruntime as ort
    import torch

    from gsal_edge.scoring.bundle import read_manifest
    from gsal_edge.scoring.runtime.onnxruntime_backend import gpu_providers
    from gsal_edge.scoring.runtime.tensorrt_backend import tensorrt_status

    m = read_manifest(bundle)
    has_torch = "torch" in m.data
    out: list[tuple[str, dict[str, Any] | None, str]] = [
        ("torch-cpu", {"backend": "torch", "device": "cpu"} if has_torch else None,
         "" if has_torch else "bundle has no PyTorch weights"),
        ("onnxruntime-cpu", {"backend": "onnxruntime", "threads": threads}, ""),
    ]
    cuda = torch.cuda.is_available()
    gpu_note = "" if cuda else "no CUDA GPU"
    out.append(("torch-cuda", {"backend": "torch", "device": "cuda"} if cuda and has_torch else None, gpu_note))
    # the same with TF32 allowed (PyTorch's default for cuDNN convolutions; our torch backend turns it off):
    # what TF32 would buy in speed, and what it costs in parity with the CPU records
    out.append(("torch-cuda-tf32", {"backend": "torch", "device": "cuda", "allow_tf32": True}
                if cuda and has_torch else None, gpu_note or "TF32 allowed"))
    has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    out.append(("onnxruntime-cuda", {"backend": "onnxruntime", "providers": gpu_providers()} if has_cuda_ep else None,
                "" if has_cuda_ep else "onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)"))
    ok, why = tensorrt_status()
    plans = [n for n, e in m.engines.items() if e.get("tensorrt")]
    trt_ok = ok and bool(plans)
    note = why if not ok else ("" if plans else "bundle has no TensorRT plans (export with --tensorrt on)")
    if trt_ok:
        note = f"plans: {sorted(plans)}" + ("" if len(plans) == 4 else "; the rest on ORT")
        fp16 = any(m.engines[p].get("tensorrt_build", {}).get("fp16") for p in plans)
        label = "tensorrt-fp16" if fp16 else "tensorrt-fp32"
    else:
        label = "tensorrt"
    out.append((label, {"backend": "tensorrt", "device": "cuda:0"} if trt_ok else None, note))
    return out


def time_scoring(scorer: Any, slices: list[np.ndarray], ids: list[str], batch: int, repeats: int) -> tuple[float, list]:
    """Best-of-``repeats`` images/s over all slices in chunks of ``batch`` (and the records of the last pass)."""
    best = 0.0
    records: list = []
    for _ in range(repeats):
        records = []
        t = time.perf_counter()
        for i in range(0, len(slices), batch):
            records.extend(scorer.score(slices[i : i + batch], ids[i : i + batch]))
        best = max(best, len(slices) / (time.perf_counter() - t))
    return best, records


def ort_variants(bundle: Path, pubs: list[Path], threads: int, work: Path) -> list[tuple[str, Any, str]]:
    """ONNX Runtime configurations on the same bundle, side by side: (label, make_scorer, note).

    ``ort-old-defaults`` is the session set-up before issue 18 (threads left to onnxruntime, idle
    threads spinning); the INT8 rows quantize the bundle's detector and CLIP with
    ``export.quantize.quantize_int8`` (MatMul/Gemm only, the export default, and with Conv too).
    """
    from export.quantize import quantize_int8
    from gsal_edge.scoring.bundle import load_bundle, read_manifest
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine, OrtSessionSettings

    m = read_manifest(bundle)
    qdir = work / "int8"
    qdir.mkdir(parents=True, exist_ok=True)

    def quantized(op_types: tuple[str, ...]) -> Any:
        def make() -> Any:
            sc = load_bundle(bundle, trusted_keys=pubs, backend="onnxruntime", threads=threads)
            for name in ("detector", "clip_image"):
                dst = qdir / f"{name}.{'-'.join(op_types)}.onnx"
                if not dst.exists():
                    quantize_int8(m.root / m.engines[name]["onnx"], dst, op_types)
                sc.engines[name] = OrtEngine(name, dst, settings=OrtSessionSettings(intra_op_threads=threads))
            return sc
        return make

    def old_defaults() -> Any:
        sc = load_bundle(bundle, trusted_keys=pubs, backend="onnxruntime", threads=threads)
        old = OrtSessionSettings(intra_op_threads=0, allow_spinning=True)
        for name in list(sc.engines):
            sc.engines[name] = OrtEngine(name, m.root / m.engines[name]["onnx"], settings=old)
        return sc

    return [
        ("ort-old-defaults", old_defaults, "threads=0 (onnxruntime picks), spinning on: the set-up before issue 18"),
        ("ort-int8-matmul", quantized(("MatMul", "Gemm")), "detector+CLIP dynamic INT8, MatMul/Gemm (export default)"),
        ("ort-int8-conv", quantized(("MatMul", "Gemm", "Conv")), "detector+CLIP dynamic INT8 incl. Conv (ConvInteger)"),
    ]


def detector_only_ms(scorer: Any, slices: list[np.ndarray]) -> float:
    """Entropy's scoring cost per slice on this scorer's backend: the detector alone (ms)."""
    from gsal_edge.acquisition.uncertainty import image_uncertainty
    from gsal_edge.data.preprocessing import to_unit_float

    t = time.perf_counter()
    for s in slices:
        d = scorer._detect(to_unit_float(s, window=scorer.spec.window))
        image_uncertainty(d["all_class_probs"], d["all_scores"])
    return (time.perf_counter() - t) / len(slices) * 1e3


def batch1_latencies(scorer: Any, slices: list[np.ndarray], ids: list[str]) -> list[float]:
    """Seconds per slice, one ``score`` call each (what sequential ScoreOne costs the library)."""
    out = []
    for s, i in zip(slices, ids):
        t = time.perf_counter()
        scorer.score([s], [i])
        out.append(time.perf_counter() - t)
    return out


def sweep(scorer: Any, slices: list[np.ndarray], ids: list[str], batch: int) -> list[dict[str, Any]]:
    """ms/slice of full GSAL scoring as K, M, the batch size and screening change (one at a time)."""
    from dataclasses import replace

    base = scorer.spec
    ent = detector_only_ms(scorer, slices)
    cases: list[tuple[str, dict[str, Any], int]] = [("default", {}, batch)]
    cases += [(f"K={k}", {"K": k}, batch) for k in (1, 2, 8) if k != base.K]
    cases += [(f"M={m}", {"M": m}, batch) for m in (1, 4, 16) if m != base.M]
    cases += [(f"batch={b}", {}, b) for b in (1, 2, 4, 8, 16) if b != batch and b <= len(slices)]
    # screening's first pass: detector + whole-slice diffusion only (no proposals -> no crops, no CLIP)
    cases.append(("screening pass (M=0, no embedding)", {"M": 0, "image_embedding": False}, batch))
    rows = []
    for label, change, b in cases:
        scorer.spec = replace(base, **change)
        try:
            _, _ = time_scoring(scorer, slices[:b], ids[:b], b, 1)  # warm shapes
            ips, _ = time_scoring(scorer, slices, ids, b, 1)
        finally:
            scorer.spec = base
        ms = 1e3 / ips
        rows.append({"case": label, "batch": b, "ms_per_slice": round(ms, 1), "vs_entropy": round(ms / ent, 1)})
        print(f"  sweep {label:<36} batch {b:>2}: {ms:8.1f} ms/slice = {ms / ent:6.1f}x entropy's")
    return rows


def parity_row(ref: list, recs: list, n: int) -> dict[str, Any]:
    from export.config import ParityConfig
    from export.parity import records_parity
    from export.quantize import parity_summary

    rp = records_parity(ref, recs, ParityConfig(top_b=min(4, n)))
    out = parity_summary(rp)
    out["ok"] = rp.ok
    out["failed_fields"] = {k: c.to_dict() for k, c in rp.fields.items() if not c.ok}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle (or bundles folder with LATEST); default: build one")
    ap.add_argument("--pub", type=Path, action="append", help="trusted public key(s) of --bundle")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="the batched run's batch (the server's max_batch_size)")
    ap.add_argument("--size", type=int, default=256, help="slice side in pixels")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GSAL_BENCH_THREADS", "2")),
                    help="intra-op threads of every backend (torch.set_num_threads and ORT's intra_op)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds over all backends")
    ap.add_argument("--variants", action="store_true",
                    help="also ORT's old session defaults and INT8 detector/CLIP, with parity vs PyTorch")
    ap.add_argument("--sweep", action="store_true", help="also ms/slice vs K, M, batch size, screening (ORT)")
    ap.add_argument("--tensorrt", choices=["auto", "off", "on"], default="auto", help="when building the bundle")
    ap.add_argument("--fp16", action="store_true", help="TensorRT FP16 plans when building the bundle")
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench_runtime")
    ap.add_argument("--out", type=Path, help="results JSON (default WORK/results.json)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("GSAL_ORT_THREADS", str(args.threads))
    from gsal_edge.scoring.bundle import load_bundle, resolve_bundle_dir

    if args.bundle:
        bundle, pubs = resolve_bundle_dir(args.bundle), list(args.pub or [])
        if not pubs:
            ap.error("--bundle needs --pub (the key that signed it)")
    else:
        bundle, pub = build_bundle(args.work, args.model_size, args.tensorrt, args.fp16)
        pubs = [pub]
    slices, ids = parity_slices(args.images, args.size, seed=123)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"\nbench-runtime: {args.images} slices {args.size}x{args.size}, batch 1 and {args.batch}, "
          f"{args.threads} CPU threads, GPU: {device}, bundle {bundle.name}")
    makers: list[tuple[str, Any, str]] = []
    rows: list[dict[str, Any]] = []
    for label, kwargs, note in candidates(bundle, args.threads):
        if kwargs is None:
            print(f"  {label:<18} skipped: {note}")
            rows.append({"backend": label, "skipped": note})
            continue
        makers.append((label, (lambda kw=kwargs: load_bundle(bundle, trusted_keys=pubs, **kw)), note))
    if args.variants:
        makers += ort_variants(bundle, pubs, args.threads, args.work)
    scorers = {}
    for label, make, _ in makers:
        scorers[label] = make()
        scorers[label].warmup(args.size)
    lat: dict[str, list[float]] = {k: [] for k in scorers}
    best: dict[str, float] = dict.fromkeys(scorers, 0.0)
    ent: dict[str, list[float]] = {k: [] for k in scorers}
    recs: dict[str, list] = {}
    stage: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):  # interleaved slice by slice: every backend sees the same machine load
        for s, i in zip(slices, ids):
            for label, sc in scorers.items():
                lat[label] += batch1_latencies(sc, [s], [i])
                ent[label].append(detector_only_ms(sc, [s]))
        for label, sc in scorers.items():
            sc.timings = type(sc.timings)()
            ips, recs[label] = time_scoring(sc, slices, ids, args.batch, 1)
            best[label] = max(best[label], ips)
            tm = sc.timings
            stage[label] = {k: round(getattr(tm, k) / max(tm.images, 1) * 1e3, 2) for k in ("detector", "diffusion", "clip")}
    ref_label = next(iter(scorers), None)
    for label, _, note in makers:
        p50 = float(np.percentile(lat[label], 50)) * 1e3
        ent_ms = float(np.median(ent[label]))
        n = len(slices)  # lat/ent hold repeat-major samples: [r * n + slice]
        best_ms = float(np.mean(np.min(np.reshape(lat[label], (-1, n)), axis=0))) * 1e3
        best_ent = float(np.mean(np.min(np.reshape(ent[label], (-1, n)), axis=0)))
        row: dict[str, Any] = {
            "backend": label, "note": note, "threads": args.threads,
            "images_per_s_batch1": round(1.0 / float(np.mean(lat[label])), 2),
            "p50_ms_batch1": round(p50, 1), "p99_ms_batch1": round(float(np.percentile(lat[label], 99)) * 1e3, 1),
            f"images_per_s_batch{args.batch}": round(best[label], 2),
            "images_per_s_batched": round(best[label], 2),
            "ms_per_image_by_stage_batched": stage[label],
            "entropy_ms_per_slice": round(ent_ms, 2),
            "gsal_over_entropy_batch1": round(p50 / ent_ms, 1),
            # per slice, the fastest of the repeats (the least disturbed sample on a shared machine), averaged
            "best_ms_batch1": round(best_ms, 1), "best_entropy_ms": round(best_ent, 2),
            "gsal_over_entropy_best": round(best_ms / best_ent, 1),
        }
        eng = scorers[label].engines.get("unet")
        if getattr(eng, "settings", None) is not None:
            row["ort_settings"] = eng.settings.to_dict()
        if label == ref_label:
            row["parity_vs"] = "reference"
        else:
            row["parity_vs_first"] = parity_row(recs[ref_label], recs[label], len(ids))
        rows.append(row)
        par = row.get("parity_vs_first")
        par_s = "" if par is None else (f"  parity vs {ref_label}: top-b {'same' if par['selection_same'] else 'DIFFERENT'}"
                                        f", concepts {'same' if par['structure_same'] else 'DIFFERENT'}, e_rec max rel "
                                        f"{par['max_rel'].get('e_rec', 0):.1e}")
        print(f"  {label:<18} batch 1: p50 {p50:7.1f} ms  batch {args.batch}: {best[label]:6.2f} img/s  "
              f"entropy {ent_ms:6.1f} ms  GSAL/entropy {p50 / ent_ms:5.1f}x{par_s}")
    sweep_rows = []
    if args.sweep and "onnxruntime-cpu" in scorers:
        sweep_rows = sweep(scorers["onnxruntime-cpu"], slices, ids, args.batch)
    result = {
        "bundle": str(bundle), "bundle_id": bundle.name, "images": args.images, "size": args.size, "batch": args.batch,
        "threads": args.threads, "repeats": args.repeats,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "gpu": device,
                    "torch": torch.__version__, "onnxruntime": _ort_version()},
        "rows": rows, "sweep": sweep_rows,
    }
    out = args.out or args.work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results -> {out}")
    return 0


def _ort_version() -> str:
    import onnxruntime as ort

    return str(ort.__version__)


if __name__ == "__main__":
    raise SystemExit(main())
