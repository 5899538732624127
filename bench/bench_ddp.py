"""Data-parallel detector training (DDP over torchrun): wall time and images/s of 1 vs 2 processes, in one run.

    python bench/bench_ddp.py                                  # cpu preset, 64 synthetic slices, 3 epochs
    python bench/bench_ddp.py --configs 1x1 2x1 1x2 --repeats 2 --epochs 5
    python bench/bench_ddp.py --preset tiny --size 192 --images 128

Every run trains the same detector config on the same synthetic slices for the same epochs and seed,
through the same torchrun worker (``gsal_edge.models.detector_train_worker``; 1 process is torchrun
with one worker, so both pay the same start-up). A config ``PxT`` is P processes with T torch threads
each: ``1x1`` vs ``2x1`` is the DDP scaling on 1 vs 2 cores, ``1x2`` the same 2 cores used by one process's
intra-op threads instead. The global batch is ``--batch`` in every run (each of P processes takes
batch / P), so all runs take the same iterations and LR schedule.

Reported per run: ``wall_s`` (the whole torchrun launch: interpreter and torch start, data load,
training, rank-0 checkpoint), ``train_s`` (train_detector itself, slowest rank), training images/s
(iterations x global batch / train_s), the last-epoch loss and the validation F1 / mAP@50 / AP of rank
0's model (after a few epochs these say little; the equivalence test is
tests/models/test_distributed_training.py). Runs alternate between configs (``--repeats`` rounds) so
that a shared machine's load drifts over all of them alike; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKER = "gsal_edge.models.detector_train_worker"


def parse_config(text: str) -> tuple[int, int]:
    """``"2x1"`` -> (2 processes, 1 thread each)."""
    p, sep, t = text.partition("x")
    if not sep or not p.isdigit() or not t.isdigit() or int(p) < 1 or int(t) < 1:
        raise argparse.ArgumentTypeError(f"config {text!r}: expected PROCESSESxTHREADS, e.g. 2x1")
    return int(p), int(t)


def make_data(work: Path, n_train: int, n_val: int, size: int, seed: int) -> tuple[Path, Path]:
    """Synthetic CT slices (the project's generator) as COCO folders, made once per size and count."""
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset

    train, val = work / f"train-{n_train}-{size}-{seed}", work / f"val-{n_val}-{size}-{seed}"
    cfg = SynthConfig(height=size, width=size)
    for path, n, s in ((train, n_train, seed), (val, n_val, seed + 1)):
        if not (path / "annotations.json").is_file():
            generate_dataset(path, n, seed=s, cfg=cfg, progress=False)
    return train, val


def run_once(procs: int, threads: int, data: Path, val: Path, cfg_path: Path, out: Path, epochs: int,
             seed: int) -> dict[str, Any]:
    """One torchrun launch; its numbers from the run folder rank 0 wrote."""
    from gsal_edge.models.distributed import launch

    t0 = time.perf_counter()
    launch(WORKER, ["--data", data, "--config", cfg_path, "--out", out, "--epochs", epochs, "--seed", seed,
                    "--no-resume", "--val", val, "--threads", threads],
           procs, log_path=out.with_suffix(".log"), threads_per_proc=threads, timeout_s=3600)
    wall = time.perf_counter() - t0
    ddp = json.loads((out / "ddp.json").read_text())
    hist = json.loads((out / "run.json").read_text())["history"]
    m = json.loads((out / "metrics.json").read_text())
    return {"config": f"{procs}x{threads}", "processes": procs, "threads_per_process": threads,
            "batch_per_process": ddp["batch_per_process"], "wall_s": wall, "train_s": ddp["train_seconds"],
            "images_per_s": ddp["images_per_s"], "iters": sum(h["iters"] for h in hist),
            "last_epoch_loss": hist[-1]["loss"], "replicas_in_sync": ddp["replicas_in_sync"],
            "f1": m["f1"], "map50": m["map50"], "ap": m["ap"]}


def _num(v: float | None) -> str:
    return f"{v:>6.3f}" if isinstance(v, float) and math.isfinite(v) else f"{'-':>6}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=parse_config, nargs="+", default=[(1, 1), (2, 1)],
                    help="PROCESSESxTHREADS per run, e.g. 1x1 2x1 1x2")
    ap.add_argument("--preset", default="cpu", help="detector preset")
    ap.add_argument("--size", type=int, default=192, help="slice side (px) and detector input size")
    ap.add_argument("--images", type=int, default=64, help="training slices")
    ap.add_argument("--val-images", type=int, default=16, help="validation slices")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="global batch (each of P processes takes batch / P)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all configs, alternating")
    ap.add_argument("--work", type=Path, default=REPO / "artifacts" / "bench_ddp", help="data and run folders")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "ddp.json")
    args = ap.parse_args(argv)

    from gsal_edge.models.detector_config import get_config
    from gsal_edge.provenance import provenance

    if any(args.batch % p for p, _ in args.configs):
        ap.error(f"--batch {args.batch} must be a multiple of every process count {[p for p, _ in args.configs]}")
    args.work.mkdir(parents=True, exist_ok=True)
    data, val = make_data(args.work, args.images, args.val_images, args.size, args.seed)
    cfg = get_config(args.preset, {"min_size": args.size, "max_size": args.size,
                                   "train": {"batch_size": args.batch}})
    cfg_path = args.work / f"config-{args.preset}-{args.size}-{args.batch}.json"
    cfg_path.write_text(cfg.model_dump_json(indent=2))
    rows: list[dict[str, Any]] = []
    for r in range(args.repeats):
        for procs, threads in args.configs:
            row = run_once(procs, threads, data, val, cfg_path, args.work / f"run-{procs}x{threads}-{r}",
                           args.epochs, args.seed)
            row["repeat"] = r
            rows.append(row)
            print(f"{row['config']} (round {r}): train {row['train_s']:.1f}s, {row['images_per_s']:.1f} img/s, "
                  f"wall {row['wall_s']:.1f}s, loss {row['last_epoch_loss']:.4f}", file=sys.stderr, flush=True)
    base = [x for x in rows if x["config"] == "1x1"]
    best_base = max((x["images_per_s"] for x in base), default=None)
    for x in rows:
        x["speedup_vs_1x1"] = x["images_per_s"] / best_base if best_base else None

    print(f"\n{'config':<7} {'round':>5} {'batch/proc':>10} {'iters':>5} {'train s':>8} {'img/s':>7} {'wall s':>7} "
          f"{'x 1x1':>6} {'loss':>7} {'F1':>6} {'mAP50':>6} {'AP':>6} sync")
    for x in rows:
        sp = f"{x['speedup_vs_1x1']:.2f}" if x["speedup_vs_1x1"] else "-"
        print(f"{x['config']:<7} {x['repeat']:>5} {x['batch_per_process']:>10} {x['iters']:>5} {x['train_s']:>8.1f} "
              f"{x['images_per_s']:>7.1f} {x['wall_s']:>7.1f} {sp:>6} {x['last_epoch_loss']:>7.4f} "
              f"{_num(x['f1'])} {_num(x['map50'])} {_num(x['ap'])} {x['replicas_in_sync']}")
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "preset": args.preset,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "provenance": provenance()}
    from gsal_edge.jsonio import write_json_atomic

    write_json_atomic(args.out, {"meta": meta, "rows": rows})
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
