"""Ingest records/s into the pool store: SQLite vs PostgreSQL, same records and batch sizes, in one run.

    python bench/bench_ingest.py [--records 3000] [--batch 16 128 512] [--proposals 4] [--pixels]
                                 [--pg-url postgresql://user@host:port/db] [--repeats 1] [--pg require|auto|off]

Each (backend, batch size) cell ingests the same ``--records`` score records into a fresh store through
:meth:`PoolStore.ingest` (validation, the idempotent insert, one durable commit per batch: SQLite WAL with
``synchronous=FULL``; PostgreSQL ``synchronous_commit=on`` with fsync on), then re-sends them all (a
station retrying: every record comes back a duplicate). Records carry an image reference by default,
so the database is what is measured; ``--pixels`` also writes a 64x64 PNG per record (the same file
writes on both backends).

PostgreSQL: a throw-away server on 127.0.0.1 (``initdb`` + ``pg_ctl`` into a temp dir, as the tests do;
Debian's ``postgresql`` package, ``make services``), or ``--pg-url`` for an existing database (one fresh
schema-less database per cell is then not possible: the cells share it after a TRUNCATE). The cells run
interleaved (SQLite, PostgreSQL, SQLite, ...), so a machine shared with other work affects both alike;
the ratio is the number to read. Prints a table and writes JSON to ``--out``.

``--pg auto`` (what ``make bench`` passes) measures SQLite alone when PostgreSQL is not usable here (no
server binaries, or psycopg missing from the venv) and writes the reason as ``pg_not_measured`` in the JSON;
``--pg require`` (the default, ``make bench-ingest``) exits with that reason instead.
"""

from __future__ import annotations

import argparse
import glob
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from trainer.images import encode_pixels
from trainer.store import open_store
from trainer.store.types import IngestItem

CONCEPTS = ("void", "inclusion", "petal", "drill_hole")


def make_items(n: int, n_props: int, pixels: bool, seed: int = 0) -> list[IngestItem]:
    """``n`` realistic score records (``n_props`` proposals each) from 4 stations."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        station = f"st-{i % 4:02d}"
        props = []
        for j in range(n_props):
            x, y = (float(v) for v in rng.uniform(0, 200, 2))
            c = CONCEPTS[(i + j) % len(CONCEPTS)]
            props.append(ProposalScore(box=(x, y, x + 12, y + 9), score=float(rng.uniform(0.1, 1)),
                                       e_rec=float(rng.uniform(0, 0.1)), v_den=float(rng.uniform(0, 0.01)),
                                       concept=c, similarity={k: float(rng.uniform(-1, 1)) for k in CONCEPTS},
                                       label=c))
        rec = ScoreRecord(image_id=f"slice-{i:07d}", e_rec=float(rng.uniform(0, 0.05)),
                          v_den=float(rng.uniform(0, 0.005)), proposals=props,
                          uncertainty={"entropy": float(rng.uniform(0, 1))},
                          model={"bundle": "sha256:bench", "station": station}, meta={"line": "L1"})
        if pixels:
            data, fmt = encode_pixels(rng.integers(0, 255, size=(64, 64), dtype=np.uint8))
            items.append(IngestItem(station, rec, image=data, image_format=fmt, width=64, height=64))
        else:
            items.append(IngestItem(station, rec, image_ref=f"/archive/{station}/{rec.image_id}.png",
                                    width=64, height=64))
    return items


def run_cell(spec: str, files: Path, items: list[IngestItem], batch: int) -> dict[str, Any]:
    """Ingest ``items`` in batches of ``batch`` into a fresh store, then re-send them (all duplicates)."""
    store = open_store(spec, files=files)
    try:
        t0 = time.perf_counter()
        inserted = sum(store.ingest(items[k:k + batch]).inserted for k in range(0, len(items), batch))
        t1 = time.perf_counter()
        dups = sum(store.ingest(items[k:k + batch]).duplicates for k in range(0, len(items), batch))
        t2 = time.perf_counter()
        assert inserted == dups == len(items) == store.status()["records"], (inserted, dups, len(items))
    finally:
        store.close()
    return {"insert_per_s": len(items) / (t1 - t0), "duplicate_per_s": len(items) / (t2 - t1),
            "commits": -(-len(items) // batch), "seconds": t1 - t0}


def pg_unavailable(url: str | None = None) -> str | None:
    """Why PostgreSQL cannot be measured here (None: it can). The same checks the tests make
    (tests/support/postgres_server.py: Debian's server binaries, psycopg in the venv)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed in this venv (`make services` installs it, .ci/install/10-postgresql.sh)"
    if url is None and not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb; `make services` installs them)"
    return None


