#!/usr/bin/env bash
# GPU check, prepared to run ONCE on a lent GPU machine (device tool), in timed parts (A-C by default):
#   A. runtime backends: full GSAL scoring per backend side by side (PyTorch CPU/CUDA, ONNX Runtime
#      CPU/CUDA, TensorRT), batch 1 and batched, records parity vs the first backend (bench/bench_runtime.py).
#      With GSAL_GPU_BUNDLE (+ GSAL_GPU_PUB) it scores that bundle (e.g. the demo's trained embedded
#      default); else it builds and exports "small" random-init models (TensorRT FP16 plans where
#      TensorRT exists, each parity-checked against ONNX Runtime).
#   B. detector training steps on CUDA vs CPU (`gsal-edge detector bench --device`): the `cpu` preset on
#      both, the `paper` preset (ResNet-50 FPN, 600 px) on CUDA.
#   C. the active-learning benchmark's `tiny` preset end to end with the detector on CUDA (--device cuda),
#      on the bundle's PyTorch prior and CLIP (needs GSAL_GPU_BUNDLE).
#   E. (only with GSAL_GPU_PARTS containing E, needs GSAL_GPU_BUNDLE) the bundle's PyTorch sources re-exported
#      with TensorRT FP16 plans, then part A's benchmark on that bundle -> $OUT/bench_runtime_trt.json.
#   Then, here: python bench/make_benchmarks_md.py --no-run --gpu-results <the fetched $OUT> fills the GPU rows.
#   D. (only with GSAL_GPU_PARTS containing D) the `paper` preset, shrunk to fit a few minutes: ResNet-50 FPN
#      on CUDA, 600 synthetic slices, gsal + entropy, 1% -> 3%, 60 iterations a round.
#
#   here:    download the wheels of bench/gsal_gpu_check_wheels.txt into .whl/ (command in that file)
#   device:  run(command="GSAL_GPU_BUNDLE=artifacts/demo/bundles/bundle-ID GSAL_GPU_PUB=artifacts/demo/keys/
#                signing_key.pub.pem bash bench/gpu_check.sh",
#                carry=[".whl", "artifacts/demo/bundles/bundle-ID", "artifacts/demo/keys/signing_key.pub.pem"])
#
# Installs nothing from the network. A backend or part that cannot run prints one line saying why; the
# others still run. Each part has its own time limit; GSAL_GPU_PARTS=A (or AB, ABCD ...) runs only those.
# Results: $OUT/gpu_check.log, $OUT/bench_runtime.json, $OUT/bench_al_tiny.json, $OUT/bench_paper_report.md.
# Measured on an H100 (2026-11-27): A 62-75 s, B 50 s, C 30 s, D > 330 s (scoring-bound then; see
# docs/results.md "On a GPU").
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
OUTDIR=${OUT:-artifacts/gpu_check}
BUNDLE=${GSAL_GPU_BUNDLE:-}
PUB=${GSAL_GPU_PUB:-}
PARTS=${GSAL_GPU_PARTS:-ABC}  # which parts to run, e.g. GSAL_GPU_PARTS=A
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
CLI=($PY -c "from gsal_cli.main import app; app()")
part() {  # part NAME LIMIT_S CMD...: run CMD under a limit, say how it ended
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: rc $rc in $((SECONDS - t0))s$([ $rc -eq 124 ] && echo ", stopped at the limit")"
}
{
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  echo "  cpu cores: $(nproc)"
  $PY - <<'EOF'
import importlib.metadata as md
for n in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "diffusers", "open_clip_torch",
          "pydantic", "cryptography", "typer", "grpcio"):
    try:
        print(f"  {n:<16} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n:<16} not installed")
