"""Fuzzing the gRPC message validation of a real station (toy ONNX bundle, signed) and a real trainer
(Ingest into a real SQLite store), both on 127.0.0.1.

Station contract: every ``ScoreOne`` / ``Score`` answer is a proper gRPC status among OK,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, its message free of tracebacks, Python reprs and
heap addresses, and the station still answers health (SERVING) afterwards.
Trainer contract: every Ingest call ends with an ack (or a proper status); the store passes
``PRAGMA integrity_check`` and every acknowledged record reads back equal to what was sent.
"""

from __future__ import annotations

import io
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from fuzz_support import Tally, fuzz_settings, seed_decorator
from hypothesis import given
from hypothesis import strategies as st

from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.data.slices import DEFAULT_LIMITS
from gsal_wire.convert import record_from_pb, record_to_pb
from gsal_wire.pb import common_pb2, scorer_pb2, scorer_pb2_grpc, trainer_pb2, trainer_pb2_grpc
from gsal_wire.security import bearer

pytestmark = pytest.mark.slow

SCORE_TOKEN = "fuzz-score-token-0123456789"
ALLOWED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED,
           grpc.StatusCode.UNAUTHENTICATED}
LEAKS = re.compile(r"Traceback|File \"|\bat 0x[0-9a-f]+|<[\w.]+ object|onnxruntime|\[ONNXRuntimeError\]|"
                   r"Error: .*Error:|site-packages", re.IGNORECASE)


def assert_clean(message: str, tally: Tally | None = None) -> None:
    assert not LEAKS.search(message or ""), f"internal detail leaked to the client: {message[:400]!r}"


# ---- station ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from test_bundle import write_toy_bundle  # the bundle tests' toy engines, really exported to ONNX

    from export.signing import generate_keypair
    from server.app import StationServer
    from server.config import ServerConfig
    from server.station import default_scorer_factory

    d = tmp_path_factory.mktemp("fuzz-station")
    key, pub = generate_keypair(d / "signing.pem")
    bundle = write_toy_bundle(d / "bundles", key)
    cfg = ServerConfig(insecure=True, host="127.0.0.1", port=0, grace_s=0.5, score_token=SCORE_TOKEN,
                       station_id="st-fuzz", max_queue_delay_ms=1.0, max_side=1024, max_pixels=256 * 256,
                       max_slice_bytes=1 << 20, max_message_bytes=4 << 20)
    srv = StationServer(cfg, default_scorer_factory(backend="onnxruntime", trusted_keys=[pub], threads=1))
    srv.start()
    srv.load_bundle(str(bundle))
    yield srv
    srv.stop(0.5)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _tiff(a: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    tifffile.imwrite(buf, a)
    return buf.getvalue()


# mostly valid ids (so the pixels get checked too), then every kind the id check must refuse
ids = st.one_of(*[st.from_regex(r"[a-z0-9_.:-]{1,12}", fullmatch=True)] * 4, st.text(max_size=12),
                st.sampled_from(["", "a/../b", "x" * 300, "\x00", "line\nbreak", "\u202e", " "]))
meta_text = st.one_of(st.text(max_size=10), st.sampled_from(["", "\x1b[31m", "x" * 2000]))


@st.composite
def score_requests(draw: st.DrawFn) -> scorer_pb2.ScoreRequest:
    """A ScoreRequest: valid pixels in every encoding, or a lie somewhere (dtype, shape, bytes, enum)."""
    h, w = draw(st.one_of(*[st.tuples(st.integers(16, 96), st.integers(16, 96))] * 3,  # thin slices too
                          st.sampled_from([(4, 1024), (1024, 1), (1, 1), (2, 700), (1000, 3)])))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arr = (rng.random((h, w)) * (255 if dtype == "uint8" else 65535 if dtype == "uint16" else 1)).astype(dtype)
    enc = draw(st.sampled_from(["raw", "raw", "png", "tiff"])) if dtype != "float32" else draw(
        st.sampled_from(["raw", "tiff"]))
    data = arr.tobytes() if enc == "raw" else _png(arr) if enc == "png" else _tiff(arr)
    msg = common_pb2.Slice(id=draw(ids), data=data, encoding={"raw": 1, "png": 2, "tiff": 3}[enc],
                           dtype={"uint8": 1, "uint16": 2, "float32": 3}[dtype])
    msg.shape.extend([h, w])
    lie = draw(st.sampled_from(["none"] * 9 + ["dtype", "shape", "bytes", "truncate", "encoding", "empty", "shape3",
                                               "bigshape"]))
    if lie == "dtype":
        msg.dtype = draw(st.integers(0, 7))
    elif lie == "shape":
        del msg.shape[:]
        msg.shape.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=3)))
    elif lie == "bytes":
        msg.data = draw(st.binary(max_size=300))
    elif lie == "truncate":
        msg.data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif lie == "encoding":
        msg.encoding = draw(st.integers(0, 9))
    elif lie == "empty":
        msg.data = b""
    elif lie == "shape3":
        msg.shape.append(1)
    elif lie == "bigshape":
        del msg.shape[:]
        msg.shape.extend([65535, 65535])
    msg.meta.line, msg.meta.part = draw(meta_text), draw(meta_text)
    for k, v in draw(st.dictionaries(st.text(max_size=6), meta_text, max_size=3)).items():
        msg.meta.extra[k] = v
    req = scorer_pb2.ScoreRequest(timeout_ms=draw(st.sampled_from([0, 0, 60_000])))
    if draw(st.integers(0, 15)) != 7:  # (not 0: Hypothesis favours small values) 1 in 16 has no slice
        req.slice.CopyFrom(msg)
    return req


