# GSAL Edge — the two commands a fresh machine needs are `make demo` and `make test`.
# Everything else (venv, generated protobuf code, data, models, bundles) is built on demand.

SHELL := /bin/bash
PY_SYS ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
GSAL   := $(VENV)/bin/gsal-edge
ART    ?= artifacts
# torch/torchvision pinned to the pair this machine installs offline (see docs/ and pyproject.toml)
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: help setup services proto test test-fast demo export bench bench-selection bench-runtime bench-server bench-al lint clean distclean
.PHONY: bench-ingest

help:  ## list targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q $(TORCH_PINS)
	$(PIP) install -q -e '.[dev]'
	$(PY) proto/build.py
	$(PIP) install -q --no-deps -e .   # again, so the editable install maps the generated gsal_proto
	@touch $@

setup: $(VENV)/.installed proto  ## build .venv from nothing and generate protobuf code

services: setup  ## install the external programs integration tests start (Label Studio, PostgreSQL, Chromium ...)
	@set -e; for f in .ci/install/*.sh; do [ -e "$$f" ] || continue; echo "== $$f"; PY=$(PY) bash "$$f"; done

proto: $(VENV)/.installed  ## (re)generate gRPC/protobuf code from proto/gsal_proto/*.proto (never hand-edited)
	$(PY) proto/build.py

test: services  ## run the whole test suite (fast unit tests + marked slow integration tests)
	$(PY) -m pytest -q --timeout=900

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not slow" --timeout=300

demo: setup  ## the main job on the embedded default: data, models, scoring, selection with rationale
	$(PY) -m gsal_cli.demo --out $(ART)/demo

export: setup  ## ONNX (+TensorRT where present) bundle from the current checkpoints
	$(GSAL) export --models $(ART)/demo/models --out $(ART)/bundles

bench-selection: setup  ## 1,000,000-record selection benchmark
	$(PY) bench/bench_selection.py

bench-runtime: setup  ## images/s of full GSAL scoring per backend (PyTorch vs ONNX Runtime here)
	$(PY) bench/bench_runtime.py

bench-server: setup  ## gRPC station vs in-process scoring: slices/s, p50/p99 at concurrency 1/4/16 (loopback)
	$(PY) bench/bench_server.py

.PHONY: bench-backfill
bench-backfill: setup  ## backfill slices/s: in-process vs 1 vs 2 Ray workers (the demo's bundle + slices; installs ray)
	PY=$(PY) bash .ci/install/50-ray.sh
	$(PY) bench/bench_backfill.py

.PHONY: bench-ddp
bench-ddp: setup  ## DDP detector training: wall time and images/s of 1 vs 2 torchrun processes (gloo on CPU)
	$(PY) bench/bench_ddp.py

bench-al: setup  ## active-learning benchmark, `quick` preset (hours on 2 cores; resumable: rerun to continue)
	$(GSAL) bench --preset quick --out $(ART)/bench-al

bench-ingest: services  ## ingest records/s into SQLite vs PostgreSQL (throw-away local server), side by side
	$(PY) bench/bench_ingest.py

bench: services  ## CPU benchmarks, 30 s load test, fuzz + fault tests (~20 min on 2 cores), then BENCHMARKS.md (bench-al, soak: separate)
	$(PY) bench/make_benchmarks_md.py --results $(ART)/bench

lint: setup
	$(VENV)/bin/ruff check gsal_edge gsal_cli server trainer export tests bench
	$(VENV)/bin/lint-imports --config pyproject.toml

clean:  ## remove build outputs (keeps .venv)
	rm -rf $(ART) .pytest_cache

distclean: clean
	rm -rf $(VENV)

.PHONY: load-test soak
SOAK_MAX_SLOPE ?= 1.0
load-test: setup  ## 30 s load test: 4 Score streams into a real station + trainer (loopback); JSON + PNG in $(ART)/load
	$(PY) bench/load_test.py --streams 4 --duration 30 --out $(ART)/load

soak: setup  ## 10-minute soak = leak check: fails when an RSS slope over the last 80% >= SOAK_MAX_SLOPE MB/min; $(ART)/bench/soak (BENCHMARKS.md reads it)
	@mkdir -p $(ART)/bench/soak && git rev-parse --short HEAD > $(ART)/bench/soak/commit.txt 2>/dev/null || true
	$(PY) bench/load_test.py --streams 4 --duration 600 --sample-s 2 --max-slope-mb-min $(SOAK_MAX_SLOPE) --out $(ART)/bench/soak
