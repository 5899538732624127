"""PostgreSQL pool store: --store URLs, translated schema, version, reconnect, and concurrent rounds.

Every test here talks to a real PostgreSQL server the tests start (tests/support/postgres_server.py);
the concurrent-selection test runs two real `trainer select` processes on each backend.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import postgres_server
import pytest
from test_trainer_helpers import make_item

from trainer.audit_log import read_entries, verify
from trainer.store import open_store
from trainer.store.location import parse_store
from trainer.store.schema import SCHEMA_VERSION
from trainer.store.types import StoreDatabaseError, StoreError

pg_server = postgres_server.pg_server  # fixtures: one PostgreSQL server per session
pg_url = postgres_server.pg_url

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------ --store values (no server)


def test_store_values_name_backend_files_and_database(tmp_path, monkeypatch):
    monkeypatch.delenv("GSAL_TRAINER_FILES", raising=False)
    assert parse_store("artifacts/trainer").backend == "sqlite"
    assert parse_store("sqlite:///abs/dir").files == Path("/abs/dir")
    assert parse_store("sqlite://rel/dir").files == Path("rel/dir")
    loc = parse_store("postgresql://u:secret@db.example:6543/pool?files=/srv/gsal&sslmode=require")
    assert (loc.backend, loc.files) == ("postgresql", Path("/srv/gsal"))
    assert loc.conninfo == "postgresql://u:secret@db.example:6543/pool?sslmode=require"
    assert "secret" not in loc.display and "u:***@db.example" in loc.display
    assert parse_store("postgres://u@h/pool").files == Path("artifacts/trainer-pg/pool")
    monkeypatch.setenv("GSAL_TRAINER_FILES", str(tmp_path))
    assert parse_store("postgresql://u@h/pool").files == tmp_path
    for bad, why in [("mysql://u@h/db", "unknown scheme"), ("postgresql://u@h:5432", "name the database"),
                     ("sqlite://", "needs a directory"), ("  ", "empty")]:
        with pytest.raises(StoreError, match=why):
            parse_store(bad)


def test_unreachable_server_is_a_clear_error_naming_it(tmp_path):
    with pytest.raises(StoreDatabaseError, match=r"postgresql://nobody:\*\*\*@127.0.0.1:1/db: cannot connect"):
        open_store("postgresql://nobody:pw@127.0.0.1:1/db", files=tmp_path)


# ------------------------------------------------------------------------------------------ a real server


def _column_types(url: str, table: str) -> dict[str, tuple[str, str | None]]:
    import psycopg

    with psycopg.connect(url) as con:
        rows = con.execute("SELECT column_name, data_type, collation_name FROM information_schema.columns "
                           "WHERE table_name = %s", (table,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.mark.slow
def test_schema_is_translated_versioned_and_newer_refused(pg_url, tmp_path):
    with open_store(pg_url, files=tmp_path / "files") as s:
        assert (s.backend, s.schema_version) == ("postgresql", SCHEMA_VERSION)
        assert s.status()["store"].startswith(pg_url)
        with pytest.raises(StoreError, match="SQLite only"):
            s.pragma("journal_mode")
        with pytest.raises(StoreError, match="pg_dump"):
            s.backup(tmp_path / "b.sqlite")
    assert (tmp_path / "files" / "images").is_dir()
    cols = _column_types(pg_url, "proposals")
    assert cols["x1"][0] == "double precision"  # SQLite REAL is 8 bytes; PostgreSQL REAL would be 4
    assert cols["record_id"][0] == "bigint"
    assert cols["concept"] == ("text", "C")  # byte order, as SQLite sorts
    open_store(pg_url, files=tmp_path / "files").close()  # re-open: nothing re-applied
    import psycopg

    with psycopg.connect(pg_url) as con:
        assert con.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        con.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StoreError, match="newer"):
        open_store(pg_url, files=tmp_path / "files")


@pytest.mark.slow
def test_two_processes_opening_a_new_database_migrate_it_once(pg_url, tmp_path):
    code = ("import sys; from trainer.store import open_store; "
            "s = open_store(sys.argv[1], files=sys.argv[2]); print(s.schema_version); s.close()")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, str(tmp_path / f"f{i}")], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert [o[0].strip() for o in outs] == [str(SCHEMA_VERSION)] * 2


@pytest.mark.slow
def test_store_survives_a_server_restart(pg_server, pg_url, tmp_path):
    s = open_store(pg_url, files=tmp_path / "files")
    try:
        s.ingest([make_item(i) for i in range(3)])
        pg_server.crash()
        pg_server.start()
        # the connection died with the server: the first call says so (a station would get UNAVAILABLE
        # and retry), the next one reconnects; nothing acknowledged before the crash is gone
        with pytest.raises(StoreDatabaseError, match=pg_url.rsplit("/", 1)[1]):
            s.ingest([make_item(3)])
        res = s.ingest([make_item(i) for i in range(4)])
        assert res.outcomes == ["duplicate"] * 3 + ["inserted"]
        assert s.status()["records"] == 4
    finally:
        s.close()


# ------------------------------------------------------------------------------------------ concurrent rounds


def _blocked_on_round_lock(spec: str) -> int:
    """How many processes wait for the store's round lock right now."""
    if spec.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(spec.partition("?")[0]) as con:
            return int(con.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                   "AND NOT granted AND database = (SELECT oid FROM pg_database "
                                   "WHERE datname = current_database())").fetchone()[0])
    inode = os.stat(Path(spec) / "rounds.lock").st_ino
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for ln in lines if "->" in ln and f":{inode} " in ln)


