"""Station scorer throughput and latency over gRPC vs calling the scorer in-process, interleaved in one run.

    python bench/bench_server.py [--concurrency 1 4 16] [--count 48] [--max-seconds 60] [--repeats 2]
                                 [--bundle DIR --trusted-key PUB | --allow-unsigned] [--backend onnxruntime]

The scorer: ``--bundle`` (a trained, signed bundle folder or a bundles folder with LATEST, loaded and verified
the way the station loads it, on ``--backend``) on both sides; without it the *untrained* tiny torch scorer
(``untrained:seed,size``; the report then says "untrained"), which measures the transport, not the model.

One ``serve`` process on 127.0.0.1 (free port, plaintext, dynamic batching ``--max-batch`` /
``--max-delay-ms``) stays up for the whole run. For each repeat, each concurrency level C and each server
mode (C threads of closed-loop unary ``ScoreOne`` calls; C ``Score`` streams sharing the slices), the library
(``scorer.score`` on batches of the size the server can form: min(C, max_batch) for unary, max_batch for
streams) is measured right next to the server mode, the order alternating between repeats (library first
on even repeats, server first on odd ones), so load from other work on a shared machine falls on both
sides alike. Every measurement stops after ``--count`` slices or ``--max-seconds``.

Reported per row: slices/s, p50/p99 latency per slice (ms) (the median over repeats) and ``ratio`` = the
median over repeats of server slices/s / the adjacent in-process slices/s: the fraction of library
throughput left after transport + batching. Both sides use the same intra-op thread count (``--threads``).
Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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


def server_bundle_args(args: argparse.Namespace) -> list[str]:
    """The ``serve`` flags naming the scorer (the same one this process scores with)."""
    if not args.bundle:
        return ["--allow-untrained", "--bundle", f"untrained:seed={args.seed},size={args.size}"]
    out = ["--bundle", str(args.bundle), "--backend", args.backend]
    out += ["--allow-unsigned"] if args.allow_unsigned else [f for k in args.trusted_key for f in ("--trusted-key", k)]
    return out


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    from server.process_launch import start_serve_process

    cmd = ["--insecure", "--host", "127.0.0.1", "--port", "0", *server_bundle_args(args),
           "--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms),
           "--queue-size", str(max(256, 4 * max(args.concurrency))), "--workers", str(2 * max(args.concurrency) + 4),
           "--grace-s", "2", "--threads", str(args.threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    try:
        proc, addr, _lines = start_serve_process(cmd, timeout=300, env=env)
    except AssertionError as e:
        raise RuntimeError(f"server did not start: {e}") from None
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, addr


def load_scorer(args: argparse.Namespace) -> tuple[Any, str]:
    """The in-process scorer and how the report names it."""
    if not args.bundle:
        from gsal_edge.scoring.torch_scorer import untrained_scorer

        return (untrained_scorer(seed=args.seed, image_size=args.size),
                f"untrained tiny scorer (torch, seed {args.seed}, {args.size}px input; not a trained model)")
    from server.station import default_scorer_factory

    scorer = default_scorer_factory(backend=args.backend, trusted_keys=args.trusted_key,
                                    allow_unsigned=args.allow_unsigned, threads=args.threads)(str(args.bundle))
    return scorer, f"trained bundle {scorer.bundle_id} ({args.backend})"


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


def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs))) if xs else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--count", type=int, default=48, help="slices per measurement")
    ap.add_argument("--max-seconds", type=float, default=60.0, help="time cap per measurement")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved in-process/server pairs per row")
    ap.add_argument("--size", type=int, default=64, help="slice side (and the untrained model's input size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--max-delay-ms", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads, the same in this process and in the server")
    ap.add_argument("--bundle", type=Path, default=None, help="trained bundle (default: the untrained tiny scorer)")
    ap.add_argument("--trusted-key", action="append", default=[], help="public key the --bundle is signed with")
    ap.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned --bundle")
    ap.add_argument("--backend", default="onnxruntime", help="--bundle: onnxruntime | torch | tensorrt")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench" / "server.json")
    args = ap.parse_args(argv)
    if args.bundle and not (args.trusted_key or args.allow_unsigned):
        ap.error("--bundle needs --trusted-key PUB (or --allow-unsigned), as a station does")

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    slices = make_slices(max(args.count, 16), args.size)
    scorer, scorer_name = load_scorer(args)
    warm = getattr(scorer, "warmup", None)
    if callable(warm):
        warm()
    fns = {"grpc-unary": bench_unary, "grpc-stream": bench_stream}
    cells = [(mode, c, min(c, args.max_batch) if mode == "grpc-unary" else args.max_batch)
             for c in args.concurrency for mode in fns]
    runs: dict[tuple[str, int], list[tuple[dict[str, Any], dict[str, Any]]]] = {(m, c): [] for m, c, _ in cells}
    load_start = [round(v, 2) for v in os.getloadavg()]
    proc, addr = start_server(args)
    try:
        for rep in range(args.repeats):
            for mode, c, batch in cells:
                pair: dict[str, dict[str, Any]] = {}
                order = ("lib", "srv") if rep % 2 == 0 else ("srv", "lib")
                for side in order:
                    if side == "lib":
                        pair[side] = bench_inprocess(scorer, slices, batch, args.count, args.max_seconds)
                    else:
                        pair[side] = fns[mode](addr, slices, c, args.count, args.max_seconds)
                runs[(mode, c)].append((pair["lib"], pair["srv"]))
                print(f"repeat {rep} {mode} c={c:>2}: server {pair['srv']['slices_per_s']:.2f} vs in-process "
                      f"batch {batch} {pair['lib']['slices_per_s']:.2f} slices/s", file=sys.stderr)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    rows: list[dict[str, Any]] = []
    for mode, c, batch in cells:
        pairs = runs[(mode, c)]
        libs, srvs = [p[0] for p in pairs], [p[1] for p in pairs]
        rows.append({"mode": "in-process", "phase": f"next to {mode} c={c}", "batch": batch, "concurrency": c,
                     "slices": sum(r["slices"] for r in libs),
                     **{k: _median([r[k] for r in libs]) for k in ("slices_per_s", "p50_ms", "p99_ms")}})
        rows.append({"mode": mode, "concurrency": c, "inprocess_batch": batch,
                     "slices": sum(r["slices"] for r in srvs), "errors": sum(r["errors"] for r in srvs),
                     **{k: _median([r[k] for r in srvs]) for k in ("slices_per_s", "p50_ms", "p99_ms")},
                     "ratio_vs_inprocess": _median([s_["slices_per_s"] / lb["slices_per_s"] for lb, s_ in pairs]),
                     "ratios": [round(s_["slices_per_s"] / lb["slices_per_s"], 3) for lb, s_ in pairs]})

    print(f"\n{'mode':<32} {'conc':>4} {'batch':>5} {'slices':>6} {'err':>4} {'slices/s':>9} "
          f"{'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
    for r in rows:
        mode = f"{r['mode']} ({r['phase']})" if "phase" in r else r["mode"]
        print(f"{mode:<32} {r.get('concurrency', '-'):>4} {r.get('batch', r.get('inprocess_batch', '-')):>5} "
              f"{r['slices']:>6} {r.get('errors', 0):>4} {r['slices_per_s']:>9.2f} {r['p50_ms']:>8.1f} "
              f"{r['p99_ms']:>8.1f} {r.get('ratio_vs_inprocess', float('nan')):>6.2f}")
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "scorer": scorer_name, "trained": bool(args.bundle), "interleaved": True, "repeats": args.repeats,
            "loadavg_start_end": [load_start, [round(v, 2) for v in os.getloadavg()]], "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
