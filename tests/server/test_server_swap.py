"""Hot swap (LoadBundle) on a real server: zero failed requests under concurrent load, in-flight work
finishes on the old scorer, rejected bundles (real ``load_bundle`` verification, failing warm-up)
leave the old one serving."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.scorer_client import ItemFailed, ScorerClient, to_result
from server.app import StationServer
from server.config import ServerConfig
from server.station import default_scorer_factory, parse_untrained_spec

ADMIN = "admin-token-0123456789abcdef"
SIZE = 32


class Tagged:
    """A real untrained scorer under a distinct bundle id; optionally held at a gate or failing warm-up."""

    def __init__(self, seed: int, fail_warmup: bool = False) -> None:
        from gsal_edge.scoring.torch_scorer import untrained_scorer

        self.inner = untrained_scorer(seed=seed, image_size=SIZE)
        self.bundle_id = f"test-bundle-{seed}"
        self.inner.bundle_id = self.bundle_id
        self.fail_warmup = fail_warmup
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def score(self, slices: list[np.ndarray], image_ids: list[str], metas: Any = None) -> list[ScoreRecord]:
        self.entered.set()
        assert self.gate.wait(60)
        self.batches.append(list(image_ids))
        return self.inner.score(slices, image_ids, metas)

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def warmup(self) -> None:
        if self.fail_warmup:
            raise RuntimeError("engine produced NaN on the warm-up slice")
        self.inner.warmup()


class Factory:
    """``tagged:seed=N[,fail]`` -> :class:`Tagged`; anything else goes to the real default factory
    (``gsal_edge.scoring.bundle.load_bundle``), so its verification errors are the real ones."""

    def __init__(self) -> None:
        self.real = default_scorer_factory(backend="torch")
        self.built: dict[str, Tagged] = {}

    def __call__(self, spec: str) -> Any:
        if spec.startswith("tagged:"):
            fail = spec.endswith(",fail")
            seed = parse_untrained_spec("untrained:" + spec[7:].removesuffix(",fail"))["seed"]
            self.built[spec] = Tagged(seed, fail)
            return self.built[spec]
        return self.real(spec)


@pytest.fixture
def server() -> Iterator[tuple[StationServer, Factory]]:
    f = Factory()
    srv = StationServer(ServerConfig(insecure=True, port=0, admin_token=ADMIN, max_batch_size=4,
                                     max_queue_delay_ms=5.0, grace_s=1.0), f)
    srv.start()
    srv.load_bundle("tagged:seed=1")
    yield srv, f
    for t in f.built.values():
        t.gate.set()
    srv.stop(1)


def _slices(rng: np.random.Generator, n: int, prefix: str) -> list[tuple[str, np.ndarray]]:
    return [(f"{prefix}-{i}", rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)) for i in range(n)]


@pytest.mark.slow
def test_swap_under_concurrent_load_has_zero_failures(server: tuple[StationServer, Factory]) -> None:
    """4 clients keep streaming (and calling ScoreOne) until 3 swaps are done; every request must succeed."""
    srv, _ = server
    n_clients, min_streams, max_streams, per_stream = 4, 2, 60, 8
    failures: list[str] = []
    bundles_seen: list[str] = []
    sent = {"n": 0}
    swaps_done = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = np.random.default_rng(k)
        with ScorerClient(srv.address, insecure=True) as c:
            for s in range(max_streams):  # bounded; normally ends soon after the last swap
                if s >= min_streams and swaps_done.is_set():
                    return
                items = _slices(rng, per_stream, f"c{k}s{s}")
                with lock:
                    sent["n"] += per_stream + 1
                try:
                    got = list(c.score(items, timeout=120))
                    got.append(c.score_one(f"c{k}s{s}-one", items[0][1], timeout=120))
                except grpc.RpcError as e:
                    failures.append(f"c{k}s{s}: {e.code().name} {e.details()}")
                    continue
                with lock:
                    for sid, r in zip([i for i, _ in items] + [f"c{k}s{s}-one"], got):
                        if isinstance(r, ItemFailed) or r.image_id != sid:
                            failures.append(str(r))
                        else:
                            bundles_seen.append(r.model["bundle"])

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    swaps = []
    try:
        with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as admin:
            for seed in (2, 3, 2):
                time.sleep(0.5)
                swaps.append(admin.load_bundle(f"tagged:seed={seed}").bundle_id)
                assert admin.health() == "SERVING"
    finally:
        swaps_done.set()
        for t in threads:
            t.join(300)
    assert failures == []
    assert len(bundles_seen) == sent["n"] > 0  # zero failed requests
    assert swaps == ["test-bundle-2", "test-bundle-3", "test-bundle-2"]
    assert set(bundles_seen) <= {"test-bundle-1", "test-bundle-2", "test-bundle-3"}
    assert {"test-bundle-1", "test-bundle-2"} <= set(bundles_seen)  # the load really spanned the swaps
    with ScorerClient(srv.address, insecure=True) as c:
        assert c.score_one("after", np.zeros((SIZE, SIZE), np.uint8)).model["bundle"] == "test-bundle-2"
    assert 'gsal_scorer_swaps_total{result="ok"} 4.0' in srv.metrics.text()


def test_in_flight_items_finish_on_old_scorer(server: tuple[StationServer, Factory]) -> None:
    srv, f = server
    old = f.built["tagged:seed=1"]
    rng = np.random.default_rng(0)
    items = _slices(rng, 3, "inflight")
    old.gate.clear()
    out: list[Any] = []
    queued = threading.Event()

    def requests() -> Iterator[Any]:
        from gsal_wire.convert import make_pb_slice
        from gsal_wire.pb import scorer_pb2

        yield scorer_pb2.ScoreRequest(slice=make_pb_slice(*items[0]))
        assert old.entered.wait(30)  # slice 0 is held inside the old scorer; 1 and 2 queue behind it
        for it in items[1:]:
            yield scorer_pb2.ScoreRequest(slice=make_pb_slice(*it))
        queued.set()

    with ScorerClient(srv.address, insecure=True) as c:
        t = threading.Thread(target=lambda: out.extend(c.stream(requests(), timeout=120)))
        t.start()
        assert queued.wait(30)
        time.sleep(0.2)
        res = srv.load_bundle("tagged:seed=5")
        assert res.previous_bundle_id == "test-bundle-1" and res.bundle_id == "test-bundle-5"
        fresh: list[ScoreRecord] = []  # submitted after the switch: bound to the new scorer
        t2 = threading.Thread(target=lambda: fresh.append(c.score_one("fresh", items[0][1], timeout=60)))
        t2.start()
        time.sleep(0.2)
        old.gate.set()  # (one worker thread: the new scorer runs once the held batch is done)
        t.join(60)
        t2.join(60)
    assert [to_result(r).model["bundle"] for r in out] == ["test-bundle-1"] * 3  # accepted before the swap
    assert [r.model["bundle"] for r in fresh] == ["test-bundle-5"]
    assert old.batches[0] == ["inflight-0"] and old.batches[1] == ["inflight-1", "inflight-2"]


def _assert_still_serving(srv: StationServer, bundle: str) -> None:
    with ScorerClient(srv.address, insecure=True) as c:
        assert c.health() == "SERVING"
        assert c.model_info().bundle_id == bundle
        assert c.score_one("still", np.zeros((SIZE, SIZE), np.uint8)).model["bundle"] == bundle


def _load_error(srv: StationServer, path: str, expected: str = "") -> grpc.RpcError:
    with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as c, pytest.raises(grpc.RpcError) as ei:
        c.load_bundle(path, expected_bundle_id=expected)
    return ei.value


def test_unverifiable_bundle_keeps_old_serving(server: tuple[StationServer, Factory], tmp_path: Path) -> None:
    srv, _ = server
    (tmp_path / "manifest.json").write_text('{"format": "gsal-bundle", "files": {}}')
    err = _load_error(srv, str(tmp_path))  # real gsal_edge.scoring.bundle.load_bundle refuses it
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "rejected" in err.details()
    _assert_still_serving(srv, "test-bundle-1")
    err = _load_error(srv, str(tmp_path / "does-not-exist"))
    assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION)
    _assert_still_serving(srv, "test-bundle-1")
    assert 'gsal_scorer_swaps_total{result="rejected"} 2.0' in srv.metrics.text()


def test_failing_warmup_keeps_old_serving(server: tuple[StationServer, Factory]) -> None:
    srv, _ = server
    err = _load_error(srv, "tagged:seed=7,fail")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "warm-up" in err.details()
    _assert_still_serving(srv, "test-bundle-1")


def test_expected_bundle_id_and_empty_path(server: tuple[StationServer, Factory]) -> None:
    srv, _ = server
    err = _load_error(srv, "tagged:seed=8", expected="sha256:something-else")
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "expected_bundle_id" in err.details()
    err = _load_error(srv, "")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and err.details().startswith("path:")
    _assert_still_serving(srv, "test-bundle-1")


def test_untrained_specs_refused_unless_allowed() -> None:
    from server.station import SwapError

    with pytest.raises(SwapError, match="not allowed"):
        default_scorer_factory()("untrained:seed=0")
    with pytest.raises(ValueError, match="untrained"):
        parse_untrained_spec("untrained:seed=x")
    assert parse_untrained_spec("untrained:seed=3,size=48") == {"seed": 3, "image_size": 48}


@pytest.mark.slow
def test_signed_bundles_verified_on_load_bundle(tmp_path: Path) -> None:
    """Real signed ONNX bundles (export.bundle_writer) through the LoadBundle RPC: a bundle signed by
    an untrusted key and one with a tampered model file are refused; the serving bundle stays."""
    from test_bundle import write_toy_bundle  # the bundle tests' toy engines, really exported to ONNX

    from export.signing import generate_keypair

    good, good_pub = generate_keypair(tmp_path / "good.pem")
    other, _ = generate_keypair(tmp_path / "other.pem")
    a = write_toy_bundle(tmp_path / "a", good, seed=0)
    b = write_toy_bundle(tmp_path / "b", good, seed=1)
    foreign = write_toy_bundle(tmp_path / "c", other, seed=2)
    tampered = tmp_path / "d"
    shutil.copytree(b, tampered)
    model = next(tampered.rglob("*.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))

    factory = default_scorer_factory(backend="onnxruntime", trusted_keys=[good_pub])
    srv = StationServer(ServerConfig(insecure=True, port=0, admin_token=ADMIN, grace_s=0.5), factory)
    srv.start()
    try:
        with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as c:
            id_a = c.load_bundle(str(a)).bundle_id
            assert id_a.startswith("sha256:")
            slice_ = np.random.default_rng(0).integers(0, 255, (32, 32), dtype=np.uint8)
            assert c.score_one("x", slice_).model["bundle"] == id_a
            for bad, why in ((foreign, "trusted keys"), (tampered, "sha256")):
                with pytest.raises(grpc.RpcError) as ei:
                    c.load_bundle(str(bad))
                assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert why in ei.value.details(), ei.value.details()
                assert c.health() == "SERVING" and c.model_info().bundle_id == id_a
                assert c.score_one("y", slice_).model["bundle"] == id_a
            r = c.load_bundle(str(b))
            assert r.previous_bundle_id == id_a and r.bundle_id != id_a
            assert c.score_one("z", slice_).model["bundle"] == r.bundle_id
            assert c.model_info().backend == "onnxruntime"
    finally:
        srv.stop(0)
