"""``make bench``: run the CPU benchmarks with short defaults, then render BENCHMARKS.md at the repo root.

    python bench/make_benchmarks_md.py                    # run every CPU bench (~10-15 min on 2 cores), render
    python bench/make_benchmarks_md.py --no-run           # render from the JSON already in --results
    python bench/make_benchmarks_md.py --only runtime,server
    python bench/make_benchmarks_md.py --only server,ingest --splice   # re-measure two rows, keep the rest
    python bench/make_benchmarks_md.py --only robustness --splice      # load test + fuzz + fault tests (section 8)

Each bench writes JSON under ``--results`` (default artifacts/bench/); the renderer (bench/benchmarks_md.py)
reads only those files, so a GPU machine's results (bench/gpu_check.sh -> artifacts/gpu_check/) or other
helpers' benches (bench_ingest, bench_backfill, bench_ddp, bench_noise) are picked up when present.
Selection at 10^7 records runs only if the peak RSS extrapolated from 10^6 fits the memory limit.

Section 8 (bench/benchmarks_md_robustness.py): a 30 s load test (--results/load_test/load.json), the fuzz tests
(GSAL_FUZZ_REPORT_DIR=--results/fuzz) and the fault tests (GSAL_BENCH_RESULTS=--results: --results/faults),
each pytest run with a JUnit XML; the 10-minute soak is not run here (``make soak`` writes
--results/soak/load.json, which is included when present).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import benchmarks_md as bm
import benchmarks_md_robustness as rb

DEMO = REPO / "artifacts" / "demo"
SELECTION_SIZES = (10_000, 100_000, 1_000_000)
BIG = 10_000_000
RSS_LIMIT_GIB = 24.0
ROBUSTNESS = ("load", "fuzz", "faults")  # what ``--only robustness`` runs (section 8)
FAULT_TESTS = ("tests/trainer/test_ingest_crash.py", "tests/trainer/test_faults.py", "tests/server/test_station_faults.py")
LOAD_ARGS = ("--streams", "4", "--duration", "30")


def _run(cmd: list[str], timeout_s: float, log: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one bench process (bounded in time), its output appended to ``log``; returns status facts."""
    t = time.perf_counter()
    with log.open("a", encoding="utf-8") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n")
        fh.flush()
        try:
            rc = subprocess.run(cmd, check=False, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout_s,
                                env=env).returncode
        except subprocess.TimeoutExpired:
            rc = 124
    status = {"cmd": " ".join(cmd), "rc": rc, "seconds": round(time.perf_counter() - t, 1)}
    print(f"  rc={rc} {status['seconds']:7.1f}s  {' '.join(cmd[1:3])}", flush=True)
    return status


def demo_bundle() -> tuple[Path, Path] | None:
    """The trained embedded bundle from ``make demo`` (in this checkout, else the main checkout's)."""
    for root in (DEMO, Path("/work/main/artifacts/demo")):
        b, k = root / "bundles", root / "keys" / "signing_key.pub.pem"
        if (b / "LATEST").is_file() and k.is_file():
            return b, k
    return None


def run_selection(py: str, res: Path, log: Path, status: dict[str, Any]) -> None:
    """Selection at 10^4..10^6, then 10^7 only when the RSS extrapolated from 10^6 fits."""
    for n in SELECTION_SIZES:
        out = res / f"selection_{n}.json"
        status[f"selection_{n}"] = _run([py, "bench/bench_selection.py", "--n", str(n), "--repeat", "2",
                                         "--no-trace", "--json", str(out)], 600, log)
    one_m = res / f"selection_{SELECTION_SIZES[-1]}.json"
    if not one_m.is_file():
        return
    rss_1m = json.loads(one_m.read_text())["peak_rss_mib"]["after_selection"] / 1024
    # linear in N above the interpreter's baseline (~0.3 GiB, from the 10^4 run)
    small = res / f"selection_{SELECTION_SIZES[0]}.json"
    base = json.loads(small.read_text())["peak_rss_mib"]["after_selection"] / 1024 if small.is_file() else 0.0
    predicted = base + (rss_1m - base) * BIG / SELECTION_SIZES[-1]
    avail = _mem_available_gib()
    limit = min(RSS_LIMIT_GIB, 0.8 * avail) if avail else RSS_LIMIT_GIB
    plan = {"predicted_peak_rss_gib": round(predicted, 2), "limit_gib": round(limit, 2),
            "mem_available_gib": round(avail, 2) if avail else None}
    if predicted <= limit:
        plan["run"] = _run([py, "bench/bench_selection.py", "--n", str(BIG), "--repeat", "1", "--no-trace",
                            "--json", str(res / f"selection_{BIG}.json")], 900, log)
    else:
        plan["skipped"] = f"extrapolated peak RSS {predicted:.1f} GiB exceeds {limit:.1f} GiB"
    (res / "selection_plan.json").write_text(json.dumps(plan, indent=2) + "\n")


