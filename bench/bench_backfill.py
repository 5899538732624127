"""Backfill throughput: slices/s in-process vs 1 vs 2 Ray workers, side by side in one run.

    python bench/bench_backfill.py [--bundle B --trusted-key K --images DIR] [--count 96] [--out result.json]

Defaults to the demo's signed bundle and pool slices (``make demo`` writes them under artifacts/demo).
Each configuration scores the same first ``--count`` slices of the archive into a fresh SQLite store
(``gsal-edge backfill`` through :func:`trainer.backfill.run_backfill`, records ingested in batches):

* ``in-process 1t`` / ``in-process``: one scorer in this process, ONNX Runtime on 1 thread / its default;
* ``ray x1`` / ``ray x2``: a local Ray instance with 1 / 2 CPUs, 1 / 2 actors of 1 CPU (1 thread) each.

Reported per row: slices/s while scoring (first batch handed out to last record committed, so without
Ray's start-up and the bundle loads), the start-up seconds, and the speed-up over ``ray x1``; then the
driver's share alone (committing the same records, scoring nothing: the ceiling of one driver). Every
configuration is run ``--repeats`` times in turn (rows interleaved) and the best is kept: the machine
may be shared, so the ratio within one run is what counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEMO = REPO / "artifacts" / "demo"
CONFIGS: dict[str, dict[str, Any]] = {
    "in-process 1t": {"ray_address": "none", "threads": 1},
    "in-process": {"ray_address": "none"},
    "ray x1": {"ray_address": "local", "workers": 1, "cpus_per_worker": 1},
    "ray x2": {"ray_address": "local", "workers": 2, "cpus_per_worker": 1},
}


def run_one(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from trainer.backfill import BackfillConfig, run_backfill
    from trainer.store.pool_store import PoolStore

    store_dir = work / f"store-{name.replace(' ', '-')}-{time.monotonic_ns()}"
    cfg = BackfillConfig(images=str(args.images), bundle=str(args.bundle), trusted_keys=(str(args.trusted_key),),
                         limit=args.count, batch_size=args.batch_size, ingest_batch=args.ingest_batch,
                         object_store_mb=200, **CONFIGS[name])
    with PoolStore(store_dir) as store:
        rep = run_backfill(cfg, store, progress=False)
    shutil.rmtree(store_dir, ignore_errors=True)
    if rep.failed or rep.inserted != args.count:
        raise SystemExit(f"{name}: {rep.summary()}")
    return {"config": name, "slices": rep.scored, "slices_per_s": rep.slices_per_s,
            "scoring_s": rep.scoring_seconds, "startup_s": rep.seconds - rep.scoring_seconds}


def ingest_ceiling(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The driver's share alone: records/s of committing ``--count`` items (the archive's bytes, one real
    record per slice id) in batches of ``--ingest-batch``, scoring nothing."""
    import dataclasses

    from trainer.backfill import BackfillConfig, list_archive, run_backfill
    from trainer.store.pool_store import PoolStore
    from trainer.store.types import IngestItem

    with PoolStore(work / "one") as one:  # one real record of this bundle
        run_backfill(BackfillConfig(images=str(args.images), bundle=str(args.bundle), limit=1, ray_address="none",
                                    trusted_keys=(str(args.trusted_key),)), one, progress=False)
        rec = one.unlabeled_records()[0]
    files = list_archive(str(args.images))[: args.count]
    items = [IngestItem("backfill", dataclasses.replace(rec, image_id=f.slice_id), image=Path(f.path).read_bytes())
             for f in files]
    with PoolStore(work / "ingest") as store:
        t0 = time.perf_counter()
        for i in range(0, len(items), args.ingest_batch):
            store.ingest(items[i:i + args.ingest_batch])
        dt = time.perf_counter() - t0
    return {"config": "ingest only", "records": len(items), "records_per_s": len(items) / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=DEMO / "bundles", help="signed bundle (folder or bundles/)")
    ap.add_argument("--trusted-key", type=Path, default=DEMO / "keys" / "signing_key.pub.pem",
                    help="public key the bundle is signed by")
    ap.add_argument("--images", type=Path, default=DEMO / "data" / "pool" / "images", help="archive folder")
    ap.add_argument("--count", type=int, default=96, help="slices scored per configuration")
    ap.add_argument("--batch-size", type=int, default=8, help="slices per scorer call")
    ap.add_argument("--ingest-batch", type=int, default=32, help="records per store commit")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all configurations (best kept)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), help="which rows")
    ap.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = ap.parse_args()
    for what in ("bundle", "trusted_key", "images"):
        if not getattr(args, what).exists():
            raise SystemExit(f"--{what.replace('_', '-')} {getattr(args, what)} not found (run `make demo` first, "
                             "or pass your own)")
    work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    best: dict[str, dict[str, Any]] = {}
    try:
        for _ in range(args.repeats):
            for name in args.configs:
                row = run_one(name, args, work)
                print(f"  {name:<14} {row['slices_per_s']:7.2f} slices/s  (start-up {row['startup_s']:.1f}s)",
                      flush=True)
                if name not in best or row["slices_per_s"] > best[name]["slices_per_s"]:
                    best[name] = row
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    base = best.get("ray x1", {}).get("slices_per_s")
    print(f"\nbackfill of {args.count} slices ({args.images}), {os.cpu_count()} CPUs, best of {args.repeats}")
    print(f"{'config':<14} {'slices/s':>9} {'start-up s':>11} {'vs ray x1':>10}")
    for name in args.configs:
        r = best[name]
        r["vs_ray_x1"] = r["slices_per_s"] / base if base else None
        ratio = f"{r['vs_ray_x1']:.2f}x" if base else "-"
        print(f"{name:<14} {r['slices_per_s']:9.2f} {r['startup_s']:11.1f} {ratio:>10}")
    ing = ingest_ceiling(args, work)
    shutil.rmtree(work, ignore_errors=True)
    print(f"driver ingest alone (no scoring): {ing['records_per_s']:.0f} records/s, batches of {args.ingest_batch}")
    if args.out:
        args.out.write_text(json.dumps({"rows": [best[n] for n in args.configs], "ingest_only": ing, "count": args.count,
                                        "cpus": os.cpu_count(), "python": platform.python_version()}, indent=2))


if __name__ == "__main__":
    main()
