"""Crash test: the trainer process is SIGKILLed mid-ingest from two concurrent stations
(plus a third whose call is half committed and un-acked at the moment of the kill).

Counts, after the kill and again after the restart, that no acknowledged record is lost and no
record is stored twice. Runs on both backends: SQLite (pool.sqlite) and a real PostgreSQL server, which on
top of the trainer's SIGKILL is itself crashed (``pg_ctl stop -m immediate``: no checkpoint, WAL replay on
restart) before anything is counted.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import postgres_server
import pytest
from bench_figures import record_fault
from test_trainer_helpers import make_pixels, make_record

from gsal_wire.pb import trainer_pb2_grpc
from gsal_wire.trainer_client import PushItem, RetryPolicy, TrainerPushClient, item_to_pb
from trainer.store import open_store

pg_server = postgres_server.pg_server  # fixtures: one PostgreSQL server per session
pg_url = postgres_server.pg_url

REPO = Path(__file__).resolve().parents[2]
N_PER_STATION = 240
CHUNK = 8
KILL_AFTER_ACKED = 80
STATIONS = ("st-01", "st-02")


def _start_trainer(store: str, port: int, port_file: Path) -> subprocess.Popen:
    port_file.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "trainer.cli", "serve", "--store", store, "--port", str(port),
           "--port-file", str(port_file), "--insecure", "--batch-items", "4", "--workers", "4"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not port_file.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"trainer exited {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError("trainer did not start within 60 s")
        time.sleep(0.05)
    return proc


KEYS_SQL = "SELECT s.station_id || '/' || s.slice_id FROM score_records r JOIN slices s ON s.id = r.slice_pk"


def _stored_keys(store: str) -> tuple[set[str], int]:
    """(distinct (station/slice) keys, total score records) read straight from the database."""
    if store.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(store.partition("?")[0]) as con:
            rows = con.execute(KEYS_SQL).fetchall()
        return {r[0] for r in rows}, len(rows)
    con = sqlite3.connect(Path(store) / "pool.sqlite")
    try:
        rows = con.execute(KEYS_SQL).fetchall()
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    return {r[0] for r in rows}, len(rows)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_spec(request, tmp_path) -> str:
    """The --store value of the trainer under test: a directory, or a PostgreSQL URL with its files dir."""
    if request.param == "sqlite":
        return str(tmp_path / "store")
    return f"{request.getfixturevalue('pg_url')}?files={tmp_path / 'store'}"


@pytest.mark.slow
def test_sigkill_mid_ingest_loses_no_ack_and_duplicates_nothing(tmp_path, store_spec, request):
    store = store_spec
    pg = request.getfixturevalue("pg_server") if store.startswith("postgresql://") else None
    open_store(store).close()  # create the schema up front
    port_file = tmp_path / "port"
    proc = _start_trainer(store, 0, port_file)
    port = int(port_file.read_text())
    address = f"127.0.0.1:{port}"

    lock = threading.Lock()
    acked: set[str] = set()
    stats = {"retries": 0, "duplicates": 0, "committed": 0, "rejected": 0}
    errors: list[BaseException] = []

    def pusher(station: str) -> None:
        try:
            cli = TrainerPushClient(address, station, insecure=True, chunk_size=CHUNK, seed=STATIONS.index(station),
                                    retry=RetryPolicy(max_attempts=200, base_delay_s=0.05, max_delay_s=0.5,
                                                      max_elapsed_s=120), reconnect_backoff_s=(0.1, 0.5))
            items = [PushItem(make_record(i, station), pixels=make_pixels(i)) for i in range(N_PER_STATION)]
            for k in range(0, len(items), CHUNK):
                res = cli.push(items[k:k + CHUNK])  # returns only after the ack (i.e. after the commit)
                with lock:
                    acked.update(f"{station}/{i}" for i in res.acked_ids)
                    for key in ("retries", "duplicates", "committed"):
                        stats[key] += getattr(res, key)
                    stats["rejected"] += len(res.rejected)
            cli.close()
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=pusher, args=(s,)) for s in STATIONS]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 120
    while True:
        with lock:
            n = len(acked)
        if n >= KILL_AFTER_ACKED or time.monotonic() > deadline or errors:
            break
        time.sleep(0.005)
    assert not errors, errors
    # a third station's stream is half-way through its call: 4 of 8 items committed, no ack yet
    release = threading.Event()
    half = [PushItem(make_record(i, "st-03"), pixels=make_pixels(i)) for i in range(8)]

    def half_stream() -> None:
        stub = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(address))

        def gen():
            for it in half[:4]:
                yield item_to_pb("st-03", it)
            release.wait(60)  # the call hangs here, un-acked, until the trainer dies

        try:
            stub.Ingest(gen(), timeout=60)
            errors.append(AssertionError("the half stream was acknowledged"))
        except grpc.RpcError:
            pass

    t3 = threading.Thread(target=half_stream)
    t3.start()
    deadline = time.monotonic() + 30
    while sum(k.startswith("st-03/") for k in _stored_keys(store)[0]) < 4:
        assert time.monotonic() < deadline, "the half stream's first batch never committed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    with lock:
        acked_at_kill = set(acked)
    proc.wait(timeout=30)
    release.set()
    t3.join(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    if pg is not None:  # the database server crashes too: what it acknowledged must survive WAL replay
        pg.crash()
        pg.start()
    total = N_PER_STATION * len(STATIONS)
    assert KILL_AFTER_ACKED <= len(acked_at_kill) < total, "the kill must land in the middle of ingest"

    # right after the kill, before anything is re-sent: every acknowledged record is on disk
    keys, n_records = _stored_keys(store)
    lost_at_kill = acked_at_kill - keys
    print(f"\nkilled after {len(acked_at_kill)} acked records; stored then: {len(keys)} "
          f"(committed but unacked: {len(keys - acked_at_kill)}), lost: {len(lost_at_kill)}")
    assert not lost_at_kill
    assert n_records == len(keys)
    assert {f"st-03/slice-{i:06d}" for i in range(4)} <= keys - acked_at_kill  # committed, never acked

    proc = _start_trainer(store, port, port_file)  # same port: the stations retry the same address
    try:
        for t in threads:
            t.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "pushers did not finish"
        assert not errors, errors
        # station 3 re-sends its whole un-acked call: the committed half comes back as duplicates
        with TrainerPushClient(address, "st-03", insecure=True, chunk_size=8,
                               retry=RetryPolicy(max_attempts=50, base_delay_s=0.05, max_delay_s=0.5)) as cli:
            r3 = cli.push(half)
        assert (r3.committed, r3.duplicates) == (4, 4)
        acked.update(f"st-03/{i}" for i in r3.acked_ids)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)

    keys, n_records = _stored_keys(store)
    with lock:
        final_acked = set(acked)
    print(f"after restart: acked {len(final_acked)}, stored records {n_records}, distinct {len(keys)}, "
          f"retries {stats['retries']}, duplicates reported {stats['duplicates'] + r3.duplicates}, "
          f"committed {stats['committed'] + r3.committed}")
    record_fault(f"trainer SIGKILLed mid-ingest ({'PostgreSQL' if pg else 'SQLite'} store; 2 stations pushing, "
                 "a third call half-committed)",
                 f"killed after {len(acked_at_kill)} acknowledged (lost at the kill: {len(lost_at_kill)}); after "
                 f"the restart {len(final_acked)} acknowledged, {n_records} stored: acknowledged records lost: "
                 f"{len(final_acked - keys)}, duplicates: {n_records - len(keys)}")
    total += len(half)
    assert len(final_acked) == total
    assert keys == final_acked  # nothing lost
    assert n_records == total  # nothing duplicated
    assert stats["rejected"] == 0
    assert stats["retries"] >= 1
    assert stats["committed"] + stats["duplicates"] >= total - len(half)
    with open_store(store) as s:
        st = s.status()
        assert (st["slices"], st["records"]) == (total, total)
