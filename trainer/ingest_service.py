"""The Trainer gRPC service: client-streaming ``Ingest`` of score records into the pool store.

The servicer only translates messages (:func:`item_from_pb`) and calls :meth:`PoolStore.ingest`. Items are
committed in batches while the stream is read (bounded memory); the single ``IngestAck`` is returned only
after the last batch has committed, so an acknowledged record is on disk (WAL, ``synchronous=FULL``, see
``trainer.store.schema``). If the trainer dies mid-stream the station gets no ack and re-sends the whole
call; items already committed come back as ``duplicates`` and are not stored twice.

Per-item problems do not fail the call: a malformed item is listed in ``IngestAck.rejected`` with
INVALID_ARGUMENT and the field (the checks are the station's own, :mod:`gsal_wire.validation`; a ``SliceRef``
must also pass the store's reference policy, :mod:`trainer.ref_policy`, and with a graph every record must
fit it, :mod:`trainer.quarantine`: items failing either of these two are also put aside in the quarantine); a record that conflicts with a stored one (same station, slice and
bundle, different content; the first is kept) is listed with ALREADY_EXISTS. Neither is worth retrying.
A store failure (disk full, I/O error) aborts the call with UNAVAILABLE: nothing of it is acknowledged.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
from collections.abc import Iterable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from gsal_edge.acquisition.concept_graph import ConceptGraph
from gsal_edge.acquisition.records import RecordError
from gsal_edge.data.slices import DEFAULT_LIMITS, SliceError
from gsal_edge.errors import GSALError
from gsal_wire import STATION_ID_RE, MiB
from gsal_wire.convert import PB_TO_ENCODING, decode_pb_slice, item_error, record_from_pb
from gsal_wire.pb import TRAINER_SERVICE, trainer_pb2, trainer_pb2_grpc
from gsal_wire.validation import check_record_fields, check_slice_fields
from trainer.images import ImageError, encode_pixels
from trainer.quarantine import Quarantine, graph_problem
from trainer.ref_policy import RefPolicy, RefRefused
from trainer.store.pool_store import PoolStore
from trainer.store.types import IngestItem, StoreError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Trainer server settings."""

    host: str = "127.0.0.1"
    port: int = 0  # 0 picks a free port
    batch_items: int = 128  # commit after this many items ...
    batch_bytes: int = 32 * MiB  # ... or this many image bytes, whichever first
    max_message_bytes: int = 65 * MiB  # one IngestItem (a 64 MiB slice + its record)
    max_workers: int = 8  # concurrent Ingest streams
    grace_s: float = 5.0  # graceful-stop drain time


