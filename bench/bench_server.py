"""Station scorer throughput and latency over gRPC vs calling the scorer in-process, in one run.

    python bench/bench_server.py [--concurrency 1 4 16] [--count 48] [--max-seconds 60] [--size 64]

1. In-process: ``scorer.score`` on batches of 1 and of ``--max-batch`` (the scoring library alone).
2. Server: a real ``serve`` process on 127.0.0.1 (free port, plaintext, untrained scorer of the same
   seed and size, dynamic batching ``--max-batch`` / ``--max-delay-ms``); at each concurrency level C,
   C client threads each run closed-loop ``ScoreOne`` calls (unary) and, separately, C ``Score``
   streams share the slices (streaming). Every level stops after ``--count`` slices or
   ``--max-seconds``, whichever comes first.

Reported per row: slices/s, p50/p99 latency per slice (ms), and ``ratio`` = server slices/s divided
by the better of two in-process measurements (before and after the server runs; the machine may be
shared) at the batch size the server can form at that concurrency (min(C, max_batch) for unary,
max_batch for streams), i.e. the fraction of library throughput left after transport + batching.
Both sides use the same torch intra-op thread count (``--threads``, default 1). Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))



def _run_threads(worker: Any, conc: int) -> float:
    """Run ``worker(k)`` for k < conc on concurrent threads; the wall seconds until all are done."""
    t0 = time.perf_counter()
    ths = [threading.Thread(target=worker, args=(k,)) for k in range(conc)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.perf_counter() - t0

def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) * 1000.0 if xs else float("nan")


def make_slices(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65535, (size, size), dtype=np.uint16) for _ in range(n)]


def bench_inprocess(scorer: Any, slices: list[np.ndarray], batch: int, count: int, max_s: float) -> dict[str, Any]:
    """Library alone: per-slice latency = its batch's call time."""
    lat: list[float] = []
    n, t0 = 0, time.perf_counter()
    while n < count and time.perf_counter() - t0 < max_s:
        b = [slices[(n + i) % len(slices)] for i in range(batch)]
        t = time.perf_counter()
        scorer.score(b, [f"ip-{n + i}" for i in range(batch)])
        dt = time.perf_counter() - t
        lat += [dt] * batch
        n += batch
    wall = time.perf_counter() - t0
    return {"mode": "in-process", "batch": batch, "slices": n, "seconds": wall, "slices_per_s": n / wall,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "server.cli", "serve", "--insecure", "--host", "127.0.0.1", "--port", "0",
           "--allow-untrained", "--bundle", f"untrained:seed={args.seed},size={args.size}",
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms),
           "--queue-size", str(max(256, 4 * max(args.concurrency))), "--workers", str(2 * max(args.concurrency) + 4),
           "--grace-s", "2", "--threads", str(args.threads)]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    addr, t0, lines = None, time.time(), []
    assert proc.stdout is not None
    while time.time() - t0 < 300:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"listening on (127\.0\.0\.1:\d+)", line)
        if m:
            addr = m.group(1)
        if line.startswith("serving bundle"):
            break
    if addr is None or proc.poll() is not None:
        proc.kill()
        raise RuntimeError("server did not start:\n" + "".join(lines))
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, addr


