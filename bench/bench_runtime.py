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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, help="bundle (or bundles folder with LATEST); default: build one")
    ap.add_argument("--pub", type=Path, action="append", help="trusted public key(s) of --bundle")
    ap.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8, help="the batched run's batch (the server's max_batch_size)")
    ap.add_argument("--size", type=int, default=256, help="slice side in pixels")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("GSAL_BENCH_THREADS", "2")))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tensorrt", choices=["auto", "off", "on"], default="auto", help="when building the bundle")
    ap.add_argument("--fp16", action="store_true", help="TensorRT FP16 plans when building the bundle")
    ap.add_argument("--work", type=Path, default=ROOT / "artifacts" / "bench_runtime")
    ap.add_argument("--out", type=Path, help="results JSON (default WORK/results.json)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("GSAL_ORT_THREADS", str(args.threads))
    from export.config import ParityConfig
    from export.parity import records_parity
    from export.pipeline import parity_slices
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
    rows: list[dict[str, Any]] = []
    ref_records: list | None = None
    for label, kwargs, note in candidates(bundle, args.threads):
        if kwargs is None:
            print(f"  {label:<18} skipped: {note}")
            rows.append({"backend": label, "skipped": note})
            continue
        scorer = load_bundle(bundle, trusted_keys=pubs, **kwargs)
        scorer.warmup(args.size)
        ips1, _ = time_scoring(scorer, slices, ids, 1, args.repeats)
        scorer.timings = type(scorer.timings)()
        ipsb, recs = time_scoring(scorer, slices, ids, args.batch, args.repeats)
        tm = scorer.timings
        stage = {k: round(getattr(tm, k) / max(tm.images, 1) * 1e3, 2) for k in ("detector", "diffusion", "clip")}
        row = {"backend": label, "images_per_s_batch1": round(ips1, 2), f"images_per_s_batch{args.batch}": round(ipsb, 2),
               "ms_per_image_by_stage_batched": stage, "note": note}
        if ref_records is None:
            ref_records = recs
            row["parity_vs"] = "reference"
        else:
            rp = records_parity(ref_records, recs, ParityConfig(top_b=min(4, len(ids))))
            failed = {k: c.to_dict() for k, c in rp.fields.items() if not c.ok}
            row["parity_vs_first"] = {"ok": rp.ok, "e_rec_max_rel": rp.fields["e_rec"].max_rel,
                                      "selection_same": rp.selection_ok, "failed_fields": failed,
                                      "structure_notes": rp.structure_notes[:5]}
        rows.append(row)
        par = row.get("parity_vs_first")
        par_s = "" if par is None else (f"  e_rec max rel err vs {rows[0]['backend']} {par['e_rec_max_rel']:.1e}, "
                                        f"top-b {'same' if par['selection_same'] else 'DIFFERENT'}"
                                        + "".join(f"; {k} over tolerance (max abs {c['max_abs']:.2g}, rel "
                                                  f"{c['max_rel']:.2g})" for k, c in par["failed_fields"].items())
                                        + "".join(f"; {n}" for n in par["structure_notes"][:2]))
        print(f"  {label:<18} batch 1: {ips1:8.2f} img/s   batch {args.batch}: {ipsb:8.2f} img/s   "
              f"ms/img det {stage['detector']:.1f} diff {stage['diffusion']:.1f} clip {stage['clip']:.1f}{par_s}"
              + (f"  ({note})" if note else ""))
    result = {
        "bundle": str(bundle), "images": args.images, "size": args.size, "batch": args.batch, "threads": args.threads,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "gpu": device,
                    "torch": torch.__version__},
        "rows": rows,
    }
    out = args.out or args.work / "results.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"results -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
