"""Render BENCHMARKS.md from the benches' JSON (bench/make_benchmarks_md.py runs them; this only reads).

Every section says which command produced its numbers. Headlines are ratios of two things measured
side by side in one run (interleaved rounds), because the machine may be shared.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from benchmarks_md_robustness import section_robustness

NOT_MEASURED_GPU = "not measured here: no GPU (run bench/gpu_check.sh on a GPU machine)"
OTHER_BENCHES = {  # other benches' JSON, included when present: file stem -> (title, command)
    "backfill": ("Backfill slices/s (in-process vs Ray workers)", "make bench-backfill"),
    "ddp": ("DDP detector training (1 vs 2 processes)", "make bench-ddp"),
    "noise": ("Noise schedules: E_rec / V_den estimator spread vs K", "python bench/bench_noise.py"),
}  # load_test.json / soak.json: section 8 (benchmarks_md_robustness.py)


def load_loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _fmt(v: Any, nd: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "-"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if v != 0 and abs(v) < 0.001:
            return f"{v:.1e}"
        if abs(v) < 1:
            return f"{v:.3f}"
        return f"{v:.{nd}f}"
    return str(v)


def _table(headers: list[str], rows: Iterable[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
    return out + [""]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "n/a"


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("numpy", "torch", "onnxruntime", "grpc", "onnx"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing optional package is just reported
            out[mod] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> str:
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        return f"{kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        return "unknown"


# ---------------------------------------------------------------------------- sections
def _runtime_rows(rt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["backend"]: r for r in rt.get("rows", [])}


def section_cost(rt: dict[str, Any] | None, sel: dict[int, dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
    """GSAL vs entropy per slice and per AL round; the K/M/batch/screening sweep."""
    lines = ["## 1. GSAL scoring cost vs entropy (detector only), same backend", ""]
    head: dict[str, Any] = {}
    if not rt:
        return lines + [("not measured: artifacts/bench/runtime.json missing (`python bench/make_benchmarks_md.py "
                        "--only runtime`)"), ""], head
    rows = _runtime_rows(rt)
    lines += [(f"Command: `python bench/bench_runtime.py --variants --sweep` on bundle `{rt.get('bundle_id')}`, "
              f"{rt.get('images')} slices {rt.get('size')}x{rt.get('size')}, {rt.get('threads')} threads. Entropy's "
              "cost = the detector engine + its uncertainty, the same slices and backend."), ""]
    tab = []
    for name in ("onnxruntime-cpu", "torch-cpu"):
        r = rows.get(name)
        if r and "skipped" not in r:
            tab.append([name, r["p50_ms_batch1"], r["entropy_ms_per_slice"], f"{r['gsal_over_entropy_batch1']:.1f}x",
                        r.get("best_ms_batch1"), r.get("best_entropy_ms"),
                        f"{r['gsal_over_entropy_best']:.1f}x" if "gsal_over_entropy_best" in r else None])
    lines += _table(["backend", "GSAL p50 ms/slice (batch 1)", "entropy p50 ms", "GSAL / entropy (p50)",
                     "GSAL best ms", "entropy best ms", "GSAL / entropy (best)"], tab)
    lines += [("`best` = per slice the fastest of the repeats (the least disturbed sample on a shared machine), "
              "averaged over the slices; the headline uses it where present."), ""]
    ort = rows.get("onnxruntime-cpu")
    sweep = {s["case"]: s for s in rt.get("sweep", [])}
    if ort and "skipped" not in ort:
        head["gsal_over_entropy"] = ort.get("gsal_over_entropy_best", ort["gsal_over_entropy_batch1"])
        # a round scores batched: GSAL's batched ms/slice and entropy's, both from the interleaved loop; the
        # screening pass costs what the sweep measured relative to its own default case
        full_ms = 1e3 / ort["images_per_s_batched"]
        sw_def = sweep.get("default", {}).get("ms_per_slice")
        sw_scr = sweep.get("screening pass (M=0, no embedding)", {}).get("ms_per_slice")
        screen_ms = full_ms * sw_scr / sw_def if sw_def and sw_scr else None
        ent = ort["entropy_ms_per_slice"]
        lines += [(f"Per whole AL round (derived: N x GSAL's batched cost {full_ms:.0f} ms/slice + the measured selection "
                   f"time of section 5, vs N x entropy's {ent:.0f} ms/slice; b = 1000 picks; with screening, N slices "
                   "get the screening pass (its cost relative to full scoring from the sweep below) and 4b get the "
                   "rest):"), ""]
        rr = []
        for n in (10_000, 100_000):
            sel_s = (sel.get(n) or {}).get("seconds", {}).get("gsal_select_best", 0.0)
            g = n * full_ms / 1e3 + sel_s
            e = n * ent / 1e3
            row = [f"{n:,}", g / 3600, e / 3600, f"{g / e:.1f}x"]
            if screen_ms:
                s = n * screen_ms / 1e3 + min(n, 4000) * max(full_ms - screen_ms, 0) / 1e3 + sel_s
                row += [s / 3600, f"{s / e:.1f}x"]
            else:
                row += [None, None]
            rr.append(row)
            if n == 10_000:
                head["round_ratio"] = g / e
        lines += _table(["pool slices", "GSAL round h", "entropy round h", "GSAL / entropy",
                         "GSAL+screening round h", "screened / entropy"], rr)
    if sweep:
        lines += [("What M, K, screening and batch size do (ONNX Runtime, one at a time from the bundle's "
                  "defaults; `vs entropy` divides by the entropy cost of the same run):"), ""]
        lines += _table(["case", "batch", "ms/slice", "vs entropy"],
                        [[s["case"], s["batch"], s["ms_per_slice"], f"{s['vs_entropy']:.1f}x"] for s in sweep.values()])
        lines += ["![scoring cost sweep](bench/plots/scoring_sweep.png)", ""]
    return lines, head


def section_runtime(rt: dict[str, Any] | None, gpu: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    lines = ["## 2. ONNX Runtime vs PyTorch on the trained embedded bundle", ""]
    head: dict[str, Any] = {}
    if not rt:
        return lines + ["not measured: artifacts/bench/runtime.json missing", ""], head
    rows = _runtime_rows(rt)
    lines += [("All backends loaded in one process and timed in interleaved rounds (same slices, same load). ORT "
              "rows: graph optimization `all`, intra-op threads set explicitly, inter-op 1, sequential execution; "
              "`ort-old-defaults` is the session set-up before issue 18 (threads left to onnxruntime, idle "
              "threads spinning). IO binding is not used: on the CPU provider inputs are already zero-copy numpy "
              "buffers. Parity is end to end against the first backend (PyTorch): top-b picks, concepts/labels "
              "of every proposal, worst relative error of E_rec."), ""]
    tab = []
    for r in rt.get("rows", []):
        if "skipped" in r:
            continue
        s = r.get("ort_settings") or {}
        par = r.get("parity_vs_first")
        tab.append([r["backend"], s.get("intra_op_threads", r.get("threads")), s.get("graph_optimization", "-"),
                    s.get("allow_spinning", "-") if s else "-", r.get("best_ms_batch1"), r["p50_ms_batch1"],
                    r["p99_ms_batch1"],
                    r["images_per_s_batched"],
                    "reference" if par is None else ("same" if par["selection_same"] else "DIFFERENT"),
                    "-" if par is None else ("same" if par["structure_same"] else "DIFFERENT"),
                    None if par is None else par["max_rel"].get("e_rec")])
    lines += _table(["backend", "threads", "graph opt", "spinning", "best ms (batch 1)", "p50 ms", "p99 ms",
                     "img/s batched",
                     "top-b picks", "concepts", "E_rec max rel"], tab)
    ort, tch, old = rows.get("onnxruntime-cpu"), rows.get("torch-cpu"), rows.get("ort-old-defaults")
    def lat(r: dict[str, Any]) -> float:
        return float(r.get("best_ms_batch1") or r["p50_ms_batch1"])

    if ort and tch and "skipped" not in tch:
        head["ort_vs_torch"] = lat(tch) / lat(ort)
        head["ort_vs_torch_p50"] = tch["p50_ms_batch1"] / ort["p50_ms_batch1"]
        head["ort_vs_torch_batched"] = ort["images_per_s_batched"] / tch["images_per_s_batched"]
    if ort and old:
        head["ort_vs_old"] = lat(old) / lat(ort)
    for q in ("ort-int8-matmul", "ort-int8-conv"):
        if ort and q in rows:
            par = rows[q].get("parity_vs_first", {})
            head[q] = (lat(ort) / lat(rows[q]), bool(par.get("holds")),
                       ort.get("best_entropy_ms", ort["entropy_ms_per_slice"]),
                       rows[q].get("best_entropy_ms", rows[q]["entropy_ms_per_slice"]))
    lines += [("PyTorch's 2-thread intra-op pool is far more sensitive to CPU oversubscription than ORT's "
               "non-spinning pools, so ORT vs PyTorch depends strongly on the load average in the header (on an idle "
               "16-core CPU PyTorch was 3.9x faster than ORT's old defaults, issue 18). ORT vs its old defaults "
               "is the ratio that isolates the session fix."), ""]
    lines += ["Stage split of the batched run (ms per image):", ""]
    lines += _table(["backend", "detector", "diffusion (VAE+UNet)", "CLIP"],
                    [[r["backend"], *(r["ms_per_image_by_stage_batched"][k] for k in ("detector", "diffusion", "clip"))]
                     for r in rt.get("rows", []) if "skipped" not in r])
    lines += ["GPU rows:", ""]
    gpu_rows = {r["backend"]: r for r in (gpu or {}).get("rows", []) if "skipped" not in r}
    grow = []
    for label in ("tensorrt-fp16", "onnxruntime-cuda", "torch-cuda"):
        r = gpu_rows.get(label) or rows.get(label)
        if r and "skipped" not in r:
            grow.append([label, r.get("images_per_s_batch1"), r.get("images_per_s_batched",
                                                                    r.get(f"images_per_s_batch{r.get('batch', 8)}")),
                         "measured by bench/gpu_check.sh"])
        else:
            grow.append([label, None, None, NOT_MEASURED_GPU])
    lines += _table(["backend", "img/s batch 1", "img/s batched", "note"], grow)
    lines += ["![backends](bench/plots/runtime_backends.png)", ""]
    return lines, head


def section_server(sv: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    lines = ["## 3. gRPC station vs in-process scoring (loopback)", ""]
    head: dict[str, Any] = {}
    if not sv:
        return lines + ["not measured: artifacts/bench/server.json missing", ""], head
    meta = sv.get("meta", {})
    a = meta.get("args", {})
    interleaved = bool(meta.get("interleaved"))
    scorer = meta.get("scorer") or "untrained tiny scorer (torch; not a trained model)"
    trained = bool(meta.get("trained"))
    cmd = f"python bench/bench_server.py --count {a.get('count')} --max-seconds {a.get('max_seconds')}"
    if interleaved:
        cmd += f" --repeats {meta.get('repeats')}"
    if a.get("bundle"):
        cmd += f" --bundle {a.get('bundle')}"
    lines += [(f"Command: `{cmd}`. Scorer: **{scorer}**" + ("" if trained else
              " — **untrained**: these rows measure transport and batching around a tiny model, not the cost "
              "of the trained embedded bundle (no trained bundle was available: `make demo` makes one, and "
              "`make bench` then uses it)") + f". {a.get('size')}px slices, max batch {a.get('max_batch')}, "
              f"intra-op threads {a.get('threads')}."), ""]
    if interleaved:
        la = meta.get("loadavg_start_end") or [None, None]
        lines += [(f"In-process and server measurements interleaved: {meta.get('repeats')} repeats, each server "
                  "row measured right next to the library at the batch the server can form, the order "
                  "alternating between repeats; `ratio` = median over repeats of server slices/s / the adjacent "
                  f"in-process slices/s (per-repeat ratios in the last column). Load average at start "
                  f"{la[0]}, at end {la[1]}."), ""]
    else:
        lines += [("`ratio` = server slices/s / the better in-process run before and after the server levels "
                  "(**not interleaved**: an older bench_server.py)."), ""]
    tab = []
    for r in sv.get("rows", []):
        mode = r["mode"] + (f" ({r['phase']})" if "phase" in r else "")
        tab.append([mode, r.get("concurrency", "-"), r.get("batch", r.get("inprocess_batch")), r["slices_per_s"],
                    r["p50_ms"], r["p99_ms"], r.get("errors", 0), r.get("ratio_vs_inprocess"),
                    ", ".join(f"{x:.2f}" for x in r.get("ratios", [])) or None])
        if r["mode"] == "grpc-stream":
            head[f"stream_c{r['concurrency']}"] = r.get("ratio_vs_inprocess")
    head["server_trained"] = trained
    lines += _table(["mode", "concurrency", "batch", "slices/s", "p50 ms", "p99 ms", "errors", "ratio",
                     "per-repeat ratios"], tab)
    if any((r.get("ratio_vs_inprocess") or 0) > 1.05 for r in sv.get("rows", [])):
        lines += [("A ratio above 1 means the server formed larger or better-overlapped batches than the "
                   "adjacent single-threaded library call at that batch size, or the shared machine's load moved "
                   "between the two halves of a pair (see the per-repeat ratios); read it as 'no measurable "
                   "transport cost at this load', not as a speed-up."), ""]
    lines += ["![server latency](bench/plots/server_latency.png)", ""]
    return lines, head


def section_selection(sel: dict[int, dict[str, Any]], plan: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    lines = ["## 5. Selection time vs pool size", ""]
    head: dict[str, Any] = {}
    lines += [("Command: `python bench/bench_selection.py --n N --repeat 2 --no-trace` (one process per N; synthetic "
              "columnar pool, ~3 proposals per image, b = 1000; peak RSS = the process's ru_maxrss)."), ""]
    tab = []
    for n in (10_000, 100_000, 1_000_000, 10_000_000):
        r = sel.get(n)
        if r:
            s = r["seconds"]
            tab.append([f"{n:,}", f"{r['n_proposals']:,}", s["scorepool_construction"], s["fusion_plus_top_b_best"],
                        s["gsal_select_best"], r["peak_rss_mib"]["after_selection"] / 1024, "measured"])
        elif n == 10_000_000:
            why = (plan or {}).get("skipped") or "not run"
            pred = (plan or {}).get("predicted_peak_rss_gib")
            tab.append([f"{n:,}", None, None, None, None, pred, f"not measured: {why}"])
        else:
            tab.append([f"{n:,}", None, None, None, None, None, "not measured"])
    lines += _table(["images", "proposals", "ScorePool s", "fusion+top-b s", "gsal_select s", "peak RSS GiB", "note"], tab)
    if plan:
        lines += [(f"10^7 plan: peak RSS extrapolated linearly from 10^4 and 10^6 = {plan.get('predicted_peak_rss_gib')} "
                  f"GiB against a limit of {plan.get('limit_gib')} GiB (24 GiB, or 80% of MemAvailable if lower)."), ""]
    if 1_000_000 in sel:
        head["select_1m_s"] = sel[1_000_000]["seconds"]["gsal_select_best"]
    if 10_000_000 in sel and 1_000_000 in sel:
        head["select_10m_s"] = sel[10_000_000]["seconds"]["gsal_select_best"]
        head["select_growth"] = head["select_10m_s"] / head["select_1m_s"]
        head["rss_10m_gib"] = sel[10_000_000]["peak_rss_mib"]["after_selection"] / 1024
    lines += ["![selection growth](bench/plots/selection_growth.png)", ""]
    return lines, head


def section_ingest(ing: dict[str, Any] | None) -> tuple[list[str], dict[str, Any]]:
    lines = ["## 6. Ingest records/s into the pool store", ""]
    head: dict[str, Any] = {}
    if not ing:
        return lines + ["not measured: artifacts/bench/ingest.json missing", ""], head
    rows = ing.get("rows") or ing.get("cells") or []
    has_pg = any(r.get("backend") == "postgresql" for r in rows)
    lines += [(f"Source: `{ing.get('source', 'python bench/bench_ingest.py')}` (records with 4 proposals and an image "
              "reference, one durable commit per batch: SQLite WAL synchronous=FULL"
              + (", PostgreSQL synchronous_commit=on; the two backends interleaved cell by cell)." if has_pg else
                 "; SQLite alone in this run).")), ""]
    tab = []
    by = {(r.get("backend", "sqlite"), r.get("batch")): r for r in rows}
    for r in rows:
        rate = r.get("insert_per_s")
        backend = r.get("backend", "sqlite")
        sq = by.get(("sqlite", r.get("batch")), {}).get("insert_per_s")
        ratio = rate / sq if backend == "postgresql" and rate and sq else None
        tab.append([backend, r.get("batch"), r.get("records", ing.get("records")), rate, r.get("duplicate_per_s"),
                    ratio])
        if rate:
            key = "ingest_per_s" if backend == "sqlite" else "ingest_pg_per_s"
            if float(rate) > head.get(key, 0.0):
                head[key] = float(rate)
                if backend == "postgresql":
                    head["ingest_pg_ratio"] = ratio
    if not has_pg:
        why = ing.get("pg_not_measured") or "this run measured SQLite only"
        tab.append(["postgresql", None, None, None, None, None])
        head["ingest_pg_why"] = why
    lines += _table(["store", "batch", "records", "inserted/s", "duplicates/s", "PG / SQLite"], tab)
    if has_pg:
        lines += [(f"PostgreSQL {ing.get('postgresql')}: a throw-away local server (initdb + pg_ctl), as the tests "
                  "start it."), ""]
    else:
        lines += [f"PostgreSQL: not measured: {head['ingest_pg_why']}", ""]
    return lines, head


def section_others(res: Path) -> list[str]:
    lines = ["## 7. Other benches (their own JSON, included as found)", ""]
    found = False
    for stem, (title, cmd) in OTHER_BENCHES.items():
        d = _read(res / f"{stem}.json")
        if d is None:
            continue
        found = True
        lines += [f"### {title}", "", f"Command: `{cmd}`", ""]
        rows = d.get("rows") if isinstance(d, dict) else d
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            keys = [k for k in rows[0] if not isinstance(rows[0][k], dict | list)][:9]
            lines += _table(keys, [[r.get(k) for k in keys] for r in rows])
        else:
            lines += ["```json", json.dumps(d, indent=1)[:3000], "```", ""]
    if not found:
        lines += ["none found in this run's results folder (" + ", ".join(f"{s}.json" for s in OTHER_BENCHES) + ")", ""]
    return lines


# ---------------------------------------------------------------------------- plots
def plots(rt: dict[str, Any] | None, sv: dict[str, Any] | None, sel: dict[int, dict[str, Any]], out: Path) -> None:
    """PNG plots next to the report (skipped silently without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    out.mkdir(parents=True, exist_ok=True)
    if sel:
        ns = sorted(sel)
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.loglog(ns, [sel[n]["seconds"]["gsal_select_best"] for n in ns], "o-", label="gsal_select s")
        ax.set_xlabel("images in pool")
        ax.set_ylabel("seconds")
        ax2 = ax.twinx()
        ax2.semilogx(ns, [sel[n]["peak_rss_mib"]["after_selection"] / 1024 for n in ns], "s--", color="C1")
        ax2.set_ylabel("peak RSS GiB", color="C1")
        ax.set_title("selection time and peak RSS")
        fig.tight_layout()
        fig.savefig(out / "selection_growth.png", dpi=90)
        plt.close(fig)
    if rt and rt.get("sweep"):
        sw = rt["sweep"]
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.barh([s["case"] for s in sw], [s["ms_per_slice"] for s in sw])
        ax.set_xlabel("ms / slice (ONNX Runtime)")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "scoring_sweep.png", dpi=90)
        plt.close(fig)
    if rt:
        rows = [r for r in rt.get("rows", []) if "skipped" not in r]
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.barh([r["backend"] for r in rows], [r["p50_ms_batch1"] for r in rows])
        ax.set_xlabel("p50 ms / slice, batch 1")
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "runtime_backends.png", dpi=90)
        plt.close(fig)
    if sv:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for mode in ("grpc-unary", "grpc-stream"):
            rs = [r for r in sv.get("rows", []) if r["mode"] == mode]
            if rs:
                ax.plot([r["concurrency"] for r in rs], [r["p50_ms"] for r in rs], "o-", label=f"{mode} p50")
                ax.plot([r["concurrency"] for r in rs], [r["p99_ms"] for r in rs], "x--", label=f"{mode} p99")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrency")
        ax.set_ylabel("ms / slice")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "server_latency.png", dpi=90)
        plt.close(fig)


