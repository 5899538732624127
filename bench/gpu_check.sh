#!/usr/bin/env bash
# GPU check of issue 7 (export + runtime backends), prepared to run ONCE on a lent GPU machine.
#
#   1. here:  download the wheels listed in bench/gsal_gpu_check_wheels.txt into .whl/ (command in that file)
#   2. device tool:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=480)
#
# Installs nothing from the network: the carried wheels go to /tmp/site. It builds "small" random-init
# models with the real builders, exports them (ONNX + TensorRT FP16 where TensorRT exists, each plan
# parity-checked against ONNX Runtime), then benchmarks full GSAL scoring per backend side by side
# (PyTorch CPU/CUDA, ONNX Runtime CPU/CUDA, TensorRT), batch 1 and 8, with records parity vs PyTorch.
# A backend that is missing on the machine gets one line saying so. Whole run capped at GSAL_GPU_CHECK_LIMIT
# seconds (default 420, well under the 8-minute budget). Results: $OUT/bench_runtime.json + $OUT/gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
LIMIT=${GSAL_GPU_CHECK_LIMIT:-420}
PY=${PY:-python3}
OUTDIR=${OUT:-artifacts/gpu_check}
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing carried wheels failed"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
{
  echo "== machine"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | head -2
  $PY - <<'EOF'
import importlib, importlib.metadata as md
for n in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "diffusers", "open_clip_torch",
          "pydantic", "cryptography"):
    try:
        print(f"  {n:<16} {md.version(n)}")
    except md.PackageNotFoundError:
        print(f"  {n:<16} not installed")
import torch, onnxruntime as ort
print("  cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("  onnxruntime providers:", ort.get_available_providers())
from gsal_edge.runtime.tensorrt_backend import tensorrt_status
print("  tensorrt:", tensorrt_status()[1])
EOF
  echo "== export + benchmark (limit ${LIMIT}s)"
  timeout "$LIMIT" $PY bench/bench_runtime.py --model-size small --images 16 --batch 8 --threads 8 --repeats 2 \
    --tensorrt auto --fp16 --work /tmp/gsal_gpu_check --out "$OUTDIR/bench_runtime.json"
  rc=$?
  [ $rc -eq 124 ] && echo "gpu_check: stopped at the ${LIMIT}s limit"
  echo "== TensorRT builds and parity (from the bundle manifest)"
  $PY - <<'EOF'
import json, pathlib
for m in sorted(pathlib.Path("/tmp/gsal_gpu_check/bundles").glob("bundle-*/manifest.json")):
    d = json.loads(m.read_text())
    print(" ", m.parent.name, "tensorrt:", json.dumps(d.get("tensorrt", {}))[:300])
    for n, e in d["engines"].items():
        b = e.get("tensorrt_build")
        if b:
            outs = b["parity_vs_onnxruntime"]["outputs"]
            print(f"    {n:<12} build {b['seconds']}s fp16={b['fp16']} " +
                  " ".join(f"{o}: max_abs={c['max_abs']} max_rel={c['max_rel']} ok={c['ok']}" for o, c in outs.items()))
EOF
  exit $rc
} 2>&1 | grep --line-buffered -v -e "accelerate" -e '^```' -e '^\.$' | tee "$OUTDIR/gpu_check.log"
