"""The demo's report: picks with rationale per round, coverage growth, metrics, a gallery (markdown + PNG)."""

from __future__ import annotations

import json
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def _truth(pool_dir: Path) -> dict[str, list[str]]:
    """slice file name -> true classes of its boxes (the simulated annotator's ground truth)."""
    coco = json.loads((pool_dir / "annotations.json").read_text())
    cats = {c["id"]: c["name"] for c in coco["categories"]}
    by_img: dict[int, list[str]] = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        by_img[a["image_id"]].append(cats[a["category_id"]])
    return {Path(im["file_name"]).name: by_img[im["id"]] for im in coco["images"]}


def write_report(out: Path, run_dir: Path, store_dir: Path, status: dict[str, Any], timings: dict[str, float],
                 total_s: float) -> Path:
    """Write ``run_dir/report.md`` (+ coverage.png, gallery.png) and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import to_unit_float
    from trainer.store.pool_store import PoolStore

    truth = _truth(out / "data" / "pool")
    pool_counts = Counter(c for cs in truth.values() for c in cs)
    classes = sorted(pool_counts, key=lambda c: pool_counts[c])
    store = PoolStore(store_dir)
    try:
        rounds = store.rounds()
        picks = {r["id"]: store.selection(r["id"]) for r in rounds}
        infos = {p.key: store.slice_info(p.key) for ps in picks.values() for p in ps}
    finally:
        store.close()
    seed = json.loads((run_dir / "seed_labels.json").read_text())
    seed_names = {Path(im["file_name"]).name for im in seed["images"]}
    cum = Counter(c for n in seed_names for c in truth.get(n, []))
    coverage_rows = [("seed", dict(cum))]
    lines = ["# GSAL Edge demo report", "",
             f"Total time {total_s / 60:.1f} min. Pool: {len(truth)} slices; true instances per class: "
             + ", ".join(f"{c} {pool_counts[c]}" for c in classes) + ".", ""]
    for r in rounds:
        ps = picks[r["id"]]
        found = Counter()
        lines += [f"## Round {r['id']} ({r['strategy']}, budget {r['budget']})", "",
                  "| rank | slice | A(x) | true classes | why |", "|---|---|---|---|---|"]
        for p in ps:
            name = p.key.partition("/")[2]
            tc = truth.get(name, [])
            found.update(tc)
            sentence = p.rationale.get("sentence") or p.rationale.get("summary") or ""
            lines.append(f"| {p.rank} | {name} | {p.score:.3f} | {', '.join(tc) or 'none'} | {sentence} |")
        cum.update(found)
        coverage_rows.append((f"round {r['id']}", dict(cum)))
        lines += ["", (f"Picked instances this round: {dict(found) or 'none'}; slices with a defect: "
                  f"{sum(1 for p in ps if truth.get(p.key.partition('/')[2]))}/{len(ps)}."), ""]
    lines += ["## Coverage (labeled instances per class, cumulative)", "",
              "| after | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for name, cnt in coverage_rows:
        lines.append(f"| {name} | " + " | ".join(str(cnt.get(c, 0)) for c in classes) + " |")
    lines += ["", "![coverage](coverage.png)", "", "## Bundles and validation metrics", "",
              "| role | bundle | metrics |", "|---|---|---|"]
    for b in status.get("bundles", []):
        lines.append(f"| {b.get('role')} | {str(b.get('bundle_id'))[:19]} | {json.dumps(b.get('metrics') or {})} |")
    lines += ["", "## Time per step", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in timings.items()]
    lines += ["", "## Gallery of picks", "", "![gallery](gallery.png)", ""]

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(classes))
    w = 0.8 / max(1, len(coverage_rows))
    for i, (name, cnt) in enumerate(coverage_rows):
        ax.bar(x + i * w, [cnt.get(c, 0) for c in classes], w, label=name)
    ax.set_xticks(x + 0.4 - w / 2, classes)
    ax.set_ylabel("labeled instances")
    ax.set_title("Coverage per class (rarest first)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(run_dir / "coverage.png", dpi=110)
    plt.close(fig)

    flat = [(r_id, p) for r_id, ps in picks.items() for p in ps][:16]
    cols = 4
    rows_n = max(1, (len(flat) + cols - 1) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(cols * 3.2, rows_n * 4.3))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, (r_id, p) in zip(np.atleast_1d(axes).ravel(), flat):
        info = infos[p.key]
        if info.image_path is not None and Path(info.image_path).exists():
            ax.imshow(to_unit_float(load_image(info.image_path)), cmap="gray")
        top = (p.rationale.get("proposal") or {}).get("box")
        if top:
            x1, y1, x2, y2 = top
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="yellow", lw=1.2))
        name = p.key.partition("/")[2]
        sentence = p.rationale.get("sentence") or ""
        ax.set_title(f"r{r_id} #{p.rank} {name}\ntrue: {', '.join(truth.get(name, [])) or 'none'}", fontsize=7)
        ax.text(0, -0.02, textwrap.fill(sentence, 48), transform=ax.transAxes, fontsize=5.5, va="top")
    fig.tight_layout(h_pad=3.0)
    fig.savefig(run_dir / "gallery.png", dpi=110)
    plt.close(fig)

    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
