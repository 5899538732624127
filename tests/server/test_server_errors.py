"""What a client reads when something goes wrong (issue 18): thin slices are INVALID_ARGUMENT naming the
limit, engine text never reaches a client (INTERNAL + error id, traceback in the station log), and items
dropped when their stream's deadline passes are counted in ``gsal_scorer_errors_total``."""

from __future__ import annotations

import logging
import re
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest
from test_server import SIZE, Instrumented, slices, start, untrained

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.scoring.runtime.base import EngineError
from gsal_wire.convert import make_pb_slice
from gsal_wire.pb import scorer_pb2
from gsal_wire.scorer_client import ItemFailed, ScorerClient
from server.internal_errors import InternalErrorInterceptor

ENGINE_TEXT = "[ONNXRuntimeError] : 1 : FAIL : Resize node '/model/transform/Resize' upsamplebase.h:548"
ADMIN = "admin-token-0123456789"
_LEAK = re.compile(r"ONNXRuntime|Resize|upsamplebase|0x[0-9a-f]{6,}|Traceback", re.IGNORECASE)


class FailsOn(Instrumented):
    """A real scorer that fails, as a broken engine does, on slices whose id starts with ``boom``."""

    def score(self, slices: list[np.ndarray], image_ids: list[str], metas: Any = None) -> list[ScoreRecord]:
        if any(i.startswith("boom") for i in image_ids):
            raise EngineError(f"detector (detector.onnx): onnxruntime failed: {ENGINE_TEXT}")
        return super().score(slices, image_ids, metas)


@pytest.fixture(scope="module")
def served() -> Any:
    srv = start(FailsOn(untrained(0)), max_batch_size=4, max_queue_delay_ms=20.0, admin_token=ADMIN)
    yield srv
    srv.stop(0)


@pytest.mark.parametrize("shape", [(4, 4096), (4096, 1), (1, 4096), (4, 4), (8, 1024)])
def test_thin_slices_are_invalid_argument_naming_the_limit(served: Any, shape: tuple[int, int]) -> None:
    arr = np.zeros(shape, np.uint8)
    with ScorerClient(served.address, insecure=True) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.score_one("thin", arr, timeout=30)
        (res,) = list(c.score([("thin", arr, {})], timeout=30))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    msg = ei.value.details() or ""
    assert ("aspect ratio" in msg and "64:1" in msg) or "minimum side of 8" in msg, msg
    assert isinstance(res, ItemFailed) and res.code_name == "INVALID_ARGUMENT" and res.field == "shape"
    assert not _LEAK.search(msg + res.message)


def test_the_widest_accepted_slice_is_scored(served: Any) -> None:
    with ScorerClient(served.address, insecure=True) as c:
        rec = c.score_one("wide", np.zeros((8, 512), np.uint8), timeout=30)
    assert rec.image_id == "wide"


def test_engine_errors_reach_the_client_as_internal_with_an_error_id(
    served: Any, caplog: pytest.LogCaptureFixture, rng: np.random.Generator
) -> None:
    arr = np.zeros((SIZE, SIZE), np.uint8)
    with caplog.at_level(logging.ERROR), ScorerClient(served.address, insecure=True) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.score_one("boom-1", arr, timeout=30)
        items = [("ok-1", arr, {}), ("boom-2", arr, {}), ("ok-2", arr, {})]
        out = list(c.score(items, timeout=30))
    assert ei.value.code() == grpc.StatusCode.INTERNAL
    unary_msg = ei.value.details() or ""
    assert isinstance(out[0], ScoreRecord) and isinstance(out[2], ScoreRecord)  # the others still scored
    failed = out[1]
    assert isinstance(failed, ItemFailed) and failed.code_name == "INTERNAL"
    for msg in (unary_msg, failed.message):
        assert not _LEAK.search(msg), msg
        eid = re.search(r"error id ([0-9a-f]{12})", msg)
        assert eid, msg
        logged = [r for r in caplog.records if eid.group(1) in r.getMessage()]
        assert logged and logged[0].exc_info is not None  # the traceback is on the station, under that id
        assert ENGINE_TEXT in caplog.text