tokens = st.sampled_from([SCORE_TOKEN] * 6 + [None, "", "wrong", SCORE_TOKEN + " ", "x" * 5000])


def _metadata(token: str | None) -> tuple:
    return () if token is None else bearer(token)


def _health(address: str) -> str:
    from gsal_wire.scorer_client import ScorerClient

    with ScorerClient(address, insecure=True) as c:
        return c.health(timeout=10)


def _check_unary(stub: Any, req: scorer_pb2.ScoreRequest, token: str | None, tally: Tally) -> None:
    try:
        resp = stub.ScoreOne(req, metadata=_metadata(token), timeout=60)
    except grpc.RpcError as e:
        code = e.code()
        assert code in ALLOWED, f"ScoreOne answered {code.name}: {e.details()!r}"
        assert_clean(e.details(), tally)
        tally.tick(code.name)
        return
    rec = record_from_pb(resp.record)  # a valid record
    assert rec.image_id == req.slice.id and rec.model.get("station") == "st-fuzz"
    tally.tick("OK")


def test_fuzz_station_score_one(station: Any, tmp_path: Path) -> None:
    tally = Tally("grpc-station-score-one")
    with grpc.insecure_channel(station.address) as ch:
        stub = scorer_pb2_grpc.ScorerStub(ch)

        @fuzz_settings(120)
        @seed_decorator()
        @given(score_requests(), tokens)
        def run(req: scorer_pb2.ScoreRequest, token: str | None) -> None:
            _check_unary(stub, req, token, tally)

        run()
    assert _health(station.address) == "SERVING"
    tally.report(tmp_path)
    assert tally.outcomes["OK"] and tally.outcomes["INVALID_ARGUMENT"] and tally.outcomes["UNAUTHENTICATED"]


def test_fuzz_station_score_stream(station: Any, tmp_path: Path) -> None:
    tally = Tally("grpc-station-score-stream")
    with grpc.insecure_channel(station.address) as ch:
        stub = scorer_pb2_grpc.ScorerStub(ch)

        @fuzz_settings(40)
        @seed_decorator()
        @given(st.lists(score_requests(), min_size=1, max_size=5), tokens)
        def run(reqs: list[scorer_pb2.ScoreRequest], token: str | None) -> None:
            try:
                out = list(stub.Score(iter(reqs), metadata=_metadata(token), timeout=60))
            except grpc.RpcError as e:
                assert e.code() in ALLOWED, f"Score answered {e.code().name}: {e.details()!r}"
                assert_clean(e.details())
                tally.tick(f"stream {e.code().name}")
                return
            assert len(out) == len(reqs)  # one answer per item, in order
            for req, resp in zip(reqs, out):
                assert resp.slice_id == req.slice.id
                if resp.HasField("error"):
                    assert grpc.StatusCode[resp.error.code_name] in ALLOWED, resp.error
                    assert_clean(resp.error.message, tally)
                    tally.outcomes[f"item {resp.error.code_name}"] += 1
                else:
                    assert record_from_pb(resp.record).image_id == req.slice.id
                    tally.outcomes["item OK"] += 1
            tally.count += 1  # inputs = streams; outcomes count their items

        run()
    assert _health(station.address) == "SERVING"
    tally.report(tmp_path)
    assert tally.outcomes["item OK"] and tally.outcomes["item INVALID_ARGUMENT"]


def test_undecodable_png_message_has_no_heap_address(station: Any) -> None:
    req = scorer_pb2.ScoreRequest(slice=common_pb2.Slice(id="junk", data=b"not a png at all", encoding=2, dtype=1))
    with grpc.insecure_channel(station.address) as ch, pytest.raises(grpc.RpcError) as ei:
        scorer_pb2_grpc.ScorerStub(ch).ScoreOne(req, metadata=bearer(SCORE_TOKEN), timeout=30)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert_clean(ei.value.details())


# ---- trainer ------------------------------------------------------------------------------------------
@pytest.fixture
def trainer(tmp_path: Path) -> Iterator[Any]:
    from trainer.ingest_service import IngestConfig, start_server
    from trainer.store.pool_store import PoolStore

    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0, batch_items=3, max_workers=4))
    yield srv
    srv.stop(1.0)
    store.close()


