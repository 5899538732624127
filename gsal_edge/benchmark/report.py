"""Benchmark reports from a run folder (see :mod:`gsal_edge.benchmark.al_benchmark`): nothing is recomputed.

``write_report(RUN_DIR)`` reads ``run.json`` and ``results/*/seed-*.json`` and writes

- ``report.md``: the paper's Table 1/2 layout (strategy x labeled share, mean ± std over seeds) for
  F1@0.5, mAP@50 and COCO AP; rare-class retrieval; labeled instances per class; per-class AP at the
  last budget; wall time per round (train / eval / score / select); sensitivity sweeps; the label mode;
- ``learning_curves.png`` (mean lines with ±1 std bands), ``rare_retrieval.png``,
  ``sensitivity.png`` (F1 vs each swept parameter, when a sweep ran), ``instances_f1.png`` (F1 vs the
  labeled instance count, every round) and ``gallery.png`` (thumbnails of the first round's picks with
  their one-line rationale).

Partial runs are reported as they stand: a cell averages the seeds that reached that budget and says
how many did when that is fewer than all.
"""

from __future__ import annotations

import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RunData", "instances_f1_correlation", "load_run", "metric_table", "write_report"]

METRICS = (("f1", "F1@0.5"), ("map50", "mAP@50"), ("ap", "COCO AP"))


@dataclass
class RunData:
    """A run folder's config and every finished round, by strategy and seed."""

    run_dir: Path
    info: dict[str, Any]
    results: dict[str, dict[int, list[dict[str, Any]]]] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return [s for s in self.info["strategies"] if s in self.results]

    @property
    def budgets(self) -> list[float]:
        return list(self.info["budgets"])

    @property
    def seeds(self) -> list[int]:
        return list(self.info["seeds"])

    def values(self, strategy: str, getter: Any) -> list[list[float]]:
        """Per budget index: the values of every seed that reached it (None/NaN dropped)."""
        out: list[list[float]] = [[] for _ in self.budgets]
        for rounds in self.results.get(strategy, {}).values():
            for rec in rounds:
                v = getter(rec)
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[rec["round"]].append(float(v))
        return out


def load_run(run_dir: str | Path) -> RunData:
    """Read ``run.json`` and every results file of a run folder."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a benchmark run folder")
    info = json.loads(path.read_text())
    data = RunData(run_dir, info)
    slugs = info.get("strategy_slugs", {})
    for key in info["strategies"]:
        folder = run_dir / "results" / slugs.get(key, key)
        for f in sorted(folder.glob("seed-*.json")):
            st = json.loads(f.read_text())
            if st.get("rounds"):
                data.results.setdefault(key, {})[int(st["seed"])] = st["rounds"]
    return data


def _mean_std(v: list[float]) -> tuple[float, float]:
    a = np.asarray(v, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=0)) if a.size > 1 else 0.0


def metric_table(run: RunData, getter: Any, fmt: str = "{:.3f}") -> list[list[str]]:
    """Rows (strategy, cells...) of mean ± std over seeds per budget; the best mean per column in bold."""
    means: dict[str, list[float | None]] = {}
    cells: dict[str, list[str]] = {}
    n_seeds = len(run.seeds)
    for s in run.strategies:
        vals = run.values(s, getter)
        means[s], cells[s] = [], []
        for v in vals:
            if not v:
                means[s].append(None)
                cells[s].append("–")
                continue
            m, sd = _mean_std(v)
            means[s].append(m)
            cell = f"{fmt.format(m)} ± {fmt.format(sd)}"
            if len(v) < n_seeds:
                cell += f" (n={len(v)})"
            cells[s].append(cell)
    for j in range(len(run.budgets)):
        col = [(means[s][j], s) for s in run.strategies if means[s][j] is not None]
        if len(col) > 1:
            best = max(m for m, _ in col)
            for m, s in col:
                if m == best:
                    cells[s][j] = f"**{cells[s][j]}**"
    return [[s, *cells[s]] for s in run.strategies]


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] * len(header)) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _retrain_text(cfg: dict[str, Any]) -> str:
    if cfg.get("retrain") == "finetune":
        return (f"trained from scratch in round 0 (~{cfg.get('train_iters')} iterations, shared by the strategies of "
                f"a seed), then each round fine-tuned from that strategy's previous-round detector on all its labels "
                f"(~{cfg.get('finetune_iters')} iterations)")
    return f"retrained from scratch each round (~{cfg.get('train_iters')} iterations)"


def _pct(b: float) -> str:
    return f"{100 * b:g}%"


def _get(path: str) -> Any:
    keys = path.split(".")

    def g(rec: dict[str, Any]) -> Any:
        cur: Any = rec
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    return g


# ------------------------------------------------------------------------------------------ plots


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_bands(run: RunData, panels: list[tuple[str, str]], title: str, path: Path, width: float,
                panel_titles: bool) -> Path:
    """One panel per (record key, label): each strategy's mean vs labeled share with a ±1 std band."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2))
    x = np.array(run.budgets) * 100
    for ax, (key, label) in zip(axes, panels):
        for s in run.strategies:
            vals = run.values(s, _get(key))
            idx = [i for i, v in enumerate(vals) if v]
            if not idx:
                continue
            m = np.array([np.mean(vals[i]) for i in idx])
            sd = np.array([np.std(vals[i]) for i in idx])
            (line,) = ax.plot(x[idx], m, marker="o", ms=3, label=s)
            ax.fill_between(x[idx], m - sd, m + sd, color=line.get_color(), alpha=0.15)
        ax.set_xlabel("labeled share of the pool (%)")
        ax.set_ylabel(label)
        if panel_titles:
            ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(run: RunData, out: Path) -> Path:
    """F1, mAP@50 and AP vs labeled share: mean per strategy with a ±1 std band."""
    return _plot_bands(run, [(f"metrics.{key}", label) for key, label in METRICS],
                       f"learning curves (mean ± std over {len(run.seeds)} seed(s))", out / "learning_curves.png",
                       15, panel_titles=True)


