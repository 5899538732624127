"""Station-side push client for the trainer's ``Ingest`` RPC, with retry and exponential backoff.

Used by the station (``server.forwarder``) and importing no trainer internals: it needs only ``gsal_edge``,
the generated ``gsal_proto`` code and ``gsal_wire`` (``channel``, ``convert``, ``pb``).

Records are sent in chunks (one ``Ingest`` call each). A chunk counts as delivered only when its ack
arrives; on a retryable failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL,
UNKNOWN) the *whole chunk* is re-sent after a backoff delay ``min(max_delay, base * factor**attempt)``
with full jitter. The trainer is idempotent by (station, slice id, bundle), so a re-sent chunk whose
first attempt had in fact committed comes back as duplicates, never as double records.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from gsal_wire.channel import ChannelClient, open_channel
from gsal_wire.convert import DTYPE_TO_PB, ENCODING_TO_PB, make_pb_slice, record_to_pb
from gsal_wire.pb import common_pb2, trainer_pb2, trainer_pb2_grpc

log = logging.getLogger(__name__)

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; gives up after ``max_attempts`` or ``max_elapsed_s``."""

    max_attempts: int = 10
    base_delay_s: float = 0.2
    factor: float = 2.0
    max_delay_s: float = 10.0
    max_elapsed_s: float = 300.0
    jitter: bool = True

    def delay(self, attempt: int, rng: random.Random) -> float:
        d = min(self.max_delay_s, self.base_delay_s * self.factor**attempt)
        return rng.uniform(0.0, d) if self.jitter else d


@dataclass
class PushItem:
    """One record plus its pixels (array, or already-encoded bytes) or a reference to them."""

    record: ScoreRecord
    pixels: np.ndarray | None = None
    data: bytes | None = None  # encoded slice bytes ("png" / "tiff" / "raw") ...
    encoding: str = "raw"  # ... in this encoding
    shape: tuple[int, int] | None = None  # for raw ``data``
    dtype: str | None = None  # for raw ``data``
    ref: str | None = None  # URI of the stored slice instead of pixels
    ref_sha256: str = ""


@dataclass
class PushResult:
    sent: int = 0
    committed: int = 0
    duplicates: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (image_id, code name, message)
    retries: int = 0
    acked_ids: list[str] = field(default_factory=list)  # image ids in acknowledged chunks


