"""Connection limits over real gRPC on 127.0.0.1 (issue 18: 32 idle streams used to lock the station out,
health checks included): per-peer stream limit, scoring-call limit, health outside both, idle streams ended,
unauthenticated streams refused before they take a slot."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from test_server import SIZE, start, untrained

from gsal_wire.pb import scorer_pb2, scorer_pb2_grpc
from gsal_wire.scorer_client import ScorerClient
from gsal_wire.security import bearer

TOKEN = "score-token-0123456789"


def _blocking(stop: threading.Event) -> Iterator[Any]:
    """A request iterator that sends nothing until ``stop`` is set (an idle client)."""
    stop.wait(60)
    return
    yield  # pragma: no cover


def _eventually(check: Any, timeout: float = 15.0) -> bool:
    """Poll ``check()`` until true (bounded): slots are released by grpc's termination callbacks, which may
    run a moment after the client saw the status."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def _health(address: str) -> str:
    with grpc.insecure_channel(address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)


def _open_idle_streams(address: str, n: int, stop: threading.Event, metadata: Any = None,
                       ) -> tuple[list[grpc.Channel], list[Any]]:
    channels = [grpc.insecure_channel(address) for _ in range(4)]
    calls = []
    for k in range(n):
        stub = scorer_pb2_grpc.ScorerStub(channels[k % len(channels)])
        calls.append(stub.Score(_blocking(stop), metadata=metadata, timeout=60))
    return channels, calls


def _outcomes(calls: list[Any]) -> list[tuple[str, str]]:
    out = []
    for c in calls:
        try:
            list(c)
            out.append(("OK", ""))
        except grpc.RpcError as e:
            out.append((e.code().name, e.details() or ""))
    return out


def test_idle_streams_from_one_peer_leave_health_and_scoring_open() -> None:
    srv = start(untrained(0), stream_idle_timeout_s=2.0, metrics_port=None)
    stop = threading.Event()
    channels: list[grpc.Channel] = []
    try:
        channels, calls = _open_idle_streams(srv.address, 40, stop)
        assert _eventually(lambda: srv.limiter.snapshot()["scoring"] == srv.config.max_streams_per_peer)
        assert _health(srv.address) == "SERVING"
        with ScorerClient(srv.address, insecure=True) as c:  # a fresh client, same address
            rec = c.score_one("fresh", np.zeros((SIZE, SIZE), np.uint8), timeout=20)
        assert rec.image_id == "fresh"
        t0 = time.monotonic()
        outcomes = _outcomes(calls)  # the admitted ones end by the idle timeout
        assert time.monotonic() - t0 < 20
        refused = [d for code, d in outcomes if code == "RESOURCE_EXHAUSTED"]
        idle = [d for code, d in outcomes if code == "DEADLINE_EXCEEDED"]
        assert len(refused) == 40 - srv.config.max_streams_per_peer, outcomes
        assert all("max_streams_per_peer" in d for d in refused)
        assert len(idle) == srv.config.max_streams_per_peer and all("idle" in d for d in idle), outcomes
        assert _eventually(lambda: srv.limiter.snapshot() == {"scoring": 0, "aux_streams": 0, "per_peer": {}})
        text = srv.metrics.text()
        assert 'gsal_scorer_errors_total{code="DEADLINE_EXCEEDED",method="Score",reason="idle"} 16.0' in text
        assert 'gsal_scorer_refused_total{limit="max_streams_per_peer"} 24.0' in text
    finally:
        stop.set()
        for ch in channels:
            ch.close()
        srv.stop(0)