# ---------------------------------------------------------------------------- the report
def _headlines(h: dict[str, Any]) -> list[str]:
    def r(key: str, fmt: str = "{:.1f}x") -> str:
        v = h.get(key)
        return "not measured" if v is None else fmt.format(v)

    out = ["## Headlines (ratios measured side by side in one run)", ""]
    out.append(f"- GSAL scoring cost per slice / entropy's (detector only), ONNX Runtime, batch 1: "
               f"**{r('gsal_over_entropy')}**; per AL round over a 10,000-slice pool: **{r('round_ratio')}**")
    out.append(f"- ONNX Runtime (threads set, graph opt all, spinning off) vs PyTorch, batch-1 latency: "
               f"**{r('ort_vs_torch')} faster** (p50: {r('ort_vs_torch_p50')}); batched img/s: "
               f"**{r('ort_vs_torch_batched')}**; "
               f"vs ORT's old session defaults: **{r('ort_vs_old')} faster**")
    for q, what in (("ort-int8-matmul", "INT8 detector+CLIP (MatMul/Gemm)"), ("ort-int8-conv", "INT8 incl. Conv")):
        v = h.get(q)
        out.append(f"- {what} vs fp32 ORT, batch-1 latency: " + ("not measured" if v is None else
                   f"**{v[0]:.2f}x** speed (detector alone: {v[2]:.1f} -> {v[3]:.1f} ms), parity (concepts + top-b "
                   f"picks) {'holds' if v[1] else '**does not hold**'}"))
    out.append(f"- gRPC stream vs in-process throughput at concurrency 16: **{r('stream_c16', '{:.2f}')}** "
               f"(c=1: {r('stream_c1', '{:.2f}')}, c=4: {r('stream_c4', '{:.2f}')})"
               + ("" if h.get("server_trained") or h.get("stream_c16") is None else
                  ", **untrained** tiny scorer (transport cost only; section 3)"))
    out.append(f"- Selection: 10^6 images {r('select_1m_s', '{:.2f} s')}, 10^7 {r('select_10m_s', '{:.2f} s')} "
               f"(growth x{r('select_growth', '{:.1f}')} for 10x the pool), peak RSS at 10^7 "
               f"{r('rss_10m_gib', '{:.1f} GiB')}")
    out.append(f"- Ingest into the SQLite pool store: **{r('ingest_per_s', '{:,.0f} records/s')}** (best batch size); "
               + (f"PostgreSQL: not measured: {h['ingest_pg_why']}" if h.get("ingest_pg_why") else
                  f"PostgreSQL: **{r('ingest_pg_per_s', '{:,.0f} records/s')}** (best PG/SQLite at the same batch: "
                  f"{r('ingest_pg_ratio', '{:.2f}')})"))
    out.append(f"- TensorRT FP16 / ORT-CUDA: {NOT_MEASURED_GPU}" if not h.get("gpu") else
               "- TensorRT FP16 / ORT-CUDA: measured by bench/gpu_check.sh (section 2)")
    return out + [""]


