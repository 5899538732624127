"""The station's transport-free core: the serving scorer, the batcher, and the hot swap.

The gRPC servicer only translates messages and calls this object; tests and benchmarks can use it
directly. ``scorer_factory(spec) -> GSALScorer`` builds a scorer from a bundle path (by default
:func:`gsal_edge.scoring.bundle.load_bundle`, see :func:`default_scorer_factory`). With a
:class:`server.forwarder.RecordForwarder`, every successfully scored item submitted with its received
payload is also queued for the trainer.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_edge.scoring.offline import stamp_station
from server.batcher import BatchScorer, DynamicBatcher, ScorerSlot, new_error_id
from server.config import ServerConfig
from server.deferred import DeferredQueue
from server.metrics import ServerMetrics

if TYPE_CHECKING:  # the station core stays free of gRPC imports
    from server.forwarder import ReceivedSlice, RecordForwarder

log = logging.getLogger(__name__)

ScorerFactory = Callable[[str], BatchScorer]
UNTRAINED_PREFIX = "untrained:"


class SwapError(GSALError, RuntimeError):
    """LoadBundle refused; ``code`` is the gRPC status name. The previous bundle keeps serving."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class SwapResult:
    bundle_id: str
    previous_bundle_id: str
    load_seconds: float
    warmup_seconds: float
    info: dict[str, Any]


def parse_untrained_spec(spec: str) -> dict[str, int]:
    """``untrained:seed=1,size=64`` -> ``{"seed": 1, "image_size": 64}`` (test/benchmark scorers)."""
    out = {"seed": 0, "image_size": 64}
    body = spec[len(UNTRAINED_PREFIX):]
    for part in filter(None, body.split(",")):
        k, sep, v = part.partition("=")
        key = {"seed": "seed", "size": "image_size", "image_size": "image_size"}.get(k.strip())
        if not sep or key is None or not v.strip().isdigit():
            raise ValueError(f"bad untrained scorer spec {spec!r}: expected 'untrained:seed=N,size=N'")
        out[key] = int(v)
    return out


def default_scorer_factory(
    backend: str = "onnxruntime",
    trusted_keys: Sequence[str | Path] = (),
    allow_unsigned: bool = False,
    allow_untrained: bool = False,
    station: str = "",
    threads: int | None = None,
) -> ScorerFactory:
    """A factory that loads signed bundles with :func:`gsal_edge.scoring.bundle.load_bundle`.

    With ``allow_untrained``, the spec ``untrained:seed=N,size=N`` builds
    :func:`gsal_edge.scoring.torch_scorer.untrained_scorer` instead (transport tests and benchmarks only).
    """

    def factory(spec: str) -> BatchScorer:
        if spec.startswith(UNTRAINED_PREFIX):
            if not allow_untrained:
                raise SwapError("FAILED_PRECONDITION", "untrained scorers are not allowed on this server")
            from gsal_edge.scoring.torch_scorer import untrained_scorer

            return untrained_scorer(**parse_untrained_spec(spec))
        from gsal_edge.scoring.bundle import load_bundle, trusted_keys_from

        keys = trusted_keys_from(trusted_keys) if trusted_keys else None
        return load_bundle(
            spec, backend=backend, trusted_keys=keys, allow_unsigned=allow_unsigned, threads=threads, station=station
        )

    return factory


def _client_text(e: Exception) -> str:
    """What a client may read of a bundle-loading failure: our own errors (hash, signature, manifest)
    say what is wrong; anything else (an engine's text) is logged under an error id and not sent."""
    from gsal_edge.scoring.runtime.base import EngineError

    if isinstance(e, GSALError) and not isinstance(e, EngineError):
        log.warning("bundle rejected: %s", e)
        return f"{type(e).__name__}: {e}"
    eid = new_error_id()
    log.error("bundle rejected [error id %s]", eid, exc_info=e)
    return f"{type(e).__name__} (error id {eid}; the station log has the details)"


def _info_of(scorer: BatchScorer) -> dict[str, Any]:
    info_fn = getattr(scorer, "info", None)
    info = dict(info_fn()) if callable(info_fn) else {}
    info.setdefault("bundle", scorer.bundle_id)
    return json.loads(json.dumps(info, default=str))  # plain JSON types only


def _resolve(fut: Future[ScoreRecord], rec: ScoreRecord | None = None, exc: BaseException | None = None) -> None:
    """Complete ``fut`` unless its caller cancelled it meanwhile."""
    if not fut.set_running_or_notify_cancel():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        assert rec is not None
        fut.set_result(rec)