def bench_unary(addr: str, slices: list[np.ndarray], conc: int, count: int, max_s: float) -> dict[str, Any]:
    from gsal_wire.scorer_client import ScorerClient

    lat: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = {"n": 0}
    t_end = time.perf_counter() + max_s

    def worker(k: int) -> None:
        with ScorerClient(addr, insecure=True) as c:
            while time.perf_counter() < t_end:
                with lock:
                    i = counter["n"]
                    if i >= count:
                        return
                    counter["n"] += 1
                t = time.perf_counter()
                try:
                    c.score_one(f"u{conc}-{i}", slices[i % len(slices)], timeout=max(max_s, 1.0))
                except Exception as e:  # noqa: BLE001 - count every failure, do not hide it
                    errors.append(str(e)[:200])
                    continue
                with lock:
                    lat.append(time.perf_counter() - t)

    wall = _run_threads(worker, conc)
    return {"mode": "grpc-unary", "concurrency": conc, "slices": len(lat), "errors": len(errors),
            "seconds": wall, "slices_per_s": len(lat) / wall, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def bench_stream(addr: str, slices: list[np.ndarray], conc: int, count: int, max_s: float) -> dict[str, Any]:
    from gsal_wire.convert import make_pb_slice
    from gsal_wire.pb import scorer_pb2
    from gsal_wire.scorer_client import ScorerClient

    per = max(1, count // conc)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()
    t_end = time.perf_counter() + max_s

    def worker(k: int) -> None:
        sent: dict[str, float] = {}

        def reqs():  # type: ignore[no-untyped-def]
            for j in range(per):
                if time.perf_counter() > t_end:
                    return
                sid = f"s{conc}-{k}-{j}"
                msg = scorer_pb2.ScoreRequest(slice=make_pb_slice(sid, slices[(k * per + j) % len(slices)]))
                sent[sid] = time.perf_counter()
                yield msg

        with ScorerClient(addr, insecure=True) as c:
            for resp in c.stream(reqs(), timeout=max_s + 60):
                now = time.perf_counter()
                with lock:
                    if resp.HasField("error"):
                        errors[0] += 1
                    else:
                        lat.append(now - sent[resp.slice_id])

    wall = _run_threads(worker, conc)
    return {"mode": "grpc-stream", "concurrency": conc, "slices": len(lat), "errors": errors[0],
            "seconds": wall, "slices_per_s": len(lat) / wall, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--count", type=int, default=48, help="slices per level")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per level")
    ap.add_argument("--size", type=int, default=64, help="slice side and untrained model input size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads, the same in this process and in the server")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "server.json")
    args = ap.parse_args(argv)

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from gsal_edge.scoring.torch_scorer import untrained_scorer

    torch.set_num_threads(args.threads)
    slices = make_slices(max(args.count, 16), args.size)
    scorer = untrained_scorer(seed=args.seed, image_size=args.size)
    scorer.warmup()
    rows: list[dict[str, Any]] = []
    batches = sorted({1, *[min(c, args.max_batch) for c in args.concurrency], args.max_batch})

    def run_inprocess(phase: str) -> dict[int, dict[str, Any]]:
        out = {}
        for b in batches:
            out[b] = bench_inprocess(scorer, slices, b, args.count, args.max_seconds)
            out[b]["phase"] = phase
            rows.append(out[b])
            print(f"in-process ({phase}) batch {b:>2}: {out[b]['slices_per_s']:.2f} slices/s", file=sys.stderr)
        return out

    before = run_inprocess("before")
    server_rows: list[dict[str, Any]] = []
    proc, addr = start_server(args)
    try:
        for c in args.concurrency:
            for fn, ref in ((bench_unary, min(c, args.max_batch)), (bench_stream, args.max_batch)):
                r = fn(addr, slices, c, args.count, args.max_seconds)
                r["inprocess_batch"] = ref
                server_rows.append(r)
                print(f"{r['mode']} c={c:>2}: {r['slices_per_s']:.2f} slices/s", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    after = run_inprocess("after")  # the machine is shared: measure the library on both sides of the server
    for r in server_rows:
        best = max(before[r["inprocess_batch"]]["slices_per_s"], after[r["inprocess_batch"]]["slices_per_s"])
        r["ratio_vs_inprocess"] = r["slices_per_s"] / best
        rows.append(r)

    print(f"\n{'mode':<20} {'conc':>4} {'batch':>5} {'slices':>6} {'err':>4} {'slices/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
    for r in rows:
        mode = f"{r['mode']} ({r['phase']})" if "phase" in r else r["mode"]
        print(f"{mode:<20} {r.get('concurrency', '-'):>4} {r.get('batch', r.get('inprocess_batch', '-')):>5} "
              f"{r['slices']:>6} {r.get('errors', 0):>4} {r['slices_per_s']:>9.2f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r.get('ratio_vs_inprocess', float('nan')):>6.2f}")
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
