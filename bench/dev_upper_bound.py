"""Supervised upper bound of a benchmark preset (issue 16: "the dev presets' upper bounds").

Trains the preset's detector (its ``detector`` + ``detector_overrides``) from scratch on EVERY pool slice with
its labels, on the exact split, window and F1 protocol of ``gsal-edge bench`` (thresholds chosen on the
validation split, applied on the test split), and prints one JSON line. A run of the benchmark reads the
same split, so this number is the ceiling its strategies approach at 100% labeled.

    python bench/dev_upper_bound.py --preset dev-a --iters 1600 --out /tmp/ub-dev-a [--threads 1] [--seed 0]

Measured numbers are recorded in docs/results.md ("Issue 16, step 3").
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", required=True, help="benchmark preset (bench_presets.yaml), e.g. dev-a")
    ap.add_argument("--iters", type=int, default=1600, help="optimizer iterations from scratch")
    ap.add_argument("--out", required=True, help="folder for the checkpoint, train log and result.json")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fraction", type=float, default=1.0,
                    help="train on a seeded random share of the pool instead of all of it (e.g. 0.1)")
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from gsal_edge.benchmark.config import load_preset
    from gsal_edge.benchmark.inputs import data_window, load_data
    from gsal_edge.benchmark.split import pool_test_split, validation_split
    from gsal_edge.benchmark.training import DetectorRounds
    from gsal_edge.models.detector_training import train_detector

    cfg = load_preset(args.preset)
    ds = load_data(cfg.data, progress=False)
    test_ids, pool_ids = pool_test_split(ds, cfg.data.test_fraction, cfg.data.split_seed)
    val_ids, pool_ids = validation_split(ds, pool_ids, cfg.data.val_fraction, cfg.data.test_fraction,
                                         cfg.data.split_seed)
    cfg.data.window = data_window(cfg.data, ds, pool_ids)
    train_ids = list(pool_ids)
    if args.fraction < 1.0:
        rng = np.random.default_rng(args.seed)
        train_ids = sorted(rng.choice(train_ids, max(1, round(args.fraction * len(train_ids))), replace=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rounds = DetectorRounds(cfg, ds, test_ids, out, "cpu", val_ids)
    dcfg = rounds.detector_config("typed")
    epochs = rounds.epochs_for(len(train_ids), dcfg.train.batch_size, args.iters)
    t0, c0 = time.time(), time.process_time()
    model = train_detector(ds, dcfg, epochs=epochs, out_dir=out / "train", seed=args.seed, image_ids=train_ids,
                           window=cfg.data.window, progress=True)
    wall, cpu = time.time() - t0, time.process_time() - c0
    m = rounds.evaluate(model)
    rec = {"preset": args.preset, "train_images": len(train_ids), "fraction": args.fraction, "epochs": epochs,
           "iters_target": args.iters, "seed": args.seed, "threads": args.threads,
           "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "test_images": len(test_ids),
           "f1": round(m["f1"], 4), "f1_macro": round(m["f1_macro"], 4), "map50": round(m["map50"], 4),
           "ap": round(float(m.get("ap", float("nan"))), 4),
           "per_class_f1": {c: round(float(v["f1"]), 4) for c, v in (m.get("per_class") or {}).items()
                            if v.get("n_gt", 0) > 0}}
    (out / "result.json").write_text(json.dumps(rec, indent=1))
    print(json.dumps(rec))


if __name__ == "__main__":
    main()