def render(res: Path, gpu_res: Path, plot_dir: Path, report_dir: Path, loadavg: dict[str, str] | None = None) -> str:
    """BENCHMARKS.md text from the JSON under ``res`` (and ``gpu_res``); writes the plots to ``plot_dir``."""
    rt = _read(res / "runtime.json")
    sv = _read(res / "server.json")
    ing = _read(res / "ingest.json")
    plan = _read(res / "selection_plan.json")
    gpu_parts = [d for f in ("bench_runtime.json", "bench_runtime_trt.json") if (d := _read(gpu_res / f))]
    gpu = {"rows": [r for d in gpu_parts for r in d.get("rows", [])]} if gpu_parts else None
    sel = {n: d for n in (10_000, 100_000, 1_000_000, 10_000_000) if (d := _read(res / f"selection_{n}.json"))}
    plots(rt, sv, sel, plot_dir)
    rel = os.path.relpath(plot_dir, report_dir)
    cost, h1 = section_cost(rt, sel)
    runtime, h2 = section_runtime(rt, gpu)
    server, h3 = section_server(sv)
    selection, h5 = section_selection(sel, plan)
    ingest, h6 = section_ingest(ing)
    heads = {**h1, **h2, **h3, **h5, **h6, "gpu": bool(gpu)}
    v = _versions()
    la = loadavg or {}
    lines = [
        "# GSAL Edge benchmarks", "",
        (f"Generated by `make bench` (bench/make_benchmarks_md.py) on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"commit `{_git('rev-parse', '--short', 'HEAD')}`{' (+ uncommitted changes)' if _git('status', '--porcelain', '--untracked-files=no') else ''}."),
        "",
        (f"Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs, {_mem_gib()} RAM, {platform.platform()}; GPU: "
        f"{(rt or {}).get('machine', {}).get('gpu', 'none')}."),
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        (f"**This machine was shared with other work while the benches ran** (load average {la.get('before', 'n/a')} "
        f"before, {la.get('after', 'n/a')} after), so absolute times move with that load. The headline numbers "
        "are ratios of measurements taken side by side in one run (backends interleaved slice by slice), "
        "which is what to read."), "",
    ]
    lines += _headlines(heads)
    body = cost + runtime + server
    body += ["## 4. TensorRT FP16 / ONNX Runtime CUDA", "",
             "Rows in section 2. " + ("Measured on a GPU machine by bench/gpu_check.sh." if gpu else NOT_MEASURED_GPU
                                      + ": `bash bench/gpu_check.sh` there writes artifacts/gpu_check/bench_runtime.json, "
                                      "which this report then includes."), ""]
    body += selection + ingest + section_others(res) + section_robustness(res, plot_dir)
    text = "\n".join(lines + body)
    return text.replace("](bench/plots/", f"]({rel}/")