def plot_rare(run: RunData, out: Path) -> Path:
    """Rare classes with >= 1 labeled instance, and rare instances labeled, vs labeled share."""
    rare = run.info.get("rare_classes", [])
    return _plot_bands(run, [("rare.n_covered", f"rare classes covered (of {len(rare)})"),
                             ("rare.instances", "rare instances labeled")],
                       f"rare-class retrieval; rare = {', '.join(rare)}", out / "rare_retrieval.png", 11,
                       panel_titles=False)


def sensitivity_rows(run: RunData) -> dict[str, list[tuple[Any, str, list[float]]]]:
    """Per swept parameter: (value, strategy, final-budget F1 of each seed), by value.

    The sweep base (``sweep_base``, e.g. plain ``gsal``) is a point of every sweep at its own setting of
    the parameter when the run has it and no swept value already names it: without it a sweep of
    ``gamma=0.25,1`` would plot a line through two points that skips the default 0.5."""
    out: dict[str, list[tuple[Any, str, list[float]]]] = {}
    last = len(run.budgets) - 1
    base = run.info.get("config", {}).get("sweep_base", "gsal")
    base_cfg = (run.info.get("gsal_configs") or {}).get(base, {})
    for name, rows in (run.info.get("sweep") or {}).items():
        pts = [(v, key) for v, key in rows]
        field = "alpha" if name == "alpha_beta" else name
        if base in run.results and all(key != base for _, key in pts) and field in base_cfg:
            pts.append((base_cfg[field], base))
        try:
            pts.sort(key=lambda p: float(p[0]))
        except (TypeError, ValueError):
            pass  # a non-numeric parameter keeps the order it was given in
        out[name] = [(v, key, run.values(key, _get("metrics.f1"))[last] if key in run.results else [])
                     for v, key in pts]
    return out


def plot_sensitivity(run: RunData, out: Path) -> Path | None:
    """F1 at the last budget vs each swept parameter (mean ± std over seeds)."""
    rows = sensitivity_rows(run)
    if not rows:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows), 3.8), squeeze=False)
    for ax, (name, pts) in zip(axes[0], rows.items()):
        pts = [(float(v), f) for v, _, f in pts if f]
        if pts:
            xs = np.array([p[0] for p in pts])
            ms = np.array([np.mean(p[1]) for p in pts])
            sd = np.array([np.std(p[1]) for p in pts])
            order = np.argsort(xs)
            ax.errorbar(xs[order], ms[order], yerr=sd[order], marker="o", capsize=3)
        ax.set_xlabel(name)
        ax.set_ylabel(f"F1@0.5 at {_pct(run.budgets[-1])}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"one-at-a-time sensitivity (base {run.info['config'].get('sweep_base', 'gsal')})")
    fig.tight_layout()
    path = out / "sensitivity.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1, ties sharing their mean rank (for Spearman's rho)."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x), dtype=np.float64)
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def instances_f1_points(run: RunData) -> list[tuple[str, int, int, float, float]]:
    """(strategy, seed, round, labeled instances, F1@0.5) of every finished round after the first (round 0
    is shared, so it says nothing about a strategy)."""
    return [(s, seed, r["round"], float(r["instances"]), float(r["metrics"]["f1"]))
            for s in run.strategies for seed, rounds in run.results[s].items() for r in rounds
            if r["round"] > 0 and "instances" in r and r.get("metrics", {}).get("f1") is not None]


