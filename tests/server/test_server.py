"""The station scorer over real gRPC on 127.0.0.1, with a real (tiny, untrained) GSALScorer.

Round trip vs offline scoring, every bad input, health, reflection, metrics, dynamic batching,
queue limits, deadlines, message size, graceful shutdown.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.convert import make_pb_slice
from gsal_wire.pb import common_pb2, scorer_pb2
from gsal_wire.scorer_client import ItemFailed, ScorerClient
from server.app import StationServer
from server.config import MiB, ServerConfig

SIZE = 32  # side of the untrained scorer's models and of the test slices


def untrained(seed: int = 0) -> Any:
    from gsal_edge.scoring.torch_scorer import untrained_scorer

    return untrained_scorer(seed=seed, image_size=SIZE)


class Instrumented:
    """A real scorer plus test instrumentation: records each batch's ids, can hold batches at a gate."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.bundle_id = inner.bundle_id
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def score(self, slices: list[np.ndarray], image_ids: list[str], metas: Any = None) -> list[ScoreRecord]:
        self.entered.set()
        assert self.gate.wait(60), "test gate never opened"
        self.batches.append(list(image_ids))
        return self.inner.score(slices, image_ids, metas)

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def warmup(self) -> None:
        self.inner.warmup()


def start(scorer: Any | None = None, **cfg: Any) -> StationServer:
    """A plaintext server on 127.0.0.1:free with ``scorer`` loaded (the factory ignores the spec)."""
    cfg.setdefault("grace_s", 1.0)
    srv = StationServer(ServerConfig(insecure=True, host="127.0.0.1", port=0, **cfg), lambda spec: scorer)
    srv.start()
    if scorer is not None:
        srv.load_bundle("test")
    return srv


def slices(rng: np.random.Generator, n: int, start: int = 0, prefix: str = "slice"
           ) -> list[tuple[str, np.ndarray, dict[str, str]]]:
    out = []
    for i in range(start, start + n):
        kind = i % 3
        if kind == 0:
            a = rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8)
        elif kind == 1:
            a = rng.integers(0, 65535, (SIZE + 8, SIZE), dtype=np.uint16)
        else:
            a = rng.random((SIZE, SIZE + 4), dtype=np.float32)
        out.append((f"{prefix}-{i:04d}", a, {"line": "L1", "part": f"p{i % 2}"}))
    return out


@pytest.fixture(scope="module")
def offline() -> Any:
    return untrained(0)


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[StationServer, Instrumented]]:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, station_id="st-test", max_batch_size=4, max_queue_delay_ms=30.0, metrics_port=0)
    yield srv, scorer
    srv.stop(1)


@pytest.fixture
def client(served: tuple[StationServer, Instrumented]) -> Iterator[ScorerClient]:
    with ScorerClient(served[0].address, insecure=True) as c:
        yield c


def expected(offline: Any, items: list[tuple[str, np.ndarray, dict[str, str]]], station: str,
             batches: list[list[str]] | None = None) -> list[ScoreRecord]:
    """Offline scoring of ``items``: in one call, or replaying the server's ``batches`` (same composition)."""
    by_id = {i: (a, m) for i, a, m in items}
    groups = [[i for i, _, _ in items]] if batches is None else [b for b in batches if set(b) & set(by_id)]
    recs: dict[str, ScoreRecord] = {}
    for g in groups:
        assert set(g) <= set(by_id), f"batch {g} mixes in foreign slices"
        for r in offline.score([by_id[i][0] for i in g], g, [by_id[i][1] for i in g]):
            r.model["station"] = station
            recs[r.image_id] = r
    return [recs[i] for i, _, _ in items]


