"""BENCHMARKS.md section 8: load test, soak, fault tests, fuzzing and the security claims (only reads files).

Sources, all under ``--results`` (bench/make_benchmarks_md.py writes them; nothing here runs a test):

- load test / soak: ``load_test.json`` or ``load_test/load.json``, ``soak.json`` or ``soak/load.json`` (the
  JSON bench/load_test.py writes as ``<out>/load.json``; the newer by its ``date`` wins when both exist). A
  ``provenance`` object in the JSON, or a ``commit.txt`` next to it (``make soak`` writes one), says at which
  commit it ran. The RSS curves are drawn from its ``rss_samples``.
- faults: ``faults/*.json``, one per fault test (tests/support/bench_figures.py, written when
  ``GSAL_BENCH_RESULTS`` is set) joined with pytest's ``faults/junit.xml`` (passed / failed / skipped, seconds).
  Figures come from the tests of this run rather than from docs/reliability.md's table, because a hand-kept
  table goes stale silently (docs/security.md still called a passing test "xfail"); a test that did not run
  says so with pytest's reason.
- fuzzing: ``fuzz/fuzz-<target>.json`` (tests/fuzz/fuzz_support.py ``Tally``, via ``GSAL_FUZZ_REPORT_DIR``)
  and ``fuzz/junit.xml``.
- security: every table of docs/security.md whose last column is ``test``, each cited test looked up in
  tests/ (a claim whose test does not exist is flagged, not hidden).
"""

from __future__ import annotations

import calendar
import json
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
HEADING = "## 8. Load, soak, faults, fuzzing, security"
LOAD_CMD = "python bench/load_test.py --streams 4 --duration 30"
SOAK_CMD = "make soak (python bench/load_test.py --streams 4 --duration 600 --sample-s 2 --max-slope-mb-min 1.0)"
FAULT_CMD = ("GSAL_BENCH_RESULTS=<results> python -m pytest -s -m slow --timeout=600 tests/trainer/test_ingest_crash.py "
             "tests/trainer/test_faults.py tests/server/test_station_faults.py --junitxml=<results>/faults/junit.xml")
FUZZ_CMD = ("GSAL_FUZZ_REPORT_DIR=<results>/fuzz python -m pytest -s --timeout=600 tests/fuzz "
            "--junitxml=<results>/fuzz/junit.xml")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _table(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return out + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows] + [""]


# ---------------------------------------------------------------------------------------- load test / soak
def find_run(res: Path, stem: str) -> tuple[dict[str, Any] | None, Path | None]:
    """``<stem>.json`` or ``<stem>/load.json`` under ``res``; the newer (by its ``date``) when both exist."""
    found = [(d, p) for p in (res / f"{stem}.json", res / stem / "load.json") if isinstance(d := _read(p), dict)]
    if not found:
        return None, None
    return max(found, key=lambda dp: str(dp[0].get("date", "")))


