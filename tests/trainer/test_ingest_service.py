"""Trainer Ingest against a real gRPC server on 127.0.0.1: acks, idempotency, bad items, retry."""

from __future__ import annotations

import random
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from test_trainer_helpers import make_pixels, make_record

from gsal_wire.convert import make_pb_slice, record_to_pb
from gsal_wire.pb import trainer_pb2, trainer_pb2_grpc
from gsal_wire.trainer_client import PushError, PushItem, RetryPolicy, TrainerPushClient
from trainer.images import decode_image, encode_pixels, sha256_bytes
from trainer.ingest_service import IngestConfig, start_server
from trainer.ref_policy import RefPolicy
from trainer.store.pool_store import PoolStore


@pytest.fixture
def running(tmp_path):
    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0, batch_items=7, max_workers=4))
    yield srv
    srv.stop(1.0)
    store.close()


def _items(n, station="st-01", start=0, bundle="sha256:b1"):
    return [PushItem(make_record(i, station, bundle), pixels=make_pixels(i)) for i in range(start, start + n)]


def test_push_commits_then_retry_is_all_duplicates(running):
    with TrainerPushClient(running.address, "st-01", insecure=True, chunk_size=10) as cli:
        r1 = cli.push(_items(25))
        assert (r1.sent, r1.committed, r1.duplicates, r1.rejected) == (25, 25, 0, [])
        r2 = cli.push(_items(25))
        assert (r2.committed, r2.duplicates) == (0, 25)
    st = running.store.status()
    assert (st["slices"], st["records"]) == (25, 25)
    info = running.store.slice_info("st-01/slice-000003")
    assert np.array_equal(decode_image(info.image_path), make_pixels(3))
    rec = running.store.record("st-01/slice-000003")
    want = make_record(3)
    assert rec.e_rec == want.e_rec and rec.proposals[1].similarity == want.proposals[1].similarity


def test_encodings_and_references(running, tmp_path):
    u16 = (np.arange(32 * 48, dtype=np.uint16).reshape(32, 48) * 7)
    f32 = np.linspace(0, 1, 20 * 10, dtype=np.float32).reshape(20, 10)
    root = tmp_path / "st-01-slices"
    root.mkdir()
    data, _ = encode_pixels(make_pixels(3).astype(np.uint16))
    (root / "slice-000003.png").write_bytes(data)
    RefPolicy().with_root("st-01", str(root)).save(running.store.root)  # refs only under a configured root
    items = [
        PushItem(make_record(1), pixels=u16, encoding="png"),
        PushItem(make_record(2), pixels=f32, encoding="raw"),
        PushItem(make_record(3), ref=f"file://{root}/slice-000003.png", ref_sha256=sha256_bytes(data),
                 shape=(64, 64), dtype="uint16", encoding="png"),
    ]
    with TrainerPushClient(running.address, "st-01", insecure=True) as cli:
        assert cli.push(items).committed == 3
    s = running.store
    assert np.array_equal(decode_image(s.slice_info("st-01/slice-000001").image_path), u16)
    got = decode_image(s.slice_info("st-01/slice-000002").image_path)
    assert got.dtype == np.float32 and np.array_equal(got, f32)
    ref = s.slice_info("st-01/slice-000003")
    assert ref.image_path is None and (ref.width, ref.height) == (64, 64)
    assert ref.image_ref == f"file://{root}/slice-000003.png#sha256={sha256_bytes(data)}"


def test_bad_items_are_rejected_by_field_and_the_rest_commits(running):
    stub = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(running.address))
    good = trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(make_record(1)),
                                  slice=make_pb_slice("slice-000001", make_pixels(1)))
    wrong_station = trainer_pb2.IngestItem(station_id="st-02", record=record_to_pb(make_record(2)),
                                           slice=make_pb_slice("slice-000002", make_pixels(2)))
    bad_shape = trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(make_record(3)))
    bad_shape.slice.CopyFrom(make_pb_slice("slice-000003", make_pixels(3)))
    del bad_shape.slice.shape[:]
    bad_shape.slice.shape.extend([10, 10])
    no_pixels = trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(make_record(4)))
    nan_rec = record_to_pb(make_record(5))
    nan_rec.e_rec = float("nan")
    nan_item = trainer_pb2.IngestItem(station_id="st-01", record=nan_rec,
                                      slice=make_pb_slice("slice-000005", make_pixels(5)))
    ack = stub.Ingest(iter([good, wrong_station, bad_shape, no_pixels, nan_item]), timeout=30)
    assert (ack.received, ack.committed) == (5, 1)
    fields = {r.image_id: (r.error.code_name, r.error.field) for r in ack.rejected}
    assert fields == {
        "slice-000002": ("INVALID_ARGUMENT", "record.model"),
        "slice-000003": ("INVALID_ARGUMENT", "slice.data"),
        "slice-000004": ("INVALID_ARGUMENT", "pixels"),
        "slice-000005": ("INVALID_ARGUMENT", "record"),
    }
    assert running.store.status()["slices"] == 1


def test_conflicting_content_is_already_exists_and_first_kept(running):
    with TrainerPushClient(running.address, "st-01", insecure=True) as cli:
        cli.push(_items(2))
        changed = _items(1)[0]
        changed.record.v_den = 123.0
        res = cli.push([changed])
    assert res.committed == 0 and res.rejected[0][:2] == ("slice-000000", "ALREADY_EXISTS")
    assert running.store.record("st-01/slice-000000").v_den != 123.0


def test_new_bundle_record_for_same_slice_is_committed_alongside(running):
    with TrainerPushClient(running.address, "st-01", insecure=True) as cli:
        cli.push(_items(3, bundle="sha256:b1"))
        res = cli.push(_items(3, bundle="sha256:b2"))
    assert res.committed == 3
    st = running.store.status()
    assert (st["slices"], st["records"], st["stale_records"]) == (3, 6, 3)


def test_health_and_reflection_serving(running):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ch = grpc.insecure_channel(running.address)
    resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="gsal.v1.Trainer"), timeout=5)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_until_the_trainer_comes_up(tmp_path):
    port = _free_port()
    store = PoolStore(tmp_path / "store")
    holder: dict = {}

    def start_late():
        time.sleep(1.0)
        holder["srv"] = start_server(store, IngestConfig(port=port))

    t = threading.Thread(target=start_late)
    t.start()
    try:
        cli = TrainerPushClient(f"127.0.0.1:{port}", "st-01", insecure=True, seed=1,
                                retry=RetryPolicy(max_attempts=40, base_delay_s=0.05, max_delay_s=0.3))
        res = cli.push(_items(5))
        cli.close()
    finally:
        t.join()
        holder["srv"].stop(1.0)
        store.close()
    assert res.committed == 5 and res.retries >= 1


def test_client_gives_up_with_a_clear_error(tmp_path):
    port = _free_port()
    cli = TrainerPushClient(f"127.0.0.1:{port}", "st-01", insecure=True,
                            retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.02))
    with pytest.raises(PushError, match="failed after 3 attempt.*UNAVAILABLE"):
        cli.push(_items(1))
    cli.close()


def test_backoff_grows_exponentially_and_is_capped():
    p = RetryPolicy(base_delay_s=0.1, factor=2.0, max_delay_s=1.0, jitter=False)
    assert [p.delay(a, random.Random(0)) for a in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    pj = RetryPolicy(base_delay_s=0.1, factor=2.0, max_delay_s=1.0)
    rng = random.Random(0)
    assert all(0.0 <= pj.delay(a, rng) <= min(1.0, 0.1 * 2**a) for a in range(10))