def assert_records_close(got: ScoreRecord, want: ScoreRecord, atol: float = 1e-6) -> None:
    """Equal up to float32 batch-composition noise (spec section 10: implementations agree to 1e-6)."""
    assert (got.image_id, got.model, got.meta) == (want.image_id, want.model, want.meta)
    assert [(p.concept, p.label) for p in got.proposals] == [(p.concept, p.label) for p in want.proposals]

    def nums(r: ScoreRecord) -> np.ndarray:
        v = [r.e_rec, r.v_den, *r.uncertainty.values(), *(r.embedding or [])]
        for p in r.proposals:
            v += [*p.box, p.score, p.e_rec, p.v_den, *p.similarity.values()]
        return np.asarray(v)

    assert list(got.uncertainty) == list(want.uncertainty)
    np.testing.assert_allclose(nums(got), nums(want), rtol=0, atol=atol)


# ---- round trip ----------------------------------------------------------------------------------
def test_stream_round_trip_equals_offline(client: ScorerClient, served: tuple[StationServer, Instrumented],
                                         offline: Any, rng: np.random.Generator) -> None:
    items = slices(rng, 12, prefix="rt")
    got = list(client.score(items))
    assert [r.image_id for r in got] == [i for i, _, _ in items]  # in order
    # exactly what the library computes for the same batches the server formed ...
    want = expected(offline, items, "st-test", batches=served[1].batches)
    for g, w in zip(got, want):
        assert isinstance(g, ScoreRecord)
        assert g == w
        assert g.to_json() == w.to_json()  # byte-identical JSONL
    # ... and, whatever the batching, what one offline call gives (to 1e-6)
    for g, w in zip(got, expected(offline, items, "st-test")):
        assert_records_close(g, w)
    assert got[0].meta == {"line": "L1", "part": "p0"}


@pytest.mark.parametrize("encoding", ["png", "tiff"])
def test_encoded_slices_equal_raw(client: ScorerClient, served: tuple[StationServer, Instrumented], offline: Any,
                                  rng: np.random.Generator, encoding: str) -> None:
    items = [it for it in slices(rng, 6, prefix=encoding) if encoding == "tiff" or it[1].dtype != np.float32]
    got = list(client.score(items, encoding=encoding))
    assert got == expected(offline, items, "st-test", batches=served[1].batches)


def test_score_one_equals_offline(client: ScorerClient, offline: Any, rng: np.random.Generator) -> None:
    (item,) = slices(rng, 1, prefix="one")
    rec = client.score_one(item[0], item[1], item[2])
    assert rec == expected(offline, [item], "st-test")[0]


def test_model_info(client: ScorerClient, served: tuple[StationServer, Instrumented]) -> None:
    mi = client.model_info()
    assert mi.bundle_id == served[1].bundle_id != ""
    assert set(mi.models) >= {"detector", "vae_encoder", "unet", "clip_image"}
    assert mi.backend and mi.station_id == "st-test" and mi.max_batch_size == 4
    assert client.health() == "SERVING" and client.health("gsal.v1.Scorer") == "SERVING"


# ---- bad inputs ----------------------------------------------------------------------------------
def _raw(sid: str, data: bytes, shape: list[int], dtype: int, encoding: int = common_pb2.ENCODING_RAW
         ) -> common_pb2.Slice:
    return common_pb2.Slice(id=sid, data=data, shape=shape, dtype=dtype, encoding=encoding)


