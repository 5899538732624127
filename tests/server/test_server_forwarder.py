"""Station -> trainer forwarding with real servers on 127.0.0.1: a real station (untrained scorer) pushes
each scored slice + record to a real trainer (``trainer.ingest_service`` on a SQLite store)."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket
import sqlite3
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from station_process import start_serve_process
from typer.testing import CliRunner

from gsal_edge.acquisition.records import ScoreRecord
from gsal_wire.convert import make_pb_slice
from gsal_wire.pb import scorer_pb2
from gsal_wire.scorer_client import ItemFailed, ScorerClient, to_result
from server.app import StationServer
from server.cli import app
from server.config import ServerConfig, TrainerLink
from server.forwarder import RecordForwarder
from server.station import default_scorer_factory
from trainer.images import decode_image
from trainer.ingest_service import IngestConfig, RunningServer, start_server
from trainer.store.pool_store import PoolStore

SPEC = "untrained:seed=0,size=32"
STATION = "st-01"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(cond: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or cond}")
        time.sleep(0.05)


def _station(address: str, grace_s: float = 5.0, metrics_port: int | None = None, data_dir: Path | None = None,
             **link: Any) -> StationServer:
    link.setdefault("retry_base_s", 0.05)
    link.setdefault("retry_max_s", 0.3)
    cfg = ServerConfig(
        insecure=True, port=0, station_id=STATION, grace_s=grace_s, max_batch_size=4, metrics_port=metrics_port,
        data_dir=data_dir,
        trainer=TrainerLink(address=address, station_id=STATION, insecure=True, **link),
    )
    srv = StationServer(cfg, default_scorer_factory(allow_untrained=True, station=STATION))
    srv.start()
    srv.load_bundle(SPEC)
    return srv


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PoolStore]:
    s = PoolStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def trainer(store: PoolStore) -> Iterator[RunningServer]:
    srv = start_server(store, IngestConfig(port=0, batch_items=3, max_workers=2))
    yield srv
    srv.stop(1.0)


def _slices(n: int, start: int = 0) -> list[tuple[str, np.ndarray, str]]:
    """(id, pixels, encoding): uint8 raw, uint16 png, float32 raw in turn."""
    rng = np.random.default_rng(7 + start)
    out = []
    for i in range(start, start + n):
        if i % 3 == 0:
            a, enc = rng.integers(0, 255, (32, 32), dtype=np.uint8), "raw"
        elif i % 3 == 1:
            a, enc = rng.integers(0, 65535, (40, 32), dtype=np.uint16), "png"
        else:
            a, enc = rng.random((32, 36), dtype=np.float32), "raw"
        out.append((f"fw-{i:04d}", a, enc))
    return out


def _score(srv: StationServer, items: list[tuple[str, np.ndarray, str]], bad: int = 0) -> dict[str, ScoreRecord]:
    """Stream ``items`` (plus ``bad`` invalid slices) through the station; the records it answered, by id."""
    reqs = [scorer_pb2.ScoreRequest(slice=make_pb_slice(i, a, encoding=e, meta={"line": "L1"})) for i, a, e in items]
    for k in range(bad):  # raw bytes that do not fit the declared shape: INVALID_ARGUMENT, never scored
        m = make_pb_slice(f"bad-{k}", np.zeros((32, 32), np.uint8))
        m.data = m.data[:-7]
        reqs.append(scorer_pb2.ScoreRequest(slice=m))
    out: dict[str, ScoreRecord] = {}
    with ScorerClient(srv.address, insecure=True) as c:
        for resp in c.stream(reqs, timeout=60):
            res = to_result(resp)
            if isinstance(res, ItemFailed):
                assert res.slice_id.startswith("bad-"), res
            else:
                out[res.image_id] = res
    assert len(out) == len(items)
    return out


def _assert_stored(
    store: PoolStore, items: list[tuple[str, np.ndarray, str]], answered: dict[str, ScoreRecord]
) -> None:
    st = store.status()
    assert (st["slices"], st["records"]) == (len(items), len(items))
    for sid, arr, _enc in items:
        key = f"{STATION}/{sid}"
        rec = store.record(key)
        assert rec is not None, key
        rec.image_id = sid
        assert rec.to_dict() == answered[sid].to_dict()  # the very record the client got
        assert rec.model["station"] == STATION
        got = decode_image(store.slice_info(key).image_path)
        assert got.dtype == arr.dtype and np.array_equal(got, arr)  # the pixels as sent


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


def test_scored_slices_reach_the_trainer_exactly_once(trainer: RunningServer, store: PoolStore) -> None:
    items = _slices(10)
    srv = _station(trainer.address, metrics_port=0, chunk_size=4, max_delay_ms=50)
    try:
        answered = _score(srv, items, bad=2)
        fwd = srv.forwarder
        assert fwd is not None
        _wait(lambda: fwd.stats().forwarded == len(items), what="10 records forwarded")
        _assert_stored(store, items, answered)
        s = fwd.stats()
        assert (s.pending, s.dropped_total) == (0, 0)
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        assert _metric(text, "gsal_scorer_forwarded_total") == 10
        assert _metric(text, "gsal_scorer_forward_pending") == 0
        assert _metric(text, 'gsal_scorer_forward_dropped_total{reason="queue_full"}') == 0
        assert "gsal_scorer_forward_retries_total" in text
    finally:
        srv.stop(2.0)
    assert store.status()["records"] == len(items)  # nothing else arrived (the bad slices were not forwarded)


def test_station_retries_until_the_trainer_comes_up(store: PoolStore) -> None:
    port = _free_port()
    items = _slices(5)
    srv = _station(f"127.0.0.1:{port}", chunk_size=2, max_delay_ms=20)
    trainer = None
    try:
        answered = _score(srv, items)  # scoring does not wait for the trainer
        fwd = srv.forwarder
        assert fwd is not None
        _wait(lambda: fwd.stats().retried >= 2, what="failed pushes being retried")
        s = fwd.stats()
        assert (s.forwarded, s.pending, s.dropped_total) == (0, 5, 0)
        assert store.status()["records"] == 0
        trainer = start_server(store, IngestConfig(port=port))
        _wait(lambda: fwd.stats().forwarded == 5, what="records delivered after the trainer came up")
        _assert_stored(store, items, answered)
        assert fwd.stats().pending == 0
    finally:
        srv.stop(2.0)
        if trainer is not None:
            trainer.stop(1.0)


def test_graceful_stop_flushes_pending_records(trainer: RunningServer, store: PoolStore) -> None:
    items = _slices(6, start=20)
    srv = _station(trainer.address, chunk_size=100, max_delay_ms=600_000)  # nothing goes out before stop()
    fwd = srv.forwarder
    assert fwd is not None
    try:
        answered = _score(srv, items)
        time.sleep(0.3)
        assert fwd.stats().pending == 6 and store.status()["records"] == 0
    finally:
        t0 = time.monotonic()
        srv.stop(5.0)
        took = time.monotonic() - t0
    s = fwd.stats()
    assert (s.forwarded, s.pending, s.dropped_total) == (6, 0, 0)
    assert took < 5.0
    _assert_stored(store, items, answered)


def test_full_queue_drops_and_stop_is_bounded_while_the_trainer_is_down() -> None:
    srv = _station(f"127.0.0.1:{_free_port()}", grace_s=0.5, chunk_size=1, max_delay_ms=0, queue_size=3)
    fwd = srv.forwarder
    assert fwd is not None
    try:
        _score(srv, _slices(5))  # every item is offered before its answer is sent
        s = fwd.stats()
        assert (s.pending, s.dropped["queue_full"], s.forwarded) == (3, 2, 0)
    finally:
        t0 = time.monotonic()
        srv.stop()
        took = time.monotonic() - t0
    assert took < 0.5 + 1.0 + 5.0  # RPC grace + batcher drain floor + forwarder flush (grace) with slack
    s = fwd.stats()
    assert (s.pending, s.dropped["queue_full"], s.dropped["shutdown"], s.forwarded) == (0, 2, 3, 0)


def _scrape(srv: StationServer) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_spool_keeps_answered_records_across_a_restart_and_counts_unreadable_rows(
    tmp_path: Path, store: PoolStore, caplog: pytest.LogCaptureFixture
) -> None:
    """With a data dir every answered record is on disk before its answer; a stop with the trainer down
    keeps them there (not dropped); the next start replays them, and a damaged row is dropped, logged and
    counted (``gsal_scorer_forward_dropped_total{reason="unreadable"}``)."""
    port, data = _free_port(), tmp_path / "station"
    items = _slices(6, start=40)
    srv = _station(f"127.0.0.1:{port}", grace_s=0.5, data_dir=data, chunk_size=2, max_delay_ms=20)
    fwd = srv.forwarder
    assert fwd is not None and fwd.spool is not None
    try:
        answered = _score(srv, items)
        assert len(fwd.spool) == len(items)  # each answer came after its record was committed
    finally:
        srv.stop()
    s = fwd.stats()
    assert (s.forwarded, s.dropped_total) == (0, 0)  # the unsent records are kept, not dropped
    db_path = data / "forward-spool" / "spool.sqlite3"
    with sqlite3.connect(db_path) as db:
        assert db.execute("SELECT count(*) FROM spool").fetchone()[0] == len(items)
        seq, rec = db.execute("SELECT seq, record FROM spool ORDER BY seq LIMIT 1").fetchone()
        db.execute("UPDATE spool SET record = ? WHERE seq = ?", ('{"image_id": ', seq))
    damaged = json.loads(rec)["image_id"]
    trainer = start_server(store, IngestConfig(port=port))
    caplog.set_level(logging.INFO, logger="server.forwarder")
    srv = _station(f"127.0.0.1:{port}", data_dir=data, metrics_port=0, chunk_size=2, max_delay_ms=20)
    fwd = srv.forwarder
    assert fwd is not None and fwd.spool is not None
    try:
        _wait(lambda: fwd.stats().forwarded == len(items) - 1, what="the replayed records delivered")
        s = fwd.stats()
        assert (s.replayed, s.dropped["unreadable"], s.dropped_total) == (len(items) - 1, 1, 1)
        text = _scrape(srv)
        assert _metric(text, "gsal_scorer_forward_replayed_total") == len(items) - 1
        assert _metric(text, 'gsal_scorer_forward_dropped_total{reason="unreadable"}') == 1
        _wait(lambda: len(fwd.spool) == 0, what="the spool emptied after the acknowledgement")
    finally:
        srv.stop(2.0)
        trainer.stop(1.0)
    logs = caplog.text
    assert f"replaying {len(items) - 1} spooled records" in logs
    assert "1 spooled records" in logs and "unreadable and are dropped" in logs
    kept = [it for it in items if it[0] != damaged]
    _assert_stored(store, kept, answered)


def test_spool_config_defaults_and_memory_only_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    link = TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True)
    cfg = ServerConfig(insecure=True, station_id=STATION, trainer=link, data_dir=tmp_path)
    assert cfg.forward_spool_dir == tmp_path / "forward-spool"  # on by default with a data dir
    assert ServerConfig(insecure=True, station_id=STATION, trainer=link).forward_spool_dir is None
    off = link.model_copy(update={"spool": False})
    assert ServerConfig(insecure=True, station_id=STATION, trainer=off, data_dir=tmp_path).forward_spool_dir is None
    own = TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True, spool_dir=tmp_path / "sp")
    assert ServerConfig(insecure=True, station_id=STATION, trainer=own).forward_spool_dir == tmp_path / "sp"
    on = TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True, spool=True)
    with pytest.raises(ValidationError, match="spool=True needs"):
        ServerConfig(insecure=True, station_id=STATION, trainer=on)
    with pytest.raises(ValidationError, match="spool"):
        TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True, spool=False, spool_dir=tmp_path)
    caplog.set_level(logging.INFO, logger="server.forwarder")
    fwd = RecordForwarder(link)
    fwd.close(0.1)
    assert fwd.spool is None and "in memory only (no spool)" in caplog.text


def test_config_and_cli_refuse_inconsistent_trainer_settings() -> None:
    link = TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True)
    with pytest.raises(ValidationError, match="must equal station_id"):
        ServerConfig(insecure=True, station_id="st-02", trainer=link)
    with pytest.raises(ValidationError, match="station_id"):
        TrainerLink(address="127.0.0.1:1", station_id="bad id", insecure=True)
    with pytest.raises(ValidationError, match="insecure"):
        TrainerLink(address="127.0.0.1:1", station_id=STATION, insecure=True, ca=Path("ca.pem"))
    runner = CliRunner()
    r = runner.invoke(app, ["serve", "--insecure", "--port", "0", "--trainer", "127.0.0.1:1"])
    assert r.exit_code == 2 and "--station-id" in r.output
    r = runner.invoke(app, ["serve", "--insecure", "--port", "0", "--trainer-insecure"])
    assert r.exit_code == 2 and "need --trainer" in r.output
    r = runner.invoke(app, ["serve", "--insecure", "--port", "0", "--station-id", STATION,
                            "--trainer", "127.0.0.1:1", "--trainer-ca", "/nonexistent/ca.pem"])
    assert r.exit_code == 2 and "ca" in r.output


@pytest.mark.slow
def test_serve_process_forwards_and_flushes_on_sigterm(trainer: RunningServer, store: PoolStore) -> None:
    """``gsal-edge serve --trainer`` as a real process: records wait in its queue, SIGTERM pushes them."""
    proc, addr, lines = start_serve_process(["--insecure", "--port", "0", "--allow-untrained",
           "--bundle", SPEC, "--grace-s", "5", "--station-id", STATION, "--trainer", trainer.address,
           "--trainer-insecure", "--trainer-chunk", "50", "--trainer-max-delay-ms", "600000"])
    try:
        items = _slices(4)
        with ScorerClient(addr, insecure=True) as c:
            answered = {}
            for i, a, e in items:
                answered[i] = c.score_one(i, a, meta={"line": "L1"}, encoding=e, timeout=30)
        assert store.status()["records"] == 0  # held back by the 600 s chunk delay
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        assert "flushed" in "".join(lines), "".join(lines)
        _assert_stored(store, items, answered)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
