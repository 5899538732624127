"""Forward the station's scored items (score record + the slice as received) to the trainer.

The station calls :meth:`RecordForwarder.offer` once per *successfully* scored item (from the batcher's
worker thread; it only appends to a queue) and answers the client from ``offer``'s ``done`` callback, i.e.
only once the item is kept: with a spool (:mod:`server.forward_spool`, on by default when the station has a
data dir) that is once a spool-writer thread committed it to disk, a group of items per commit. One
background thread sends the queue to the trainer's
``Ingest`` RPC with :class:`gsal_wire.trainer_client.TrainerPushClient`, in chunks of ``chunk_size``
records, or fewer once the oldest queued record has waited ``max_delay_ms``. A chunk counts as
forwarded only when the trainer acknowledged it (the trainer is idempotent by station + slice + bundle,
so a re-sent chunk cannot create double records).

While the trainer is down (UNAVAILABLE) or slow (DEADLINE_EXCEEDED) the same chunk is retried forever with
exponential backoff and full jitter (``retry_base_s`` .. ``retry_max_s``), and new items wait in the queue.
Other retryable codes (RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNKNOWN) are retried ``OTHER_ATTEMPTS`` times,
then the chunk is dropped; non-retryable codes (e.g. UNAUTHENTICATED, PERMISSION_DENIED) drop it at once.

With a spool, an item is deleted from it only after the trainer acknowledged (or refused for good) its
chunk; at start the forwarder replays what an earlier run left there (re-sends are safe: ingest is
idempotent), logs how many it replayed and how many rows were unreadable, and counts them
(``<ns>_forward_replayed_total``, ``dropped{reason="unreadable"}``).

Limits (what can be lost):
  * At most ``queue_size`` records and ``queue_bytes`` slice bytes are held (being spooled + queued + the
    chunk in flight; the spool holds the same items, so it is bounded alike). When it is full, new items are
    dropped (logged, counted as ``dropped{reason="queue_full"}``); so a trainer outage longer than
    ``queue_size`` items of traffic loses the newest items.
  * With the spool (default when the station has a data dir): a SIGKILL or crash loses no acknowledged item
    (tests/server/test_station_faults.py: "acknowledged records lost: 0"); with ``spool_sync="normal"`` a
    power loss may lose the last commits (``"full"``: fsync per commit). A spool write that fails (disk full)
    keeps the item in memory only and counts ``<ns>_forward_spool_errors_total``; a spool row that cannot be
    read back at start is dropped and counted (``dropped{reason="unreadable"}``).
  * Without a spool (no data dir, or ``spool=False``) the queue is in memory only: a station crash or kill
    loses every unacknowledged item.
  * :meth:`close` (graceful stop) keeps pushing for at most its ``timeout``; what is still unacknowledged
    then stays in the spool for the next start, or, without one, is counted as ``dropped{reason="shutdown"}``.
  * Items the trainer refuses one by one (``IngestAck.rejected``) are counted as ``dropped{reason="rejected"}``.
"""

from __future__ import annotations

import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import grpc
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.convert import PB_TO_DTYPE, PB_TO_ENCODING
from gsal_wire.pb import common_pb2
from gsal_wire.trainer_client import PushError, PushItem, PushResult, RetryPolicy, TrainerPushClient
from server.config import TrainerLink
from server.forward_spool import ForwardSpool, SpooledItem

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "too_large", "rejected", "failed", "shutdown", "closed", "unreadable")
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
    pending: int = 0  # records being spooled, queued or in flight
    replayed: int = 0  # records read back from the spool at start (sent again)
    spool_errors: int = 0  # spool writes that failed (the items were kept in memory only)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@dataclass