def instances_f1_correlation(run: RunData) -> dict[str, float] | None:
    """How far F1 follows the number of labeled instances *between strategies*: both are centred on their
    mean within each (seed, round) cell, so the budget and the seed's test split are taken out; Pearson and
    Spearman over the centred points. None when fewer than 3 points vary."""
    pts = instances_f1_points(run)
    cells: dict[tuple[int, int], list[int]] = {}
    for i, (_, seed, r, _, _) in enumerate(pts):
        cells.setdefault((seed, r), []).append(i)
    x = np.array([p[3] for p in pts])
    y = np.array([p[4] for p in pts])
    keep = [i for idx in cells.values() if len(idx) > 1 for i in idx]
    for idx in cells.values():
        x[idx] -= x[idx].mean()
        y[idx] -= y[idx].mean()
    x, y = np.round(x[keep], 9), np.round(y[keep], 9)  # centring leaves float noise: equal values must tie
    if len(keep) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return {"n": float(len(keep)), "pearson": float(np.corrcoef(x, y)[0, 1]),
            "spearman": float(np.corrcoef(_ranks(x), _ranks(y))[0, 1])}


def plot_instances_f1(run: RunData, out: Path) -> Path | None:
    """F1@0.5 vs labeled instances, every round after the first, one colour per strategy."""
    pts = instances_f1_points(run)
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for s in run.strategies:
        xy = np.array([(p[3], p[4]) for p in pts if p[0] == s])
        if len(xy):
            ax.scatter(xy[:, 0], xy[:, 1], s=12, alpha=0.7, label=s)
    ax.set_xlabel("defect instances in the labeled set")
    ax.set_ylabel("F1@0.5 (held-out test split)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.suptitle("what F1 rewards: labeled instances (every round, seed and strategy)")
    fig.tight_layout()
    path = out / "instances_f1.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_gallery(run: RunData, out: Path, per_strategy: int = 4) -> Path | None:
    """Thumbnails of each strategy's first picks (first seed, first round) with their rationale sentence."""
    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import to_unit_float

    rows = []
    for s in run.strategies:
        seeds = sorted(run.results[s])
        recs = run.results[s][seeds[0]] if seeds else []
        picks = next((r.get("picks") for r in recs if r.get("picks")), None)
        if picks:
            rows.append((s, seeds[0], picks[:per_strategy]))
    if not rows:
        return None
    plt = _plt()
    from matplotlib.patches import Rectangle

    ncol = max(len(p) for _, _, p in rows)
    cell_w, img, title_h, text_h, top = 3.6, 3.2, 0.45, 1.0, 0.6  # inches
    row_h = title_h + img + text_h
    W, H = cell_w * ncol, top + row_h * len(rows)
    fig = plt.figure(figsize=(W, H))
    window = (run.info.get("config", {}).get("data", {}) or {}).get("window")
    for i, (s, seed, picks) in enumerate(rows):
        for j, p in enumerate(picks):
            left = (j * cell_w + (cell_w - img) / 2) / W
            bottom = (H - top - i * row_h - title_h - img) / H
            ax = fig.add_axes((left, bottom, img / W, img / H))
            ax.set_xticks([])
            ax.set_yticks([])
            try:
                im = to_unit_float(load_image(p["path"]), tuple(window) if window else None)
                ax.imshow(im, cmap="gray", vmin=0, vmax=1)
                for box, _ in p.get("gt", []):
                    ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False,
                                           edgecolor="lime", linewidth=0.8))
            except (OSError, ValueError) as e:
                ax.text(0.5, 0.5, f"image unavailable\n{e}", ha="center", va="center", fontsize=6)
            classes = sorted({c for _, c in p.get("gt", [])}) or ["no defect"]
            ax.set_title(f"{s} (seed {seed}) #{p['rank']}: {p['image_id']}\ntruth: {', '.join(classes)}",
                         fontsize=6.5)
            ax.text(0.0, -0.02, "\n".join(textwrap.wrap(p.get("sentence", ""), 62)[:7]), transform=ax.transAxes,
                    fontsize=5.5, va="top", ha="left")
    fig.suptitle("first-round picks\n(green: revealed ground truth)",
                 fontsize=9, y=1 - 0.2 / H)
    path = out / "gallery.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------- report


