"""Station fault tests on real processes: SIGKILL of a forwarding station mid-stream, and bundle swaps plus
corrupt / unsigned / wrongly signed bundles (LoadBundle RPC and --watch-bundles) under concurrent load.

Each prints "acknowledged records lost: N" (records the client got back from the station that never
reached the trainer) or "failed requests: N".
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from bench_figures import record_fault
from station_process import start_serve_process
from test_bundle import write_toy_bundle
from test_faults import stored_keys
from test_ingest_crash import _start_trainer

from export.signing import generate_keypair
from gsal_wire.scorer_client import ItemFailed, ScorerClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from load_test import LoadConfig, StreamStats, run_stream

ADMIN = "admin-token-0123456789abcdef"
WHY = {"corrupt": "sha256", "unsigned": "not signed", "wrongly signed": "trusted keys"}  # in the refusal text
STATION = "st-kill"


def _drain(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    """Keep reading a station's output (a full pipe would block it) into ``lines``."""

    def run() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)  # noqa: PERF402 - read while the process runs

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def signed(tmp_path: Path) -> dict[str, Path]:
    good, good_pub = generate_keypair(tmp_path / "good.pem")
    other, _ = generate_keypair(tmp_path / "other.pem")
    return {"good": good, "pub": good_pub, "other": other}


@pytest.fixture
def trainer(tmp_path: Path):
    store = tmp_path / "store"
    proc = _start_trainer(str(store), 0, tmp_path / "trainer.port")
    yield store, f"127.0.0.1:{int((tmp_path / 'trainer.port').read_text())}"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _forwarding_station(bundle: Path, pub: Path, trainer_addr: str, *extra: str):
    proc, addr, lines = start_serve_process(
        ["--insecure", "--port", "0", "--bundle", str(bundle), "--trusted-key", str(pub), "--station-id", STATION,
         "--trainer", trainer_addr, "--trainer-insecure", "--grace-s", "5", *extra])
    _drain(proc, lines)
    return proc, addr, lines


def _score(addr: str, prefix: str, n: int) -> set[str]:
    """Stream n slices; the ids the station acknowledged with a record."""
    rng = np.random.default_rng(len(prefix) + n)
    items = [(f"{prefix}-{i:04d}", rng.integers(0, 255, (32, 32), dtype=np.uint8)) for i in range(n)]
    with ScorerClient(addr, insecure=True) as c:
        got = list(c.score(items, timeout=120))
    assert not [r for r in got if isinstance(r, ItemFailed)]
    return {f"{STATION}/{r.image_id}" for r in got}


def _open_stream(addr: str, prefix: str, n: int, release: threading.Event) -> tuple[threading.Thread, set, list]:
    """A Score stream that sends n slices, then stays open until ``release``; returns (thread, acked ids,
    final code names) once its n answers are in."""
    from gsal_wire.convert import make_pb_slice
    from gsal_wire.pb import scorer_pb2

    acked: set[str] = set()
    codes: list[str] = []
    answered = threading.Semaphore(0)
    rng = np.random.default_rng(7)

    def requests():
        for i in range(n):
            yield scorer_pb2.ScoreRequest(slice=make_pb_slice(f"{prefix}-{i:04d}",
                                                              rng.integers(0, 255, (32, 32), dtype=np.uint8)))
        release.wait(60)

    def run() -> None:
        with ScorerClient(addr, insecure=True) as c:
            try:
                for resp in c.stream(requests(), timeout=90):
                    assert not resp.HasField("error"), resp.error
                    acked.add(f"{STATION}/{resp.slice_id}")
                    answered.release()
                codes.append("OK")
            except grpc.RpcError as e:
                codes.append(e.code().name)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    for _ in range(n):
        assert answered.acquire(timeout=60), "the open stream's slices were not answered"
    return t, acked, codes


def _stored(store: Path, timeout: float, want: set[str]) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        keys = {k for k in stored_keys(store)[0] if k.startswith(STATION + "/")}
        if want <= keys or time.monotonic() > deadline:
            return keys
        time.sleep(0.1)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