class PgTarget:
    """Fresh PostgreSQL databases: on a throw-away local server, or TRUNCATEd tables of ``--pg-url``."""

    def __init__(self, url: str | None) -> None:
        self.url, self.server = url, None
        if url is None:
            sys.path.insert(0, str(REPO / "tests" / "support"))
            from postgres_server import PostgresServer, _bin_dir

            try:
                self.server = PostgresServer(_bin_dir())
            except BaseException as e:  # noqa: BLE001 - pytest's skip/fail outcome: PostgreSQL not installed
                raise SystemExit(f"bench-ingest: {e} (or pass --pg-url)") from None
            self.server.start()
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        if self.server is not None:
            return self.server.url(self.server.create_database())
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as con:
            con.execute("DROP TABLE IF EXISTS kv, stations, slices, score_records, proposals, rounds, "
                        "selections, labels, label_boxes, bundles, schema_version CASCADE")
        return self.url

    def version(self) -> str:
        import psycopg

        with psycopg.connect(self.fresh() if self.url is None else self.url) as con:
            return str(con.execute("SHOW server_version").fetchone()[0])

    def close(self) -> None:
        if self.server is not None:
            self.server.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=3000, help="Records per cell.")
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 128, 512], help="Records per commit.")
    ap.add_argument("--proposals", type=int, default=4, help="Proposals per record.")
    ap.add_argument("--pixels", action="store_true", help="Also store a 64x64 PNG per record.")
    ap.add_argument("--pg-url", default=None, help="Existing PostgreSQL database (its tables are dropped!).")
    ap.add_argument("--repeats", type=int, default=1, help="Runs per cell (the best is reported).")
    ap.add_argument("--pg", choices=("require", "auto", "off"), default="require",
                    help="PostgreSQL: require it (exit if unusable), auto (SQLite alone when unusable), off")
    ap.add_argument("--out", type=Path, default=REPO / "artifacts" / "bench-ingest" / "results.json")
    args = ap.parse_args(argv)

    why_no_pg = "--pg off" if args.pg == "off" else pg_unavailable(args.pg_url)
    if why_no_pg and args.pg == "require":
        raise SystemExit(f"bench-ingest: PostgreSQL not usable: {why_no_pg} (or pass --pg auto)")
    items = make_items(args.records, args.proposals, args.pixels)
    pg = None if why_no_pg else PgTarget(args.pg_url)
    backends = ("sqlite",) if pg is None else ("sqlite", "postgresql")
    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    rows: list[dict[str, Any]] = []
    pg_version = None
    try:
        pg_version = pg.version() if pg is not None else None
        for batch in args.batch:
            best: dict[str, dict[str, Any]] = {}
            for rep in range(args.repeats):
                for backend in backends:
                    files = work / f"{backend}-{batch}-{rep}"
                    spec = str(files) if pg is None or backend == "sqlite" else pg.fresh()
                    r = run_cell(spec, files, items, batch)
                    if backend not in best or r["insert_per_s"] > best[backend]["insert_per_s"]:
                        best[backend] = r
            for backend, r in best.items():
                rows.append({"backend": backend, "batch": batch, **r})
    finally:
        if pg is not None:
            pg.close()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\nbench-ingest: {args.records} records x {args.proposals} proposals, "
          f"{'with 64x64 PNG pixels' if args.pixels else 'by image reference'}, one writer; "
          f"SQLite {__import__('sqlite3').sqlite_version} (WAL, synchronous=FULL) vs "
          + (f"PostgreSQL {pg_version} (local, synchronous_commit=on)" if pg_version else
             f"PostgreSQL not measured: {why_no_pg}"))
    print(f"{'batch':>6} {'commits':>8} {'SQLite rec/s':>13} {'PostgreSQL rec/s':>17} {'PG/SQLite':>10} "
          f"{'dup SQLite/s':>13} {'dup PG/s':>9}")
    for batch in args.batch:
        s = next(r for r in rows if r["backend"] == "sqlite" and r["batch"] == batch)
        p = next((r for r in rows if r["backend"] == "postgresql" and r["batch"] == batch), None)
        pg_cols = (f"{p['insert_per_s']:>17.0f} {p['insert_per_s'] / s['insert_per_s']:>10.2f}" if p else
                   f"{'-':>17} {'-':>10}")
        print(f"{batch:>6} {s['commits']:>8} {s['insert_per_s']:>13.0f} {pg_cols} {s['duplicate_per_s']:>13.0f} "
              f"{(p['duplicate_per_s'] if p else float('nan')):>9.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "records": args.records, "proposals": args.proposals, "pixels": args.pixels, "repeats": args.repeats,
        "postgresql": pg_version, "pg_not_measured": why_no_pg, "sqlite": __import__("sqlite3").sqlite_version,
        "source": "python bench/bench_ingest.py --records {} --batch {} --pg {}".format(
            args.records, " ".join(map(str, args.batch)), args.pg),
        "platform": platform.platform(), "python": platform.python_version(),
        "rows": rows}, indent=2))
    print(f"results -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