class _Entry:
    record: ScoreRecord
    received: ReceivedSlice
    t: float  # time.monotonic() when queued
    seq: int | None = None  # row in the spool (None: in memory only)

    @property
    def size(self) -> int:
        return self.received.nbytes + _RECORD_OVERHEAD

    def to_spooled(self) -> SpooledItem:
        r = self.received
        return SpooledItem(self.record, r.data, r.encoding, r.shape, r.dtype)

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
        spool_dir: str | Path | None = None,
    ) -> None:
        """``spool_dir``: keep the queue on disk there (see :mod:`server.forward_spool`); None: memory only."""
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
        self._bytes = 0  # payload bytes of spooling + queued + in-flight items
        self._inflight = 0
        self._writes: list[tuple[_Entry, Callable[[bool], None] | None]] = []  # waiting for the spool writer
        self._writing = 0  # items the spool writer is committing now
        self._stats = ForwarderStats()
        self._kept_in_spool = 0  # in-flight items left in the spool at an aborted close
        self._cv = threading.Condition()
        self._closing = False  # no new items; flush what is queued
        self._abort = False  # flush time is up: stop retrying, stop sending
        self._last_drop_log = -_DROP_LOG_EVERY_S
        self.spool = ForwardSpool(spool_dir, link.spool_sync) if spool_dir is not None else None
        if self.spool is not None:
            self._replay(self.spool)
        else:
            log.info("forwarder: queue to %s in memory only (no spool): a station crash loses unsent records",
                     link.address)
        self._spooler: threading.Thread | None = None
        if self.spool is not None:
            self._spooler = threading.Thread(target=self._spool_loop, name=f"{name}-spool", daemon=True)
            self._spooler.start()
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    def _replay(self, spool: ForwardSpool) -> None:
        """Queue what an earlier run left in the spool; log and count it (and what was unreadable)."""
        got = spool.load()
        now = time.monotonic()
        for seq, it in got.items:
            e = _Entry(it.record, ReceivedSlice(it.data, it.encoding, it.shape, it.dtype), now, seq)
            self._q.append(e)
            self._bytes += e.size
        self._stats.replayed = len(got.items)
        self._stats.dropped["unreadable"] = got.unreadable
        if got.items:
            log.warning("forwarder: replaying %d spooled records from %s to %s (left unacknowledged by an earlier "
                        "run)", len(got.items), spool.path, self.link.address)
        if got.unreadable:
            log.error("forwarder: %d spooled records in %s were unreadable and are dropped (lost)", got.unreadable,
                      spool.path)
        if got.moved_aside is not None:
            log.error("forwarder: spool database %s was unreadable (moved to %s); the records in it are dropped "
                      "(lost, count unknown)", spool.path, got.moved_aside)
        if not (got.items or got.unreadable or got.moved_aside):
            log.info("forwarder: spool %s is empty (nothing left by an earlier run)", spool.path)

    # ---- producer side (batcher worker thread) -----------------------------------------------
    def offer(self, record: ScoreRecord, received: ReceivedSlice,
              done: Callable[[bool], None] | None = None) -> bool:
        """Queue one scored item; never blocks. False (counted as dropped) when it cannot be kept.

        ``done(kept)`` is called once the item is kept (with a spool: committed to disk, on the spool
        writer thread; else at once) or dropped; the station answers the client from it."""
        entry = _Entry(record, received, time.monotonic())
        with self._cv:
            if self._closing:
                kept = self._drop_locked("closed", record.image_id)
            elif entry.size > self.max_message_bytes:
                kept = self._drop_locked("too_large", record.image_id)
            elif self._held_locked() >= self.link.queue_size or self._bytes + entry.size > self.link.queue_bytes:
                kept = self._drop_locked("queue_full", record.image_id)
            else:
                kept = True
                self._bytes += entry.size
                if self.spool is not None:
                    self._writes.append((entry, done))
                    self._cv.notify_all()
                    return True
                self._q.append(entry)
                self._cv.notify_all()
        if done is not None:
            done(kept)
        return kept

    def _held_locked(self) -> int:
        return len(self._q) + self._inflight + len(self._writes) + self._writing

    def _spool_loop(self) -> None:
        """Commit offered items to the spool, a group per transaction, then queue them and call ``done``."""
        assert self.spool is not None
        while True:
            with self._cv:
                while not self._writes and not self._closing:
                    self._cv.wait()
                if not self._writes:
                    return
                group, self._writes = self._writes, []
                self._writing = len(group)
            try:
                seqs: list[int | None] = list(self.spool.add([e.to_spooled() for e, _ in group]))
            except Exception as err:  # noqa: BLE001 - disk full, I/O error: keep the items in memory
                seqs = [None] * len(group)
                with self._cv:
                    self._stats.spool_errors += 1
                log.error("forwarder: could not spool %d records to %s (%s: %s); kept in memory only", len(group),
                          self.spool.path, type(err).__name__, err)
            with self._cv:
                for (e, _), seq in zip(group, seqs):
                    e.seq = seq
                    self._q.append(e)
                self._writing = 0
                self._cv.notify_all()
            for _, done in group:
                if done is not None:
                    done(True)

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
            return ForwarderStats(s.forwarded, s.retried, dict(s.dropped), self._held_locked(), s.replayed,
                                  s.spool_errors)

    @property
    def pending(self) -> int:
        """Records being spooled, queued or in flight."""
        with self._cv:
            return self._held_locked()

    def register_metrics(self, registry: CollectorRegistry, namespace: str = "gsal_scorer") -> None:
        """Export the counters on ``registry`` (``<ns>_forwarded_total``, ``<ns>_forward_retries_total``,
        ``<ns>_forward_dropped_total{reason}``, ``<ns>_forward_pending``, ``<ns>_forward_replayed_total``,
        ``<ns>_forward_spool_errors_total``)."""
        registry.register(_Collector(self, namespace))

    # ---- shutdown -----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> bool:
        """Stop taking items and push what is queued for at most ``timeout`` seconds; True when all was
        acknowledged. What is left then stays in the spool for the next start, or, without a spool, is
        counted as dropped (``shutdown``)."""
        deadline = time.monotonic() + max(timeout, 0.0)
        with self._cv:
            self._closing = True
            self._cv.notify_all()
        if self._spooler is not None:
            self._spooler.join()  # the last group's commit (bounded by one disk write)
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
            kept = sum(e.seq is not None for e in self._q) + self._kept_in_spool
            self._q.clear()
            self._stats.dropped["shutdown"] += left - (kept - self._kept_in_spool)
            unsent = self._stats.dropped["shutdown"] + self._inflight + kept
            forwarded = self._stats.forwarded
        if self.spool is not None:
            self.spool.close()
        if unsent == 0 and not self._worker.is_alive():
            log.info("forwarder: flushed; %d records forwarded to %s in all", forwarded, self.link.address)
            return True
        log.warning("forwarder: stopped with %d records unsent to %s (flush time %.1fs); %d kept in the spool for "
                    "the next start, %d dropped", unsent, self.link.address, timeout, kept,
                    self._stats.dropped["shutdown"])
        return False

    # ---- worker -------------------------------------------------------------------------------
    def _next_chunk(self) -> list[_Entry] | None:
        delay = self.link.max_delay_ms / 1000.0
        with self._cv:
            while True:
                if self._abort:
                    return None
                if not self._q:
                    if self._closing and not self._writes and not self._writing:
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
        if self.spool is not None and not (res is None and drop_reason == "shutdown"):
            try:  # delivered, refused or given up: off the spool (a failure only means a harmless re-send)
                self.spool.remove([e.seq for e in chunk if e.seq is not None])
            except Exception as err:  # noqa: BLE001
                log.warning("forwarder: could not remove %d sent records from the spool (%s); they will be sent "
                            "again at the next start (the trainer stores them once)", len(chunk), err)

    def _finish_locked(self, chunk: list[_Entry], res: PushResult | None, drop_reason: str | None) -> None:
        self._inflight = 0
        self._bytes -= sum(e.size for e in chunk)
        if res is None:
            if drop_reason == "shutdown" and self.spool is not None:  # stays in the spool for the next start
                spooled = sum(e.seq is not None for e in chunk)
                self._kept_in_spool += spooled
                self._stats.dropped["shutdown"] += len(chunk) - spooled
                return
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
        yield CounterMetricFamily(f"{ns}_forward_replayed", "spooled items an earlier run left unsent, sent again "
                                  "at start", value=s.replayed)
        yield CounterMetricFamily(f"{ns}_forward_spool_errors", "spool writes that failed (items kept in memory "
                                  "only)", value=s.spool_errors)
