"""``--overflow defer`` (issue 18, deliverable 3): past the queue limit a station acknowledges a slice as
``deferred``, keeps it in a durable on-disk queue that survives a restart, and ``drain-deferred`` scores it
later with the record it would have got at once."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_server import Instrumented, assert_records_close, expected, offline, slices, start, untrained
from typer.testing import CliRunner

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.scorer_client import ItemDeferred, ItemFailed, ScorerClient
from server.deferred import DeferredQueue
from server.drain import drain_deferred

STATION = "st-defer"
__all__ = ["offline"]  # a shared fixture


def _stream_while_held(srv: Any, scorer: Instrumented, items: list[Any], wait_deferred: int = 0) -> list[Any]:
    """Stream ``items`` while the scorer is held at its gate; open it once ``wait_deferred`` slices are on disk."""
    out: list[Any] = []
    scorer.gate.clear()
    with ScorerClient(srv.address, insecure=True) as c:
        t = threading.Thread(target=lambda: out.extend(c.score(items, timeout=60)))
        t.start()
        assert scorer.entered.wait(30)
        t0 = time.monotonic()
        while srv.station.deferred is not None and len(srv.station.deferred) < wait_deferred:
            assert time.monotonic() - t0 < 30, "the station stopped reading the stream"
            time.sleep(0.05)
        time.sleep(0.2)
        scorer.gate.set()
        t.join(60)
    return out


def test_overflow_defer_stores_acknowledges_and_drains_after_restart(tmp_path: Path, rng: np.random.Generator,
                                                                      offline: Any) -> None:
    items = slices(rng, 12)
    scorer = Instrumented(untrained(0))
    cfg: dict[str, Any] = {"station_id": STATION, "max_batch_size": 1, "max_queue_delay_ms": 0.0, "queue_size": 2,
                           "overflow": "defer", "data_dir": tmp_path}
    srv = start(scorer, **cfg)
    try:
        out = _stream_while_held(srv, scorer, items, wait_deferred=9)
    finally:
        srv.stop(0)
    assert len(out) == len(items)
    deferred = [r.slice_id for r in out if isinstance(r, ItemDeferred)]
    scored = [r.image_id for r in out if isinstance(r, ScoreRecord)]
    assert not [r for r in out if isinstance(r, ItemFailed)]  # nothing refused
    assert len(scored) >= 2 and len(deferred) >= 9 and len(scored) + len(deferred) == 12
    first = next(r for r in out if isinstance(r, ItemDeferred))
    assert "queue is full" in first.reason and first.queued >= 1
    assert len(list((tmp_path / "deferred").glob("*.slice"))) == len(deferred)
    assert 'gsal_scorer_deferred_total' in srv.metrics.text()

    srv2 = start(untrained(0), **cfg)  # a restart: the queue is still there
    try:
        assert srv2.station.deferred is not None and len(srv2.station.deferred) == len(deferred)
        lines: list[str] = []

        class Sink:
            def write(self, s: str) -> None:
                lines.append(s)

            def flush(self) -> None:
                pass

        with ScorerClient(srv2.address, insecure=True) as c:
            rep = drain_deferred(srv2.station.deferred, c, Sink(), window=4)  # type: ignore[arg-type]
    finally:
        srv2.stop(0)
    assert (rep.scored, rep.rejected, rep.failed, rep.left) == (len(deferred), 0, 0, 0)
    got = [ScoreRecord.from_dict(json.loads(line)) for line in lines]
    assert sorted(r.image_id for r in got) == sorted(deferred)  # each once (busy ones come in a later pass)
    by_id = {i: (i, a, m) for i, a, m in items}
    got_by_id = {r.image_id: r for r in got}
    for want in expected(offline, [by_id[i] for i in deferred], STATION):
        assert_records_close(got_by_id[want.image_id], want, atol=1e-5)
    assert not list((tmp_path / "deferred").glob("*.slice"))


def test_a_full_stream_defers_instead_of_blocking_the_line(tmp_path: Path, rng: np.random.Generator) -> None:
    """With a big scoring queue but max_inflight_per_stream=2, the station keeps reading a held stream."""
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0, max_inflight_per_stream=2, overflow="defer",
                data_dir=tmp_path)
    try:
        out = _stream_while_held(srv, scorer, slices(rng, 20), wait_deferred=8)  # 8 outstanding, 16 answers queued
    finally:
        srv.stop(0)
    kinds = [type(r).__name__ for r in out]
    assert kinds.count("ItemDeferred") >= 8 and "ItemFailed" not in kinds, kinds
    assert "outstanding on this stream" in next(r.reason for r in out if isinstance(r, ItemDeferred))


def test_deferred_queue_limit_refuses_with_resource_exhausted(tmp_path: Path, rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0, queue_size=1, overflow="defer",
                data_dir=tmp_path, deferred_max_items=3)
    try:
        out = _stream_while_held(srv, scorer, slices(rng, 8), wait_deferred=3)
    finally:
        srv.stop(0)
    assert sum(isinstance(r, ItemDeferred) for r in out) == 3
    refused = [r for r in out if isinstance(r, ItemFailed)]
    assert refused and all(r.code_name == "RESOURCE_EXHAUSTED" and "deferred queue is full" in r.message
                           for r in refused)


def test_reject_stays_the_default(rng: np.random.Generator) -> None:
    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0, queue_size=1)
    try:
        out = _stream_while_held(srv, scorer, slices(rng, 6))
    finally:
        srv.stop(0)
    assert not any(isinstance(r, ItemDeferred) for r in out)
    assert any(isinstance(r, ItemFailed) and r.code_name == "RESOURCE_EXHAUSTED" for r in out)


def test_defer_needs_a_data_dir() -> None:
    from pydantic import ValidationError

    from server.config import ServerConfig

    with pytest.raises(ValidationError, match="data_dir"):
        ServerConfig(insecure=True, overflow="defer")


def test_queue_writes_are_atomic_and_half_written_entries_are_dropped(tmp_path: Path) -> None:
    q = DeferredQueue(tmp_path, max_items=10)
    assert q.put(b"one") == 1 and q.put(b"two") == 2
    (q.tmp / "00000000000000000000-00000000.slice").write_bytes(b"half")  # a crash mid-write
    q2 = DeferredQueue(tmp_path, max_items=10)
    assert len(q2) == 2 and [q2.read(e) for e in q2.entries()] == [b"one", b"two"]
    assert not list(q2.tmp.iterdir())


def test_drain_deferred_cli(tmp_path: Path, rng: np.random.Generator) -> None:
    from server.cli import app

    scorer = Instrumented(untrained(0))
    srv = start(scorer, max_batch_size=1, max_queue_delay_ms=0.0, queue_size=1, overflow="defer",
                data_dir=tmp_path)
    try:
        out = _stream_while_held(srv, scorer, slices(rng, 6), wait_deferred=4)
        n_def = sum(isinstance(r, ItemDeferred) for r in out)
        res = CliRunner().invoke(app, ["drain-deferred", "--data-dir", str(tmp_path), "--server", srv.address,
                                       "--insecure", "--out", str(tmp_path / "drained.jsonl")])
    finally:
        srv.stop(0)
    assert res.exit_code == 0, res.output
    summary = json.loads(re.findall(r"\{.*\}", res.output)[-1])
    assert summary["scored"] == n_def and summary["left"] == 0
    assert len((tmp_path / "drained.jsonl").read_text().splitlines()) == n_def
