"""Forward the station's scored items (score record + the slice as received) to the trainer.

The station calls :meth:`RecordForwarder.offer` once per *successfully* scored item (from the batcher's
worker thread; it only appends to a queue). One background thread sends the queue to the trainer's
``Ingest`` RPC with :class:`gsal_wire.trainer_client.TrainerPushClient`, in chunks of ``chunk_size``
records, or fewer once the oldest queued record has waited ``max_delay_ms``. A chunk counts as
forwarded only when the trainer acknowledged it (the trainer is idempotent by station + slice + bundle,
so a re-sent chunk cannot create double records).

While the trainer is down (UNAVAILABLE) or slow (DEADLINE_EXCEEDED) the same chunk is retried forever with
exponential backoff and full jitter (``retry_base_s`` .. ``retry_max_s``), and new items wait in the queue.
Other retryable codes (RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN) are retried ``OTHER_ATTEMPTS`` times,
then the chunk is dropped; non-retryable codes (e.g. UNAUTHENTICATED, PERMISSION_DENIED) drop it at once.

Limits (what can be lost):
  * The queue is in memory only: at most ``queue_size`` records and ``queue_bytes`` slice bytes are held
    (queued + the chunk in flight).
    When it is full, new items are dropped (logged, counted as ``dropped{reason="queue_full"}``); so a
    trainer outage longer than ``queue_size`` items of traffic loses the newest items. Nothing is spooled
    to disk: a station crash or kill loses every unacknowledged item.
  * :meth:`close` (graceful stop) keeps pushing for at most its ``timeout``; what is still unacknowledged
    then is counted as ``dropped{reason="shutdown"}``.
  * Items the trainer refuses one by one (``IngestAck.rejected``) are counted as ``dropped{reason="rejected"}``.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import cast

import grpc
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.convert import PB_TO_DTYPE, PB_TO_ENCODING
from gsal_wire.pb import common_pb2
from gsal_wire.trainer_client import PushError, PushItem, PushResult, RetryPolicy, TrainerPushClient
from server.config import TrainerLink

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "too_large", "rejected", "failed", "shutdown", "closed")
FOREVER = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
OTHER_RETRYABLE = frozenset(
    {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
)
OTHER_ATTEMPTS = 10
_RECORD_OVERHEAD = 16 * 1024  # bytes counted per item on top of its slice payload (record, message framing)
_DROP_LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class ReceivedSlice:
    """A slice's payload exactly as the station received it (forwarded without re-encoding)."""

    data: bytes
    encoding: str  # "raw" | "png" | "tiff"
    shape: tuple[int, ...] | None = None
    dtype: str | None = None

    @classmethod
    def from_pb(cls, msg: common_pb2.Slice) -> ReceivedSlice:
        """From a ``gsal.v1.Slice`` that already decoded successfully."""
        return cls(
            data=bytes(msg.data),
            encoding=PB_TO_ENCODING[msg.encoding],
            shape=tuple(int(v) for v in msg.shape) or None,
            dtype=PB_TO_DTYPE.get(msg.dtype),
        )

    @property
    def nbytes(self) -> int:
        return len(self.data)


@dataclass
class ForwarderStats:
    """Counters of one forwarder (also exported as Prometheus metrics, see :meth:`RecordForwarder.register_metrics`)."""

    forwarded: int = 0  # records the trainer acknowledged (committed or already stored)
    retried: int = 0  # failed Ingest calls that were retried
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    pending: int = 0  # records queued or in flight

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass
class _Entry:
    record: ScoreRecord
    received: ReceivedSlice
    t: float  # time.monotonic() when queued

    def to_push_item(self) -> PushItem:
        r = self.received
        shape = cast("tuple[int, int] | None", r.shape)
        return PushItem(self.record, data=r.data, encoding=r.encoding, shape=shape, dtype=r.dtype)


