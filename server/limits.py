"""Connection limits of the station's gRPC server, applied per RPC before the servicer runs.

grpc's own ``maximum_concurrent_rpcs`` counts every RPC alike, so 32 idle streams used to lock out health
checks too. Here each RPC falls into a class:

* **scoring** (``Score`` streams and ``ScoreOne`` calls): at most ``max_scoring_rpcs`` in flight, all peers;
* **other streams** (reflection, health ``Watch``): at most ``max_aux_streams`` open, all peers;
* every **stream** also counts against its client address: at most ``max_streams_per_peer`` open;
* everything else (health ``Check``, ``GetModelInfo``, ``LoadBundle``) is not limited here, and the server
  keeps ``reserved_workers`` handler threads beyond the two stream classes, so a health check always
  finds a thread however many streams are open.

A call beyond a limit is answered ``RESOURCE_EXHAUSTED`` at once, with a message naming the limit; it
never waits for a thread. The interceptor sits after the authorisation interceptor, so an
unauthenticated call is refused before it takes a slot. Idle ``Score`` streams are ended by the servicer
(``stream_idle_timeout_s``), which frees their slots.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from gsal_wire.handlers import wrap_handler

log = logging.getLogger(__name__)


def peer_address(peer: str) -> str:
    """The client address of a grpc ``context.peer()`` without its port: ``ipv4:10.0.0.5:51234`` ->
    ``ipv4:10.0.0.5``, ``ipv6:[::1]:5000`` -> ``ipv6:[::1]``; other forms (``unix:...``) as they are."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6") and ":" in rest:
        return f"{kind}:{rest.rsplit(':', 1)[0]}"
    return peer


@dataclass(frozen=True)
class CallLimits:
    """The numbers :class:`CallLimiter` enforces (see the module docstring)."""

    max_scoring_rpcs: int
    max_aux_streams: int
    max_streams_per_peer: int


class _Lease:
    """One admitted call's slots; :meth:`release` is idempotent (called on completion and on termination)."""

    def __init__(self, limiter: CallLimiter, scoring: bool, streaming: bool, peer: str) -> None:
        self._limiter, self.scoring, self.streaming, self.peer = limiter, scoring, streaming, peer
        self._done = False
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._limiter._release(self)


class CallLimiter(grpc.ServerInterceptor):
    """Admits or refuses each RPC by its class and client address (see the module docstring)."""

    def __init__(
        self,
        limits: CallLimits,
        scoring_methods: set[str],
        unlimited_methods: set[str] = frozenset(),  # type: ignore[assignment]
        on_refuse: Callable[[str, str], None] | None = None,
    ) -> None:
        self.limits = limits
        self.scoring_methods = scoring_methods
        self.unlimited_methods = unlimited_methods
        self.on_refuse = on_refuse
        self._lock = threading.Lock()
        self._scoring = 0
        self._aux = 0
        self._per_peer: Counter[str] = Counter()

    # ---- accounting ------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Current counts (for tests and metrics)."""
        with self._lock:
            return {"scoring": self._scoring, "aux_streams": self._aux, "per_peer": dict(self._per_peer)}

    def _acquire(self, scoring: bool, streaming: bool, peer: str) -> _Lease | tuple[str, str]:
        lim = self.limits
        with self._lock:
            if streaming and self._per_peer[peer] >= lim.max_streams_per_peer:
                return "max_streams_per_peer", (
                    f"too many open streams from {peer} ({self._per_peer[peer]}, the limit max_streams_per_peer is "
                    f"{lim.max_streams_per_peer}); close idle streams or retry later")
            if scoring and self._scoring >= lim.max_scoring_rpcs:
                return "max_scoring_rpcs", (
                    f"station busy: {self._scoring} scoring calls in flight (the limit max_scoring_rpcs is "
                    f"{lim.max_scoring_rpcs}); retry later")
            if streaming and not scoring and self._aux >= lim.max_aux_streams:
                return "max_aux_streams", (
                    f"too many open non-scoring streams ({self._aux}, the limit max_aux_streams is "
                    f"{lim.max_aux_streams}); retry later")
            if scoring:
                self._scoring += 1
            elif streaming:
                self._aux += 1
            if streaming:
                self._per_peer[peer] += 1
        return _Lease(self, scoring, streaming, peer)

    def _release(self, lease: _Lease) -> None:
        with self._lock:
            if lease.scoring:
                self._scoring -= 1
            elif lease.streaming:
                self._aux -= 1
            if lease.streaming:
                self._per_peer[lease.peer] -= 1
                if self._per_peer[lease.peer] <= 0:
                    del self._per_peer[lease.peer]

    # ---- interception ----------------------------------------------------------------------------
    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        streaming = bool(handler.request_streaming or handler.response_streaming)
        scoring = method in self.scoring_methods
        if method in self.unlimited_methods or not (scoring or streaming):
            return handler
        return wrap_handler(handler, lambda behavior, resp_stream: self._guard(behavior, method, scoring, streaming,
                                                                                  resp_stream))

    def _guard(self, behavior: Callable[..., Any], method: str, scoring: bool, streaming: bool,
               response_streaming: bool) -> Callable[..., Any]:
        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            got = self._acquire(scoring, streaming, peer_address(context.peer()))
            if isinstance(got, tuple):
                limit, msg = got
                log.warning("refused %s from %s: %s", method, context.peer(), limit)
                if self.on_refuse is not None:
                    self.on_refuse(method, limit)
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, msg)
            lease = got
            if not context.add_callback(lease.release):  # the RPC already ended
                lease.release()
            try:
                return behavior(request, context)
            finally:
                # streaming responses: the generator runs after this returns; the callback releases then
                if not response_streaming:
                    lease.release()

        return guarded
