"""Load / soak test: N concurrent Score streams into one real station process that forwards to one real
trainer process, for a fixed duration (loopback only; every loop is bounded in count and time).

    python bench/load_test.py [--streams 4] [--duration 30] [--inflight 1] [--queue-size 256]
                              [--workers 32] [--bundle DIR] [--out artifacts/load] [--max-slope-mb-min X]

Each stream is closed-loop: it keeps ``--inflight`` slices outstanding on one ``Score`` call, sends the next
slice as soon as an answer comes back, and reopens the call after ``--stream-items`` slices or 2 x
``--deadline`` seconds (each slice carries ``timeout_ms`` = ``--deadline``, the call a deadline of 4 x it, so
a call that times out has left a slice unanswered well past its own deadline: a hang). At most ``streams * inflight``
slices are queued at the station, so with ``streams * inflight <= --queue-size`` (and ``streams <=
--workers``, the concurrent-RPC limit) no request may fail; above either limit the station must answer
RESOURCE_EXHAUSTED, never leave a request unanswered past its deadline ("hang").

Reported (JSON + PNG under ``--out``): slices/s, p50/p99 latency of the answered slices, answers by gRPC code
(per slice and per call), hangs, what the trainer stored against what the station acknowledged, and the RSS
of both server processes sampled every ``--sample-s`` seconds with its slope (MB/min, least squares) over
the last 80% of the run: the leak check of ``--duration 600`` (``make soak``).

The bundle is the toy bundle of tests/scoring/test_bundle.py (real ONNX engines, signed) unless
``--bundle`` names a real one (then give ``--trusted-key`` or ``--allow-unsigned``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
for _p in (REPO, REPO / "tests" / "scoring"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

HANG_CODES = ("UNANSWERED", "MISSING")


@dataclass
class LoadConfig:
    """One load run (every field is a CLI flag)."""

    streams: int = 4
    duration_s: float = 30.0
    inflight: int = 1
    stream_items: int = 200
    deadline_s: float = 30.0
    slice_size: int = 64
    queue_size: int = 256
    workers: int = 32
    max_batch: int = 8
    max_delay_ms: float = 5.0
    sample_s: float = 1.0
    threads: int = 1
    bundle: str | None = None
    trusted_key: str | None = None
    allow_unsigned: bool = False
    backend: str = "onnxruntime"
    trainer: bool = True
    max_slope_mb_min: float | None = None
    spool: bool = True  # the station gets a data dir: its forwarder spools to disk (the production set-up)
    malloc_arena_max: int | None = None  # the station's --malloc-arena-max (None: its default, 2)


@dataclass
class StreamStats:
    """What one client stream saw."""

    sent: int = 0
    item_codes: Counter = field(default_factory=Counter)  # per-slice answers by code name (OK included)
    rpc_codes: Counter = field(default_factory=Counter)  # failed calls by code name
    latencies: list[float] = field(default_factory=list)  # seconds, OK answers only
    done_t: list[float] = field(default_factory=list)  # completion times (s since start) of OK answers
    late: int = 0  # answers that came after their slice's deadline
    ok_ids: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- processes


def _drain(proc: subprocess.Popen, log_path: Path) -> threading.Thread:
    """Copy a child's remaining output to a file (a full pipe would block the child)."""

    def run() -> None:
        assert proc.stdout is not None
        with log_path.open("a") as fh:
            for line in proc.stdout:
                fh.write(line)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def start_trainer(store: Path, log_path: Path, timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """``trainer serve`` on a free 127.0.0.1 port; returns (process, address)."""
    port_file = store.parent / "trainer.port"
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer.cli", "serve", "--store", str(store), "--port", "0",
           "--port-file", str(port_file), "--insecure"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    _drain(proc, log_path)
    deadline = time.monotonic() + timeout
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None:
            raise RuntimeError(f"trainer exited {proc.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"trainer did not start within {timeout:.0f}s; see {log_path}")
        time.sleep(0.05)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


def start_station(cfg: LoadConfig, bundle: str, trusted_key: str | None, trainer: str | None,
                  log_path: Path, data_dir: Path | None = None, timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """``gsal-edge serve`` (server.cli, started by :mod:`server.process_launch`) on a free port serving
    ``bundle``; with ``data_dir`` its forwarder spools to disk as a production station's does. Returns
    (process, address); its output goes to ``log_path``."""
    from server.process_launch import start_serve_process

    args = ["--insecure", "--port", "0", "--bundle", bundle,
            "--backend", cfg.backend, "--queue-size", str(cfg.queue_size), "--workers", str(cfg.workers),
            "--max-batch", str(cfg.max_batch), "--max-delay-ms", str(cfg.max_delay_ms),
            "--threads", str(cfg.threads), "--grace-s", "10"]
    if cfg.malloc_arena_max is not None:
        args += ["--malloc-arena-max", str(cfg.malloc_arena_max)]
    if trusted_key:
        args += ["--trusted-key", trusted_key]
    if cfg.allow_unsigned:
        args.append("--allow-unsigned")
    if data_dir is not None:
        args += ["--data-dir", str(data_dir)]
    if trainer:
        args += ["--station-id", "st-load", "--trainer", trainer, "--trainer-insecure",
                 "--trainer-max-delay-ms", "200"]
    try:
        proc, addr, lines = start_serve_process(args, timeout=timeout)
    except AssertionError as e:
        raise RuntimeError(str(e)) from None
    log_path.write_text("".join(lines))
    _drain(proc, log_path)
    return proc, addr


def stop(proc: subprocess.Popen, timeout: float = 60.0) -> int:
    """SIGTERM, wait (kill after ``timeout``); the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return int(proc.returncode)


# ---------------------------------------------------------------------------------------------- RSS


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB (psutil when installed, else /proc/PID/status VmRSS)."""
    try:
        import psutil  # optional

        return float(psutil.Process(pid).memory_info().rss) / 1e6
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - the process is gone
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return float(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


class RssSampler:
    """Samples the RSS of named processes every ``interval`` seconds on a daemon thread."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        self.pids, self.interval = pids, interval
        self.samples: dict[str, list[tuple[float, float]]] = {k: [] for k in pids}
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            t = time.monotonic() - self._t0
            for name, pid in self.pids.items():
                mb = rss_mb(pid)
                if mb is not None:
                    self.samples[name].append((t, mb))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval + 5)


def rss_summary(samples: list[tuple[float, float]], duration: float) -> dict[str, Any]:
    """Start/end/peak RSS and the least-squares slope (MB/min) over the last 80% of the run."""
    if not samples:
        return {"samples": 0}
    t = np.array([s[0] for s in samples])
    mb = np.array([s[1] for s in samples])
    tail = t >= 0.2 * duration
    slope = float(np.polyfit(t[tail] / 60.0, mb[tail], 1)[0]) if tail.sum() >= 3 else float("nan")
    return {"samples": len(samples), "start_mb": round(float(mb[0]), 1), "end_mb": round(float(mb[-1]), 1),
            "peak_mb": round(float(mb.max()), 1), "tail_min_mb": round(float(mb[tail].min()), 1) if tail.any()
            else None, "slope_mb_per_min_last80": round(slope, 3)}


# ---------------------------------------------------------------------------------------------- clients


def run_stream(k: int, address: str, cfg: LoadConfig, t_start: float, t_end: float, stats: StreamStats) -> None:
    """One closed-loop client stream until ``t_end`` (monotonic); fills ``stats``."""
    from gsal_wire.scorer_client import ScorerClient

    rng = np.random.default_rng(k)
    pool = [rng.integers(0, 255, (cfg.slice_size, cfg.slice_size), dtype=np.uint8) for _ in range(16)]
    counter = [0]
    with ScorerClient(address, insecure=True) as client:
        while time.monotonic() < t_end:
            _one_call(k, client, cfg, pool, counter, t_start, t_end, stats)


def _one_call(k: int, client: Any, cfg: LoadConfig, pool: list[np.ndarray], counter: list[int], t_start: float,
              t_end: float, stats: StreamStats) -> None:
    """One ``Score`` call of at most ``cfg.stream_items`` slices, ``cfg.inflight`` outstanding at a time."""
    import grpc

    from gsal_wire.convert import make_pb_slice
    from gsal_wire.pb import scorer_pb2

    permits = threading.Semaphore(cfg.inflight)
    sent_at: dict[str, float] = {}
    stop_gen = threading.Event()

    # the call ends (half-close) after stream_items slices or 2 deadlines, so every slice sent has its own
    # deadline plus one more before the call's: a call-level DEADLINE_EXCEEDED means an unanswered slice
    send_until = min(t_end, time.monotonic() + 2 * cfg.deadline_s)

    def requests() -> Any:
        for _ in range(cfg.stream_items):
            while not permits.acquire(timeout=0.1):
                if stop_gen.is_set():
                    return
            if time.monotonic() >= send_until or stop_gen.is_set():
                return
            sid = f"s{k}-{counter[0]:08d}"
            counter[0] += 1
            msg = make_pb_slice(sid, pool[counter[0] % len(pool)])
            sent_at[sid] = time.monotonic()
            stats.sent += 1
            yield scorer_pb2.ScoreRequest(slice=msg, timeout_ms=int(cfg.deadline_s * 1000))

    answered: set[str] = set()
    call_code = "OK"
    call = client.stub.Score(requests(), timeout=4 * cfg.deadline_s)
    try:
        for resp in call:
            now = time.monotonic()
            sid = resp.slice_id
            answered.add(sid)
            permits.release()
            t0 = sent_at.get(sid, now)
            if now - t0 > cfg.deadline_s:
                stats.late += 1
            if resp.HasField("error"):
                stats.item_codes[resp.error.code_name] += 1
            else:
                stats.item_codes["OK"] += 1
                stats.latencies.append(now - t0)
                stats.done_t.append(now - t_start)
                stats.ok_ids.append(sid)
    except grpc.RpcError as e:
        call_code = e.code().name if e.code() else "UNKNOWN"
        stats.rpc_codes[call_code] += 1
        if call_code == "RESOURCE_EXHAUSTED":
            time.sleep(0.05)  # refused at the door: back off briefly, then reopen
    finally:
        stop_gen.set()
        call.cancel()
    # slices sent on a call that ended without their answers: a hang if the call ran into its deadline
    missing = len(set(sent_at) - answered)
    if missing:
        # answered by the call's status (e.g. RESOURCE_EXHAUSTED at the door); a call timing out is a hang
        stats.item_codes[{"DEADLINE_EXCEEDED": "UNANSWERED", "OK": "MISSING"}.get(call_code, call_code)] += missing


def trainer_count(store: Path) -> int:
    """Score records in the trainer's pool.sqlite (0 when there is none yet)."""
    db = store / "pool.sqlite"
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM score_records").fetchone()[0])
    finally:
        con.close()


def _toy_bundle(work: Path) -> tuple[str, str]:
    from test_bundle import write_toy_bundle

    from export.signing import generate_keypair

    key, pub = generate_keypair(work / "load-key.pem")
    return str(write_toy_bundle(work / "bundles", key, seed=0)), str(pub)


def run_load(cfg: LoadConfig, out: Path, work: Path | None = None) -> dict[str, Any]:
    """Start trainer + station, run the streams for ``cfg.duration_s``, stop both; the report (also written
    to ``out/load.json`` and ``out/load.png``)."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = None
    if work is None:
        tmp = tempfile.TemporaryDirectory(prefix="gsal-load-")
        work = Path(tmp.name)
    try:
        return _run(cfg, out, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _run(cfg: LoadConfig, out: Path, work: Path) -> dict[str, Any]:
    bundle, key = (cfg.bundle, cfg.trusted_key) if cfg.bundle else _toy_bundle(work)
    store = work / "store"
    trainer_proc = trainer_addr = None
    procs: list[subprocess.Popen] = []
    try:
        if cfg.trainer:
            trainer_proc, trainer_addr = start_trainer(store, out / "trainer.log")
            procs.append(trainer_proc)
        station, addr = start_station(cfg, bundle, key, trainer_addr, out / "station.log",
                                      data_dir=work / "station-data" if cfg.spool else None)
        procs.append(station)
        pids = {"station": station.pid} | ({"trainer": trainer_proc.pid} if trainer_proc else {})
        sampler = RssSampler(pids, cfg.sample_s).start()
        stats = [StreamStats() for _ in range(cfg.streams)]
        t_start = time.monotonic()
        t_end = t_start + cfg.duration_s
        threads = [threading.Thread(target=run_stream, args=(k, addr, cfg, t_start, t_end, stats[k]), daemon=True)
                   for k in range(cfg.streams)]
        for t in threads:
            t.start()
        for t in threads:  # bounded: every call has a deadline, so each stream ends by t_end + 4 deadlines
            t.join(max(t_end + 4 * cfg.deadline_s + 30 - time.monotonic(), 1))
        stuck = sum(t.is_alive() for t in threads)
        elapsed = time.monotonic() - t_start
        sampler.stop()
        station_rc = stop(station)  # graceful: drains and flushes the forwarder to the trainer
        stored = trainer_count(store) if cfg.trainer else None
    finally:
        for p in reversed(procs):
            stop(p)
    return _report(cfg, stats, sampler, elapsed, stuck, station_rc, stored, out)


def _report(cfg: LoadConfig, stats: list[StreamStats], sampler: RssSampler, elapsed: float, stuck: int,
            station_rc: int, stored: int | None, out: Path) -> dict[str, Any]:
    items: Counter = Counter()
    rpcs: Counter = Counter()
    lat: list[float] = []
    for s in stats:
        items.update(s.item_codes)
        rpcs.update(s.rpc_codes)
        lat.extend(s.latencies)
    ok = items.get("OK", 0)
    errors = {k: v for k, v in items.items() if k != "OK"}
    hangs = sum(items.get(c, 0) for c in HANG_CODES) + rpcs.get("DEADLINE_EXCEEDED", 0) + stuck \
        + sum(s.late for s in stats)
    below = cfg.streams * cfg.inflight <= cfg.queue_size and cfg.streams <= cfg.workers
    rss = {name: rss_summary(smp, elapsed) for name, smp in sampler.samples.items()}
    log_text = (out / "station.log").read_text() if (out / "station.log").exists() else ""
    arenas = re.search(r"malloc arenas: [^\n]*", log_text)
    report: dict[str, Any] = {
        "config": asdict(cfg),
        "below_limits": below,
        "duration_s": round(elapsed, 2),
        "sent": sum(s.sent for s in stats),
        "ok": ok,
        "slices_per_s": round(ok / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(lat, 50)) * 1000, 2) if lat else None,
        "p99_ms": round(float(np.percentile(lat, 99)) * 1000, 2) if lat else None,
        "item_errors": dict(errors),
        "rpc_errors": dict(rpcs),
        "hangs": hangs,
        "stuck_streams": stuck,
        "station_exit_code": station_rc,
        "trainer_stored": stored,
        "acknowledged_lost": (ok - stored) if stored is not None else None,
        "rss": rss,
        "station_malloc_arenas": arenas.group(0) if arenas else None,
        "station_spool": cfg.spool,
        "machine": {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_at_end": list(os.getloadavg())},
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    if cfg.max_slope_mb_min is not None:
        slopes = {n: r.get("slope_mb_per_min_last80") for n, r in rss.items()}
        report["leak_check"] = {"bound_mb_per_min": cfg.max_slope_mb_min, "slopes": slopes,
                                "ok": all(s is not None and s < cfg.max_slope_mb_min for s in slopes.values())}
    samples = {n: [[round(t, 2), round(mb, 2)] for t, mb in smp] for n, smp in sampler.samples.items()}
    (out / "load.json").write_text(json.dumps(report | {"rss_samples": samples}, indent=2) + "\n")
    done_t = sorted(t for s in stats for t in s.done_t)
    plot(samples, done_t, elapsed, report, out / "load.png")
    return report


def plot(samples: dict[str, list[list[float]]], done_t: list[float], elapsed: float, report: dict[str, Any],
         path: Path) -> None:
    """RSS of both processes over time (top) and answered slices/s in 5 s bins (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, smp in samples.items():
        if smp:
            slope = report["rss"][name].get("slope_mb_per_min_last80")
            ax1.plot([s[0] for s in smp], [s[1] for s in smp], label=f"{name} (slope {slope} MB/min, last 80%)")
    ax1.axvline(0.2 * elapsed, color="grey", ls=":", lw=1)
    ax1.set_ylabel("RSS (MB)")
    ax1.legend(loc="lower right", fontsize=8)
    c = report["config"]
    ax1.set_title(f"{c['streams']} streams x {c['inflight']} in flight, {elapsed:.0f} s: "
                  f"{report['slices_per_s']} slices/s, p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms",
                  fontsize=9)
    bins = np.arange(0, max(elapsed, 5) + 5, 5)
    hist, _ = np.histogram(done_t, bins=bins)
    ax2.step(bins[:-1], hist / 5.0, where="post")
    ax2.set_ylabel("answered slices/s")
    ax2.set_xlabel("seconds since start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--streams", type=int, default=4, help="concurrent Score streams")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (600: the soak)")
    p.add_argument("--inflight", type=int, default=1, help="slices outstanding per stream")
    p.add_argument("--stream-items", type=int, default=200, help="slices per Score call before it is reopened")
    p.add_argument("--deadline", type=float, default=30.0, help="deadline of each slice (s); a call: 4x")
    p.add_argument("--size", type=int, default=64, help="slice side (uint8 square)")
    p.add_argument("--queue-size", type=int, default=256, help="the station's --queue-size (the queue limit)")
    p.add_argument("--workers", type=int, default=32, help="the station's --workers (concurrent RPC limit)")
    p.add_argument("--max-batch", type=int, default=8, help="the station's --max-batch")
    p.add_argument("--threads", type=int, default=1, help="the station's engine threads")
    p.add_argument("--sample-s", type=float, default=1.0, help="RSS sampling interval (s)")
    p.add_argument("--bundle", help="a real bundle folder (default: the signed toy bundle)")
    p.add_argument("--trusted-key", help="public key the --bundle is signed with")
    p.add_argument("--allow-unsigned", action="store_true", help="accept an unsigned --bundle")
    p.add_argument("--backend", default="onnxruntime", help="onnxruntime | torch | tensorrt")
    p.add_argument("--no-trainer", action="store_true", help="station only (no forwarding)")
    p.add_argument("--no-spool", action="store_true", help="no station data dir: the forwarder queue in memory only")
    p.add_argument("--malloc-arena-max", type=int, default=None,
                   help="the station's --malloc-arena-max (default: the station's own default, 2; 0: glibc's)")
    p.add_argument("--max-slope-mb-min", type=float, default=None,
                   help="leak bound: fail when an RSS slope over the last 80%% reaches it (MB/min)")
    p.add_argument("--out", type=Path, default=REPO / "artifacts" / "load", help="folder for load.json/load.png")
    a = p.parse_args(argv)
    cfg = LoadConfig(streams=a.streams, duration_s=a.duration, inflight=a.inflight, stream_items=a.stream_items,
                     deadline_s=a.deadline, slice_size=a.size, queue_size=a.queue_size, workers=a.workers,
                     max_batch=a.max_batch, threads=a.threads, sample_s=a.sample_s, bundle=a.bundle,
                     trusted_key=a.trusted_key, allow_unsigned=a.allow_unsigned, backend=a.backend,
                     trainer=not a.no_trainer, max_slope_mb_min=a.max_slope_mb_min, spool=not a.no_spool,
                     malloc_arena_max=a.malloc_arena_max)
    rep = run_load(cfg, a.out)
    print(json.dumps({k: v for k, v in rep.items() if k not in ("config", "machine")}, indent=2))
    print(f"wrote {a.out / 'load.json'} and {a.out / 'load.png'}")
    failed = rep["hangs"] > 0 or (rep["below_limits"] and (rep["item_errors"] or rep["rpc_errors"]))
    failed = failed or bool(rep.get("acknowledged_lost")) or not rep.get("leak_check", {}).get("ok", True)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