class ItemInvalid(GSALError, ValueError):
    """One IngestItem cannot be stored; ``field`` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def item_from_pb(msg: trainer_pb2.IngestItem, refs: RefPolicy | None = None) -> IngestItem:
    """Validate and translate one wire item (pure; raises :class:`ItemInvalid`).

    ``refs`` decides which ``SliceRef`` the station may send (default: none; a refusal is
    :class:`trainer.ref_policy.RefRefused`, an :class:`ItemInvalid`-like error with ``field``).
    """
    station = msg.station_id
    if not STATION_ID_RE.match(station or ""):
        raise ItemInvalid("station_id", f"station_id {station[:80]!r} must match {STATION_ID_RE.pattern}")
    if not msg.HasField("record"):
        raise ItemInvalid("record", "missing record")
    try:
        rec = record_from_pb(msg.record)
    except RecordError as e:
        raise ItemInvalid("record", str(e)) from None
    try:
        check_record_fields(rec)
    except SliceError as e:
        raise ItemInvalid(e.field, str(e)) from None
    rec_station = rec.model.get("station")
    if rec_station and rec_station != station:
        raise ItemInvalid("record.model", f"record.model['station']={rec_station!r} differs from station_id")
    which = msg.WhichOneof("pixels")
    if which == "slice":
        sl = msg.slice
        try:
            check_slice_fields(sl, require_id=False)  # the record's image_id is the id checked above
            if sl.id and sl.id != rec.image_id:
                raise SliceError("id", f"slice.id {sl.id!r} differs from record.image_id {rec.image_id!r}")
            arr = decode_pb_slice(sl)
        except SliceError as e:
            raise ItemInvalid(f"slice.{getattr(e, 'field', 'data')}", str(e)) from None
        enc = PB_TO_ENCODING[sl.encoding]
        try:
            data, fmt = (sl.data, enc) if enc in ("png", "tiff") else encode_pixels(arr, f"slice {rec.image_id!r}")
        except ImageError as e:
            raise ItemInvalid("slice.data", str(e)) from None
        h, w = int(arr.shape[0]), int(arr.shape[1])
        return IngestItem(station, rec, image=bytes(data), image_format=fmt, width=w, height=h)
    if which == "ref":
        ref = msg.ref
        shape = list(ref.shape)
        if shape and (len(shape) != 2 or min(shape) <= 0 or max(shape) > DEFAULT_LIMITS.max_side):
            raise ItemInvalid("ref.shape", f"shape {shape[:4]} is not [H, W] within {DEFAULT_LIMITS.max_side}")
        stored = (refs or RefPolicy()).check(station, ref.uri, ref.sha256)  # RefRefused names the field
        h, w = (shape[0], shape[1]) if shape else (None, None)
        return IngestItem(station, rec, image_ref=stored, width=w, height=h)
    raise ItemInvalid("pixels", "neither slice nor ref given")


class TrainerServicer(trainer_pb2_grpc.TrainerServicer):
    """Translates Ingest streams into batched, durable :meth:`PoolStore.ingest` calls.

    ``refs``: the reference policy (default: the store's ``ref_roots.json``, re-read per call, so
    `trainer ref-roots` applies without a restart). ``graph``: records must fit it (None: no check here;
    rounds still skip records that do not fit theirs).
    """

    def __init__(self, store: PoolStore, config: IngestConfig = IngestConfig(), *,
                 refs: RefPolicy | None = None, graph: ConceptGraph | None = None) -> None:
        self.store = store
        self.config = config
        self.refs = refs
        self.graph = graph
        self.quarantine = Quarantine(store.root)
        self._addresses: dict[str, str] = {}  # station -> the Scorer address it last told us (registry)
        self._addr_lock = threading.Lock()

    def Ingest(
        self, request_iterator: Iterable[trainer_pb2.IngestItem], context: grpc.ServicerContext
    ) -> trainer_pb2.IngestAck:
        ack = trainer_pb2.IngestAck()
        batch: list[IngestItem] = []
        nbytes = 0

        def flush() -> None:
            nonlocal batch, nbytes
            if not batch:
                return
            try:
                res = self.store.ingest(batch)
            except (sqlite3.Error, OSError, GSALError) as e:
                log.error("ingest commit failed: %s", e)
                context.abort(grpc.StatusCode.UNAVAILABLE, f"trainer store commit failed: {e}")
                raise  # abort() raises; this line is never reached
            for it, outcome in zip(batch, res.outcomes):
                if outcome == "inserted":
                    ack.committed += 1
                elif outcome == "duplicate":
                    ack.duplicates += 1
                else:
                    ack.rejected.add(
                        image_id=it.record.image_id,
                        error=item_error(
                            grpc.StatusCode.ALREADY_EXISTS, "record",
                            f"({it.station}, {it.record.image_id}, bundle {it.record.model.get('bundle')}) "
                            "is stored with different content; the first record is kept",
                        ),
                    )
            batch, nbytes = [], 0

        told: tuple[str, str] | None = None  # (station, address) the stream's items name
        refs = self._policy()
        aside: list[dict] = []  # quarantine entries of this call, written before the ack
        for msg in request_iterator:
            ack.received += 1
            if msg.station_address and told is None:
                told = (msg.station_id, msg.station_address)
            image_id = msg.record.image_id[:DEFAULT_LIMITS.max_id_length]
            try:
                item = item_from_pb(msg, refs)
                problem = graph_problem(item.record, self.graph) if self.graph is not None else None
                if problem is not None:
                    aside.append({"kind": "graph", "station": item.station, "image_id": image_id,
                                  "field": problem[0], "reason": problem[1], "record": item.record.to_dict()})
                    raise ItemInvalid(*problem)
            except (ItemInvalid, RefRefused) as e:
                if isinstance(e, RefRefused):
                    aside.append({"kind": "ref", "station": msg.station_id, "image_id": image_id,
                                  "field": e.field, "reason": str(e), "uri": msg.ref.uri[:2048]})
                ack.rejected.add(
                    image_id=image_id,
                    error=item_error(grpc.StatusCode.INVALID_ARGUMENT, e.field, str(e)),
                )
                continue
            batch.append(item)
            nbytes += len(item.image or b"")
            if len(batch) >= self.config.batch_items or nbytes >= self.config.batch_bytes:
                flush()
        flush()
        self._put_aside(aside)
        if told is not None and ack.received > len(ack.rejected):
            self._note_address(*told)
        if ack.rejected or ack.duplicates:
            log.info("ingest: %d received, %d committed, %d duplicates, %d rejected",
                     ack.received, ack.committed, ack.duplicates, len(ack.rejected))
        return ack


    def _policy(self) -> RefPolicy:
        if self.refs is not None:
            return self.refs
        try:
            return RefPolicy.load(self.store.root)
        except RefRefused as e:  # a broken policy file refuses every reference, it does not stop ingest
            log.error("ingest: %s; refusing every image reference", e)
            return RefPolicy()

    def _put_aside(self, entries: list[dict]) -> None:
        if not entries:
            return
        try:
            self.quarantine.add(entries)
        except OSError as e:  # the items are rejected either way; the copy aside is for the operator
            log.error("ingest: could not write %d quarantine entries to %s: %s", len(entries),
                      self.quarantine.path, e)
            return
        log.warning("ingest: %d item(s) put aside in %s (%s)", len(entries), self.quarantine.path,
                    ", ".join(sorted({f"{e['kind']}:{e['field']}" for e in entries})))

    def _note_address(self, station: str, address: str) -> None:
        """Keep the station registry's address as the station tells it (one write per change)."""
        with self._addr_lock:
            if self._addresses.get(station) == address:
                return
            if not ADDRESS_RE.match(address):
                log.warning("ingest: station %s told an unusable address %r; ignored", station, address)
                return
            try:
                self.store.register_station(station, address)
            except (StoreError, sqlite3.Error, OSError) as e:  # the records are stored; the address can wait
                log.warning("ingest: could not record station %s at %s: %s", station, address, e)
                return
            self._addresses[station] = address
        log.info("station %s reachable at %s (told in Ingest)", station, address)