@pytest.mark.slow
def test_station_sigkilled_after_forwarding_then_restarted_loses_nothing(tmp_path, signed, trainer) -> None:
    """Records the forwarder had pushed survive a SIGKILL; the restarted station forwards the rest."""
    store, trainer_addr = trainer
    bundle = write_toy_bundle(tmp_path / "bundles", signed["good"], seed=0)
    proc, addr, _ = _forwarding_station(bundle, signed["pub"], trainer_addr, "--trainer-max-delay-ms", "50")
    open_call: list[object] = []
    release = threading.Event()
    try:
        acked = _score(addr, "a", 60)
        open_call.extend(_open_stream(addr, "open", 5, release))  # a stream sending when the station dies
        assert _stored(store, 60, acked | open_call[1]) >= acked | open_call[1], "forwarder did not deliver"
        _kill(proc)
        release.set()
        open_call[0].join(30)
        assert open_call[2] == ["UNAVAILABLE"], open_call[2]  # the open stream is told, not left hanging
        acked |= open_call[1]
    finally:
        release.set()
        if proc.poll() is None:
            proc.kill()
    proc, addr, _ = _forwarding_station(bundle, signed["pub"], trainer_addr, "--trainer-max-delay-ms", "50")
    try:
        acked |= _score(addr, "b", 60)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0  # graceful: flushes what is queued
    keys = _stored(store, 30, acked)
    lost = acked - keys
    print(f"\nstation SIGKILLed after its forwarder had pushed; restarted: acked {len(acked)}, trainer stored "
          f"{len(keys)}; acknowledged records lost: {len(lost)}")
    record_fault("station SIGKILLed with a stream open, after its forwarder pushed; restarted",
                 f"the open stream got {'/'.join(open_call[2]) or 'no answer'}; {len(acked)} acknowledged, "
                 f"{len(keys)} stored: acknowledged records lost: {len(lost)}")
    assert not lost and keys == acked


@pytest.mark.slow
def test_station_sigkilled_with_queued_records_keeps_or_reports_them(tmp_path, signed, trainer) -> None:
    """Records the client was answered but the forwarder had not pushed yet are in the spool (DATA_DIR/
    forward-spool): after a SIGKILL the restarted station replays them, says so, and the trainer stores
    every one (once)."""
    store, trainer_addr = trainer
    bundle = write_toy_bundle(tmp_path / "bundles", signed["good"], seed=0)
    data_dir = tmp_path / "station-data"
    # records wait in the forwarder's queue: a chunk of 1000 or 10 minutes, whichever comes first
    proc, addr, _ = _forwarding_station(bundle, signed["pub"], trainer_addr, "--trainer-chunk", "1000",
                                        "--trainer-max-delay-ms", "600000", "--data-dir", str(data_dir))
    try:
        acked = _score(addr, "q", 40)
        time.sleep(1.0)
        assert not _stored(store, 0, set()), "records reached the trainer before the kill (test set-up)"
        _kill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    proc, addr, lines = _forwarding_station(bundle, signed["pub"], trainer_addr, "--trainer-max-delay-ms", "50",
                                            "--data-dir", str(data_dir))
    try:
        keys = _stored(store, 60, acked)  # the replay, while the restarted station runs
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    lost = acked - keys
    replayed = [ln.strip() for ln in lines if "replaying" in ln]
    print(f"\nstation SIGKILLed with {len(acked)} acknowledged records queued: trainer stored {len(keys)}; "
          f"acknowledged records lost: {len(lost)}; reported after restart: {replayed or 'nothing'}")
    record_fault("station SIGKILLed while acknowledged records wait in its forwarder queue (spool on: --data-dir)",
                 f"{len(acked)} acknowledged, {len(keys)} stored after the restart: acknowledged records lost: "
                 f"{len(lost)}; the restart logged: "
                 + ("; ".join(m.group(0) for ln in replayed if (m := re.search(r"replaying \d+ spooled records", ln)))
                    or "nothing")
                 + f"; the restarted station's exit code on SIGTERM: {rc}" + ("" if rc == 0 else " (expected 0)"))
    assert rc == 0, f"the restarted station exited {rc} on SIGTERM (0: a graceful drain)"
    assert not lost and keys == acked
    assert len(replayed) == 1 and f"replaying {len(acked)} spooled records" in replayed[0], lines