@pytest.fixture(params=["sqlite", "postgresql"])
def pooled_spec(request, tmp_path) -> str:
    spec = (str(tmp_path / "store") if request.param == "sqlite"
            else f"{request.getfixturevalue('pg_url')}?files={tmp_path / 'store'}")
    with open_store(spec) as s:
        s.ingest([make_item(i, station=st) for i in range(12) for st in ("st-01", "st-02")])
    return spec


@pytest.mark.slow
def test_concurrent_select_from_two_processes_never_double_picks(pooled_spec):
    spec, budget = pooled_spec, 8
    store = open_store(spec)
    try:
        with store.round_lock():  # both rounds start while one is "running": they must queue, then not overlap
            procs = [subprocess.Popen([sys.executable, "-m", "trainer.cli", "select", "--budget", str(budget),
                                       "--store", spec], cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for _ in range(2)]
            deadline = time.monotonic() + 90
            while _blocked_on_round_lock(spec) < 2:
                assert all(p.poll() is None for p in procs), [p.communicate()[1][-1500:] for p in procs]
                assert time.monotonic() < deadline, "the two select processes never waited for the round lock"
                time.sleep(0.1)
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
        rounds = store.rounds()
        assert [(r["status"], r["n_picks"]) for r in rounds] == [("selected", budget)] * 2
        picks = [{p.key for p in store.selection(r["id"])} for r in rounds]
        assert len(picks[0]) == len(picks[1]) == budget
        assert not picks[0] & picks[1], f"double-picked: {sorted(picks[0] & picks[1])}"
        assert rounds[1]["pool_size"] == rounds[0]["pool_size"] - budget  # the second saw the first's picks
        assert verify(store.audit_path).ok
        logged = [e["data"]["round"] for e in read_entries(store.audit_path) if e["kind"] == "selection"]
        assert logged == [r["id"] for r in rounds]
    finally:
        store.close()
    # the other commands take the same --store value (the URL's files= names the audit log's folder)
    from typer.testing import CliRunner

    from trainer.cli import app

    res = CliRunner().invoke(app, ["audit", "--store", spec])
    assert res.exit_code == 0 and "ok: 2 entries" in res.output, res.output
    res = CliRunner().invoke(app, ["status", "--json", "--store", spec])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["pool"]["open_rounds"] == 2
