"""Train the cpu detector on ~80 random labeled slices of a dev preset's data, test on 150 held-out (issue 16).

Usage: python bench/detector_dev_check.py DATA before|after OUT [N_LABELED [TRAIN_KWARGS_JSON]] (one JSON line).
"""
import json
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)
from gsal_edge.data.formats import load_dataset
from gsal_edge.data.image_io import load_image
from gsal_edge.data.preprocessing import resolve_window
from gsal_edge.models import detector_training as dt
from gsal_edge.models.detector_config import get_config

data, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
n_lab = int(sys.argv[4]) if len(sys.argv) > 4 else 80
ds = load_dataset(data)
ids = [e.image_id for e in ds.images]
perm = np.random.default_rng(16).permutation(len(ids))
test = [ids[i] for i in perm[:150]]
lab = [ids[i] for i in perm[150:150 + n_lab]]
pool = [ids[i] for i in perm[150:]]
# the benchmark's `window: auto`: robust percentiles of a pool sample
window = resolve_window("auto", (load_image(ds.image_path(ds.subset(pool).images[i])) for i in range(0, len(pool), 3)))
ov = {"train": {"optimizer": "adamw", "lr": 0.002, "lr_schedule": "cosine", "warmup_iters": 40, "batch_size": 4}}
cfg = get_config("cpu", ov)
t0 = time.process_time(); w0 = time.time()
extra = {}
if mode == "before":
    epochs = max(1, round(400 / int(np.ceil(len(lab) / 4))))  # DetectorRounds.epochs_for, train_iters 400
    model = dt.train_detector(ds, cfg, epochs=epochs, seed=101000, image_ids=lab, window=window, progress=False)
else:
    kw = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    res = dt.train_detector(ds, cfg, seed=101000, image_ids=lab, window=window, progress=False, out_dir=out, **kw)
    model = res
    extra = json.loads((__import__("pathlib").Path(out) / "run.json").read_text()).get("validation")
cpu = time.process_time() - t0
m = dt.evaluate_detector(model, ds, test, window=window)
rec = {"data": data, "mode": mode, "n_labeled": len(lab), "n_test": len(test), "window": window,
       "f1": m["f1"], "f1_macro": m["f1_macro"], "map50": m["map50"],
       "per_class_f1": {k: v["f1"] for k, v in m["per_class"].items()}, "train_cpu_s": cpu,
       "train_wall_s": time.time() - w0, "anchors": model.config.anchor_sizes, "ratios": model.config.aspect_ratios,
       "validation": extra}
if mode == "after":  # the last weights (no validation selection), on the same test images
    from gsal_edge.models.detector import load_checkpoint
    last, _ = load_checkpoint(f"{out}/last.pt")
    ml = dt.evaluate_detector(last, ds, test, window=window)
    rec["last_weights"] = {"f1": ml["f1"], "f1_macro": ml["f1_macro"], "map50": ml["map50"]}
print(json.dumps(rec))
