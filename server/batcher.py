"""Dynamic batching across concurrent requests (the idea of Triton's dynamic batcher).

Every request thread ``submit``s single slices and gets a :class:`concurrent.futures.Future`. One
worker thread forms batches: it takes the oldest item and waits at most ``max_queue_delay_s`` (from
that item's arrival) for up to ``max_batch_size`` items, then calls ``scorer.score`` once. The queue is
bounded (``queue_size``): a full queue refuses at once with :class:`QueueFullError`. Items whose
deadline passed, or whose caller cancelled, are dropped before scoring.

Hot swap: each item is bound to the scorer that was current when it was *submitted*
(:class:`ScorerSlot`); a batch never mixes scorers, so work accepted before a swap finishes on the
old scorer and the old scorer is released when its last item is done. Only the worker thread ever
calls ``score``, which is what ``GSALScorer`` requires (not thread-safe).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import numpy as np

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError

log = logging.getLogger(__name__)


class BatchScorer(Protocol):
    """What the batcher needs of a scorer (``gsal_edge.scoring.scorer.GSALScorer`` fits)."""

    bundle_id: str

    def score(
        self, slices: list[np.ndarray], image_ids: list[str], metas: list[dict[str, str]] | None = None
    ) -> list[ScoreRecord]: ...


S = TypeVar("S", bound=BatchScorer)


class BatcherError(GSALError, RuntimeError):
    """Base of the batcher's refusals; ``code`` is the gRPC status name the server answers with."""

    code = "INTERNAL"


class QueueFullError(BatcherError):
    """The bounded queue is full; the caller should back off and retry."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExpiredError(BatcherError):
    """The item's deadline passed before it could be scored; it was not scored."""

    code = "DEADLINE_EXCEEDED"


class NoScorerError(BatcherError):
    """No bundle is loaded yet."""

    code = "UNAVAILABLE"


class BatcherClosedError(BatcherError):
    """The server is shutting down and takes no new work."""

    code = "UNAVAILABLE"


class ScoringFailedError(BatcherError):
    """The scorer raised for this item. The message is generic plus an error id; the engine's own text
    and the traceback are logged on the station under that id, never sent to the client."""

    code = "INTERNAL"


def new_error_id() -> str:
    """A short random id that ties a generic client-facing error to its logged traceback."""
    return secrets.token_hex(6)


def _scoring_failed(image_ids: Sequence[str], e: BaseException) -> ScoringFailedError:
    eid = new_error_id()
    log.error("scoring failed [error id %s] for %s", eid, ", ".join(map(repr, image_ids)), exc_info=e)
    return ScoringFailedError(f"scoring failed (error id {eid}; the station log has the details)")


class ScorerSlot(Generic[S]):
    """The scorer currently serving; :meth:`swap` replaces it atomically."""

    def __init__(self, scorer: S | None = None) -> None:
        self._lock = threading.Lock()
        self._scorer = scorer

    def get(self) -> S | None:
        with self._lock:
            return self._scorer

    def swap(self, new: S) -> S | None:
        """Make ``new`` current; returns the previous scorer (still used by its queued items)."""
        with self._lock:
            old, self._scorer = self._scorer, new
        return old


@dataclass
class _Item:
    array: np.ndarray
    image_id: str
    meta: dict[str, str]
    scorer: BatchScorer
    enqueued: float
    deadline: float | None
    future: Future = field(default_factory=Future)


@dataclass(frozen=True)
class BatchStats:
    """One executed batch, for metrics."""

    size: int
    seconds: float
    bundle_id: str
    failed: bool


