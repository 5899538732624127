"""Assemble the station gRPC server: scorer servicer, health, reflection, auth, TLS, metrics, and (with
``config.trainer``) the forwarder that pushes scored items to the trainer."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Self

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gsal_wire.pb import SCORER_SERVICE, scorer_pb2_grpc
from gsal_wire.security import AuthInterceptor, server_credentials
from server.config import ServerConfig
from server.forwarder import RecordForwarder, dialable_address
from server.internal_errors import InternalErrorInterceptor
from server.limits import CallLimiter, CallLimits
from server.metrics import ServerMetrics
from server.servicer import ScorerServicer
from server.station import ScorerFactory, Station, SwapResult

log = logging.getLogger(__name__)

HEALTH_SERVICE = health.SERVICE_NAME  # "grpc.health.v1.Health"


class StationServer:
    """One station scorer server. ``start()`` binds and serves; ``stop()`` drains and shuts down.

    Health (``""`` and ``gsal.v1.Scorer``) is NOT_SERVING until a bundle is loaded and again from
    the moment shutdown begins.
    """

    def __init__(self, config: ServerConfig, scorer_factory: ScorerFactory) -> None:
        self.config = config
        self.metrics = ServerMetrics()
        self.health = health.HealthServicer(
            experimental_non_blocking=True, experimental_thread_pool=ThreadPoolExecutor(1, "gsal-health")
        )
        self.forwarder: RecordForwarder | None = None
        if config.trainer is not None:
            self.forwarder = RecordForwarder(config.trainer, max_message_bytes=config.max_message_bytes,
                                             spool_dir=config.forward_spool_dir)
            self.forwarder.register_metrics(self.metrics.registry)
        self.station = Station(
            config, scorer_factory, self.metrics, on_serving=self._set_serving, forwarder=self.forwarder
        )
        self._set_serving(False)
        auth = AuthInterceptor(
            admin_methods={f"/{SCORER_SERVICE}/LoadBundle"},
            scoring_prefixes=(f"/{SCORER_SERVICE}/",),
            admin_token=config.admin_token,
            score_token=config.score_token,
            on_deny=lambda method, code: self.metrics.rpc_error(method.rsplit("/", 1)[-1], code.name, "auth"),
        )
        self.limiter = CallLimiter(
            CallLimits(config.max_scoring_rpcs, config.max_aux_streams, config.max_streams_per_peer),
            scoring_methods={f"/{SCORER_SERVICE}/Score", f"/{SCORER_SERVICE}/ScoreOne"},
            on_refuse=self._on_refuse,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            ("grpc.so_reuseport", 0),  # a port in use must fail, not be shared silently
        ]
        # auth first (an unauthenticated call never takes a slot), then the limits, then the catch-all
        threads = config.handler_threads
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gsal-grpc"),
            interceptors=[auth, self.limiter, InternalErrorInterceptor()],
            options=options,
            maximum_concurrent_rpcs=config.max_concurrent_rpcs or 4 * threads,
        )
        scorer_pb2_grpc.add_ScorerServicer_to_server(ScorerServicer(self.station), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection((SCORER_SERVICE, HEALTH_SERVICE, reflection.SERVICE_NAME), self._server)
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._stopped = False

    def _on_refuse(self, method: str, limit: str) -> None:
        self.metrics.refused.labels(limit=limit).inc()
        self.metrics.rpc_error(method.rsplit("/", 1)[-1], "RESOURCE_EXHAUSTED", "limit")

    def _set_serving(self, serving: bool) -> None:
        st = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SCORER_SERVICE):
            self.health.set(name, st)

    @property
    def address(self) -> str:
        """``host:port`` clients dial."""
        if self.port is None:
            raise RuntimeError("server not started")
        return f"{self.config.host}:{self.port}"

    def start(self) -> int:
        """Bind (TLS unless ``insecure``) and start serving; returns the port."""
        cfg = self.config
        addr = f"{cfg.host}:{cfg.port}"
        if cfg.tls is not None:
            port = self._server.add_secure_port(addr, server_credentials(cfg.tls))
            mode = "mutual TLS" if cfg.tls.require_client_cert else "TLS"
        else:
            assert cfg.insecure  # enforced by ServerConfig
            log.warning("INSECURE: serving plaintext gRPC on %s (no TLS); use only on a trusted loopback/lab net", addr)
            port = self._server.add_insecure_port(addr)
            mode = "plaintext"
        if not port:
            raise OSError(f"could not bind {addr}")
        self._server.start()
        self.port = port
        if self.forwarder is not None:  # the trainer's station registry learns where to deploy to
            self.forwarder.advertise(self.forwarder.link.advertise_address or dialable_address(cfg.host, port))
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        log.info("station scorer on %s:%d (%s)", cfg.host, port, mode)
        return port

    def load_bundle(self, spec: str, expected_bundle_id: str = "") -> SwapResult:
        """Load (or swap to) a bundle in-process; same path as the LoadBundle RPC."""
        return self.station.load_bundle(spec, expected_bundle_id)

    def stop(self, grace: float | None = None) -> None:
        """Graceful shutdown: NOT_SERVING, refuse new RPCs, let in-flight ones finish within ``grace``
        seconds, score whatever is still queued, push unsent records to the trainer (at most
        ``trainer.flush_s``, default ``grace``), then stop metrics."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.grace_s if grace is None else grace
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.station.close(drain=True, timeout=max(grace, 1.0))
        if self.forwarder is not None:
            link = self.forwarder.link
            self.forwarder.close(timeout=grace if link.flush_s is None else link.flush_s)
        self.metrics.close()
        log.info("station scorer stopped")

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return bool(self._server.wait_for_termination(timeout))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