def _box_iou(a: Any, b: Any) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def check_driver(pick: dict[str, Any], class_to_concept: dict[str, str], rare_concepts: set[str],
                 iou_thr: float = 0.1) -> dict[str, bool] | None:
    """Judge one pick's rationale against the revealed truth: did the proposal that drove it lie on a
    labeled box (IoU >= ``iou_thr``), was its Eq. 3 concept that box's class, and did it claim a rare
    concept (and was it right)? ``None`` for picks without a driving proposal."""
    prop = (pick.get("rationale") or {}).get("proposal")
    if not prop or "box" not in prop:
        return None
    gt = [(box, class_to_concept.get(c, c)) for box, c in pick.get("gt", [])]
    best = max(((_box_iou(prop["box"], box), c) for box, c in gt), default=(0.0, None))
    on_defect = best[0] >= iou_thr
    concept = prop.get("concept")
    right = on_defect and best[1] == concept
    margin = prop.get("margin")
    if margin is None and prop.get("similarity"):  # picks written before rationales carried the margin
        from gsal_edge.acquisition.selection import concept_margin

        close = concept_margin(prop["similarity"], concept)
        margin = None if close is None else close[2]
    return {"on_defect": on_defect, "concept_right": right, "claims_rare": concept in rare_concepts,
            "rare_right": concept in rare_concepts and right, "margin": margin}


def rationale_check_rows(run: RunData) -> list[list[str]]:
    """Per strategy with proposal-driven rationale: how often the driving proposal and its concept were true."""
    info = run.info
    c2c = dict(info.get("class_to_concept", {}))
    rare = {c2c.get(c, c) for c in info.get("rare_classes", [])}
    slugs = info.get("strategy_slugs", {})
    rows = []
    for s in run.strategies:
        limit = float((info.get("gsal_configs") or {}).get(s, {}).get("rationale_margin", 0.1))
        judged = []
        for seed in run.results[s]:
            folder = run.run_dir / "picks" / slugs.get(s, s) / f"seed-{seed}"
            gts = {r["image_id"]: r["gt"] for rnd in run.results[s][seed] for r in rnd.get("picks", [])}
            for f in sorted(folder.glob("round-*.json")):
                picks = json.loads(f.read_text()).get("picks", [])
                for p in picks:
                    j = check_driver({**p, "gt": gts.get(p["image_id"], [])}, c2c, rare)
                    if j is not None:
                        judged.append(j)
        if not judged:
            continue
        n = len(judged)
        claims = sum(j["claims_rare"] for j in judged)

        def right(group: list[dict[str, Any]]) -> str:
            return f"{np.mean([j['concept_right'] for j in group]):.2f} (n={len(group)})" if group else "–"

        with_margin = [j for j in judged if j.get("margin") is not None]
        rows.append([s, str(n), f"{np.mean([j['on_defect'] for j in judged]):.2f}",
                     f"{np.mean([j['concept_right'] for j in judged]):.2f}", str(claims),
                     f"{sum(j['rare_right'] for j in judged) / claims:.2f}" if claims else "–",
                     right([j for j in with_margin if j["margin"] >= limit]),
                     right([j for j in with_margin if j["margin"] < limit])])
    return rows