class Station:
    """Serving state of one station: scorer slot, dynamic batcher, metrics, hot swap."""

    def __init__(
        self,
        config: ServerConfig,
        scorer_factory: ScorerFactory,
        metrics: ServerMetrics | None = None,
        on_serving: Callable[[bool], None] | None = None,
        forwarder: RecordForwarder | None = None,
    ) -> None:
        self.config = config
        self.forwarder = forwarder
        self.factory = scorer_factory
        self.metrics = metrics or ServerMetrics()
        self.on_serving = on_serving
        self.slot: ScorerSlot[BatchScorer] = ScorerSlot()
        self._info: dict[str, Any] = {}
        self._swap_lock = threading.Lock()
        self.batcher = DynamicBatcher(
            self.slot,
            max_batch_size=config.max_batch_size,
            max_queue_delay_s=config.max_queue_delay_ms / 1000.0,
            queue_size=config.queue_size,
            on_batch=self.metrics.on_batch,
            on_drop=self.metrics.on_drop,
        )
        self.metrics.bind_queue_depth(lambda: float(self.batcher.depth))
        self.deferred: DeferredQueue | None = None  # overflow="defer": slices stored for later scoring
        if config.overflow == "defer":
            assert config.data_dir is not None  # enforced by ServerConfig
            self.deferred = DeferredQueue(config.data_dir, config.deferred_max_items, config.deferred_max_bytes)
            dq = self.deferred
            self.metrics.bind_deferred_depth(lambda: float(len(dq)))
            log.info("overflow: defer to %s (%d slices waiting)", dq.dir, len(dq))

    # ---- scoring ---------------------------------------------------------------------------------
    @property
    def bundle_id(self) -> str:
        s = self.slot.get()
        return "" if s is None else str(s.bundle_id)

    @property
    def serving(self) -> bool:
        return self.slot.get() is not None

    @property
    def forwarding(self) -> bool:
        """True when scored items go to the trainer (pass ``received`` to :meth:`submit`)."""
        return self.forwarder is not None

    def submit(
        self,
        array: np.ndarray,
        slice_id: str,
        meta: dict[str, str],
        deadline: float | None,
        received: ReceivedSlice | None = None,
    ) -> Future[ScoreRecord]:
        """Queue one decoded slice (see :meth:`DynamicBatcher.submit`); with ``received`` (the payload as
        received) and a forwarder, the finalized record is forwarded to the trainer once scored successfully,
        and the returned future resolves only once the forwarder kept it (with a spool: on disk), so a record
        a client was answered survives a station crash."""
        fut = self.batcher.submit(array, slice_id, meta, deadline)
        fwd = self.forwarder
        if fwd is None or received is None:
            return fut
        out: Future[ScoreRecord] = Future()
        out.add_done_callback(lambda o: fut.cancel() if o.cancelled() else None)  # a caller's cancel reaches the batcher

        def forward(f: Future[ScoreRecord]) -> None:  # runs in the batcher thread; offer() never blocks
            if f.cancelled():
                out.cancel()
                return
            exc = f.exception()
            if exc is not None:
                _resolve(out, exc=exc)
                return
            rec = f.result()
            fwd.offer(self.finalize(rec), received, done=lambda _kept: _resolve(out, rec))

        fut.add_done_callback(forward)
        return out

    def finalize(self, rec: ScoreRecord) -> ScoreRecord:
        """The record with the station id stamped on (when configured); a copy, ``rec`` is not changed."""
        return stamp_station(rec, self.config.station_id)

    def info(self) -> dict[str, Any]:
        """The serving scorer's ``info()`` (cached at load), plus station settings."""
        return dict(self._info)

    # ---- hot swap --------------------------------------------------------------------------------
    def load_bundle(self, spec: str, expected_bundle_id: str = "") -> SwapResult:
        """Build, warm up and atomically switch to the scorer of ``spec``; raises :class:`SwapError`.

        Items already submitted finish on the scorer they were submitted to; a failure at any step
        leaves the current scorer serving. Concurrent calls are serialised.
        """
        if not spec:
            raise SwapError("INVALID_ARGUMENT", "path: bundle path is empty")
        with self._swap_lock:
            previous = self.bundle_id
            t0 = time.perf_counter()
            try:
                scorer = self.factory(spec)
            except SwapError:
                self.metrics.swaps.labels(result="rejected").inc()
                raise
            except FileNotFoundError as e:
                self.metrics.swaps.labels(result="rejected").inc()
                raise SwapError("NOT_FOUND", f"path: {e}") from e
            except Exception as e:  # BundleError (hash/signature) and anything the loader raises
                self.metrics.swaps.labels(result="rejected").inc()
                raise SwapError("FAILED_PRECONDITION", f"bundle {spec!r} rejected: {_client_text(e)}") from e
            t1 = time.perf_counter()
            new_id = str(scorer.bundle_id)
            if expected_bundle_id and new_id != expected_bundle_id:
                self.metrics.swaps.labels(result="rejected").inc()
                raise SwapError(
                    "FAILED_PRECONDITION",
                    f"expected_bundle_id: bundle at {spec!r} is {new_id!r}, not {expected_bundle_id!r}",
                )
            try:
                warm = getattr(scorer, "warmup", None)
                if callable(warm):
                    warm()
                info = _info_of(scorer)
            except Exception as e:
                self.metrics.swaps.labels(result="warmup_failed").inc()
                raise SwapError("FAILED_PRECONDITION", f"bundle {new_id!r} failed warm-up: {_client_text(e)}") from e
            t2 = time.perf_counter()
            info.update(station_id=self.config.station_id or "", max_batch_size=self.config.max_batch_size)
            self._info = info
            self.slot.swap(scorer)  # the switch: new submissions go to `scorer` from here on
            self.metrics.set_bundle(new_id)
            self.metrics.swaps.labels(result="ok").inc()
            log.info("serving bundle %s (was %r): load %.2fs, warm-up %.2fs", new_id, previous, t1 - t0, t2 - t1)
        if self.on_serving is not None:
            self.on_serving(True)
        return SwapResult(new_id, previous, t1 - t0, t2 - t1, dict(info))

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop the batcher (scoring what is queued when ``drain``) and finish deferred-queue writes."""
        done = self.batcher.close(drain=drain, timeout=timeout)
        if self.deferred is not None:
            self.deferred.close()
        return done
