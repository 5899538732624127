"""Prometheus metrics of the station server (own registry, so several servers can live in one process)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
    start_http_server,
)

from server.batcher import BatchStats

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServerMetrics:
    """Counters, histograms and gauges of one server; :meth:`serve` exposes them over HTTP."""

    def __init__(self, namespace: str = "gsal_scorer") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r, ns = self.registry, namespace
        self.requests = Counter(f"{ns}_requests", "RPCs started", ["method"], registry=r)
        self.items = Counter(f"{ns}_items", "slices answered, by outcome code", ["method", "code"], registry=r)
        self.errors = Counter(f"{ns}_errors", "failed slices and failed RPCs, by gRPC code and reason "
                              "(answered: an item answered with an error; stream_deadline / client_cancelled: "
                              "admitted items dropped when their stream ended; auth, limit, idle, rpc: whole RPCs)",
                              ["method", "code", "reason"], registry=r)
        self.deferred = Counter(f"{ns}_deferred", "slices acknowledged as deferred (stored unscored)", registry=r)
        self.deferred_depth = Gauge(f"{ns}_deferred_depth", "deferred slices waiting on disk", registry=r)
        self.refused = Counter(f"{ns}_refused", "RPCs refused by a connection limit", ["limit"], registry=r)
        self.latency = Histogram(f"{ns}_latency_seconds", "per-slice latency, receipt to answer", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram(f"{ns}_batch_size", "slices per scorer call", buckets=BATCH_BUCKETS, registry=r)
        self.batch_seconds = Histogram(f"{ns}_batch_seconds", "scorer call time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge(f"{ns}_queue_depth", "slices waiting to be batched", registry=r)
        self.dropped = Counter(f"{ns}_dropped", "slices dropped before scoring", ["reason"], registry=r)
        self.bundle = Info(f"{ns}_bundle", "the bundle serving now", registry=r)
        self.swaps = Counter(f"{ns}_swaps", "LoadBundle attempts by result", ["result"], registry=r)
        self.bundle.info({"bundle_id": ""})
        self._http = None

    def bind_queue_depth(self, fn: Callable[[], float]) -> None:
        """Read the queue depth from ``fn`` at scrape time."""
        self.queue_depth.set_function(fn)

    def bind_deferred_depth(self, fn: Callable[[], float]) -> None:
        """Read the number of deferred slices on disk from ``fn`` at scrape time."""
        self.deferred_depth.set_function(fn)

    def on_batch(self, st: BatchStats) -> None:
        self.batch_size.observe(st.size)
        self.batch_seconds.observe(st.seconds)

    def on_drop(self, reason: str) -> None:
        self.dropped.labels(reason=reason).inc()

    def item(self, method: str, code: str, seconds: float | None, reason: str = "answered") -> None:
        """One slice answered (or dropped, see ``reason``) with status ``code`` (``OK`` or a gRPC code name)."""
        self.items.labels(method=method, code=code).inc()
        if code not in ("OK", "DEFERRED"):
            self.errors.labels(method=method, code=code, reason=reason).inc()
        if seconds is not None:
            self.latency.labels(method=method).observe(seconds)

    def rpc_error(self, method: str, code: str, reason: str = "rpc") -> None:
        """A whole RPC failed with ``code`` (e.g. an auth refusal: ``reason="auth"``)."""
        self.errors.labels(method=method, code=code, reason=reason).inc()

    def set_bundle(self, bundle_id: str) -> None:
        self.bundle.info({"bundle_id": bundle_id})

    def text(self) -> str:
        """The exposition text (what a scrape returns)."""
        return generate_latest(self.registry).decode()

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP endpoint on ``host:port`` (0: a free port); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._http = server
        bound = int(server.server_port)
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