def _mem_available_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_ingest(py: str, res: Path, log: Path, status: dict[str, Any]) -> None:
    """bench/bench_ingest.py: SQLite and, where PostgreSQL is usable here, PostgreSQL side by side (``--pg auto``:
    otherwise SQLite alone, with the reason in the JSON for the report's "not measured" line)."""
    status["ingest"] = _run([py, "bench/bench_ingest.py", "--records", "2000", "--batch", "16", "128", "512",
                             "--pg", "auto", "--out", str(res / "ingest.json")], 600, log)


def run_robustness(py: str, res: Path, log: Path, status: dict[str, Any], want: Any) -> None:
    """Section 8's inputs: the 30 s load test (stamped with the commit), the fuzz tests and the fault tests
    (pytest with the report folders set, a JUnit XML each; their wall time is in run_status.json)."""
    if want("load"):
        out = res / "load_test"
        cmd = [py, "bench/load_test.py", *LOAD_ARGS, "--out", str(out)]
        status["load_test"] = _run(cmd, 600, log)
        stamp(out / "load.json", f"python bench/load_test.py {' '.join(LOAD_ARGS)}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    if want("fuzz"):
        (res / "fuzz").mkdir(parents=True, exist_ok=True)
        for old in (res / "fuzz").glob("fuzz-*.json"):  # only this run's counts
            old.unlink()
        status["fuzz"] = _run([py, "-m", "pytest", "-q", "-s", "--timeout=600", "-p", "no:cacheprovider", "tests/fuzz",
                               f"--junitxml={res / 'fuzz' / 'junit.xml'}"], 1200, log,
                              env | {"GSAL_FUZZ_REPORT_DIR": str(res / "fuzz")})
    if want("faults"):
        (res / "faults").mkdir(parents=True, exist_ok=True)
        for old in (res / "faults").glob("*.json"):
            old.unlink()
        status["faults"] = _run([py, "-m", "pytest", "-q", "-s", "-m", "slow", "--timeout=600", "-p", "no:cacheprovider",
                                 *FAULT_TESTS, f"--junitxml={res / 'faults' / 'junit.xml'}"], 1500, log,
                                env | {"GSAL_BENCH_RESULTS": str(res)})


def stamp(path: Path, command: str) -> None:
    """Add ``provenance`` (commit, command) to a load-test JSON, so the report can say what it measured."""
    d = bm._read(path)
    if not isinstance(d, dict):
        return
    dirty = " (+ uncommitted changes)" if bm._git("status", "--porcelain", "--untracked-files=no") else ""
    d["provenance"] = {"commit": bm._git("rev-parse", "--short", "HEAD") + dirty, "command": command}
    path.write_text(json.dumps(d, indent=2) + "\n")


def load_loadavg() -> str:
    from benchmarks_md import load_loadavg as la

    return la()


def run_all(only: set[str] | None, res: Path, py: str) -> dict[str, Any]:
    """Every CPU bench with short defaults; returns {name: status} (also written to res/run_status.json)."""
    res.mkdir(parents=True, exist_ok=True)
    log = res / "make_bench.log"
    status: dict[str, Any] = {"loadavg_before": load_loadavg()}
    want = (lambda name: only is None or name in only or (name in ROBUSTNESS and "robustness" in only))
    threads = os.environ.get("GSAL_BENCH_THREADS", "2")
    if want("runtime"):
        demo = demo_bundle()
        cmd = [py, "bench/bench_runtime.py", "--images", "4", "--batch", "4", "--repeats", "3", "--threads", threads,
               "--variants", "--sweep", "--work", str(res / "runtime_work"), "--out", str(res / "runtime.json")]
        if demo:
            cmd += ["--bundle", str(demo[0]), "--pub", str(demo[1])]
        status["runtime"] = _run(cmd, 900, log)
    if want("server"):
        cmd = [py, "bench/bench_server.py", "--count", "32", "--max-seconds", "20", "--repeats", "2",
               "--out", str(res / "server.json")]
        demo = demo_bundle()
        if demo:  # the trained embedded bundle when `make demo` made one; else the untrained tiny scorer
            cmd += ["--bundle", str(demo[0]), "--trusted-key", str(demo[1])]
        status["server"] = _run(cmd, 900, log)
    if want("selection"):
        run_selection(py, res, log, status)
    if want("ingest"):
        run_ingest(py, res, log, status)
    run_robustness(py, res, log, status, want)
    status["loadavg_after"] = load_loadavg()
    status["finished_utc"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    prev = json.loads((res / "run_status.json").read_text()) if (res / "run_status.json").is_file() else {}
    (res / "run_status.json").write_text(json.dumps({**prev, **status}, indent=2) + "\n")
    return status


def _splice_server(res: Path, plot_dir: Path) -> tuple[list[str], dict[str, Any]]:
    data = bm._read(res / "server.json")
    bm.plots(None, data, {}, plot_dir)
    return bm.section_server(data)


_SPLICE = {  # re-measurable part -> (section heading prefix, headline prefix or None, renderer(res, plots))
    "server": ("## 3. ", "- gRPC stream vs in-process", _splice_server),
    "ingest": ("## 6. ", "- Ingest into the SQLite pool store",
               lambda res, _plots: bm.section_ingest(bm._read(res / "ingest.json"))),
    "robustness": (rb.HEADING[:6], None, lambda res, plots: (rb.section_robustness(res, plots), {})),
}


def splice(text: str, parts: set[str], res: Path, plot_dir: Path, report_dir: Path, measured: bool = True) -> str:
    """``text`` (an existing BENCHMARKS.md) with the sections and headline lines of ``parts`` (server,
    ingest) re-rendered from the JSON under ``res``, and a line under the header saying what was re-measured
    when, at which commit and load; every other row is left as it was measured."""
    lines = text.split("\n")
    heads: dict[str, Any] = {}
    parts = {("robustness" if p in ROBUSTNESS else p) for p in parts}
    for part in sorted(parts):
        sec_prefix, _, fn = _SPLICE[part]
        new, h = fn(res, plot_dir)
        heads.update(h)
        start = next((i for i, ln in enumerate(lines) if ln.startswith(sec_prefix)), None)
        if start is None:  # a report from before this section existed: append it
            while lines and not lines[-1].strip():
                lines.pop()
            lines += ["", *new]
            continue
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    if "robustness" in parts:  # section 7 no longer lists load_test/soak; re-render it only if it found nothing
        start = next((i for i, ln in enumerate(lines) if ln.startswith("## 7. ")), None)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines)) if start else 0
        if start is not None and any(ln.startswith("none found") for ln in lines[start:end]):
            lines[start:end] = bm.section_others(res)
    fresh = bm._headlines(heads)
    for part in sorted(parts):
        prefix = _SPLICE[part][1]
        if prefix is None:
            continue
        new_line = next(ln for ln in fresh if ln.startswith(prefix))
        idx = next((i for i, ln in enumerate(lines) if ln.startswith(prefix)), None)
        if idx is not None:
            lines[idx] = new_line
    verb = "Re-measured" if measured else "Re-rendered from the results already there (nothing re-run)"
    note = (f"**{verb} {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit "
            f"`{bm._git('rev-parse', '--short', 'HEAD')}`: {', '.join(sorted(parts))} only** (sections and headline "
            f"lines; load average {bm.load_loadavg()} when re-rendered); every other row is from the run above.")
    at = next(i for i, ln in enumerate(lines) if ln.startswith("## Headlines"))
    lines[at:at] = [note, ""]
    rel = os.path.relpath(plot_dir, report_dir)
    return "\n".join(lines).replace("](bench/plots/", f"]({rel}/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action=argparse.BooleanOptionalAction, default=True,
                    help="run the benches first (--no-run: render the JSON already in --results)")
    ap.add_argument("--only", default=None, help="comma-separated subset: runtime,server,selection,ingest,"
                    "load,fuzz,faults (robustness = the last three)")
    ap.add_argument("--results", type=Path, default=REPO / "artifacts" / "bench", help="folder of the benches' JSON")
    ap.add_argument("--gpu-results", type=Path, default=REPO / "artifacts" / "gpu_check",
                    help="bench/gpu_check.sh's output folder (its bench_runtime.json fills the GPU rows)")
    ap.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="the Markdown report")
    ap.add_argument("--plots", type=Path, default=REPO / "bench" / "plots", help="where the PNG plots go")
    ap.add_argument("--splice", action="store_true",
                    help="with --only server, ingest and/or robustness: replace only those sections and headline lines of the "
                    "existing --out, saying when and under what load they were re-measured")
    args = ap.parse_args(argv)
    from benchmarks_md import render

    only = set(args.only.split(",")) if args.only else None
    if args.splice and not (only and only <= {*_SPLICE, *ROBUSTNESS} and args.out.is_file()):
        ap.error("--splice needs --only server, ingest and/or robustness, and an existing --out")
    if args.run:
        print(f"make bench: results -> {args.results}", flush=True)
        run_all(only, args.results, sys.executable)
    if args.splice:
        assert only is not None
        args.out.write_text(splice(args.out.read_text(encoding="utf-8"), only, args.results, args.plots,
                                   args.out.parent, measured=args.run), encoding="utf-8")
        print(f"re-rendered {', '.join(sorted(only))} (sections) in {args.out}")
        return 0
    st = json.loads((args.results / "run_status.json").read_text()) if (args.results / "run_status.json").is_file() else {}
    text = render(args.results, args.gpu_results, args.plots, args.out.parent,
                  {"before": st.get("loadavg_before", "n/a"), "after": st.get("loadavg_after", "n/a")})
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