def test_load_bundle_failure_does_not_leak_engine_text() -> None:
    def factory(spec: str) -> Any:
        if spec == "broken":
            raise EngineError(f"clip_image.onnx: onnxruntime could not load: {ENGINE_TEXT}")
        return untrained(0)

    from server.app import StationServer
    from server.config import ServerConfig

    srv = StationServer(ServerConfig(insecure=True, port=0, admin_token=ADMIN, grace_s=0.5), factory)
    srv.start()
    try:
        srv.load_bundle("good")
        with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as c:
            with pytest.raises(grpc.RpcError) as ei:
                c.load_bundle("broken")
            assert c.model_info().bundle_id == srv.station.bundle_id  # the old bundle serves
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        msg = ei.value.details() or ""
        assert "EngineError" in msg and "error id" in msg and not _LEAK.search(msg), msg
    finally:
        srv.stop(0)


def test_unexpected_handler_exception_is_internal_with_an_error_id(caplog: pytest.LogCaptureFixture) -> None:
    """Any handler exception (not only the batcher's) is mapped; grpc would send 'Exception calling
    application: <text>' as UNKNOWN."""

    def boom(_req: bytes, _ctx: grpc.ServicerContext) -> bytes:
        raise RuntimeError(f"engine exploded: {ENGINE_TEXT}")

    def aborts(_req: bytes, ctx: grpc.ServicerContext) -> bytes:
        ctx.abort(grpc.StatusCode.INVALID_ARGUMENT, "a deliberate refusal")

    handler = grpc.method_handlers_generic_handler("t.T", {
        "Boom": grpc.unary_unary_rpc_method_handler(boom),
        "Aborts": grpc.unary_unary_rpc_method_handler(aborts),
    })
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[InternalErrorInterceptor()],
                         handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with caplog.at_level(logging.ERROR), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            with pytest.raises(grpc.RpcError) as e1:
                ch.unary_unary("/t.T/Boom")(b"", timeout=10)
            with pytest.raises(grpc.RpcError) as e2:
                ch.unary_unary("/t.T/Aborts")(b"", timeout=10)
        assert e1.value.code() == grpc.StatusCode.INTERNAL
        assert "error id" in (e1.value.details() or "") and not _LEAK.search(e1.value.details() or "")
        assert ENGINE_TEXT in caplog.text
        assert (e2.value.code(), e2.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "a deliberate refusal")
    finally:
        server.stop(0)


def test_items_dropped_at_the_stream_deadline_are_counted(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0)
    try:
        scorer.gate.clear()
        reqs = [scorer_pb2.ScoreRequest(slice=make_pb_slice(i, a, meta=m)) for i, a, m in slices(rng, 5)]
        got: list[Any] = []
        err: list[grpc.RpcError] = []

        def run() -> None:
            with ScorerClient(srv.address, insecure=True) as c:
                try:
                    got.extend(c.stream(reqs, timeout=1.0))
                except grpc.RpcError as e:
                    err.append(e)

        t = threading.Thread(target=run)
        t.start()
        assert scorer.entered.wait(30)
        t.join(30)
        assert err and err[0].code() == grpc.StatusCode.DEADLINE_EXCEEDED and not got
        pattern = r'gsal_scorer_errors_total\{code="DEADLINE_EXCEEDED",method="Score",reason="stream_deadline"\} 5.0'
        t0 = time.monotonic()  # the servicer notices the expired call within its poll interval
        while not re.search(pattern, srv.metrics.text()) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        scorer.gate.set()
        assert re.search(pattern, srv.metrics.text()), srv.metrics.text()
    finally:
        scorer.gate.set()
        srv.stop(0)
