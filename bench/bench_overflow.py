"""Line rate held vs scored fraction, ``--overflow reject`` vs ``defer`` (issue 18, deliverable 3).

One in-process station on 127.0.0.1 (plaintext, loopback only) per mode, the same scorer. First the
station's scoring capacity C (slices/s) is measured; then a "line" streams slices at ``--rate-factor`` x C
for ``--seconds`` through one ``Score`` stream, never waiting for answers (a paced generator), and every
answer is classified: scored, deferred, refused (RESOURCE_EXHAUSTED). With ``defer`` the deferred slices
are then drained (``server.drain.drain_deferred``) and the drain time is reported. Bounded: at most
``--seconds`` of line per mode plus the drain (``--drain-max-s``).

    python bench/bench_overflow.py                       # untrained 64 px scorer (seconds)
    python bench/bench_overflow.py --bundle artifacts/demo/bundles --allow-unsigned --seconds 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gsal_wire.convert import make_pb_slice
from gsal_wire.pb import scorer_pb2
from gsal_wire.scorer_client import ScorerClient
from server.app import StationServer
from server.config import ServerConfig
from server.drain import drain_deferred
from server.station import default_scorer_factory


def _slices(n: int, side: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 65535, (side, side), dtype=np.uint16) for _ in range(n)]


def _capacity(srv: StationServer, imgs: list[np.ndarray], n: int) -> float:
    """Slices/s of the station when it is kept busy (one stream, nothing refused)."""
    with ScorerClient(srv.address, insecure=True) as c:
        list(c.score([(f"warm-{i}", imgs[i % len(imgs)]) for i in range(4)]))
        chunk = srv.config.queue_size  # a chunk fits the queue: nothing refused, batches full
        out: list[Any] = []
        t0 = time.perf_counter()
        for s in range(0, n, chunk):
            out += list(c.score([(f"cap-{i}", imgs[i % len(imgs)]) for i in range(s, min(n, s + chunk))]))
        dt = time.perf_counter() - t0
    assert all(hasattr(r, "image_id") for r in out), "capacity run had errors"
    return n / dt


def _line(srv: StationServer, imgs: list[np.ndarray], rate: float, seconds: float, tag: str) -> dict[str, Any]:
    """Stream at ``rate`` slices/s for ``seconds``; the answers are classified as they come."""
    n = max(1, int(rate * seconds))
    sent_at: list[float] = []

    def requests() -> Iterator[scorer_pb2.ScoreRequest]:
        t0 = time.perf_counter()
        for i in range(n):
            wait = t0 + i / rate - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent_at.append(time.perf_counter())
            yield scorer_pb2.ScoreRequest(slice=make_pb_slice(f"{tag}-{i:06d}", imgs[i % len(imgs)]))

    kinds: Counter[str] = Counter()
    with ScorerClient(srv.address, insecure=True) as c:
        t0 = time.perf_counter()
        for resp in c.stream(requests(), timeout=seconds * 10 + 60):
            k = resp.WhichOneof("result")
            kinds["refused" if k == "error" and resp.error.code_name == "RESOURCE_EXHAUSTED" else
                  "error" if k == "error" else "scored" if k == "record" else "deferred"] += 1
        t_end = time.perf_counter()
    span = (sent_at[-1] - sent_at[0]) if len(sent_at) > 1 else 0.0
    return {"sent": len(sent_at), "target_rate": rate, "line_rate": (len(sent_at) - 1) / span if span else 0.0,
            "scored": kinds["scored"], "deferred": kinds["deferred"], "refused": kinds["refused"],
            "errors": kinds["error"], "answers_s": t_end - t0}


def _server(spec: str, args: argparse.Namespace, **cfg: Any) -> StationServer:
    factory = default_scorer_factory(backend=args.backend, allow_unsigned=args.allow_unsigned,
                                     trusted_keys=args.trusted_key, allow_untrained=True, threads=args.threads)
    srv = StationServer(ServerConfig(insecure=True, port=0, max_batch_size=args.batch, max_queue_delay_ms=2.0,
                                     queue_size=args.queue_size, grace_s=1.0, **cfg), factory)
    srv.start()
    srv.load_bundle(spec)
    return srv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="untrained:seed=0,size=64", help="bundle (or untrained:... spec)")
    ap.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned bundle")
    ap.add_argument("--trusted-key", action="append", default=[], help="public key the bundle is signed by")
    ap.add_argument("--backend", default="onnxruntime", help="engine backend for a real bundle")
    ap.add_argument("--threads", type=int, default=None, help="engine intra-op threads")
    ap.add_argument("--side", type=int, default=64, help="slice side (pixels)")
    ap.add_argument("--batch", type=int, default=4, help="max_batch_size")
    ap.add_argument("--queue-size", type=int, default=16, help="the station's scoring queue")
    ap.add_argument("--rate-factor", type=float, default=2.0, help="line rate as a multiple of capacity")
    ap.add_argument("--seconds", type=float, default=8.0, help="line duration per mode")
    ap.add_argument("--capacity-n", type=int, default=48, help="slices of the capacity run")
    ap.add_argument("--drain-max-s", type=float, default=120.0, help="bound on the drain")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()
    imgs = _slices(16, args.side, 0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gsal-bench-overflow-") as tmp:
        srv = _server(args.bundle, args)
        try:
            cap = _capacity(srv, imgs, args.capacity_n)
            rate = args.rate_factor * cap
            rows.append({"mode": "reject", **_line(srv, imgs, rate, args.seconds, "rej")})
        finally:
            srv.stop(1)
        srv = _server(args.bundle, args, overflow="defer", data_dir=Path(tmp))
        try:
            row = {"mode": "defer", **_line(srv, imgs, rate, args.seconds, "def")}
            assert srv.station.deferred is not None
            with ScorerClient(srv.address, insecure=True) as c:
                rep = drain_deferred(srv.station.deferred, c, None, window=args.batch * 2,
                                     max_seconds=args.drain_max_s, backoff_s=0.2)
            row.update(drained=rep.scored, drain_left=rep.left, drain_s=rep.seconds,
                       drain_rate=rep.scored / rep.seconds if rep.seconds else 0.0)
            rows.append(row)
        finally:
            srv.stop(1)
    print(f"capacity C = {cap:.1f} slices/s (batch {args.batch}, {args.side}x{args.side} uint16, {args.bundle}); "
          f"line at {args.rate_factor:g} x C = {rate:.1f} slices/s for {args.seconds:g} s; queue_size "
          f"{args.queue_size}")
    print("| mode | sent | line rate held | scored now | deferred | refused | errors | scored later (drain) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        n = max(r["sent"], 1)
        later = (f"{r['drained']} in {r['drain_s']:.1f} s ({r['drain_rate']:.1f}/s), {r['drain_left']} left"
                 if r["mode"] == "defer" else "- (refused slices are lost unless the line re-sends them)")
        print(f"| {r['mode']} | {r['sent']} | {r['line_rate']:.1f}/s ({r['line_rate'] / r['target_rate']:.0%}) | "
              f"{r['scored']} ({r['scored'] / n:.0%}) | {r['deferred']} ({r['deferred'] / n:.0%}) | "
              f"{r['refused']} ({r['refused'] / n:.0%}) | {r['errors']} | {later} |")
    if args.json:
        args.json.write_text(json.dumps({"capacity": cap, "rate": rate, "rows": rows}, indent=2))


if __name__ == "__main__":
    threading.current_thread().name = "bench-overflow"
    main()