class DynamicBatcher:
    """Bounded queue + one worker thread that scores items in batches (see module docstring)."""

    def __init__(
        self,
        slot: ScorerSlot,
        max_batch_size: int = 8,
        max_queue_delay_s: float = 0.005,
        queue_size: int = 256,
        on_batch: Callable[[BatchStats], None] | None = None,
        on_drop: Callable[[str], None] | None = None,
        name: str = "gsal-batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue_delay_s < 0:
            raise ValueError(f"max_queue_delay_s must be >= 0, got {max_queue_delay_s}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        self.slot = slot
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_s
        self.queue_size = queue_size
        self._on_batch = on_batch
        self._on_drop = on_drop
        self._q: deque[_Item] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self._busy = 0  # items taken from the queue and not yet resolved
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # ---- request side -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Items waiting in the queue (not counting the batch being scored)."""
        return len(self._q)

    @property
    def in_flight(self) -> int:
        """Items queued or being scored."""
        with self._cv:
            return len(self._q) + self._busy

    def submit(
        self,
        array: np.ndarray,
        image_id: str,
        meta: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> Future[ScoreRecord]:
        """Queue one slice; ``deadline`` is a ``time.monotonic()`` instant. Raises a :class:`BatcherError`."""
        scorer = self.slot.get()
        if scorer is None:
            raise NoScorerError("no bundle loaded yet")
        now = time.monotonic()
        if deadline is not None and deadline <= now:
            raise DeadlineExpiredError(f"slice {image_id!r}: deadline already passed on arrival")
        item = _Item(array, image_id, dict(meta or {}), scorer, now, deadline)
        with self._cv:
            if self._closed:
                raise BatcherClosedError("server is shutting down")
            if len(self._q) >= self.queue_size:
                raise QueueFullError(f"scoring queue is full ({self.queue_size} items); retry later")
            self._q.append(item)
            self._cv.notify()
        return item.future

    def close(self, drain: bool = True, timeout: float | None = None) -> bool:
        """Stop taking work; with ``drain`` score what is queued, else fail it. True when the worker ended."""
        with self._cv:
            self._closed = True
            if not drain:
                while self._q:
                    it = self._q.popleft()
                    if it.future.set_running_or_notify_cancel():
                        it.future.set_exception(BatcherClosedError("server shut down before scoring"))
            self._cv.notify_all()
        self._worker.join(timeout)
        return not self._worker.is_alive()

    # ---- worker side --------------------------------------------------------------------------
    def _take_batch(self) -> list[_Item] | None:
        with self._cv:
            while not self._q:
                if self._closed:
                    return None
                self._cv.wait()
            first = self._q[0]
            until = first.enqueued + self.max_queue_delay_s
            while len(self._q) < self.max_batch_size and not self._closed:
                left = until - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch: list[_Item] = []
            while self._q and len(batch) < self.max_batch_size and self._q[0].scorer is first.scorer:
                batch.append(self._q.popleft())
            self._busy = len(batch)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            try:
                self._execute(batch)
            except Exception as e:  # noqa: BLE001 - never let the worker die; _execute resolves futures itself
                err = _scoring_failed([it.image_id for it in batch], e)
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(err)
            finally:
                with self._cv:
                    self._busy = 0

    def _execute(self, batch: list[_Item]) -> None:
        now = time.monotonic()
        live: list[_Item] = []
        for it in batch:
            if not it.future.set_running_or_notify_cancel():
                self._drop("cancelled")
            elif it.deadline is not None and it.deadline <= now:
                it.future.set_exception(DeadlineExpiredError(f"slice {it.image_id!r}: deadline passed while queued"))
                self._drop("deadline")
            else:
                live.append(it)
        if not live:
            return
        scorer = live[0].scorer
        t0 = time.perf_counter()
        failed = False
        try:
            records = self._score(scorer, live)
        except Exception as e:  # noqa: BLE001 - any scorer failure becomes a per-item error
            failed = True
            if len(live) == 1:
                live[0].future.set_exception(_scoring_failed([live[0].image_id], e))
            else:  # isolate the culprit: score one by one so good items still succeed
                log.warning("batch of %d failed (%s); retrying items one by one", len(live), type(e).__name__)
                for it in live:
                    try:
                        it.future.set_result(self._score(scorer, [it])[0])
                    except Exception as e1:  # noqa: BLE001 - per-item error, others go on
                        it.future.set_exception(_scoring_failed([it.image_id], e1))
        else:
            for it, rec in zip(live, records):
                it.future.set_result(rec)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(live), time.perf_counter() - t0, str(scorer.bundle_id), failed))

    @staticmethod
    def _score(scorer: BatchScorer, items: Sequence[_Item]) -> list[ScoreRecord]:
        records = scorer.score([it.array for it in items], [it.image_id for it in items], [it.meta for it in items])
        if len(records) != len(items):
            raise RuntimeError(f"scorer returned {len(records)} records for {len(items)} slices")
        for it, rec in zip(items, records):
            if rec.image_id != it.image_id:
                raise RuntimeError(f"scorer returned record {rec.image_id!r} for slice {it.image_id!r}")
        return records

    def _drop(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)