def _first_full_coverage(run: RunData, s: str) -> str:
    n_rare = len(run.info.get("rare_classes", []))
    out = []
    for seed, rounds in sorted(run.results.get(s, {}).items()):
        hit = next((r["budget"] for r in rounds if r["rare"]["n_covered"] >= n_rare), None)
        out.append(_pct(hit) if hit is not None else "not yet")
    return ", ".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and the PNGs into ``run_dir``; returns the report path."""
    run = load_run(run_dir)
    out = run.run_dir
    info, cfg = run.info, run.info.get("config", {})
    heads = ["strategy", *[_pct(b) for b in run.budgets]]
    lines: list[str] = [f"# GSAL active-learning benchmark: `{out.name}`", ""]
    modes = info.get("label_modes", {})
    mode_set = sorted(set(modes.values()))
    git = info.get("git", {})
    per_mode = "" if len(mode_set) == 1 else f" (per strategy: {', '.join(f'{k}={v}' for k, v in modes.items())})"
    counts = ", ".join(f"{c} {n}" for c, n in info.get("pool_class_counts", {}).items())
    lines += [
        (f"- preset `{cfg.get('preset')}`; data: {info['data'].get('path') or 'synthetic (generated)'} "
         f"({info['data']['n_images']} images: pool {info['pool_size']}, held-out test {info['test_size']}); "
         f"graph `{info.get('graph')}`"),
        f"- label mode: {', '.join(mode_set)}{per_mode}",
        (f"- detector `{cfg.get('detector')}` {_retrain_text(cfg)}; {len(run.seeds)} seed(s) {run.seeds}; "
         f"labeled share {_pct(run.budgets[0])} -> "
         f"{_pct(run.budgets[-1])} in steps of {_pct(cfg.get('step', 0))} ({info['labeled_sizes'][0]} -> "
         f"{info['labeled_sizes'][-1]} images)"),
        (f"- candidates per round: {'the whole unlabeled pool' if not cfg.get('candidates') else str(cfg['candidates']) + ' unlabeled images drawn at random (seeded by seed and round), the same rule for every strategy'}"),
        (f"- rare classes (bottom {_pct(cfg.get('rare_fraction', 0.2))} by pool instances, or configured): "
         f"{', '.join(info.get('rare_classes', []))}; pool instances per class: {counts}"),
        (f"- prior `{info['models']['prior']}` ({info['models']['prior_fingerprint']}), "
         f"CLIP `{info['models']['clip']}`; git {git.get('commit') or 'unknown'}"
         f"{' (local changes)' if git.get('dirty') else ''}; torch {info['versions'].get('torch')}, "
         f"threads {info.get('threads')}"),
        "",
    ]
    done = {s: sum(len(r) for r in run.results.get(s, {}).values()) for s in info["strategies"]}
    total = len(run.budgets) * len(run.seeds)
    unfinished = [f"{s} {done[s]}/{total}" for s in info["strategies"] if done[s] < total]
    if unfinished:
        lines += [f"**Partial run** (rounds finished: {', '.join(unfinished)}).", ""]
    for key, label in METRICS:
        lines += [f"## {label} on the held-out test split (mean ± std over seeds)", "",
                  _md_table(heads, metric_table(run, _get(f"metrics.{key}"))), ""]
    lines += ["![learning curves](learning_curves.png)", ""]
    lines += ["## Rare-class retrieval", "",
              "Rare classes with at least one labeled instance (mean ± std over seeds):", "",
              _md_table(heads, metric_table(run, _get("rare.n_covered"), "{:.2f}")), "",
              "Rare instances labeled:", "", _md_table(heads, metric_table(run, _get("rare.instances"), "{:.1f}")), "",
              "Labeled share at which every rare class had a labeled instance, per seed:", ""]
    lines += [f"- {s}: {_first_full_coverage(run, s)}" for s in run.strategies]
    lines += ["", "![rare-class retrieval](rare_retrieval.png)", ""]
    pick_heads = ["strategy", *[f"{_pct(a)}→{_pct(b)}" for a, b in zip(run.budgets, run.budgets[1:])]]

    def yield_get(r: dict[str, Any]) -> float | None:
        return float(np.mean([bool(p.get("gt")) for p in r["picks"]])) if r.get("picks") else None

    lines += ["Share of each round's picks with at least one defect (truth revealed after the pick):", "",
              _md_table(pick_heads, [row[:-1] for row in metric_table(run, yield_get, "{:.2f}")]), ""]
    check = rationale_check_rows(run)
    if check:
        lines += ["## Rationale check (each pick's driving proposal against the revealed truth, all seeds and rounds)",
                  "",
                  ("on a defect: the proposal that drove the pick overlaps a labeled box (IoU >= 0.1); concept right: "
                   "and its Eq. 3 concept is that box's class; rare claims: picks whose driving concept is a rare "
                   "class, and the share of those that were right; certain / uncertain: concept right among the "
                   "picks whose concept beat the runner-up's similarity by at least / less than `rationale_margin` "
                   "(the sentence calls the latter uncertain)."), "",
                  _md_table(["strategy", "picks", "on a defect", "concept right", "rare claims", "rare claims right",
                             "concept right, certain", "concept right, uncertain"], check), ""]
    classes = info.get("classes", [])
    last = len(run.budgets) - 1
    rows = []
    for s in run.strategies:
        finals = [rounds[-1] for rounds in run.results[s].values()]
        rows.append([s, *[f"{np.mean([r['instances_per_class'].get(c, 0) for r in finals]):.1f}" for c in classes]])
    lines += ["## Labeled instances per class at the last budget reached (mean over seeds)", "",
              _md_table(["strategy", *classes], rows), ""]
    lines += ["## Labeled instances and F1", "", "Defect instances in the labeled set (mean ± std over seeds):", "",
              _md_table(heads, metric_table(run, _get("instances"), "{:.1f}")), ""]
    corr = instances_f1_correlation(run)
    if corr:
        lines += [(f"Between strategies at the same seed and budget (both centred on each seed-and-round mean, "
                   f"{int(corr['n'])} rounds), F1 follows the labeled instance count with Pearson "
                   f"{corr['pearson']:.2f}, Spearman {corr['spearman']:.2f}. Near 1, F1 mostly rewards buying "
                   "slices that hold many defects, whatever else a strategy aims for (e.g. rare classes)."), ""]
    lines += ["![F1 vs labeled instances](instances_f1.png)", ""]
    typed = [s for s in run.strategies if modes.get(s, "typed") == "typed"]
    if typed and classes:
        rows = []
        for s in typed:
            row = [s]
            for c in classes:
                v = run.values(s, _get(f"metrics.per_class.{c}.ap50"))[last]
                row.append(f"{np.mean(v):.3f}" if v else "–")
            rows.append(row)
        lines += [f"## Per-class AP@50 at {_pct(run.budgets[-1])} (typed strategies, mean over seeds)", "",
                  _md_table(["strategy", *classes], rows), ""]
    rows = []
    for s in run.strategies:
        recs = [r for rounds in run.results[s].values() for r in rounds]
        fresh = [r for r in recs if not r.get("shared_round0")]
        def mean_t(k: str, rs: list[dict[str, Any]]) -> str:
            v = [r["times"][k] for r in rs if k in r.get("times", {})]
            return f"{np.mean(v):.1f}" if v else "–"
        scored = [r for r in recs if r.get("times", {}).get("score", 0) > 0]
        rows.append([s, mean_t("train", fresh or recs), mean_t("eval", fresh or recs), mean_t("score", scored),
                     f"{np.mean([r['times']['select'] for r in recs if 'picks' in r]):.3f}"
                     if any("picks" in r for r in recs) else "–", str(len(recs))])
    lines += ["## Wall time per round (seconds, mean)", "",
              ("Round 0 is trained, evaluated and scored once per seed and label mode and shared by all strategies; "
               "score = the station scorer over the round's candidates (the unlabeled pool or its seeded subset; "
               "image-level diffusion scores come from a cache after their first computation; core-set reads only "
               "cached whole-slice embeddings), select = fusion + selection."), "",
              _md_table(["strategy", "train", "eval", "score", "select", "rounds"], rows), ""]
    sens = sensitivity_rows(run)
    if sens:
        lines += [f"## Sensitivity (one at a time, F1@0.5 at {_pct(run.budgets[-1])})", ""]
        for name, pts in sens.items():
            r = [[str(v), f"`{k}`", (f"{np.mean(f):.3f} ± {np.std(f):.3f} (n={len(f)})" if f else "–")]
                 for v, k, f in pts]
            lines += [f"### {name}", "", _md_table([name, "strategy", "F1"], r), ""]
        lines += ["![sensitivity](sensitivity.png)", ""]
    lines += ["## Selection gallery", "", "![selection gallery](gallery.png)", "",
              "Each strategy's full picks and rationale: `picks/<strategy>/seed-<s>/round-<r>.json`.", ""]
    plot_curves(run, out)
    plot_rare(run, out)
    plot_sensitivity(run, out)
    plot_instances_f1(run, out)
    plot_gallery(run, out, int(cfg.get("gallery_picks", 4)))
    path = out / "report.md"
    tmp = path.with_name("report.md.tmp")
    tmp.write_text("\n".join(lines))
    tmp.replace(path)
    return path