class RecordForwarder:
    """Bounded queue + one thread that pushes scored items to the trainer (see the module docstring)."""

    def __init__(
        self,
        link: TrainerLink,
        *,
        max_message_bytes: int = 65 * 1024 * 1024,
        seed: int | None = None,
        name: str = "gsal-forwarder",
    ) -> None:
        self.link = link
        self.max_message_bytes = max_message_bytes
        self._policy = RetryPolicy(base_delay_s=link.retry_base_s, max_delay_s=link.retry_max_s)
        self._rng = random.Random(seed)
        self.client = TrainerPushClient(
            link.address,
            link.station_id,
            insecure=link.insecure,
            ca=link.ca,
            client_cert=link.client_cert,
            client_key=link.client_key,
            server_name=link.server_name,
            retry=RetryPolicy(max_attempts=1),  # one call per try; the backoff loop is ours (interruptible)
            chunk_size=link.chunk_size,
            call_timeout_s=link.call_timeout_s,
            max_message_bytes=max_message_bytes,
            reconnect_backoff_s=(min(0.2, link.retry_max_s), link.retry_max_s),
        )
        self._q: deque[_Entry] = deque()
        self._bytes = 0  # payload bytes of queued + in-flight items
        self._inflight = 0
        self._stats = ForwarderStats()
        self._cv = threading.Condition()
        self._closing = False  # no new items; flush what is queued
        self._abort = False  # flush time is up: stop retrying, stop sending
        self._last_drop_log = -_DROP_LOG_EVERY_S
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # ---- producer side (batcher worker thread) -----------------------------------------------
    def offer(self, record: ScoreRecord, received: ReceivedSlice) -> bool:
        """Queue one scored item; never blocks. False (counted as dropped) when it cannot be kept."""
        size = received.nbytes + _RECORD_OVERHEAD
        with self._cv:
            if self._closing:
                return self._drop_locked("closed", record.image_id)
            if size > self.max_message_bytes:
                return self._drop_locked("too_large", record.image_id)
            held = len(self._q) + self._inflight
            if held >= self.link.queue_size or self._bytes + size > self.link.queue_bytes:
                return self._drop_locked("queue_full", record.image_id)
            self._q.append(_Entry(record, received, time.monotonic()))
            self._bytes += size
            self._cv.notify()
        return True

    def _drop_locked(self, reason: str, image_id: str) -> bool:
        self._stats.dropped[reason] += 1
        now = time.monotonic()
        if now - self._last_drop_log >= _DROP_LOG_EVERY_S:
            self._last_drop_log = now
            log.warning(
                "forwarder: %s not forwarded to %s (%s); %d dropped so far (held %d/%d records, %d/%d bytes)",
                image_id, self.link.address, reason, self._stats.dropped_total, len(self._q) + self._inflight,
                self.link.queue_size,
                self._bytes, self.link.queue_bytes,
            )
        return False

    def advertise(self, address: str) -> None:
        """Tell the trainer, on every Ingest item from now on, where this station's Scorer is reached
        (``host:port``); the trainer's station registry uses it for deploys and health checks."""
        self.client.station_address = address

    # ---- state --------------------------------------------------------------------------------
    def stats(self) -> ForwarderStats:
        """A snapshot of the counters."""
        with self._cv:
            s = self._stats
            return ForwarderStats(s.forwarded, s.retried, dict(s.dropped), len(self._q) + self._inflight)

    @property
    def pending(self) -> int:
        """Records queued or in flight."""
        with self._cv:
            return len(self._q) + self._inflight

    def register_metrics(self, registry: CollectorRegistry, namespace: str = "gsal_scorer") -> None:
        """Export the counters on ``registry`` (``<ns>_forwarded_total``, ``<ns>_forward_retries_total``,
        ``<ns>_forward_dropped_total{reason}``, ``<ns>_forward_pending``)."""
        registry.register(_Collector(self, namespace))

    # ---- shutdown -----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking items and push what is queued for at most ``timeout`` seconds; True when all was
        acknowledged. What is left then is counted as dropped (``shutdown``)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        self._worker.join(max(deadline - time.monotonic(), 0.0))
        if self._worker.is_alive():
            with self._cv:
                self._abort = True
                self._cv.notify_all()
            self.client.close()  # cancels an Ingest call still in flight
            self._worker.join(5.0)
        else:
            self.client.close()
        with self._cv:
            left = len(self._q)
            self._q.clear()
            self._stats.dropped["shutdown"] += left
            unsent = self._stats.dropped["shutdown"] + self._inflight
            forwarded = self._stats.forwarded
        if unsent == 0 and not self._worker.is_alive():
            log.info("forwarder: flushed; %d records forwarded to %s in all", forwarded, self.link.address)
            return True
        log.warning("forwarder: stopped with %d records unsent to %s (flush time %.1fs)", unsent, self.link.address,
                    timeout)
        return False

    # ---- worker -------------------------------------------------------------------------------
    def _next_chunk(self) -> list[_Entry] | None:
        delay = self.link.max_delay_ms / 1000.0
        with self._cv:
            while True:
                if self._abort:
                    return None
                if not self._q:
                    if self._closing:
                        return None
                    self._cv.wait()
                    continue
                if len(self._q) >= self.link.chunk_size or self._closing:
                    break
                left = self._q[0].t + delay - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            chunk = [self._q.popleft() for _ in range(min(self.link.chunk_size, len(self._q)))]
            self._inflight = len(chunk)
            return chunk

    def _run(self) -> None:
        outage = 0  # consecutive failed calls
        while True:
            chunk = self._next_chunk()
            if chunk is None:
                return
            try:
                outage = self._deliver(chunk, outage)
            except Exception:  # never let the worker die
                log.exception("forwarder: unexpected error; %d records dropped", len(chunk))
                self._finish(chunk, None, "failed")

    def _deliver(self, chunk: list[_Entry], outage: int) -> int:
        """Push one chunk until acknowledged (or given up); returns the consecutive-failure count."""
        items = [e.to_push_item() for e in chunk]
        other_attempts = 0
        while True:
            try:
                res = self.client.push(items)
            except (PushError, ValueError) as e:  # ValueError: channel closed by close()
                if self._abort:
                    self._finish(chunk, None, "shutdown")
                    return outage
                code = e.code if isinstance(e, PushError) else None
                if code in OTHER_RETRYABLE:
                    other_attempts += 1
                if code in FOREVER or (code in OTHER_RETRYABLE and other_attempts < OTHER_ATTEMPTS):
                    delay = self._policy.delay(min(outage, 30), self._rng)
                    outage += 1
                    with self._cv:
                        self._stats.retried += 1
                        pending = len(self._q) + self._inflight
                    (log.warning if outage == 1 else log.debug)(
                        "forwarder: trainer %s: %s; %d records pending, retry %d in %.2fs",
                        self.link.address, code.name if code else e, pending, outage, delay,
                    )
                    with self._cv:
                        if self._cv.wait_for(lambda: self._abort, delay):
                            self._finish_locked(chunk, None, "shutdown")
                            return outage
                    continue
                log.error("forwarder: trainer %s refused %d records for good: %s", self.link.address, len(chunk), e)
                self._finish(chunk, None, "failed")
                return 0
            if outage:
                log.info("forwarder: trainer %s reachable again after %d failed call(s)", self.link.address, outage)
            self._finish(chunk, res, None)
            return 0

    def _finish(self, chunk: list[_Entry], res: PushResult | None, drop_reason: str | None) -> None:
        with self._cv:
            self._finish_locked(chunk, res, drop_reason)

    def _finish_locked(self, chunk: list[_Entry], res: PushResult | None, drop_reason: str | None) -> None:
        self._inflight = 0
        self._bytes -= sum(e.received.nbytes + _RECORD_OVERHEAD for e in chunk)
        if res is None:
            self._stats.dropped[drop_reason or "failed"] += len(chunk)
            return
        for image_id, code, message in res.rejected:
            log.warning("forwarder: trainer rejected %s: %s %s", image_id, code, message)
        self._stats.dropped["rejected"] += len(res.rejected)
        self._stats.forwarded += len(chunk) - len(res.rejected)


def dialable_address(host: str, port: int) -> str:
    """``host:port`` another machine can dial: a wildcard bind (0.0.0.0, ::) becomes this host's name."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{port}"


class _Collector:
    """Reads a forwarder's counters at scrape time."""

    def __init__(self, fwd: RecordForwarder, ns: str) -> None:
        self.fwd, self.ns = fwd, ns

    def collect(self) -> Iterator[Metric]:
        s = self.fwd.stats()
        ns = self.ns
        yield CounterMetricFamily(f"{ns}_forwarded", "score records the trainer acknowledged", value=s.forwarded)
        yield CounterMetricFamily(f"{ns}_forward_retries", "failed pushes to the trainer that were retried",
                                  value=s.retried)
        dropped = CounterMetricFamily(f"{ns}_forward_dropped", "scored items not forwarded, by reason",
                                      labels=["reason"])
        for reason in DROP_REASONS:
            dropped.add_metric([reason], s.dropped[reason])
        yield dropped
        yield GaugeMetricFamily(f"{ns}_forward_pending", "scored items queued or in flight to the trainer",
                                value=s.pending)
