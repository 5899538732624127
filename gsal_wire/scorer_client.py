"""A small client for the station scorer (used by the CLI, tests, benchmarks and the trainer)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_wire import MiB
from gsal_wire.channel import ChannelClient, open_channel
from gsal_wire.convert import make_pb_slice, record_from_pb
from gsal_wire.pb import scorer_pb2, scorer_pb2_grpc
from gsal_wire.security import bearer


class ItemFailed(GSALError, RuntimeError):
    """A per-item error from a ``Score`` stream (code name, field, message)."""

    def __init__(self, slice_id: str, code_name: str, field: str, message: str) -> None:
        super().__init__(f"{slice_id}: {code_name} {message}")
        self.slice_id, self.code_name, self.field, self.message = slice_id, code_name, field, message


@dataclass(frozen=True)
class ItemDeferred:
    """A slice the station stored unscored (``--overflow defer``); it is scored later by a drain."""

    slice_id: str
    reason: str
    queued: int


class ScorerClient(ChannelClient):
    """Connects to a station: TLS by default (``ca``, optional client cert for mTLS), plaintext only with
    ``insecure=True``. ``token`` is sent as a bearer token on scoring calls, ``admin_token`` on LoadBundle."""

    def __init__(
        self,
        address: str,
        *,
        ca: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        insecure: bool = False,
        token: str | None = None,
        admin_token: str | None = None,
        server_name: str | None = None,
        max_message_bytes: int = 65 * MiB,
    ) -> None:
        opts: list[tuple[str, object]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ]
        self.channel = open_channel(address, opts, insecure=insecure, ca=ca, client_cert=client_cert,
                                    client_key=client_key, server_name=server_name)
        self.stub = scorer_pb2_grpc.ScorerStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._md = bearer(token) if token else None
        self._admin_md = bearer(admin_token) if admin_token else None

    # ---- raw message API --------------------------------------------------------------------------
    def stream(
        self, requests: Iterable[scorer_pb2.ScoreRequest], timeout: float | None = None
    ) -> Iterator[scorer_pb2.ScoreResponse]:
        """The ``Score`` RPC: responses in request order."""
        return self.stub.Score(iter(requests), timeout=timeout, metadata=self._md)

    # ---- array API --------------------------------------------------------------------------------
    def score(
        self,
        items: Iterable[tuple[str, np.ndarray] | tuple[str, np.ndarray, Mapping[str, str]]],
        encoding: str = "raw",
        timeout: float | None = None,
    ) -> Iterator[ScoreRecord | ItemFailed | ItemDeferred]:
        """Stream ``(id, array[, meta])`` items; yields a record, an :class:`ItemFailed` or (from a station
        with ``--overflow defer``) an :class:`ItemDeferred` per item, in order."""

        def reqs() -> Iterator[scorer_pb2.ScoreRequest]:
            for it in items:
                meta = it[2] if len(it) > 2 else None  # type: ignore[misc]
                yield scorer_pb2.ScoreRequest(slice=make_pb_slice(it[0], it[1], encoding=encoding, meta=meta))

        for resp in self.stream(reqs(), timeout=timeout):
            yield to_result(resp)

    def score_one(
        self, slice_id: str, arr: np.ndarray, meta: Mapping[str, str] | None = None,
        encoding: str = "raw", timeout: float | None = None,
    ) -> ScoreRecord:
        """``ScoreOne``; raises ``grpc.RpcError`` on failure."""
        req = scorer_pb2.ScoreRequest(slice=make_pb_slice(slice_id, arr, encoding=encoding, meta=meta))
        resp = self.stub.ScoreOne(req, timeout=timeout, metadata=self._md)
        return record_from_pb(resp.record)

    def model_info(self, timeout: float | None = 10.0) -> scorer_pb2.ModelInfo:
        return self.stub.GetModelInfo(scorer_pb2.GetModelInfoRequest(), timeout=timeout, metadata=self._md)

    def load_bundle(
        self, path: str, expected_bundle_id: str = "", timeout: float | None = 600.0
    ) -> scorer_pb2.LoadBundleResponse:
        req = scorer_pb2.LoadBundleRequest(path=path, expected_bundle_id=expected_bundle_id)
        return self.stub.LoadBundle(req, timeout=timeout, metadata=self._admin_md)

    def health(self, service: str = "", timeout: float | None = 5.0) -> str:
        """``SERVING`` / ``NOT_SERVING`` / ... of the standard health service."""
        resp = self.health_stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)


def to_result(resp: scorer_pb2.ScoreResponse) -> ScoreRecord | ItemFailed | ItemDeferred:
    """A ``ScoreResponse`` as a library record, :class:`ItemFailed` or :class:`ItemDeferred`."""
    if resp.HasField("error"):
        e = resp.error
        return ItemFailed(resp.slice_id, e.code_name, e.field, e.message)
    if resp.HasField("deferred"):
        return ItemDeferred(resp.slice_id, resp.deferred.reason, int(resp.deferred.queued))
    return record_from_pb(resp.record)
