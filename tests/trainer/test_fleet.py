"""A fleet of real stations (gRPC servers on 127.0.0.1 running toy ONNX bundles) forwarding into one real
trainer: the registry fed by Ingest, health checks, subset / canary deploys, fleet rollback, the CLI, and
(slow) three station processes streaming into a trainer process while the fleet is deployed and rolled back."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from export.signing import generate_keypair
from gsal_wire.scorer_client import ScorerClient
from server.app import StationServer
from server.config import ServerConfig, TrainerLink
from server.station import default_scorer_factory
from trainer.canary import CanaryError, CanaryOptions, score_drift, spearman
from trainer.deploy import DeployError, StationAccess, bundle_identity, deploy, rollback
from trainer.fleet import FleetError, HealthMonitor, check_fleet, select_stations
from trainer.ingest_service import IngestConfig, RunningServer, start_server
from trainer.store.pool_store import PoolStore

ADMIN = "admin-token-0123456789abcdef"
ACCESS = StationAccess(insecure=True, admin_token=ADMIN, timeout_s=120)
SIZE = 32


def _wait(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Bundles:
    a: Path  # signed by the trusted key, seed 0
    b: Path  # signed by the trusted key, seed 1
    foreign: Path  # signed by another key: every station refuses it
    pub: Path
    key: Path
    ids: dict[str, str]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    from test_bundle import write_toy_bundle  # the bundle tests' toy engines, really exported to ONNX

    d = tmp_path_factory.mktemp("fleet-bundles")
    key, pub = generate_keypair(d / "good.pem")
    other, _ = generate_keypair(d / "other.pem")
    a, b = write_toy_bundle(d / "a", key, seed=0), write_toy_bundle(d / "b", key, seed=1)
    foreign = write_toy_bundle(d / "c", other, seed=2)
    ids = {name: bundle_identity(p)[0] for name, p in (("a", a), ("b", b), ("foreign", foreign))}
    return Bundles(a, b, foreign, pub, key, ids)


@dataclass
class Fleet:
    store: PoolStore
    trainer: RunningServer
    stations: dict[str, StationServer]

    def serving(self) -> dict[str, str]:
        out = {}
        for sid, srv in self.stations.items():
            with ScorerClient(srv.address, insecure=True) as c:
                out[sid] = c.model_info().bundle_id
        return out

    def send(self, n: int, prefix: str = "s") -> None:
        """``n`` slices through every station; wait until the trainer stored all of them."""
        rng = np.random.default_rng(len(prefix) * 1000 + n)
        before = self.store.status()["slices"]
        for sid, srv in self.stations.items():
            items = [(f"{prefix}-{sid}-{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)) for i in range(n)]
            with ScorerClient(srv.address, insecure=True) as c:
                assert all(r.image_id == i for r, (i, _) in zip(c.score(items, timeout=60), items))
        want = before + n * len(self.stations)
        _wait(lambda: self.store.status()["slices"] >= want, what=f"{want} slices at the trainer")


@pytest.fixture
def fleet(tmp_path: Path, bundles: Bundles) -> Iterator[Fleet]:
    store = PoolStore(tmp_path / "store")
    trainer = start_server(store, IngestConfig(port=0, batch_items=16, max_workers=8))
    stations: dict[str, StationServer] = {}
    try:
        for sid in ("st-a", "st-b", "st-c"):
            link = TrainerLink(address=trainer.address, station_id=sid, insecure=True, max_delay_ms=20, chunk_size=16)
            srv = StationServer(
                ServerConfig(insecure=True, port=0, admin_token=ADMIN, station_id=sid, grace_s=1.0, trainer=link),
                default_scorer_factory(backend="onnxruntime", trusted_keys=[bundles.pub], station=sid, threads=1))
            srv.start()
            srv.load_bundle(str(bundles.a))
            stations[sid] = srv
        yield Fleet(store, trainer, stations)
    finally:
        for srv in stations.values():
            srv.stop(1.0)
        trainer.stop(1.0)
        store.close()


def test_ingest_traffic_registers_each_station_with_its_address(fleet: Fleet, bundles: Bundles) -> None:
    assert fleet.store.stations() == []
    fleet.send(3)
    rows = {s["station_id"]: s for s in fleet.store.stations()}
    assert {k: (r["address"], r["bundle_id"]) for k, r in rows.items()} == {
        sid: (srv.address, bundles.ids["a"]) for sid, srv in fleet.stations.items()}
    assert all(r["health"] is None for r in rows.values())  # no health check ran yet
    assert [s["station_id"] for s in select_stations(fleet.store)] == ["st-a", "st-b", "st-c"]
    with pytest.raises(FleetError, match="unknown station.*st-x"):
        select_stations(fleet.store, ["st-a", "st-x"])
    fleet.store.register_station("st-noaddr")
    with pytest.raises(FleetError, match="st-noaddr have no address"):
        select_stations(fleet.store, ["st-noaddr"])


def test_told_addresses_are_checked_and_wildcard_binds_become_dialable(tmp_path: Path) -> None:
    from test_trainer_helpers import make_pixels, make_record

    from gsal_wire.trainer_client import PushItem, TrainerPushClient
    from server.forwarder import dialable_address

    assert dialable_address("0.0.0.0", 5) == f"{socket.getfqdn()}:5"
    assert (dialable_address("::1", 5), dialable_address("10.0.0.7", 5)) == ("[::1]:5", "10.0.0.7:5")
    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0))
    try:
        with TrainerPushClient(srv.address, "st-01", insecure=True) as cli:
            cli.station_address = "not an address"
            cli.push([PushItem(make_record(0), pixels=make_pixels(0))])
            assert store.stations()[0]["address"] is None  # ignored (logged); the record is stored
            cli.station_address = "line3-station.plant:50051"
            cli.push([PushItem(make_record(1), pixels=make_pixels(1))])
            assert store.stations()[0]["address"] == "line3-station.plant:50051"
        assert store.status()["records"] == 2
    finally:
        srv.stop(1.0)
        store.close()


def test_check_fleet_records_health_and_bundle(fleet: Fleet, bundles: Bundles) -> None:
    fleet.send(1)
    fleet.store.register_station("st-dead", f"127.0.0.1:{_closed_port()}")
    res = {h.station_id: h for h in check_fleet(fleet.store, ACCESS, timeout_s=2.0)}
    assert {k: h.health for k, h in res.items()} == {"st-a": "serving", "st-b": "serving", "st-c": "serving",
                                                      "st-dead": "unreachable"}
    assert res["st-a"].bundle_id == bundles.ids["a"] and res["st-dead"].bundle_id is None
    assert "UNAVAILABLE" in res["st-dead"].detail
    rows = {s["station_id"]: s for s in fleet.store.stations()}
    assert rows["st-dead"]["health"] == "unreachable" and rows["st-b"]["health_detail"] == "ok"
    assert all(time.time() - r["health_checked_at"] < 60 for r in rows.values())


def test_subset_deploy_then_fleet_rollback(fleet: Fleet, bundles: Bundles) -> None:
    fleet.send(1)
    first = deploy(fleet.store, *bundle_identity(bundles.a), ACCESS)
    assert first.promoted and not first.failed and set(first.stations) == {"st-a", "st-b", "st-c"}
    rep = deploy(fleet.store, *bundle_identity(bundles.b), ACCESS, stations=["st-a", "st-b"])
    assert set(rep.stations) == {"st-a", "st-b"}
    assert all(r["status"] == "ok" and r["previous"] == bundles.ids["a"] and r["deploy_s"] > 0
               for r in rep.stations.values())
    assert fleet.serving() == {"st-a": bundles.ids["b"], "st-b": bundles.ids["b"], "st-c": bundles.ids["a"]}
    assert fleet.store.current_bundle == bundles.ids["b"] and rep.replaced == bundles.ids["a"]

    rb = rollback(fleet.store, ACCESS)
    assert {k: r["status"] for k, r in rb.stations.items()} == {"st-a": "ok", "st-b": "ok", "st-c": "skipped"}
    assert rb.stations["st-c"]["reason"] == "already on the previous bundle"
    assert set(fleet.serving().values()) == {bundles.ids["a"]} and fleet.store.current_bundle == bundles.ids["a"]
    from trainer.audit_log import read_entries

    assert [e["kind"] for e in read_entries(fleet.store.audit_path)] == ["deploy", "deploy", "rollback"]


def _hand_drift(bundles: Bundles, ids: list[str], arrays: list[np.ndarray], station: str) -> float:
    """1 - Spearman rho of D_img (alpha = beta = 0.5) scored locally with both bundles, ranks by argsort."""
    from gsal_edge.scoring.bundle import load_bundle, trusted_keys_from

    d = []
    for path in (bundles.a, bundles.b):
        recs = load_bundle(path, "onnxruntime", trusted_keys_from([bundles.pub]), station=station).score(arrays, ids)
        e, v = np.array([r.e_rec for r in recs]), np.array([r.v_den for r in recs])
        d.append(0.5 * (e - e.mean()) / (e.std() + 1e-8) + 0.5 * (v - v.mean()) / (v.std() + 1e-8))
    ra, rb = (np.argsort(np.argsort(x)).astype(float) for x in d)
    n = len(ra)
    return float(6 * ((ra - rb) ** 2).sum() / (n * (n * n - 1)))  # 1 - rho, no ties


def test_canary_passes_then_the_rest_follow(fleet: Fleet, bundles: Bundles) -> None:
    fleet.send(6)
    deploy(fleet.store, *bundle_identity(bundles.a), ACCESS, push=False)  # the trainer learns bundle A's path
    same = deploy(fleet.store, *bundle_identity(bundles.a), ACCESS, canary=CanaryOptions("st-b", drift_max=0.0,
                                                                                        probe_n=6))
    assert same.canary["passed"] and same.canary["drift"] == 0.0 and same.canary["n"] == 6  # same bundle

    rep = deploy(fleet.store, *bundle_identity(bundles.b), ACCESS, canary=CanaryOptions("st-b", drift_max=2.0,
                                                                                       probe_n=6))
    c = rep.canary
    assert c["passed"] and c["old_bundle"] == bundles.ids["a"] and c["n"] == 6 and not c["rolled_back"]
    assert set(fleet.serving().values()) == {bundles.ids["b"]} and not rep.failed
    keys = fleet.store.recent_slice_keys("st-b", 6)
    infos = [fleet.store.slice_info(k) for k in keys]
    from trainer.images import decode_image

    want = _hand_drift(bundles, [i.slice_id for i in infos], [decode_image(i.image_path) for i in infos], "st-b")
    assert c["drift"] == pytest.approx(want, abs=1e-9)


def test_canary_over_the_drift_gate_is_rolled_back_and_nobody_else_touched(fleet: Fleet, bundles: Bundles) -> None:
    fleet.send(6)
    deploy(fleet.store, *bundle_identity(bundles.a), ACCESS, push=False)
    with pytest.raises(DeployError, match="canary st-a failed: score drift") as ei:
        deploy(fleet.store, *bundle_identity(bundles.b), ACCESS, canary=CanaryOptions("st-a", drift_max=0.0))
    rep = ei.value.report
    assert rep is not None and rep.canary["drift"] > 0.0 and rep.canary["rolled_back"]
    assert {k: r["status"] for k, r in rep.stations.items()} == {"st-a": "failed", "st-b": "skipped",
                                                                 "st-c": "skipped"}
    assert set(fleet.serving().values()) == {bundles.ids["a"]}
    assert fleet.store.current_bundle == bundles.ids["a"] and not rep.promoted


def test_canary_refusing_the_bundle_stops_the_deploy(fleet: Fleet, bundles: Bundles) -> None:
    fleet.send(3)
    with pytest.raises(DeployError, match="canary st-c failed: LoadBundle refused: FAILED_PRECONDITION") as ei:
        deploy(fleet.store, *bundle_identity(bundles.foreign), ACCESS,
               canary=CanaryOptions("st-c", drift_max=None))
    assert ei.value.report.stations["st-a"]["status"] == "skipped"
    assert set(fleet.serving().values()) == {bundles.ids["a"]}
    with pytest.raises(DeployError, match="not among the target stations"):
        deploy(fleet.store, *bundle_identity(bundles.b), ACCESS, stations=["st-a"], canary=CanaryOptions("st-c"))


def test_canary_needs_probe_slices(fleet: Fleet, bundles: Bundles, tmp_path: Path) -> None:
    fleet.send(1)
    with pytest.raises(DeployError, match="probe scoring on the old bundle: canary probe set: 1 slice"):
        deploy(fleet.store, *bundle_identity(bundles.b), ACCESS, canary=CanaryOptions("st-a"))
    from trainer.images import encode_pixels

    probes = tmp_path / "probes"
    probes.mkdir()
    for i in range(4):
        data, fmt = encode_pixels(np.random.default_rng(i).integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
        (probes / f"p{i}.{fmt}").write_bytes(data)
    rep = deploy(fleet.store, *bundle_identity(bundles.b), ACCESS,
                 canary=CanaryOptions("st-a", drift_max=2.0, probe_images=probes))
    assert rep.canary["passed"] and rep.canary["n"] == 4
    with pytest.raises(CanaryError, match="drift_max must be in"):
        CanaryOptions("st-a", drift_max=3.0)


def test_spearman_and_drift_by_hand() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(1 - 6 * 2 / (4 * 15))
    # ties share the average rank: ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3)
    ra, rb = np.array([0, 1.5, 1.5, 3]), np.arange(4.0)
    want = ((ra - ra.mean()) * (rb - rb.mean())).mean() / (ra.std() * rb.std())
    assert spearman(np.array([5, 7, 7, 9]), np.array([1, 2, 3, 4])) == pytest.approx(want)
    assert np.isnan(spearman(np.ones(4), np.arange(4.0)))
    from test_trainer_helpers import make_record

    old = [make_record(i) for i in range(5)]
    rev = [make_record(i) for i in range(5)]
    for r in rev:  # D_img = 0.5 z(E_rec) + 0.5 z(V_den) negated: the new bundle ranks the slices reversed
        r.e_rec, r.v_den = 1.0 - r.e_rec, 1.0 - r.v_den
    assert score_drift(old, old)["drift"] == pytest.approx(0.0)
    assert score_drift(old, rev)["drift"] == pytest.approx(2.0)
    with pytest.raises(CanaryError, match="at least 3"):
        score_drift(old[:2], old[:2])


def test_health_monitor_marks_a_stopped_station(fleet: Fleet, tmp_path: Path) -> None:
    fleet.send(1)
    mon = HealthMonitor(fleet.store.root, ACCESS, interval_s=0.1, timeout_s=1.0).start()
    try:
        _wait(lambda: all(s["health"] == "serving" for s in fleet.store.stations()), what="first health round")
        fleet.stations["st-c"].stop(0.5)
        _wait(lambda: {s["station_id"]: s["health"] for s in fleet.store.stations()}["st-c"] == "unreachable",
              what="st-c unreachable")
    finally:
        mon.stop()
    assert mon.rounds >= 2
    with pytest.raises(FleetError, match="interval"):
        HealthMonitor(tmp_path, ACCESS, interval_s=0)


def test_cli_stations_deploy_and_rollback(fleet: Fleet, bundles: Bundles, tmp_path: Path) -> None:
    from trainer.cli import app

    fleet.send(4)
    token = tmp_path / "admin.token"
    token.write_text(ADMIN)
    run = CliRunner().invoke
    common = ["--store", str(fleet.store.root), "--stations-insecure"]
    r = run(app, ["stations", "--check", *common])
    assert r.exit_code == 0, r.output
    assert "3 station(s)" in r.output and r.output.count("health serving (ok") == 3
    r = run(app, ["stations", "--json", "--store", str(fleet.store.root)])
    assert {s["station_id"]: s["health"] for s in json.loads(r.output)} == dict.fromkeys(fleet.stations, "serving")

    r = run(app, ["deploy", "--bundle", str(bundles.a), "--no-push", "--store", str(fleet.store.root)])
    assert r.exit_code == 0, r.output
    r = run(app, ["deploy", "--bundle", str(bundles.b), *common, "--admin-token-file", str(token),
                  "--stations", "st-a,st-c", "--canary", "st-c", "--drift-max", "2", "--probe-n", "4"])
    assert r.exit_code == 0, r.output
    assert "st-a: ok (" in r.output and "st-c: ok (" in r.output and "canary st-c: passed" in r.output
    assert fleet.serving() == {"st-a": bundles.ids["b"], "st-b": bundles.ids["a"], "st-c": bundles.ids["b"]}

    r = run(app, ["deploy", "--bundle", str(bundles.foreign), *common, "--admin-token-file", str(token)])
    assert r.exit_code == 1 and r.output.count("FAILED FAILED_PRECONDITION") == 3, r.output
    r = run(app, ["rollback", *common, "--admin-token-file", str(token)])
    assert r.exit_code == 0, r.output
    assert "st-b: skipped: already on the previous bundle" in r.output
    assert set(fleet.serving().values()) == {bundles.ids["a"]}
    r = run(app, ["deploy", "--bundle", str(bundles.b), *common, "--stations", "st-zz"])
    assert r.exit_code == 2 and "unknown station(s) st-zz" in r.output


# ------------------------------------------------------------------------------------------ load test


class _Load:
    """One client per station streaming batches of slices until stopped; counts every request's outcome."""

    def __init__(self, addresses: dict[str, str], per_stream: int = 8, max_streams: int = 2000) -> None:
        self.addresses, self.per_stream, self.max_streams = addresses, per_stream, max_streams
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.sent = dict.fromkeys(addresses, 0)
        self.ok = dict.fromkeys(addresses, 0)
        self.failures: list[str] = []
        self.bundles: dict[str, list[str]] = {sid: [] for sid in addresses}
        self.threads = [threading.Thread(target=self._client, args=(sid,), daemon=True) for sid in addresses]

    def start(self) -> _Load:
        self.t0 = time.perf_counter()
        for t in self.threads:
            t.start()
        return self

    def _client(self, sid: str) -> None:
        import grpc

        from gsal_wire.scorer_client import ItemFailed

        rng = np.random.default_rng(int(sid.rsplit("-", 1)[1]))
        with ScorerClient(self.addresses[sid], insecure=True) as c:
            for s in range(self.max_streams):
                if self.stop.is_set():
                    return
                items = [(f"load-{s:05d}-{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8))
                         for i in range(self.per_stream)]
                with self.lock:
                    self.sent[sid] += len(items)
                try:
                    got = list(c.score(items, timeout=60))
                except grpc.RpcError as e:
                    with self.lock:
                        self.failures.append(f"{sid} stream {s}: {e.code().name} {e.details()}")
                    continue
                with self.lock:
                    for (want, _), r in zip(items, got):
                        if isinstance(r, ItemFailed) or r.image_id != want:
                            self.failures.append(f"{sid}: {r}")
                        else:
                            self.ok[sid] += 1
                            self.bundles[sid].append(r.model["bundle"])
                    if len(got) != len(items):
                        self.failures.append(f"{sid} stream {s}: {len(got)} answers to {len(items)} slices")

    def last_bundles(self) -> dict[str, str | None]:
        with self.lock:
            return {sid: (b[-1] if b else None) for sid, b in self.bundles.items()}

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(120)
        self.seconds = getattr(self, "seconds", None) or time.perf_counter() - self.t0


@pytest.mark.slow
def test_three_station_processes_deploy_and_rollback_under_load(tmp_path: Path, bundles: Bundles) -> None:
    """3 `gsal-edge serve --trainer` processes stream into one `trainer serve` process; while clients keep
    scoring on every station, `trainer deploy --canary` moves the fleet to bundle B and `trainer rollback`
    back to A. Every request must succeed and every answered slice must be acknowledged by the trainer."""
    import signal
    import subprocess
    import sys

    from station_process import REPO_ROOT, start_serve_process

    from trainer.audit_log import read_entries

    store_dir, port_file, token = tmp_path / "store", tmp_path / "trainer.port", tmp_path / "admin.token"
    token.write_text(ADMIN)
    trainer_log = (tmp_path / "trainer.log").open("w")
    trainer = subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "serve", "--store", str(store_dir), "--insecure", "--port", "0",
         "--port-file", str(port_file), "--health-interval", "1", "--stations-insecure"],
        cwd=REPO_ROOT, stdout=trainer_log, stderr=subprocess.STDOUT, text=True)
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, list[str]] = {}
    drains: list[threading.Thread] = []
    load = None
    try:
        _wait(lambda: port_file.exists() or trainer.poll() is not None, 120, "the trainer's port file")
        assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()
        taddr = f"127.0.0.1:{int(port_file.read_text())}"
        addrs: dict[str, str] = {}

        def start(sid: str) -> None:
            proc, addr, lines = start_serve_process([
                "--insecure", "--port", "0", "--bundle", str(bundles.a), "--trusted-key", str(bundles.pub),
                "--station-id", sid, "--admin-token-file", str(token), "--threads", "1", "--grace-s", "10",
                "--trainer", taddr, "--trainer-insecure", "--trainer-max-delay-ms", "100"])
            procs[sid], addrs[sid], logs[sid] = proc, addr, lines
            drain = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
            drain.start()  # keep reading its output so a full pipe never blocks it
            drains.append(drain)

        starters = [threading.Thread(target=start, args=(f"st-{k}",)) for k in range(3)]
        for t in starters:
            t.start()
        for t in starters:
            t.join(300)
        assert sorted(addrs) == ["st-0", "st-1", "st-2"]
        load = _Load(addrs).start()

        def cli(*args: str) -> tuple[subprocess.CompletedProcess, float]:
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "trainer.cli", *args, "--store", str(store_dir)],
                               check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
            return r, time.perf_counter() - t0

        with PoolStore(store_dir) as view:  # the registry fills from the stations' own Ingest traffic
            _wait(lambda: {s["station_id"]: s["address"] for s in view.stations()} == addrs, 60, "registry")
            _wait(lambda: all(s["health"] == "serving" for s in view.stations()), 30, "periodic health checks")
        r, _ = cli("deploy", "--bundle", str(bundles.a), "--no-push")
        assert r.returncode == 0, r.stdout + r.stderr
        _wait(lambda: min(load.ok.values()) >= 16, 60, "16 answered slices per station (canary probes)")

        access = ["--stations-insecure", "--admin-token-file", str(token)]
        dep, dep_s = cli("deploy", "--bundle", str(bundles.b), *access, "--canary", "st-1", "--drift-max", "2",
                         "--probe-n", "8")
        assert dep.returncode == 0, dep.stdout + dep.stderr
        assert "canary st-1: passed" in dep.stdout, dep.stdout
        _wait(lambda: set(load.last_bundles().values()) == {bundles.ids["b"]}, 60, "load on bundle B")
        rb, rb_s = cli("rollback", *access)
        assert rb.returncode == 0, rb.stdout + rb.stderr
        _wait(lambda: set(load.last_bundles().values()) == {bundles.ids["a"]}, 60, "load back on bundle A")
        st, _ = cli("stations", "--check", "--stations-insecure")
        assert st.returncode == 0 and st.stdout.count("health serving") == 3, st.stdout + st.stderr
        load.join()

        for sid, proc in procs.items():  # graceful stop: each station pushes what it still holds
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
        for d in drains:
            d.join(30)
        for sid, proc in procs.items():
            out = "".join(logs[sid])
            assert proc.returncode == 0 and "flushed" in out, out
        assert load.failures == [], load.failures[:5]
        assert load.ok == load.sent and min(load.sent.values()) > 0
        for sid in addrs:
            seen = set(load.bundles[sid])
            assert {bundles.ids["a"], bundles.ids["b"]} <= seen, f"{sid} saw {seen}"
        with PoolStore(store_dir) as view:
            acked = {sid: int(view._q("SELECT count(*) FROM slices WHERE station_id = ? AND slice_id LIKE 'load-%'",
                                      (sid,))[0][0]) for sid in addrs}
            records = view.status()["records"]
            assert acked == load.ok  # every answered slice reached the trainer (ack after durable commit)
            assert view.current_bundle == bundles.ids["a"]
        deps = read_entries(store_dir / "audit.jsonl", "deploy")[-1]["data"]
        rbs = read_entries(store_dir / "audit.jsonl", "rollback")[-1]["data"]
        assert {k: v["status"] for k, v in deps["stations"].items()} == dict.fromkeys(addrs, "ok")
        assert {k: v["status"] for k, v in rbs["stations"].items()} == dict.fromkeys(addrs, "ok")
        print(f"\nfleet load: {sum(load.sent.values())} slices sent in {load.seconds:.1f}s ({load.sent}), "
              f"{len(load.failures)} failed, "
              f"{sum(acked.values())} acknowledged by the trainer ({records} records incl. canary re-scores); "
              f"deploy {dep_s:.2f}s wall (canary drift {deps['canary']['drift']:.3f}, "
              f"per station {({k: v['deploy_s'] for k, v in deps['stations'].items()})}), "
              f"rollback {rb_s:.2f}s wall (per station {({k: v['deploy_s'] for k, v in rbs['stations'].items()})})")
    finally:
        if load is not None:
            load.join()
        for proc in [*procs.values(), trainer]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
        trainer_log.close()
