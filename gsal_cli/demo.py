"""`make demo`: the whole GSAL Edge loop on the embedded default, with real processes on 127.0.0.1.

1. build what is missing (cached under ``--out``): synthetic pool + validation slices, the embedded
   diffusion prior and CLIP, a first detector trained on a small seed set, a signed bundle;
2. start a station (`gsal-edge serve`, forwarding its records to the trainer) and a trainer
   (`gsal-edge trainer serve`) as separate processes;
3. stream the pool through the station (`gsal-edge score`);
4. three selection rounds with the simulated annotator; before round 3, retrain the detector on all
   labels, export a new bundle and redeploy it to the station (gated on validation F1), re-score;
5. print the picks with their rationale, the coverage counts and the metric per round, and write
   ``report.md`` with plots and a gallery of picked slices.

Every step is a `gsal-edge` command, so the demo doubles as a walk-through of the CLI.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
GSAL = [sys.executable, "-m", "gsal_cli.main"]
STATION_ID = "st-01"


@dataclass
class DemoConfig:
    """Sizes of the demo (defaults sized for ~15 minutes on 2 cores, cold)."""

    pool: int = 240
    val: int = 80
    seed_labeled: int = 12
    budget: int = 12
    rounds: int = 3
    retrain_before_round: int = 3
    detector_epochs: int = 40
    retrain_epochs: int = 40
    seed: int = 0
    threads: int = 2
    timings: dict[str, float] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(step: str, args: list[str], cfg: DemoConfig, capture: bool = False) -> str:
    console.rule(f"[bold]{step}")
    console.print("[dim]$ gsal-edge " + " ".join(args))
    t0 = time.perf_counter()
    env = dict(os.environ, GSAL_LOG=os.environ.get("GSAL_LOG", "WARNING"))
    proc = subprocess.run(GSAL + args, env=env, text=True, stdout=subprocess.PIPE if capture else None, check=False)
    dt = time.perf_counter() - t0
    cfg.timings[step] = cfg.timings.get(step, 0.0) + dt
    if proc.returncode != 0:
        console.print(f"[red]step failed ({step}), exit code {proc.returncode}")
        raise typer.Exit(proc.returncode)
    if capture:
        console.print(proc.stdout.rstrip())
    console.print(f"[dim]{step}: {dt:.1f}s")
    return proc.stdout if capture else ""


def _wait_port_file(path: Path, proc: subprocess.Popen, what: str, timeout: float = 180.0) -> int:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before serving")
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start serving within {timeout:.0f}s")


def _seed_coco(pool_dir: Path, out: Path, n: int) -> Path:
    """The first ``n`` pool slices with their true labels, keyed by pool id (station/slice file)."""
    coco = json.loads((pool_dir / "annotations.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["file_name"])[:n]
    keep = {im["id"] for im in images}
    for im in images:
        im["gsal_image_id"] = f"{STATION_ID}/{Path(im['file_name']).name}"
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    out.write_text(json.dumps(coco))
    return out


def _seed_dataset(pool_dir: Path, out_dir: Path, n: int) -> Path:
    """A COCO folder (annotations.json + images/ symlinked) holding only the seed slices, for the first detector."""
    out_dir.mkdir(parents=True, exist_ok=True)
    coco = json.loads((pool_dir / "annotations.json").read_text())
    images = sorted(coco["images"], key=lambda im: im["file_name"])[:n]
    keep = {im["id"] for im in images}
    (out_dir / "images").mkdir(exist_ok=True)
    for im in images:
        dst = out_dir / "images" / Path(im["file_name"]).name
        if not dst.exists():
            shutil.copyfile(pool_dir / im["file_name"], dst)
        im["file_name"] = f"images/{Path(im['file_name']).name}"
    coco["images"] = images
    coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in keep]
    (out_dir / "annotations.json").write_text(json.dumps(coco))
    return out_dir


def main(
    out: Path = typer.Option(Path("artifacts/demo"), "--out", help="Demo folder (build outputs are cached here)."),
    models: Path = typer.Option(Path("artifacts/models"), "--models", help="Embedded defaults (built if absent)."),
    pool: int = typer.Option(240, "--pool", help="Pool slices streamed through the station."),
    budget: int = typer.Option(12, "--budget", help="Slices picked per round."),
    rounds: int = typer.Option(3, "--rounds", help="Selection rounds."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for training and scoring."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the store and rounds (keeps data and models)."),
) -> None:
    """Run the GSAL Edge demo end to end on the embedded default."""
    cfg = DemoConfig(pool=pool, budget=budget, rounds=rounds, threads=threads)
    t_start = time.perf_counter()
    out, models = out.resolve(), models.resolve()
    data, bundles = out / "data", out / "bundles"
    run_dir = out / "run"
    if fresh or run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    os.environ["OMP_NUM_THREADS"] = str(threads)

    # 1. build what is missing --------------------------------------------------------------
    if not (data / "pool" / "annotations.json").exists():
        _run("synthesize pool", ["data", "synth", "--out", str(data / "pool"), "--n", str(cfg.pool),
                                 "--seed", str(cfg.seed)], cfg)
    if not (data / "val" / "annotations.json").exists():
        _run("synthesize validation split", ["data", "synth", "--out", str(data / "val"), "--n", str(cfg.val),
                                             "--seed", str(cfg.seed + 1000)], cfg)
    # the embedded defaults are shared by every run (cached by content hash: a no-op once built)
    _run("embedded diffusion prior + CLIP", ["models", "train-defaults", "--out", str(models)], cfg)
    detector = out / "detector0" / "detector.pt"
    if not detector.exists():
        seed_ds = _seed_dataset(data / "pool", out / "seed_set", cfg.seed_labeled)
        _run("first detector (seed set)", ["detector", "train", "--data", str(seed_ds), "--preset", "cpu",
                                           "--out", str(out / "detector0"), "--epochs", str(cfg.detector_epochs),
                                           "--val-split", "0", "--seed", str(cfg.seed), "--threads",
                                           str(threads)], cfg)
    key = out / "keys" / "signing_key.pem"
    if not key.exists():
        _run("signing key", ["export", "keygen", "--key", str(key)], cfg)
    if not (bundles / "LATEST").exists():
        _run("export bundle", ["export", "--models", str(models), "--detector", str(detector), "--out", str(bundles),
                               "--key", str(key)], cfg)
    pub = key.with_name("signing_key.pub.pem")  # keygen writes NAME.pub.pem

    # 2. trainer and station as real processes ---------------------------------------------
    store = run_dir / "store"
    logs = run_dir / "logs"
    logs.mkdir()
    t_port_file, s_port = run_dir / "trainer.port", _free_port()
    env = dict(os.environ, GSAL_LOG="INFO")
    procs: list[subprocess.Popen] = []
    try:
        trainer = subprocess.Popen(
            GSAL + ["trainer", "serve", "--store", str(store), "--port", "0", "--port-file", str(t_port_file),
                    "--insecure"],
            stdout=(logs / "trainer.log").open("w"), stderr=subprocess.STDOUT, env=env)
        procs.append(trainer)
        t_port = _wait_port_file(t_port_file, trainer, "trainer")
        console.print(f"trainer serving on 127.0.0.1:{t_port} (log {logs / 'trainer.log'})")
        admin = run_dir / "admin.token"
        admin.write_text("demo-admin-token\n")
        admin.chmod(0o600)
        station = subprocess.Popen(
            GSAL + ["serve", "--bundle", str(bundles), "--port", str(s_port), "--insecure",
                    "--admin-token-file", str(admin), "--trusted-key", str(pub), "--threads", str(threads),
                    "--trainer", f"127.0.0.1:{t_port}", "--trainer-insecure", "--station-id", STATION_ID],
            stdout=(logs / "station.log").open("w"), stderr=subprocess.STDOUT, env=env)
        procs.append(station)
        station_addr = f"127.0.0.1:{s_port}"
        _wait_station(station_addr, station)
        console.print(f"station {STATION_ID} serving on {station_addr} (log {logs / 'station.log'})")
        st = ["--store", str(store)]
        _run("register station", ["trainer", "register-station", STATION_ID, "--address", station_addr] + st, cfg)
        _run("mark first bundle as serving", ["trainer", "deploy", "--bundle", str(bundles), "--no-push"] + st, cfg)

        # 3. stream the pool through the station (records are forwarded to the trainer) -----
        _run("stream pool through station", ["score", "--server", station_addr, "--images",
                                             str(data / "pool" / "images"), "--out",
                                             str(run_dir / "records.jsonl"), "--insecure"], cfg)
        _wait_ingested(store, cfg.pool)
        seed = _seed_coco(data / "pool", run_dir / "seed_labels.json", cfg.seed_labeled)
        _run("seed labels", ["trainer", "import-labels", str(seed), "--allow-unselected"] + st, cfg)

        # 4. rounds -----------------------------------------------------------------------------
        gt = data / "pool" / "annotations.json"
        for r in range(1, cfg.rounds + 1):
            if r == cfg.retrain_before_round:
                _run("retrain, gate, export, redeploy",
                     ["trainer", "retrain", "--val", str(data / "val"), "--epochs", str(cfg.retrain_epochs),
                      "--signing-key", str(key), "--stations-insecure", "--admin-token-file", str(admin),
                      "--threads", str(threads)] + st, cfg)
                _run("re-score stale slices", ["trainer", "rescore", "--station-address", station_addr,
                                               "--stations-insecure"] + st, cfg)
            _run(f"round {r}: select", ["trainer", "select", "--budget", str(cfg.budget)] + st, cfg, capture=True)
            _run(f"round {r}: annotate (simulated)", ["trainer", "import-labels", "--simulate-annotator",
                                                      str(gt)] + st, cfg)
        _run("export round tasks (COCO + Label Studio)", ["trainer", "export-tasks", "--out",
                                                          str(run_dir / "tasks")] + st, cfg)
        status = json.loads(_run("status", ["trainer", "status", "--json"] + st, cfg, capture=True))
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()

    # 5. report ---------------------------------------------------------------------------------
    from gsal_cli.demo_report import write_report

    total = time.perf_counter() - t_start
    report = write_report(out, run_dir, store, status, cfg.timings, total)
    _summary(status, total, report)


def _wait_station(addr: str, proc: subprocess.Popen, timeout: float = 300.0) -> None:
    """Block until the station's standard health check says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    t0 = time.time()
    with grpc.insecure_channel(addr) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                raise RuntimeError(f"station exited with code {proc.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise RuntimeError(f"station at {addr} not SERVING within {timeout:.0f}s")


def _wait_ingested(store: Path, n: int, timeout: float = 120.0) -> None:
    """Wait until the station's forwarder has delivered ``n`` records to the trainer's store."""
    from trainer.store.pool_store import PoolStore

    t0 = time.time()
    have = 0
    while time.time() - t0 < timeout:
        s = PoolStore(store)
        try:
            have = int(s.status()["records"])
        finally:
            s.close()
        if have >= n:
            console.print(f"trainer holds {have} records")
            return
        time.sleep(1.0)
    raise RuntimeError(f"trainer holds {have} of {n} records after {timeout:.0f}s")


def _summary(status: dict, total: float, report: Path) -> None:
    console.rule("[bold]GSAL Edge demo: summary")
    t = Table(title="coverage n(v) per fine concept (labeled instances)")
    t.add_column("concept")
    t.add_column("labeled", justify="right")
    for k, v in sorted((status.get("coverage") or {}).items()):
        t.add_row(k, str(v))
    console.print(t)
    console.print(f"report: {report}")
    console.print(f"total demo time: {total / 60:.1f} min")


if __name__ == "__main__":
    typer.run(main)
