"""Score the deferred slices of a station (``gsal-edge station drain-deferred``).

Runs on the station host (it reads ``DATA_DIR/deferred/``, see :mod:`server.deferred`) and streams the
entries, oldest first, to the running station's ``Score`` RPC with ``no_defer`` set, at most ``window`` in
flight. The station scores them like any slice, so the records equal what the line would have got at once,
and a station with ``--trainer`` forwards them to the trainer as usual. Per answer:

* a record: written to ``out`` (JSON Lines, flushed) and only then the entry deleted;
* ``RESOURCE_EXHAUSTED`` / ``UNAVAILABLE`` (the station is busy again): the entry stays; the next pass
  waits ``backoff_s`` and tries again;
* ``INVALID_ARGUMENT`` (e.g. the station's limits changed): the entry is moved to ``deferred/rejected/``
  and reported, never retried;
* anything else: the entry stays and is reported.

Delivery is at least once: a crash between writing a record and deleting its entry scores that slice
again on the next run (the trainer's ingest is idempotent by station + slice + bundle).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from gsal_wire.convert import record_from_pb
from gsal_wire.pb import common_pb2, scorer_pb2
from gsal_wire.scorer_client import ScorerClient
from server.deferred import DeferredQueue

log = logging.getLogger(__name__)

RETRY_LATER = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED"})


@dataclass
class DrainReport:
    """What one drain did (``left``: entries still queued at the end)."""

    scored: int = 0
    rejected: int = 0
    failed: int = 0
    retried: int = 0
    left: int = 0
    seconds: float = 0.0


def drain_deferred(
    queue: DeferredQueue,
    client: ScorerClient,
    out: TextIO | None = None,
    *,
    window: int = 8,
    max_seconds: float | None = None,
    backoff_s: float = 0.5,
    on_item: Callable[[str, str], None] | None = None,
) -> DrainReport:
    """Drain ``queue`` through ``client``'s station until it is empty or ``max_seconds`` pass (see the
    module docstring). ``on_item(slice_id, outcome)`` is called per answer (progress bars)."""
    rep = DrainReport()
    t0 = time.monotonic()
    rejected_dir = queue.dir / "rejected"
    while True:
        entries = queue.entries()
        if not entries or (max_seconds is not None and time.monotonic() - t0 > max_seconds):
            break
        progressed, busy = _one_pass(queue, client, entries, out, window, rejected_dir, rep, on_item)
        if busy or not progressed:
            rep.retried += 1
            if max_seconds is not None and time.monotonic() - t0 + backoff_s > max_seconds:
                break
            time.sleep(backoff_s)
    rep.left = len(queue.entries())
    rep.seconds = time.monotonic() - t0
    return rep


def _one_pass(
    queue: DeferredQueue, client: ScorerClient, entries: list[Path], out: TextIO | None, window: int,
    rejected_dir: Path, rep: DrainReport, on_item: Callable[[str, str], None] | None,
) -> tuple[bool, bool]:
    """One Score stream over ``entries`` (one per slice id: a stream refuses duplicate ids). Returns
    (anything scored or rejected, anything refused as busy)."""
    sent: list[tuple[Path, common_pb2.Slice]] = []
    ids: set[str] = set()
    for e in entries:
        msg = common_pb2.Slice.FromString(queue.read(e))
        if msg.id not in ids:
            ids.add(msg.id)
            sent.append((e, msg))
    slots = threading.Semaphore(window)
    stop = threading.Event()

    def requests() -> Iterator[scorer_pb2.ScoreRequest]:
        for _, msg in sent:
            while not slots.acquire(timeout=0.1):
                if stop.is_set():
                    return
            yield scorer_pb2.ScoreRequest(slice=msg, no_defer=True)

    progressed = busy = False
    try:
        for (entry, msg), resp in zip(sent, client.stream(requests())):
            slots.release()
            if resp.slice_id != msg.id:
                raise RuntimeError(f"station answered {resp.slice_id!r} for {msg.id!r}; stopping the drain")
            kind = resp.WhichOneof("result")
            if kind == "record":
                if out is not None:
                    out.write(record_from_pb(resp.record).to_json() + "\n")
                    out.flush()
                queue.remove(entry)
                rep.scored += 1
                progressed = True
                outcome = "scored"
            elif kind == "error" and resp.error.code_name in RETRY_LATER:
                busy = True
                outcome = "busy"
            elif kind == "error" and resp.error.code_name == "INVALID_ARGUMENT":
                rejected_dir.mkdir(exist_ok=True)
                entry.replace(rejected_dir / entry.name)
                log.warning("deferred slice %r rejected by the station: %s", msg.id, resp.error.message)
                rep.rejected += 1
                progressed = True
                outcome = "rejected"
            else:
                why = resp.error.message if kind == "error" else f"unexpected answer {kind!r}"
                log.warning("deferred slice %r not scored: %s", msg.id, why)
                rep.failed += 1
                outcome = "failed"
            if on_item is not None:
                on_item(msg.id, outcome)
    finally:
        stop.set()
    return progressed, busy