class PushError(GSALError, RuntimeError):
    """A chunk could not be delivered (non-retryable error, or retries exhausted); ``code`` is the last gRPC code."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


def item_to_pb(station_id: str, item: PushItem, station_address: str = "") -> trainer_pb2.IngestItem:
    """A :class:`PushItem` as a wire ``IngestItem`` (``station_address``: where the trainer reaches this
    station's Scorer, "" = not told)."""
    msg = trainer_pb2.IngestItem(station_id=station_id, record=record_to_pb(item.record),
                                 station_address=station_address)
    if item.ref is not None:
        ref = common_pb2.SliceRef(uri=item.ref, sha256=item.ref_sha256)
        if item.shape:
            ref.shape.extend(int(v) for v in item.shape)
        if item.dtype:
            ref.dtype = DTYPE_TO_PB[item.dtype]
        if item.encoding in ENCODING_TO_PB:
            ref.encoding = ENCODING_TO_PB[item.encoding]
        msg.ref.CopyFrom(ref)
    elif item.pixels is not None:
        msg.slice.CopyFrom(make_pb_slice(item.record.image_id, item.pixels, encoding=item.encoding))
    elif item.data is not None:
        msg.slice.CopyFrom(
            make_pb_slice(item.record.image_id, data=item.data, encoding=item.encoding, shape=item.shape,
                          dtype=item.dtype)
        )
    else:
        raise ValueError(f"push item {item.record.image_id!r}: give pixels, data or ref")
    return msg


class TrainerPushClient(ChannelClient):
    """Pushes a station's score records to the trainer (TLS by default; plaintext with ``insecure``)."""

    def __init__(
        self,
        address: str,
        station_id: str,
        *,
        insecure: bool = False,
        ca: str | Path | None = None,
        client_cert: str | Path | None = None,
        client_key: str | Path | None = None,
        server_name: str | None = None,
        retry: RetryPolicy = RetryPolicy(),
        chunk_size: int = 64,
        call_timeout_s: float = 120.0,
        max_message_bytes: int = 65 * 1024 * 1024,
        seed: int | None = None,
        reconnect_backoff_s: tuple[float, float] = (0.2, 5.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        opts: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            # reconnect soon after a trainer restart (gRPC's own default backoff starts at 1 s, grows to 120 s)
            ("grpc.initial_reconnect_backoff_ms", int(reconnect_backoff_s[0] * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(reconnect_backoff_s[0] * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(reconnect_backoff_s[1] * 1000)),
        ]
        self.channel = open_channel(address, opts, insecure=insecure, ca=ca, client_cert=client_cert,
                                    client_key=client_key, server_name=server_name)
        self.stub = trainer_pb2_grpc.TrainerStub(self.channel)
        self.station_id = station_id
        self.station_address = ""  # host:port of this station's Scorer, told to the trainer (set once bound)
        self.retry = retry
        self.chunk_size = chunk_size
        self.call_timeout_s = call_timeout_s
        self._rng = random.Random(seed)
        self._sleep = sleep

    def push(self, items: Iterable[PushItem]) -> PushResult:
        """Deliver every item (chunk by chunk); raises :class:`PushError` if a chunk cannot be delivered."""
        result = PushResult()
        for chunk in _chunks(items, self.chunk_size):
            self._push_chunk(chunk, result)
        return result

    def push_records(
        self, records: Sequence[ScoreRecord], slices: Mapping[str, np.ndarray] | None = None,
        refs: Mapping[str, str] | None = None,
    ) -> PushResult:
        """Convenience: records with their pixel arrays (by image id) or references."""
        items = []
        for r in records:
            if slices is not None and r.image_id in slices:
                items.append(PushItem(r, pixels=slices[r.image_id]))
            elif refs is not None and r.image_id in refs:
                items.append(PushItem(r, ref=refs[r.image_id]))
            else:
                raise ValueError(f"record {r.image_id!r}: no slice pixels or reference to push")
        return self.push(items)

    def _push_chunk(self, chunk: list[PushItem], result: PushResult) -> None:
        msgs = [item_to_pb(self.station_id, it, self.station_address) for it in chunk]
        start = time.monotonic()
        attempt = 0
        while True:
            try:
                ack = self.stub.Ingest(iter(msgs), timeout=self.call_timeout_s)
                break
            except grpc.RpcError as e:
                code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
                attempt += 1
                elapsed = time.monotonic() - start
                if code not in RETRYABLE or attempt >= self.retry.max_attempts or elapsed > self.retry.max_elapsed_s:
                    raise PushError(
                        f"push of {len(chunk)} records from {self.station_id} failed after {attempt} attempt(s) "
                        f"({elapsed:.1f}s): {code.name} {e.details() if hasattr(e, 'details') else e}",
                        code,
                    ) from e
                delay = self.retry.delay(attempt - 1, self._rng)
                log.warning("push: %s, retry %d in %.2fs", code.name, attempt, delay)
                result.retries += 1
                self._sleep(delay)
        result.sent += len(chunk)
        result.committed += ack.committed
        result.duplicates += ack.duplicates
        for rej in ack.rejected:
            result.rejected.append((rej.image_id, rej.error.code_name, rej.error.message))
        result.acked_ids.extend(it.record.image_id for it in chunk)


def _chunks(items: Iterable[PushItem], n: int) -> Iterator[list[PushItem]]:
    buf: list[PushItem] = []
    for it in items:
        buf.append(it)
        if len(buf) >= n:
            yield buf
            buf = []
    if buf:
        yield buf