def provenance(d: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """What the run says about itself: ``provenance`` in the JSON, else the commit in a ``commit.txt`` beside it."""
    prov = dict(d.get("provenance") or {})
    if "commit" not in prov and path is not None and (path.parent / "commit.txt").is_file():
        prov["commit"] = (path.parent / "commit.txt").read_text().strip()
    return prov


def _window(d: dict[str, Any]) -> str:
    """'YYYY-MM-DD HH:MM-HH:MM UTC' from the run's end ``date`` and its duration."""
    try:
        end = time.strptime(d["date"], "%Y-%m-%d %H:%M:%S UTC")
    except (KeyError, ValueError):
        return str(d.get("date", "date not recorded"))
    start = time.gmtime(calendar.timegm(end) - float(d.get("duration_s") or 0))
    return f"{time.strftime('%Y-%m-%d %H:%M', start)}-{time.strftime('%H:%M', end)} UTC"


def _codes(c: dict[str, int]) -> str:
    """``0`` or ``7151 (RESOURCE_EXHAUSTED 7151)``."""
    return f"{sum(c.values())}" + (" (" + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + ")" if c else "")


def _rss_line(r: dict[str, Any]) -> str:
    if not r or not r.get("samples"):
        return "not sampled"
    return (f"{r.get('start_mb')} MB at start, {r.get('end_mb')} MB at end (peak {r.get('peak_mb')}, last 80% from "
            f"{r.get('tail_min_mb')}), slope {r.get('slope_mb_per_min_last80')} MB/min over the last 80% "
            f"({r['samples']} samples)")


def section_load(title: str, cmd: str, d: dict[str, Any] | None, path: Path | None, png: str | None) -> list[str]:
    """One load run (the 30 s load test or the 10-minute soak) as a figure table, plus its RSS plot."""
    lines = [f"### {title}", ""]
    if d is None:
        return lines + [(f"not measured: no {title.split()[0].lower()} JSON in this run's results folder "
                        f"(`{cmd}`)"), ""]
    c = d.get("config", {})
    prov = provenance(d, path)
    where = f"commit `{prov['commit']}`" if prov.get("commit") else "commit not recorded"
    lines += [f"Command: `{prov.get('command', cmd)}`. Measured {_window(d)} at {where}"
              + (f"; {prov['note']}" if prov.get("note") else "")
              + (f"; load average at the end {', '.join(f'{x:.1f}' for x in d['machine']['loadavg_at_end'])}"
                 if d.get("machine", {}).get("loadavg_at_end") else "") + ".", ""]
    lines += [(f"{c.get('streams')} streams x {c.get('inflight')} in flight, {c.get('slice_size')}x{c.get('slice_size')} "
              f"slices, {'the toy bundle' if not c.get('bundle') else c.get('bundle')}, {c.get('backend')} with "
              f"{c.get('threads')} thread(s), queue limit {c.get('queue_size')}, RPC limit {c.get('workers')}, "
              f"station forwarding to the trainer: {'yes' if c.get('trainer') else 'no'}, spool on: "
              f"{'yes' if d.get('station_spool') else 'no'}."), ""]
    errs = d.get("item_errors") or {}
    rpcs = d.get("rpc_errors") or {}
    rows = [["duration", f"{d.get('duration_s')} s"],
            ["slices answered OK / sent", f"{d.get('ok')} / {d.get('sent')}: {d.get('slices_per_s')} slices/s"],
            ["latency p50 / p99", f"{d.get('p50_ms')} / {d.get('p99_ms')} ms"],
            ["errors (per slice; per call)", f"{_codes(errs)}; {_codes(rpcs)}"
             + (" (below both limits: must be 0)" if d.get("below_limits") else " (above a limit: RESOURCE_EXHAUSTED expected)")],
            ["hangs (unanswered past the deadline, stuck streams)", d.get("hangs")],
            ["trainer stored", d.get("trainer_stored")],
            ["acknowledged records lost", d.get("acknowledged_lost")],
            ["station exit code (SIGTERM)", d.get("station_exit_code")]]
    for name in ("station", "trainer"):
        rows.append([f"{name} RSS", _rss_line((d.get("rss") or {}).get(name, {}))])
    lc = d.get("leak_check")
    if lc:
        verdict = "**passes**" if lc.get("ok") else "**fails**"
        rows.append(["leak check", (f"{verdict}: every slope over the last 80% below {lc.get('bound_mb_per_min')} "
                     f"MB/min ({', '.join(f'{k} {v}' for k, v in (lc.get('slopes') or {}).items())})")])
    else:
        rows.append(["leak check", ("not applied to this run (no --max-slope-mb-min; a 30 s slope is warm-up, "
                     "the 10-minute soak is the leak check)")])
    lines += _table(["", "figure"], rows)
    if png:
        lines += [f"![{title} RSS](bench/plots/{png})", ""]
    return lines


def plot_rss(d: dict[str, Any], path: Path, title: str) -> bool:
    """RSS of the station and the trainer over time (one panel each) from ``rss_samples``; False without data
    or matplotlib."""
    samples = {k: v for k, v in (d.get("rss_samples") or {}).items() if v}
    if not samples:
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(samples), 1, figsize=(7, 2.2 * len(samples) + 0.6), sharex=True, squeeze=False)
    dur = float(d.get("duration_s") or max(s[-1][0] for s in samples.values()))
    bound = (d.get("leak_check") or {}).get("bound_mb_per_min")
    for ax, (name, smp) in zip(axes[:, 0], samples.items(), strict=True):
        slope = (d.get("rss") or {}).get(name, {}).get("slope_mb_per_min_last80")
        ax.plot([s[0] for s in smp], [s[1] for s in smp], lw=1, label=f"{name}: slope {slope} MB/min (last 80%)")
        tail = [s for s in smp if s[0] >= 0.2 * dur]
        if len(tail) >= 3 and slope is not None:  # the least-squares line the leak check judges
            t0 = sum(s[0] for s in tail) / len(tail)
            m0 = sum(s[1] for s in tail) / len(tail)
            ends = (tail[0][0], tail[-1][0])
            ax.plot(ends, [m0 + slope * (x - t0) / 60.0 for x in ends], "--", color="C1", lw=1)
        ax.axvline(0.2 * dur, color="grey", ls=":", lw=1)
        ax.set_ylabel("RSS MB")
        ax.legend(loc="lower right", fontsize=7)
    axes[-1, 0].set_xlabel("seconds since the load started (dotted: start of the last 80%)")
    fig.suptitle(title + (f" (leak bound {bound} MB/min)" if bound else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------- pytest results
def junit_cases(path: Path) -> tuple[list[dict[str, Any]], float | None]:
    """Test cases of a pytest JUnit XML (file stem, name, outcome, message, seconds) and the session's time."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return [], None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    cases = []
    for tc in root.iter("testcase"):
        outcome, msg = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = tc.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                msg = (el.get("message") or (el.text or "")).strip().splitlines()[0][:200] if (
                    el.get("message") or el.text) else ""
                break
        cases.append({"stem": tc.get("classname", "").split(".")[-1], "name": tc.get("name", ""),
                      "outcome": outcome, "message": msg, "seconds": float(tc.get("time") or 0)})
    total = sum(float(s.get("time") or 0) for s in suites) if suites else None
    return cases, total


def _key(nodeid: str) -> tuple[str, str]:
    """(file stem, test name) of ``tests/x/test_y.py::test_z[p]``."""
    file, _, name = nodeid.partition("::")
    return Path(file).stem, name.split("::")[-1]


def _outcome(case: dict[str, Any] | None) -> str:
    if case is None:
        return "no JUnit result"
    text = f"{case['outcome']} ({case['seconds']:.0f} s)"
    return text + (f": {case['message']}" if case["message"] and case["outcome"] != "passed" else "")


def section_faults(res: Path) -> list[str]:
    """fault | test | figure | outcome, from this run's fault JSON and JUnit XML."""
    lines = ["### Fault tests", ""]
    folder = res / "faults"
    figs = [d for p in sorted(folder.glob("*.json")) if isinstance(d := _read(p), dict) and "figure" in d]
    cases, total = junit_cases(folder / "junit.xml")
    if not figs and not cases:
        return lines + [f"not measured: no fault results in this run's results folder (`{FAULT_CMD}`)", ""]
    lines += [f"Command: `{FAULT_CMD}`" + (f" ({total:.0f} s in this run)." if total else "."), "",
              ("Each test writes its figure (tests/support/bench_figures.py) before its final assertions, so a "
               "failing run shows the exact failure; the outcome column is pytest's."), ""]
    by_key = {(c["stem"], c["name"]): c for c in cases}
    rows, seen = [], set()
    for d in figs:
        k = _key(d["test"])
        seen.add(k)
        rows.append([d["fault"], f"`{d['test']}`", d["figure"], _outcome(by_key.get(k))])
    for c in cases:
        if (c["stem"], c["name"]) not in seen:
            rows.append([c["name"], f"`{c['stem']}.py::{c['name']}`", "no figure recorded", _outcome(c)])
    return lines + _table(["fault", "test", "figure", "outcome"], rows)


def section_fuzz(res: Path) -> list[str]:
    """target | test | inputs tried | how they ended, from the fuzz tests' JSON."""
    lines = ["### Fuzzing (Hypothesis)", ""]
    folder = res / "fuzz"
    docs = [d for p in sorted(folder.glob("fuzz-*.json")) if isinstance(d := _read(p), dict)]
    cases, total = junit_cases(folder / "junit.xml")
    if not docs:
        return lines + [f"not measured: no fuzz-*.json in this run's results folder (`{FUZZ_CMD}`)", ""]
    seeds = {d.get("seed") for d in docs}
    lines += [f"Command: `{FUZZ_CMD}`" + (f" ({total:.0f} s in this run)" if total else "")
              + (", default example counts, `derandomize=True` (the same inputs on every run)" if seeds == {None}
                 else f", seeds {sorted(str(s) for s in seeds)}") + ".", ""]
    if cases:
        n = {o: sum(c["outcome"] == o for c in cases) for o in ("passed", "failed", "error", "skipped")}
        bad = [c for c in cases if c["outcome"] in ("failed", "error")]
        lines += [f"pytest: {len(cases)} tests, " + ", ".join(f"{v} {k}" for k, v in n.items() if v)
                  + (": " + "; ".join(f"`{c['name']}`: {c['message']}" for c in bad) if bad else "") + ".", ""]
    rows = []
    for d in docs:
        oc = d.get("outcomes") or {}
        top = sorted(oc.items(), key=lambda kv: -kv[1])
        rows.append([d.get("target"), f"`{d['test']}`" if d.get("test") else "-", d.get("inputs"),
                     ", ".join(f"{k} {v}" for k, v in top[:5]) + (f", ... ({len(top)} kinds)" if len(top) > 5 else ""),
                     d.get("seconds")])
    rows.append(["**total**", "", sum(int(d.get("inputs") or 0) for d in docs), "", None])
    return lines + _table(["target", "test", "inputs tried", "how they ended", "s"], rows)


# ---------------------------------------------------------------------------------------- security claims
_TOKEN = re.compile(r"`([^`]+)`")


def _find_test(token: str, context: Path | None, repo: Path) -> tuple[bool, Path | None]:
    """Does the test cited as ``token`` (``path::name``, ``file.py::name``, ``file.py``, ``name``) exist?"""
    file, _, name = token.partition("::") if ".py" in token else ("", "", token)
    name = name.split("[")[0].split("::")[-1]
    tests = repo / "tests"
    if file:
        cands = [repo / file] if "/" in file else sorted(tests.rglob(file))
        cands = [c for c in cands if c.is_file()]
        if not cands:
            return False, None
        if not name:
            return True, cands[0]
    else:
        cands = ([context] if context else []) + sorted(tests.rglob("test_*.py"))
    pat = re.compile(rf"^\s*(async\s+)?def {re.escape(name)}\b", re.MULTILINE)
    for c in cands:
        if pat.search(c.read_text(encoding="utf-8", errors="replace")):
            return True, c
    return False, cands[0] if file else None


def security_claims(doc: Path, repo: Path = REPO) -> list[dict[str, Any]]:
    """Every row of a docs/security.md table whose last column is ``test``: section, claim, the cited tests and
    those that do not exist in ``repo``/tests."""
    try:
        text = doc.read_text(encoding="utf-8")
    except OSError:
        return []
    out, section, header = [], "", None
    for ln in text.splitlines():
        if ln.startswith("## "):
            section, header = ln[3:].strip(), None
            continue
        if not ln.startswith("|"):
            header = None
            continue
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if header is None:
            header = cells
            continue
        if set("".join(cells)) <= set("-: ") or header[-1].lower() != "test":
            continue
        test = cells[-1]
        claim = " — ".join(f"{h}: {c}" if len(header) > 2 else c for h, c in zip(header[:-1], cells[:-1], strict=False))
        tokens = [t for t in _TOKEN.findall(test) if t.startswith("test") or ".py" in t]
        missing, context = [], None
        for t in tokens:
            ok, where = _find_test(t, context, repo)
            context = where or context
            if not ok:
                missing.append(t)
        out.append({"section": section, "claim": claim, "test": test, "tests": tokens, "missing": missing})
    return out


def section_security(doc: Path, repo: Path = REPO) -> list[str]:
    lines = ["### Security claims and their tests", ""]
    claims = security_claims(doc, repo)
    if not claims:
        return lines + [f"not found: no claim | test table in {doc}", ""]
    missing = [c for c in claims if c["missing"] or not c["tests"]]
    lines += [(f"Every claim of docs/security.md with its test ({len(claims)} claims; read from that page, each "
               f"cited test looked up in tests/: {len(claims) - len(missing)} found"
               + (f", **{len(missing)} not found**" if missing else "") + "). The tests run in `make test`."), ""]
    rows = []
    for c in claims:
        found = ("**not found: " + ", ".join(c["missing"]) + "**" if c["missing"] else
                 "**no test cited**" if not c["tests"] else "yes")
        rows.append([c["section"], c["claim"], c["test"], found])
    return lines + _table(["section", "claim", "test", "test exists"], rows)


# ---------------------------------------------------------------------------------------- the section
def section_robustness(res: Path, plot_dir: Path, repo: Path = REPO) -> list[str]:
    """Section 8 of BENCHMARKS.md; draws ``load_rss.png`` / ``soak_rss.png`` into ``plot_dir``."""
    lines = [HEADING, ""]
    for stem, title, cmd, png in (("load_test", "Load test (30 s)", LOAD_CMD, "load_rss.png"),
                                  ("soak", "Soak (10 minutes): the leak check", SOAK_CMD, "soak_rss.png")):
        d, path = find_run(res, stem)
        drawn = d is not None and plot_rss(d, plot_dir / png, f"{title}: RSS over time")
        lines += section_load(title, cmd, d, path, png if drawn else None)
    lines += section_faults(res) + section_fuzz(res) + section_security(repo / "docs" / "security.md", repo)
    return lines