import torch, onnxruntime as ort
print("  cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("  onnxruntime providers:", ort.get_available_providers())
from gsal_edge.scoring.runtime.tensorrt_backend import tensorrt_status
print("  tensorrt:", tensorrt_status()[1])
EOF
  if [[ $PARTS != *A* ]]; then
    echo "== A. not asked for (GSAL_GPU_PARTS=$PARTS)"
  elif [ -n "$BUNDLE" ]; then
    part "A. runtime backends on $BUNDLE" 200 $PY bench/bench_runtime.py --bundle "$BUNDLE" --pub "$PUB" \
      --images 32 --batch 16 --threads 16 --repeats 2 --variants --work /tmp/gsal_gpu_check \
      --out "$OUTDIR/bench_runtime.json"
  else
    part "A. runtime backends, small random-init bundle" 300 $PY bench/bench_runtime.py --model-size small \
      --images 16 --batch 8 --threads 8 --repeats 2 --tensorrt auto --fp16 --work /tmp/gsal_gpu_check \
      --out "$OUTDIR/bench_runtime.json"
  fi
  if [[ $PARTS == *B* ]]; then
    part "B1. detector training steps, cpu preset, cuda" 60 "${CLI[@]}" detector bench --preset cpu --device cuda \
      --threads 16 --batch 8 --steps 10
    part "B2. detector training steps, cpu preset, cpu" 60 "${CLI[@]}" detector bench --preset cpu --device cpu \
      --threads 16 --batch 8 --steps 3
    part "B3. detector training steps, paper preset, cuda" 90 "${CLI[@]}" detector bench --preset paper --device cuda \
      --threads 16 --batch 8 --steps 10
  fi
  if [[ $PARTS != *C* ]]; then
    echo "== C. not asked for (GSAL_GPU_PARTS=$PARTS)"
  elif [ -n "$BUNDLE" ]; then
    part "C. bench --preset tiny --device cuda" 120 "${CLI[@]}" bench --preset tiny --device cuda --threads 16 \
      --prior "$BUNDLE/torch/prior" --clip "$BUNDLE/torch/clip" --out /tmp/gsal_bench_tiny --quiet
    $PY - "$OUTDIR/bench_al_tiny.json" <<'EOF'
import json, pathlib, sys
run = pathlib.Path("/tmp/gsal_bench_tiny")
rows = {str(p.relative_to(run)): json.loads(p.read_text()) for p in sorted(run.glob("results/**/*.json"))}
cfg = json.loads((run / "run.json").read_text()) if (run / "run.json").is_file() else {}
pathlib.Path(sys.argv[1]).write_text(json.dumps({"config_device": cfg.get("config", {}).get("device"),
                                                 "versions": cfg.get("versions"), "git": cfg.get("git"), "results": rows}, indent=1))
print(f"  bench tiny: {len(rows)} result files -> {sys.argv[1]}")
EOF
  else
    echo "== C. skipped: needs GSAL_GPU_BUNDLE (its torch/prior and torch/clip)"
  fi
  if [[ $PARTS == *E* && -n "$BUNDLE" ]]; then  # opt-in: TensorRT FP16 plans of the trained bundle's own models
    "${CLI[@]}" export keygen --key /tmp/gsal_trt_key.pem --force >/dev/null
    part "E1. re-export $BUNDLE's PyTorch sources with TensorRT FP16 plans" 240 "${CLI[@]}" export \
      --detector "$BUNDLE/torch/detector.pt" --prior "$BUNDLE/torch/prior" --clip "$BUNDLE/torch/clip" \
      --graph "$BUNDLE/concept_graph.json" --out /tmp/gsal_trt_bundles --key /tmp/gsal_trt_key.pem \
      --tensorrt on --fp16
    part "E2. runtime backends on the FP16 re-export" 200 $PY bench/bench_runtime.py --bundle /tmp/gsal_trt_bundles \
      --pub /tmp/gsal_trt_key.pub.pem --images 32 --batch 16 --threads 16 --repeats 2 --work /tmp/gsal_gpu_check \
      --out "$OUTDIR/bench_runtime_trt.json"
  fi
  if [[ $PARTS == *D* && -n "$BUNDLE" ]]; then  # not in the default parts: a smoke of the `paper` preset
    part "D. bench --preset paper, shrunk (600 slices, 2 strategies, 1-3%, 60 iterations)" 330 "${CLI[@]}" bench \
      --preset paper --n-images 600 --strategies gsal,entropy --seeds 1 --budget 0.03 --train-iters 60 \
      --candidates 200 --device cuda --threads 16 --prior "$BUNDLE/torch/prior" --clip "$BUNDLE/torch/clip" \
      --out /tmp/gsal_bench_paper --quiet
    cp /tmp/gsal_bench_paper/report.md "$OUTDIR/bench_paper_report.md" 2>/dev/null || true
  fi
} 2>&1 | grep --line-buffered -v -e "accelerate" -e '^```' -e '^\.$' | tee "$OUTDIR/gpu_check.log"
