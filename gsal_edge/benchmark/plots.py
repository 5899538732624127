"""The report's figures (matplotlib, Agg): learning curves, rare-class retrieval, sensitivity, labeled
instances vs F1, and the gallery of first-round picks with their rationale."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.benchmark.run_data import (
    METRICS,
    RunData,
    instances_f1_points,
    pct,
    record_field,
    sensitivity_rows,
)

__all__ = ["plot_curves", "plot_gallery", "plot_instances_f1", "plot_rare", "plot_sensitivity"]


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: Path, dpi: int = 110, tight: bool = True) -> Path:
    """Lay out (``tight``), write ``path`` and close the figure."""
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _plot_bands(run: RunData, panels: list[tuple[str, str]], title: str, path: Path, width: float,
                panel_titles: bool) -> Path:
    """One panel per (record key, label): each strategy's mean vs labeled share with a ±1 std band."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.2))
    x = np.array(run.budgets) * 100
    for ax, (key, label) in zip(axes, panels):
        for s in run.strategies:
            vals = run.values(s, record_field(key))
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
    return _save(plt, fig, path)


def plot_curves(run: RunData, out: Path) -> Path:
    """Micro and macro F1, mAP@50 and AP vs labeled share: mean per strategy with a ±1 std band."""
    return _plot_bands(run, [(f"metrics.{key}", label) for key, label in METRICS],
                       f"learning curves (mean ± std over {len(run.seeds)} seed(s))", out / "learning_curves.png",
                       4.8 * len(METRICS), panel_titles=True)


def plot_rare(run: RunData, out: Path) -> Path:
    """Rare classes with >= 1 labeled instance, and rare instances labeled, vs labeled share."""
    rare = run.info.get("rare_classes", [])
    return _plot_bands(run, [("rare.n_covered", f"rare classes covered (of {len(rare)})"),
                             ("rare.instances", "rare instances labeled")],
                       f"rare-class retrieval; rare = {', '.join(rare)}", out / "rare_retrieval.png", 11,
                       panel_titles=False)


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
        ax.set_ylabel(f"F1@0.5 at {pct(run.budgets[-1])}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"one-at-a-time sensitivity (base {run.info['config'].get('sweep_base', 'gsal')})")
    return _save(plt, fig, out / "sensitivity.png")


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
    return _save(plt, fig, out / "instances_f1.png")


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
    return _save(plt, fig, out / "gallery.png", dpi=100, tight=False)