ADDRESS_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):\d{1,5}$")


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    store: PoolStore

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float | None = 5.0) -> None:
        self.server.stop(grace).wait()


def start_server(
    store: PoolStore,
    config: IngestConfig = IngestConfig(),
    *,
    credentials: grpc.ServerCredentials | None = None,
    refs: RefPolicy | None = None,
    graph: ConceptGraph | None = None,
) -> RunningServer:
    """Start the Trainer service (+ health + reflection); plaintext when ``credentials`` is None.

    ``refs`` / ``graph``: see :class:`TrainerServicer`."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=config.max_workers, thread_name_prefix="ingest"),
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", 4 * MiB),
        ],
    )
    trainer_pb2_grpc.add_TrainerServicer_to_server(TrainerServicer(store, config, refs=refs, graph=graph), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    reflection.enable_server_reflection(
        (TRAINER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind = f"{config.host}:{config.port}"
    port = server.add_secure_port(bind, credentials) if credentials else server.add_insecure_port(bind)
    if port == 0:
        raise OSError(f"cannot bind {bind}")
    server.start()
    for name in ("", TRAINER_SERVICE):
        hs.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, port, store)


def serve_forever(
    store_dir: str | Path,  # a --store value: directory or URL (trainer.store.location)
    config: IngestConfig = IngestConfig(),
    *,
    credentials: grpc.ServerCredentials | None = None,
    port_file: str | Path | None = None,
    stop_event: threading.Event | None = None,
    graph: ConceptGraph | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop_event``); writes the bound port to ``port_file`` if given.

    ``graph``: every ingested record must fit it (else rejected and quarantined); None = no check.
    """
    import signal

    from trainer.images import atomic_write
    from trainer.store import open_store

    store = open_store(store_dir)
    running = start_server(store, config, credentials=credentials, graph=graph)
    log.info("trainer listening on %s:%d, store %s", config.host, running.port, store.status()["store"])
    if port_file:
        atomic_write(Path(port_file), f"{running.port}\n".encode())
    stop = stop_event or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        running.stop(config.grace_s)
        store.close()