def bad_slices() -> list[tuple[str, common_pb2.Slice, str]]:
    """(case, slice, the field the error must name)"""
    u8 = common_pb2.DTYPE_UINT8
    f32 = common_pb2.DTYPE_FLOAT32
    nan = np.full((SIZE, SIZE), np.nan, np.float32)
    inf = np.zeros((SIZE, SIZE), np.float32)
    inf[3, 4] = np.inf
    png8 = make_pb_slice("x", np.zeros((SIZE, SIZE), np.uint8), encoding="png").data
    return [
        ("wrong dtype", _raw("bad-dtype", b"\0" * SIZE * SIZE, [SIZE, SIZE], 7), "dtype"),
        ("no dtype", _raw("bad-nodtype", b"\0" * SIZE * SIZE, [SIZE, SIZE], 0), "dtype"),
        ("dtype vs png", _raw("bad-pngdtype", png8, [], common_pb2.DTYPE_UINT16, common_pb2.ENCODING_PNG), "dtype"),
        ("size mismatch", _raw("bad-size", b"\0" * (SIZE * SIZE - 1), [SIZE, SIZE], u8), "data"),
        ("3-D shape", _raw("bad-shape", b"\0" * 8, [2, 2, 2], u8), "shape"),
        ("no shape", _raw("bad-noshape", b"\0" * 8, [], u8), "shape"),
        ("empty", _raw("bad-empty", b"", [SIZE, SIZE], u8), "data"),
        ("zero side", _raw("bad-zero", b"", [0, SIZE], u8), "shape"),
        ("oversized", _raw("bad-big", b"\0" * 9000, [1, 9000], u8), "shape"),
        ("NaN", _raw("bad-nan", nan.tobytes(), [SIZE, SIZE], f32), "data"),
        ("Inf", _raw("bad-inf", inf.tobytes(), [SIZE, SIZE], f32), "data"),
        ("undecodable png", _raw("bad-png", b"\x89PNG\r\n\x1a\nnot really", [], 0, common_pb2.ENCODING_PNG), "data"),
        ("undecodable tiff", _raw("bad-tiff", b"II*\0garbage", [], 0, common_pb2.ENCODING_TIFF), "data"),
        ("no encoding", _raw("bad-enc", b"\0" * 4, [2, 2], u8, 0), "encoding"),
        ("empty id", _raw("", b"\0" * 4, [2, 2], u8), "id"),
        ("id with space", _raw("a b", b"\0" * 4, [2, 2], u8), "id"),
    ]


def test_each_bad_input_in_a_stream(client: ScorerClient, served: tuple[StationServer, Instrumented],
                                    rng: np.random.Generator) -> None:
    cases = bad_slices()
    good = slices(rng, len(cases) + 1, start=500)
    reqs: list[scorer_pb2.ScoreRequest] = []
    kinds: list[tuple[str, str] | None] = []
    for (gid, arr, meta), (case, sl, field) in zip(good, cases):
        reqs.append(scorer_pb2.ScoreRequest(slice=make_pb_slice(gid, arr, meta=meta)))
        kinds.append(None)
        reqs.append(scorer_pb2.ScoreRequest(slice=sl))
        kinds.append((case, field))
    # duplicate id within the stream, then one more good slice
    reqs.append(scorer_pb2.ScoreRequest(slice=make_pb_slice(good[0][0], good[0][1])))
    kinds.append(("duplicate id", "id"))
    reqs.append(scorer_pb2.ScoreRequest(slice=make_pb_slice(good[-1][0], good[-1][1])))
    kinds.append(None)

    resps = list(client.stream(reqs, timeout=120))
    assert len(resps) == len(reqs)
    for req, resp, kind in zip(reqs, resps, kinds):
        assert resp.slice_id == req.slice.id
        if kind is None:
            assert resp.HasField("record"), (req.slice.id, resp.error)
            assert resp.record.image_id == req.slice.id
        else:
            case, field = kind
            assert resp.HasField("error"), case
            assert resp.error.code_name == "INVALID_ARGUMENT", case
            assert resp.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            assert resp.error.field == field, (case, resp.error)
            assert resp.error.message.startswith(field + ":"), case
    scored = {i for b in served[1].batches for i in b}
    assert not any(i.startswith("bad-") for i in scored)  # nothing invalid reached the scorer
    # the server keeps serving other calls
    assert client.score_one("after-bad", good[0][1]).image_id == "after-bad"


