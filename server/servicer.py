"""``gsal.v1.Scorer`` servicer: translates messages and calls :class:`server.station.Station`.

Stream semantics (``Score``): one response per request, in request order. A bad item (invalid
slice, duplicate id, full queue, expired deadline, scoring failure) yields a response carrying an
``ItemError`` with the gRPC code and the offending field; the stream keeps going. A reader thread
per stream decodes and queues items ahead of the answers (at most ``max_inflight_per_stream``), so
one stream's slices can share batches with each other and with other streams.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass

import grpc

from gsal_edge.data.slices import SliceError
from gsal_wire.convert import decode_pb_slice, item_error, record_to_pb, slice_meta
from gsal_wire.pb import scorer_pb2, scorer_pb2_grpc
from gsal_wire.validation import check_slice_fields
from server.batcher import BatcherError, QueueFullError, new_error_id
from server.deferred import DeferredQueueFull
from server.forwarder import ReceivedSlice
from server.station import Station, SwapError

log = logging.getLogger(__name__)

FIELD_METADATA_KEY = "gsal-error-field"
_POLL_S = 0.1


@dataclass
class _Entry:
    """One admitted request: either a pending future or an immediate error."""

    slice_id: str
    t0: float
    future: Future | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    field: str = ""
    message: str = ""
    deferred: scorer_pb2.Deferred | None = None  # stored unscored (overflow="defer")
    method: str = "Score"
    deferred_write: Future | None = None  # the deferred queue's write of this slice


_END = object()


def _code(name: str) -> grpc.StatusCode:
    return grpc.StatusCode[name]


class ScorerServicer(scorer_pb2_grpc.ScorerServicer):
    """Implements ``Score``, ``ScoreOne``, ``GetModelInfo`` and ``LoadBundle``."""

    def __init__(self, station: Station) -> None:
        self.station = station
        self.cfg = station.config
        self.metrics = station.metrics
        self.limits = station.config.slice_limits
        self.dedupe_window = station.config.stream_dedupe_window

    # ---- helpers ---------------------------------------------------------------------------------
    def _deadline(self, call_deadline: float | None, req: scorer_pb2.ScoreRequest, t0: float) -> float | None:
        cands = [d for d in (call_deadline,) if d is not None]
        if req.timeout_ms:
            cands.append(t0 + req.timeout_ms / 1000.0)
        elif call_deadline is None and self.cfg.default_timeout_ms:
            cands.append(t0 + self.cfg.default_timeout_ms / 1000.0)
        return min(cands) if cands else None

    def _admit(
        self, req: scorer_pb2.ScoreRequest, seen: OrderedDict[str, None] | None, call_deadline: float | None,
        stream_full: int = 0,
    ) -> _Entry:
        """Validate, decode and queue one request (or defer it: ``overflow="defer"`` and the scoring queue
        full, or ``stream_full`` items already outstanding on this stream); never raises."""
        t0 = time.monotonic()
        sid = req.slice.id
        try:
            if not req.HasField("slice"):
                raise SliceError("slice", "request has no slice")
            check_slice_fields(req.slice, self.limits)  # one validation, shared with the trainer
            if seen is not None:
                if sid in seen:
                    raise SliceError("id", f"duplicate slice id {sid!r} in this stream")
                seen[sid] = None
                if len(seen) > self.dedupe_window:
                    seen.popitem(last=False)
            arr = decode_pb_slice(req.slice, self.limits)
        except SliceError as e:
            return _Entry(sid, t0, code=grpc.StatusCode.INVALID_ARGUMENT, field=e.field, message=str(e))
        try:
            if stream_full:
                raise QueueFullError(f"{stream_full} slices outstanding on this stream (4 x max_inflight_per_stream)")
            received = ReceivedSlice.from_pb(req.slice) if self.station.forwarding else None
            fut = self.station.submit(arr, sid, slice_meta(req.slice), self._deadline(call_deadline, req, t0), received)
        except BatcherError as e:
            if isinstance(e, QueueFullError) and self.station.deferred is not None and not req.no_defer:
                return self._defer(req, t0, str(e))
            return _Entry(sid, t0, code=_code(e.code), message=str(e))
        return _Entry(sid, t0, future=fut)

    def _defer(self, req: scorer_pb2.ScoreRequest, t0: float, why: str) -> _Entry:
        """Have the slice stored in the deferred queue (on its writer thread: the reader goes on reading);
        the answer, ``deferred`` once the entry is durable, is made in :meth:`_resolve`."""
        assert self.station.deferred is not None
        fut = self.station.deferred.put_async(req.slice.SerializeToString())
        return _Entry(req.slice.id, t0, deferred=scorer_pb2.Deferred(reason=why), deferred_write=fut)

    def _resolve_deferred(self, e: _Entry, context: grpc.ServicerContext) -> _Entry | scorer_pb2.ScoreResponse | None:
        assert e.deferred is not None and e.deferred_write is not None
        while True:
            try:
                e.deferred.queued = e.deferred_write.result(timeout=_POLL_S)
                break
            except FutureTimeout:
                if not context.is_active():
                    return None  # the write goes on; the slice is drained later like any deferred one
            except DeferredQueueFull as err:
                e.code, e.message = grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e.deferred.reason}; and {err}"
                e.deferred = None
                return e
            except OSError as err:
                eid = new_error_id()
                log.error("could not store deferred slice %r [error id %s]", e.slice_id, eid, exc_info=err)
                e.code = grpc.StatusCode.RESOURCE_EXHAUSTED
                e.message = f"{e.deferred.reason}; and the slice could not be stored for later (error id {eid})"
                e.deferred = None
                return e
        self.metrics.deferred.inc()
        self.metrics.item(e.method, "DEFERRED", time.monotonic() - e.t0)
        return scorer_pb2.ScoreResponse(slice_id=e.slice_id, deferred=e.deferred)

    def _resolve(self, e: _Entry, context: grpc.ServicerContext) -> _Entry | scorer_pb2.ScoreResponse | None:
        """Wait for an entry's record; returns the response, or the entry turned into an error."""
        if e.deferred is not None:
            return self._resolve_deferred(e, context)
        if e.future is None:
            return e
        while True:
            try:
                rec = e.future.result(timeout=_POLL_S)
                return scorer_pb2.ScoreResponse(slice_id=e.slice_id, record=record_to_pb(self.station.finalize(rec)))
            except FutureTimeout:
                if not context.is_active():
                    e.future.cancel()
                    return None
            except BatcherError as err:
                e.code, e.message = _code(err.code), str(err)
                return e
            except Exception as err:  # pragma: no cover - the batcher wraps scorer errors already
                eid = new_error_id()
                log.error("internal error [error id %s] answering %r", eid, e.slice_id, exc_info=err)
                e.code, e.message = grpc.StatusCode.INTERNAL, f"internal error (error id {eid}; see the station log)"
                return e

    def _dropped(self, e: _Entry, context: grpc.ServicerContext) -> None:
        """An admitted item whose stream ended before its answer was sent: cancel it and count it
        (``DEADLINE_EXCEEDED``/``stream_deadline`` when the call's deadline passed, else
        ``CANCELLED``/``client_cancelled``)."""
        if e.future is not None:
            e.future.cancel()
        left = context.time_remaining()
        if left is not None and left <= 0:
            self.metrics.item("Score", "DEADLINE_EXCEEDED", None, reason="stream_deadline")
        else:
            self.metrics.item("Score", "CANCELLED", None, reason="client_cancelled")

    @staticmethod
    def _call_deadline(context: grpc.ServicerContext) -> float | None:
        left = context.time_remaining()
        return None if left is None or left > 1e8 else time.monotonic() + left

    # ---- RPCs ------------------------------------------------------------------------------------
    def Score(
        self, request_iterator: Iterator[scorer_pb2.ScoreRequest], context: grpc.ServicerContext
    ) -> Iterator[scorer_pb2.ScoreResponse]:
        self.metrics.requests.labels(method="Score").inc()
        # overflow="defer": the reader must keep reading the line's stream, so answers may queue further ahead
        # (8 x max_inflight_per_stream); a stream with 4 x max_inflight_per_stream slices outstanding has its
        # next ones deferred; below that the scoring queue's own limit decides (as in reject mode)
        defer_mode = self.station.deferred is not None
        max_inflight = self.cfg.max_inflight_per_stream * (4 if defer_mode else 1)
        pending: queue.Queue[object] = queue.Queue(maxsize=max_inflight * (2 if defer_mode else 1))
        outstanding = [0]  # entries of this stream with a future not yet answered (defer mode)
        count_lock = threading.Lock()
        stop = threading.Event()
        call_deadline = self._call_deadline(context)
        idle_s = self.cfg.stream_idle_timeout_s
        last_rx = [time.monotonic()]  # when the last request arrived (the reader updates it)

        def put(x: object) -> bool:
            while not stop.is_set():
                try:
                    pending.put(x, timeout=_POLL_S)
                    return True
                except queue.Full:
                    continue
            return False

        def reader() -> None:
            seen: OrderedDict[str, None] = OrderedDict()
            try:
                for req in request_iterator:
                    last_rx[0] = time.monotonic()
                    full = outstanding[0] if defer_mode and outstanding[0] >= max_inflight else 0
                    entry = self._admit(req, seen, call_deadline, stream_full=full)
                    if entry.future is not None:
                        with count_lock:
                            outstanding[0] += 1
                    if not put(entry):
                        self._dropped(entry, context)
                        return
            except Exception as e:  # noqa: BLE001 - the client went away mid-stream
                log.debug("Score stream reader ended: %s", e)
            finally:
                put(_END)

        threading.Thread(target=reader, name="gsal-score-reader", daemon=True).start()
        try:
            while True:
                try:
                    x = pending.get(timeout=_POLL_S)
                except queue.Empty:
                    if not context.is_active():
                        return
                    if time.monotonic() - last_rx[0] > idle_s:  # nothing sent, nothing outstanding
                        self.metrics.rpc_error("Score", "DEADLINE_EXCEEDED", "idle")
                        context.abort(
                            grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"stream idle: no request for {idle_s:g} s and nothing outstanding "
                            "(stream_idle_timeout_s); open a new stream when there is work",
                        )
                    continue
                if x is _END:
                    return
                assert isinstance(x, _Entry)
                out = self._resolve(x, context)
                if x.future is not None:
                    with count_lock:
                        outstanding[0] -= 1
                if out is None:
                    self._dropped(x, context)
                    return
                if isinstance(out, _Entry):
                    self.metrics.item("Score", out.code.name, time.monotonic() - out.t0)
                    yield scorer_pb2.ScoreResponse(
                        slice_id=out.slice_id, error=item_error(out.code, out.field, out.message)
                    )
                else:
                    if out.WhichOneof("result") == "record":
                        self.metrics.item("Score", "OK", time.monotonic() - x.t0)
                    yield out
        finally:
            stop.set()
            while True:  # cancel what is still queued for this stream
                try:
                    x = pending.get_nowait()
                except queue.Empty:
                    break
                if isinstance(x, _Entry):
                    self._dropped(x, context)

    def ScoreOne(self, request: scorer_pb2.ScoreRequest, context: grpc.ServicerContext) -> scorer_pb2.ScoreResponse:
        self.metrics.requests.labels(method="ScoreOne").inc()
        entry = self._admit(request, None, self._call_deadline(context))
        entry.method = "ScoreOne"
        out = self._resolve(entry, context)
        if out is None:  # the client cancelled, or the call's deadline passed
            left = context.time_remaining()
            if left is not None and left <= 0:
                self.metrics.item("ScoreOne", "DEADLINE_EXCEEDED", None, reason="stream_deadline")
            else:
                self.metrics.item("ScoreOne", "CANCELLED", None, reason="client_cancelled")
            context.abort(grpc.StatusCode.CANCELLED, "client cancelled")
        if isinstance(out, _Entry):
            self.metrics.item("ScoreOne", out.code.name, time.monotonic() - out.t0)
            if out.field:
                # metadata values must be printable ASCII: escape anything else a client put in a field name
                context.set_trailing_metadata(((FIELD_METADATA_KEY, ascii(out.field)[1:-1][:200]),))
            context.abort(out.code, out.message)
        if out.WhichOneof("result") == "record":  # type: ignore[union-attr]
            self.metrics.item("ScoreOne", "OK", time.monotonic() - entry.t0)
        return out  # type: ignore[return-value]

    def GetModelInfo(
        self, request: scorer_pb2.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.ModelInfo:
        self.metrics.requests.labels(method="GetModelInfo").inc()
        return model_info_pb(self.station.info(), self.station)

    def LoadBundle(
        self, request: scorer_pb2.LoadBundleRequest, context: grpc.ServicerContext
    ) -> scorer_pb2.LoadBundleResponse:
        self.metrics.requests.labels(method="LoadBundle").inc()
        try:
            res = self.station.load_bundle(request.path, request.expected_bundle_id)
        except SwapError as e:
            self.metrics.rpc_error("LoadBundle", e.code)
            context.abort(_code(e.code), str(e))
        return scorer_pb2.LoadBundleResponse(
            bundle_id=res.bundle_id,
            previous_bundle_id=res.previous_bundle_id,
            load_seconds=res.load_seconds,
            warmup_seconds=res.warmup_seconds,
            info=model_info_pb(res.info, self.station),
        )


def model_info_pb(info: dict, station: Station) -> scorer_pb2.ModelInfo:
    """The scorer's ``info()`` dict as a ``ModelInfo`` message."""
    import json

    models = info.get("models", [])
    graph = info.get("graph", "")
    return scorer_pb2.ModelInfo(
        bundle_id=str(info.get("bundle", "")),
        backend=str(info.get("backend", "")),
        models=[str(m) for m in (models.keys() if isinstance(models, dict) else models)],
        graph=graph if isinstance(graph, str) else json.dumps(graph, default=str),
        info_json=json.dumps(info, sort_keys=True, default=str),
        station_id=station.config.station_id or "",
        max_batch_size=station.config.max_batch_size,
    )