finite = st.floats(-1e6, 1e6, allow_nan=False)


INGEST_LIES = ["none"] * 10 + ["station", "nan", "dupkey", "box", "concept", "norecord", "sliceid", "badslice",
                              "ref", "nopixels", "address", "meta"]


@st.composite
def ingest_items(draw: st.DrawFn) -> trainer_pb2.IngestItem:
    """A valid IngestItem (two stations, ids that repeat across calls) or one with a single lie."""
    lie = draw(st.sampled_from(INGEST_LIES))
    station = draw(st.sampled_from(["st-01", "st-02"]))
    if lie == "station":
        station = draw(st.sampled_from(["", "ST 01", "../x", "st-01\x00", "x" * 200]))
    image_id = draw(st.one_of(st.sampled_from([f"slice-{i}" for i in range(8)]), ids))
    x1, y1 = draw(finite), draw(finite)
    meta = {"line": draw(st.sampled_from(["L1", "L2"]))}
    if lie == "meta":
        meta = {draw(st.text(max_size=5)): draw(meta_text)}
    rec = ScoreRecord(image_id=image_id, e_rec=draw(finite), v_den=draw(finite),
                      proposals=[ProposalScore((x1, y1, x1 + 1, y1 + 1), draw(finite), draw(finite), draw(finite),
                                               "void", {"void": draw(finite)})],
                      uncertainty={"entropy": draw(finite)}, model={"bundle": "sha256:b1", "station": station},
                      meta=meta)
    pb = record_to_pb(rec)
    if lie == "nan":
        pb.e_rec = float("nan")
    elif lie == "dupkey":
        pb.uncertainty.add(name="entropy", value=1.0)
    elif lie == "box":
        pb.proposals[0].box.x2 = pb.proposals[0].box.x1 - 5
    elif lie == "concept":
        pb.proposals[0].concept = ""
    item = trainer_pb2.IngestItem(station_id=station)
    if lie == "address":
        item.station_address = draw(st.sampled_from(["127.0.0.1:50051", "bad address", "[::1]:1", "x" * 300]))
    if lie != "norecord":
        item.record.CopyFrom(pb)
    if lie == "ref":
        item.ref.uri = draw(st.sampled_from(["file:///data/st-01/a.png", "", "http://169.254.169.254/x", "s3://b/k"]))
        item.ref.shape.extend(draw(st.lists(st.integers(0, 70000), max_size=3)))
    elif lie != "nopixels":
        a = np.random.default_rng(len(image_id)).integers(0, 255, (16, 16), dtype=np.uint8)
        item.slice.id = "other" if lie == "sliceid" else image_id
        item.slice.data = draw(st.binary(max_size=64)) if lie == "badslice" else a.tobytes()
        item.slice.encoding, item.slice.dtype = 1, 1
        item.slice.shape.extend([16, 16])
    return item


def test_fuzz_trainer_ingest(trainer: Any, tmp_path: Path) -> None:
    tally = Tally("grpc-trainer-ingest")
    sent: dict[str, common_pb2.ScoreRecord] = {}  # key -> the first record acknowledged under it
    with grpc.insecure_channel(trainer.address) as ch:
        stub = trainer_pb2_grpc.TrainerStub(ch)

        @fuzz_settings(60)
        @seed_decorator()
        @given(st.lists(ingest_items(), min_size=1, max_size=6))
        def run(items: list[trainer_pb2.IngestItem]) -> None:
            try:
                ack = stub.Ingest(iter(items), timeout=60)
            except grpc.RpcError as e:
                assert e.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED}, (
                    f"Ingest answered {e.code().name}: {e.details()!r}")
                assert_clean(e.details())
                tally.tick(e.code().name)
                return
            assert ack.received == len(items)
            for r in ack.rejected:
                assert_clean(r.error.message)
            rejected = {r.image_id for r in ack.rejected}
            for it in items:
                key = f"{it.station_id}/{it.record.image_id}"
                # the trainer echoes at most the first max_id_length characters of an id (longer ids are refused)
                if it.record.image_id[:DEFAULT_LIMITS.max_id_length] not in rejected and key not in sent:
                    sent[key] = it.record
            tally.tick(f"ack committed={min(ack.committed, 1)} rejected={min(len(ack.rejected), 1)}")

        run()
    store = trainer.store
    with sqlite3.connect(store.db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for key, pb in sent.items():
        got = store.record(key, fresh_only=False)
        assert got is not None, f"acknowledged record {key!r} is not in the store"
        want = record_from_pb(pb)
        assert (got.e_rec, got.v_den, got.proposals, got.meta) == (want.e_rec, want.v_den, want.proposals, want.meta)
    tally.report(tmp_path)
    assert sent, "no item was ever acknowledged"