@pytest.mark.parametrize("case", [c[0] for c in bad_slices()])
def test_each_bad_input_unary(client: ScorerClient, case: str) -> None:
    sl, field = next((s, f) for c, s, f in bad_slices() if c == case)
    with pytest.raises(grpc.RpcError) as ei:
        client.stub.ScoreOne(scorer_pb2.ScoreRequest(slice=sl), timeout=30)
    err = ei.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(field + ":")
    assert dict(err.trailing_metadata())["gsal-error-field"] == field


def test_message_size_limit() -> None:
    srv = start(None, max_slice_bytes=1 * MiB, max_message_bytes=2 * MiB, max_pixels=10**7)
    try:
        with ScorerClient(srv.address, insecure=True) as c:
            big = np.zeros((1200, 1024), np.float32)  # 4.7 MiB message
            with pytest.raises(grpc.RpcError) as ei:
                c.score_one("big", big)
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            mid = np.zeros((700, 1024), np.uint16)  # 1.4 MiB: fits the message, not the slice limit
            with pytest.raises(grpc.RpcError) as ei:
                c.score_one("mid", mid)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "data" in ei.value.details()
    finally:
        srv.stop(0)


# ---- serving state -------------------------------------------------------------------------------
def test_not_serving_until_loaded(rng: np.random.Generator) -> None:
    scorer = untrained(0)
    srv = StationServer(ServerConfig(insecure=True, port=0, grace_s=0.5), lambda spec: scorer)
    srv.start()
    try:
        with ScorerClient(srv.address, insecure=True) as c:
            assert c.health() == "NOT_SERVING" and c.health("gsal.v1.Scorer") == "NOT_SERVING"
            assert c.model_info().bundle_id == ""
            (out,) = list(c.score(slices(rng, 1)))
            assert isinstance(out, ItemFailed) and out.code_name == "UNAVAILABLE"
            srv.load_bundle("x")
            assert c.health() == "SERVING"
            (out,) = list(c.score(slices(rng, 1)))
            assert isinstance(out, ScoreRecord)
    finally:
        srv.stop(0)


def test_reflection_lists_services(served: tuple[StationServer, Instrumented]) -> None:
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    with grpc.insecure_channel(served[0].address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert {"gsal.v1.Scorer", "grpc.health.v1.Health"} <= services
        fd = db.FindFileContainingSymbol("gsal.v1.Scorer")
        assert fd.package == "gsal.v1"


def test_metrics_endpoint(client: ScorerClient, served: tuple[StationServer, Instrumented],
                          rng: np.random.Generator) -> None:
    list(client.score(slices(rng, 3, start=900)))
    with pytest.raises(grpc.RpcError):
        client.stub.ScoreOne(scorer_pb2.ScoreRequest(slice=bad_slices()[0][1]), timeout=10)
    srv = served[0]
    assert srv.metrics_port
    text = urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10).read().decode()

    def val(pattern: str) -> float:
        m = re.search(pattern + r" ([0-9.e+]+)", text)
        assert m, pattern
        return float(m.group(1))

    assert val(r'gsal_scorer_items_total\{code="OK",method="Score"\}') >= 3
    assert val(r'gsal_scorer_errors_total\{code="INVALID_ARGUMENT",method="ScoreOne",reason="answered"\}') >= 1
    assert val(r'gsal_scorer_requests_total\{method="Score"\}') >= 1
    assert val(r"gsal_scorer_batch_size_count") >= 1
    assert val(r'gsal_scorer_latency_seconds_count\{method="Score"\}') >= 3
    assert "gsal_scorer_queue_depth" in text
    assert f'gsal_scorer_bundle_info{{bundle_id="{served[1].bundle_id}"}} 1.0' in text


