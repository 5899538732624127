"""--watch-bundles: a real station follows a bundles folder's LATEST (real signed ONNX bundles, real
verification), skips the bundle it already serves, and keeps serving when a new bundle is refused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import numpy as np
import pytest

from export.signing import generate_keypair
from gsal_wire.scorer_client import ScorerClient
from server.app import StationServer
from server.bundle_watcher import BundleWatcher
from server.config import ServerConfig
from server.station import default_scorer_factory

ADMIN = "admin-token-0123456789abcdef"


def test_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval_s"):
        BundleWatcher(tmp_path, lambda spec: None, interval_s=0)  # type: ignore[arg-type,return-value]


def test_station_follows_latest_and_keeps_serving_a_refused_bundle(tmp_path: Path) -> None:
    from test_bundle import write_toy_bundle  # the bundle tests' toy engines, really exported to ONNX

    good, good_pub = generate_keypair(tmp_path / "good.pem")
    other, _ = generate_keypair(tmp_path / "other.pem")
    bundles = tmp_path / "bundles"
    srv = StationServer(ServerConfig(insecure=True, port=0, admin_token=ADMIN, grace_s=0.5),
                        default_scorer_factory(backend="onnxruntime", trusted_keys=[good_pub]))
    srv.start()
    watcher = BundleWatcher(bundles, srv.load_bundle, interval_s=0.05)
    slice_ = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
    try:
        with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as c:
            assert watcher.check_once() is None and c.health() == "NOT_SERVING"  # no folder yet
            a = write_toy_bundle(bundles, good, seed=0)
            first = watcher.check_once()
            assert first is not None and first.previous_bundle_id == ""
            id_a = first.bundle_id
            assert c.score_one("x", slice_).model["bundle"] == id_a
            assert watcher.check_once() is None  # LATEST unchanged: no reload

            write_toy_bundle(bundles, other, seed=2)  # LATEST -> a bundle signed by an untrusted key
            assert watcher.check_once() is None and watcher.refused == 1
            assert c.health() == "SERVING" and c.score_one("y", slice_).model["bundle"] == id_a
            assert watcher.check_once() is None and watcher.refused == 1  # a refused bundle is not retried

            watcher.start()  # from here the daemon thread polls
            b = write_toy_bundle(bundles, good, seed=1)
            deadline = time.monotonic() + 60
            while c.model_info().bundle_id == id_a and time.monotonic() < deadline:
                time.sleep(0.05)
            id_b = c.model_info().bundle_id
            assert id_b not in ("", id_a) and c.score_one("z", slice_).model["bundle"] == id_b
            assert watcher.swaps == 2
            watcher.stop()

            # a station started with --bundle B and told to watch the folder does not reload B
            again = BundleWatcher(bundles, srv.load_bundle, interval_s=0.05, current=b)
            assert again.check_once() is None and again.swaps == 0
            (bundles / "LATEST").write_text(a.name + "\n")  # rolled back by hand: followed too
            res = again.check_once()
            assert res is not None and (res.bundle_id, res.previous_bundle_id) == (id_a, id_b)
    finally:
        watcher.stop()
        srv.stop(0)


@pytest.mark.slow
def test_serve_watch_bundles_process(tmp_path: Path) -> None:
    """`gsal-edge serve --watch-bundles` as a real process: serves the folder's LATEST, follows a new one."""
    from station_process import start_serve_process
    from test_bundle import write_toy_bundle

    good, good_pub = generate_keypair(tmp_path / "good.pem")
    bundles = tmp_path / "bundles"
    write_toy_bundle(bundles, good, seed=0)
    proc, addr, lines = start_serve_process(
        ["--insecure", "--port", "0", "--trusted-key", str(good_pub), "--watch-bundles", str(bundles),
         "--watch-interval-s", "0.1", "--grace-s", "2"], ready="following")

    def bundle_id(c: ScorerClient, not_: str = "") -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if c.health() == "SERVING" and c.model_info().bundle_id != not_:
                return c.model_info().bundle_id
            time.sleep(0.1)
        raise AssertionError("station did not load the bundle:\n" + "".join(lines))

    try:
        with ScorerClient(addr, insecure=True) as c:
            first = bundle_id(c)
            write_toy_bundle(bundles, good, seed=1)
            second = bundle_id(c, not_=first)
            assert second.startswith("sha256:") and second != first
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, "".join(lines) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
