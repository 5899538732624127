"""The trainer refuses what the station refuses (issue 18): ids with control characters, 100 KB ids, 10 MB
meta values, refs to link-local URLs, checked on a real Trainer on 127.0.0.1 with the same functions
(:mod:`gsal_wire.validation`) the station's Scorer admits slices with."""

from __future__ import annotations

import grpc
import pytest
from test_trainer_helpers import make_pixels, make_record

from gsal_edge.data.slices import SliceError
from gsal_wire.convert import make_pb_slice, record_to_pb
from gsal_wire.pb import common_pb2, trainer_pb2, trainer_pb2_grpc
from gsal_wire.validation import check_slice_fields
from trainer.ingest_service import IngestConfig, ItemInvalid, item_from_pb, start_server
from trainer.ref_policy import RefRefused
from trainer.store.pool_store import PoolStore

BIG = 10 * 1024 * 1024

# (name, slice id, slice meta): what a station receives in ScoreRequest.slice and forwards as the record
CASES = [
    ("control char id", "slice\x07bell", {}),
    ("newline id", "slice-1\nInjected: yes", {}),
    ("100 KB id", "s" * 100_000, {}),
    ("space id", "slice 1", {}),
    ("10 MB meta value", "slice-big-meta", {"note": "x" * BIG}),
    ("control char meta", "slice-ctl-meta", {"line": "L1\x1b[31m"}),
    ("huge meta key", "slice-key", {"k" * 1000: "v"}),
    ("too many meta entries", "slice-many", {f"k{i}": "v" for i in range(200)}),
]
GOOD = [("plain", "slice-000001", {"line": "L1", "part": "P-7", "operator": "Ana María"})]


def _item(sid: str, meta: dict[str, str]) -> trainer_pb2.IngestItem:
    rec = make_record(1)
    rec.image_id = sid
    rec.meta = dict(meta)
    return trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(rec),
                                  slice=make_pb_slice(sid, make_pixels(1), encoding="png", meta=meta))


@pytest.mark.parametrize(("name", "sid", "meta"), CASES + GOOD, ids=[c[0] for c in CASES + GOOD])
def test_station_and_trainer_agree(name, sid, meta):
    """Both sides run one check: the station's admission and the trainer's ingest accept/refuse alike."""
    msg = _item(sid, meta)
    station_refuses = trainer_refuses = False
    try:
        check_slice_fields(msg.slice)  # what the station's Scorer runs on ScoreRequest.slice
    except SliceError:
        station_refuses = True
    try:
        item_from_pb(msg)
    except (ItemInvalid, RefRefused):
        trainer_refuses = True
    assert station_refuses == trainer_refuses == ((name, sid, meta) in CASES)


@pytest.fixture
def running(tmp_path):
    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0))
    yield srv
    srv.stop(1.0)
    store.close()


def test_ingest_rejects_each_bad_item_by_field_and_keeps_the_good(running):
    stub = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(
        running.address, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]))
    msgs = [_item(sid, meta) for _, sid, meta in CASES + GOOD]
    link_local = trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(make_record(9)),
                                        ref=common_pb2.SliceRef(uri="http://169.254.169.254/latest/a.png",
                                                                sha256="0" * 64))
    ack = stub.Ingest(iter(msgs + [link_local]), timeout=60)
    assert (ack.received, ack.committed) == (len(msgs) + 1, 1)
    fields = [r.error.field for r in ack.rejected]
    assert len(fields) == len(CASES) + 1
    assert fields[:4] == ["record.image_id"] * 4 and fields[-1] == "ref.uri"
    assert all(f.startswith("record.meta") for f in fields[4:-1])
    for r in ack.rejected:  # no echo of a huge value, no raw control character in the message
        assert len(r.image_id) <= 256 and len(r.error.message) < 1000
        assert "\x07" not in r.error.message and "\x1b" not in r.error.message
    assert running.store.status()["slices"] == 1
    assert running.store.record("st-01/slice-000001").meta["operator"] == "Ana María"