# ---- batching, back pressure, deadlines, shutdown ------------------------------------------------
def test_batches_span_concurrent_streams(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=8, max_queue_delay_ms=200.0)
    try:
        scorer.gate.clear()
        results: dict[int, list[Any]] = {}

        def run(k: int) -> None:
            with ScorerClient(srv.address, insecure=True) as c:
                results[k] = list(c.score([(f"s{k}-{j}", a, m) for j, (_, a, m) in enumerate(slices(rng, 3))]))

        threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        assert scorer.entered.wait(30)
        time.sleep(0.3)  # let the other streams queue behind the held batch
        scorer.gate.set()
        for t in threads:
            t.join(60)
        assert all(isinstance(r, ScoreRecord) for k in range(3) for r in results[k])
        assert max(len(b) for b in scorer.batches) > 1
        assert any(len({i.split("-")[0] for i in b}) > 1 for b in scorer.batches)  # one batch, several streams
        assert max(len(b) for b in scorer.batches) <= 8
    finally:
        scorer.gate.set()
        srv.stop(0)


def test_queue_full_is_resource_exhausted(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0, queue_size=2)
    try:
        scorer.gate.clear()
        with ScorerClient(srv.address, insecure=True) as c:
            it = c.score(slices(rng, 10))
            first = []

            def consume() -> None:
                first.extend(it)

            t = threading.Thread(target=consume)
            t.start()
            assert scorer.entered.wait(30)
            time.sleep(0.5)
            scorer.gate.set()
            t.join(60)
        codes = [r.code_name if isinstance(r, ItemFailed) else "OK" for r in first]
        assert len(codes) == 10
        assert codes.count("OK") >= 2 and codes.count("RESOURCE_EXHAUSTED") >= 6, codes
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
        msg = next(r.message for r in first if isinstance(r, ItemFailed))
        assert "queue is full" in msg
    finally:
        scorer.gate.set()
        srv.stop(0)


def test_deadlines_drop_expired_items(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0)
    try:
        items = slices(rng, 3)
        scorer.gate.clear()
        with ScorerClient(srv.address, insecure=True) as c:
            reqs = [scorer_pb2.ScoreRequest(slice=make_pb_slice(i, a, meta=m)) for i, a, m in items]
            reqs[1].timeout_ms = 100  # expires while slice 0 holds the scorer
            out: list[Any] = []
            t = threading.Thread(target=lambda: out.extend(c.stream(reqs, timeout=60)))
            t.start()
            assert scorer.entered.wait(30)
            # a unary call whose own deadline passes while queued
            with pytest.raises(grpc.RpcError) as ei:
                c.stub.ScoreOne(scorer_pb2.ScoreRequest(slice=make_pb_slice("late", items[0][1])), timeout=0.3)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            time.sleep(0.2)
            scorer.gate.set()
            t.join(60)
        assert [r.slice_id for r in out] == [i for i, _, _ in items]
        assert out[0].HasField("record") and out[2].HasField("record")
        assert out[1].error.code_name == "DEADLINE_EXCEEDED"
        scored = {i for b in scorer.batches for i in b}
        assert items[1][0] not in scored and "late" not in scored  # dropped before scoring
        assert 'gsal_scorer_dropped_total{reason="deadline"}' in srv.metrics.text()
    finally:
        scorer.gate.set()
        srv.stop(0)


def test_graceful_shutdown_drains_in_flight(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=2, max_queue_delay_ms=0.0, grace_s=30.0)
    items = slices(rng, 5)
    scorer.gate.clear()
    out: list[Any] = []
    c = ScorerClient(srv.address, insecure=True)
    t = threading.Thread(target=lambda: out.extend(c.score(items, encoding="raw")))
    t.start()
    assert scorer.entered.wait(30)
    time.sleep(0.3)  # all five submitted, the first batch held in the scorer
    stopper = threading.Thread(target=srv.stop)
    stopper.start()
    time.sleep(0.3)
    with ScorerClient(srv.address, insecure=True) as c2, pytest.raises(grpc.RpcError):  # refused while draining
        c2.score_one("new", items[0][1], timeout=5)
    scorer.gate.set()
    t.join(60)
    stopper.join(60)
    c.close()
    assert not stopper.is_alive()
    assert [r.image_id for r in out if isinstance(r, ScoreRecord)] == [i for i, _, _ in items]
