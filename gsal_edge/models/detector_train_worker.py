"""One rank of a data-parallel detector training run: the program torchrun starts on every process.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        -m gsal_edge.models.detector_train_worker --data DIR --preset tiny --out RUN --epochs 2

Each rank joins the process group from torchrun's environment, loads the same data set (COCO / VOC /
YOLO folder) and config, and calls :func:`gsal_edge.models.detector_training.train_detector`, which
shards the batches. Rank 0 writes the run folder (``detector.pt``, ``run.json``, ``train_log.jsonl``),
``ddp.json`` (world size, backend, wall time, images/s, one parameter digest per rank: equal digests
show the replicas stayed in sync) and, with ``--val``, ``metrics.json`` of the trained model.
Started without torchrun it trains in one process (the same files, world size 1).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from gsal_edge.models import distributed

DDP_RECORD = "ddp.json"
METRICS = "metrics.json"


def param_digest(model: torch.nn.Module) -> str:
    """sha256 (16 hex) over the model's parameters, by name: equal on replicas that are in sync."""
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The worker's command line (the same on every rank)."""
    p = argparse.ArgumentParser(prog="gsal_edge.models.detector_train_worker", description=__doc__.split("\n")[0])
    p.add_argument("--data", required=True, type=Path, help="training set: a COCO / VOC / YOLO folder or COCO json")
    cfg = p.add_mutually_exclusive_group(required=True)
    cfg.add_argument("--preset", help="detector preset name (tiny, cpu, edge, paper)")
    cfg.add_argument("--config", type=Path, help="detector config YAML/JSON (a full config or preset + overrides)")
    p.add_argument("--out", required=True, type=Path, help="run folder (rank 0 writes it)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the config's)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, epoch order, flips, samplers")
    p.add_argument("--max-iters", type=int, default=None, help="stop after this many iterations in total")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing last.pt in --out")
    p.add_argument("--window", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="intensity window of the slices (as the serving detector's preprocessing)")
    p.add_argument("--ids", type=Path, default=None, help="JSON list of image ids to train on (default: all)")
    p.add_argument("--val", type=Path, default=None, help="data set to evaluate the trained model on (rank 0)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    p.add_argument("--backend", choices=distributed.BACKENDS, default="auto", help="gloo (CPU) or nccl (CUDA)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda:LOCAL_RANK with nccl, else cpu)")
    p.add_argument("--progress", action="store_true", help="progress bar on rank 0")
    return p.parse_args(argv)


def _config(args: argparse.Namespace):
    from gsal_edge.models.detector_config import get_config, load_config

    return get_config(args.preset) if args.preset else load_config(args.config)


def main(argv: list[str] | None = None) -> int:
    """Train (one rank of) a detector; rank 0 writes the run folder. Returns the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    torch.set_num_threads(args.threads)
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models.detector_training import evaluate_detector, train_detector

    ctx = distributed.init_from_env(args.backend, args.device)
    try:
        cfg = _config(args)
        ds = load_dataset(args.data)
        ids = json.loads(args.ids.read_text()) if args.ids else None
        device = ctx.device if args.device in (None, "cuda") else args.device
        window = (args.window[0], args.window[1]) if args.window else None
        t0 = time.perf_counter()
        model = train_detector(ds, cfg, args.epochs, args.out, args.seed, not args.no_resume, ids, window=window,
                               progress=args.progress, max_iters=args.max_iters, device=device)
        seconds = time.perf_counter() - t0
        digests = [param_digest(model)]
        if dist.is_initialized():
            gathered: list = [None] * ctx.world_size
            dist.all_gather_object(gathered, (digests[0], seconds))
            digests, seconds = [g[0] for g in gathered], max(g[1] for g in gathered)
        if ctx.is_main:
            run = json.loads((args.out / "run.json").read_text())
            n_seen = sum(h["iters"] for h in run["history"]) * cfg.train.batch_size  # a short last batch counts full
            record = {"world_size": ctx.world_size, "backend": ctx.backend if ctx.world_size > 1 else None,
                      "batch_global": cfg.train.batch_size, "batch_per_process": run["batch_per_process"],
                      "threads_per_process": args.threads, "train_seconds": seconds,
                      "images_per_s": n_seen / seconds if seconds > 0 else None,
                      "replica_param_digests": digests, "replicas_in_sync": len(set(digests)) == 1}
            (args.out / DDP_RECORD).write_text(json.dumps(record, indent=2))
            if args.val is not None:
                from gsal_edge.jsonio import to_jsonable

                metrics = evaluate_detector(model, load_dataset(args.val), window=window)
                (args.out / METRICS).write_text(json.dumps(to_jsonable(metrics), indent=2))
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by torchrun
    sys.exit(main())