def _corrupt_copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    model = next(dst.rglob("*.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    return dst


@pytest.mark.slow
def test_swaps_and_bad_bundles_under_load_fail_no_request(tmp_path, signed) -> None:
    """3 streams score continuously while good bundles are swapped in (LoadBundle and --watch-bundles) and a
    corrupt, an unsigned and a wrongly signed one are pushed each way: every bad one is refused, the serving
    bundle keeps serving, and no scoring request fails."""
    watched, side = tmp_path / "watched", tmp_path / "side"
    write_toy_bundle(watched, signed["good"], seed=0)
    token = tmp_path / "admin.token"
    token.write_text(ADMIN + "\n")
    proc, addr, lines = start_serve_process(
        ["--insecure", "--port", "0", "--trusted-key", str(signed["pub"]), "--watch-bundles", str(watched),
         "--watch-interval-s", "0.2", "--admin-token-file", str(token), "--grace-s", "5"], ready="following")
    _drain(proc, lines)
    good_b = write_toy_bundle(side / "b", signed["good"], seed=1)
    bad_rpc = {
        "corrupt": _corrupt_copy(good_b, side / "corrupt"),
        "unsigned": write_toy_bundle(side / "unsigned", None, seed=2),
        "wrongly signed": write_toy_bundle(side / "foreign", signed["other"], seed=3),
    }
    cfg = LoadConfig(streams=3, inflight=2, slice_size=32, deadline_s=60, stream_items=50)
    stats = [StreamStats() for _ in range(cfg.streams)]
    t0 = time.monotonic()
    stop_at = [t0 + 600]  # bounded; moved to "now" once the swaps are done
    threads: list[threading.Thread] = []
    refusals: dict[str, str] = {}
    try:
        with ScorerClient(addr, insecure=True, admin_token=ADMIN) as admin:
            deadline = time.monotonic() + 60
            while admin.health() != "SERVING" and time.monotonic() < deadline:
                time.sleep(0.1)
            first = admin.model_info().bundle_id
            assert first.startswith("sha256:")

            def stream(k: int) -> None:
                while time.monotonic() < stop_at[0]:
                    run_stream(k, addr, cfg, t0, min(stop_at[0], time.monotonic() + 5), stats[k])

            threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(cfg.streams)]
            for t in threads:
                t.start()
            time.sleep(1.0)
            # 1. LoadBundle: a good swap, then each bad bundle is refused and B keeps serving
            id_b = admin.load_bundle(str(good_b)).bundle_id
            assert id_b not in ("", first)
            for what, path in bad_rpc.items():
                with pytest.raises(grpc.RpcError) as ei:
                    admin.load_bundle(str(path))
                assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION, (what, ei.value.details())
                refusals[f"LoadBundle {what}"] = ei.value.details()
                assert WHY[what] in ei.value.details(), (what, ei.value.details())
                assert admin.health() == "SERVING" and admin.model_info().bundle_id == id_b
            # 2. the watcher: LATEST pointed at each bad bundle in turn, then at a good one
            for what, make in (("corrupt", lambda: _corrupt_copy(good_b, watched / "corrupt")),
                               ("unsigned", lambda: write_toy_bundle(watched, None, seed=4)),
                               ("wrongly signed", lambda: write_toy_bundle(watched, signed["other"], seed=5))):
                bad = make()
                (watched / "LATEST").write_text(bad.name + "\n")
                deadline = time.monotonic() + 30
                while not any(bad.name in ln and "refused" in ln for ln in lines):
                    assert time.monotonic() < deadline, f"watcher never refused the {what} bundle:\n" + "".join(
                        lines[-20:])
                    time.sleep(0.1)
                refusals[f"watcher {what}"] = next(ln for ln in lines if bad.name in ln and "refused" in ln)
                assert admin.health() == "SERVING" and admin.model_info().bundle_id == id_b
            good_c = write_toy_bundle(watched, signed["good"], seed=6)
            deadline = time.monotonic() + 60
            while admin.model_info().bundle_id == id_b:
                assert time.monotonic() < deadline, "watcher did not follow a good LATEST"
                time.sleep(0.1)
            id_c = admin.model_info().bundle_id
            assert id_c not in (first, id_b) and good_c.exists()
            time.sleep(1.0)
    finally:
        stop_at[0] = time.monotonic()
        for t in threads:
            t.join(120)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    ok = sum(s.item_codes.get("OK", 0) for s in stats)
    failed = sum(v for s in stats for k, v in s.item_codes.items() if k != "OK") + sum(
        sum(s.rpc_codes.values()) for s in stats)
    print(f"\n{ok} slices scored across 3 served bundles and 6 refused pushes; failed requests: {failed}")
    for k, v in refusals.items():
        print(f"  {k}: ...{v.strip()[-150:]}")
    record_fault("bundle swaps under load (3 streams): LoadBundle and --watch-bundles; corrupt, unsigned and "
                 "wrongly signed bundles pushed each way",
                 f"failed requests: {failed} ({ok} slices scored across 3 served bundles); refused: "
                 f"{len(refusals)} of 6 bad bundles, the old bundle kept serving",
                 refusals={k: v.strip()[-150:] for k, v in refusals.items()})
    assert not any(t.is_alive() for t in threads)
    assert failed == 0 and ok > 0
    assert rc == 0