def test_scoring_limit_refuses_at_once_and_health_stays_serving() -> None:
    srv = start(untrained(0), max_scoring_rpcs=3, max_streams_per_peer=50, stream_idle_timeout_s=30.0)
    stop = threading.Event()
    channels: list[grpc.Channel] = []
    try:
        channels, calls = _open_idle_streams(srv.address, 3, stop)
        assert _eventually(lambda: srv.limiter.snapshot()["scoring"] == 3)
        with ScorerClient(srv.address, insecure=True) as c:
            t0 = time.monotonic()
            try:
                c.score_one("over", np.zeros((SIZE, SIZE), np.uint8), timeout=20)
                raise AssertionError("a 4th scoring call was admitted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_scoring_rpcs" in (e.details() or "")
            assert time.monotonic() - t0 < 5  # refused at once, not queued
            assert c.model_info().bundle_id == srv.station.bundle_id  # non-scoring unary calls still answered
        assert _health(srv.address) == "SERVING"
        stop.set()  # the clients half-close: their streams end normally and free the slots
        assert all(code == "OK" for code, _ in _outcomes(calls))
        assert _eventually(lambda: srv.limiter.snapshot()["scoring"] == 0)
        with ScorerClient(srv.address, insecure=True) as c:
            assert c.score_one("after", np.zeros((SIZE, SIZE), np.uint8), timeout=20).image_id == "after"
    finally:
        stop.set()
        for ch in channels:
            ch.close()
        srv.stop(0)


def test_idle_reflection_streams_are_capped_and_do_not_block_health() -> None:
    srv = start(untrained(0), max_aux_streams=2, max_streams_per_peer=50)
    stop = threading.Event()
    ch = grpc.insecure_channel(srv.address)
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        calls = [stub.ServerReflectionInfo(_blocking(stop), timeout=60) for _ in range(6)]
        assert _eventually(lambda: srv.limiter.snapshot()["aux_streams"] == 2)
        assert _health(srv.address) == "SERVING"
        stop.set()
        codes = [code for code, _ in _outcomes(calls)]
        assert codes.count("RESOURCE_EXHAUSTED") == 4 and codes.count("OK") == 2, codes
        assert reflection_pb2  # the module is what the stub speaks
    finally:
        stop.set()
        ch.close()
        srv.stop(0)


def test_unauthenticated_streams_are_refused_before_taking_a_slot() -> None:
    srv = start(untrained(0), score_token=TOKEN, max_scoring_rpcs=2, max_streams_per_peer=2)
    stop = threading.Event()
    channels: list[grpc.Channel] = []
    try:
        channels, calls = _open_idle_streams(srv.address, 10, stop)  # no token
        outcomes = _outcomes(calls)
        assert {code for code, _ in outcomes} == {"UNAUTHENTICATED"}, outcomes
        assert srv.limiter.snapshot()["scoring"] == 0
        with ScorerClient(srv.address, insecure=True, token=TOKEN) as c:
            assert c.score_one("authed", np.zeros((SIZE, SIZE), np.uint8), timeout=20).image_id == "authed"
        assert bearer(TOKEN)  # the metadata form the client sends
    finally:
        stop.set()
        for ch in channels:
            ch.close()
        srv.stop(0)


def test_score_stream_with_work_outstanding_is_not_idle(rng: np.random.Generator) -> None:
    """The idle clock runs only while nothing is outstanding: a slow batch does not end the stream."""
    from test_server import Instrumented, slices

    scorer = Instrumented(untrained(0))
    srv = start(scorer, stream_idle_timeout_s=0.5, max_batch_size=1, max_queue_delay_ms=0.0)
    try:
        scorer.gate.clear()
        out: list[Any] = []
        with ScorerClient(srv.address, insecure=True) as c:
            t = threading.Thread(target=lambda: out.extend(c.score(slices(rng, 2))))
            t.start()
            assert scorer.entered.wait(30)
            time.sleep(1.5)  # 3x the idle timeout with the batch held in the scorer
            scorer.gate.set()
            t.join(60)
        assert [getattr(r, "image_id", None) for r in out] == ["slice-0000", "slice-0001"]
        assert scorer_pb2.ScoreRequest  # requests are plain ScoreRequests
    finally:
        scorer.gate.set()
        srv.stop(0)
