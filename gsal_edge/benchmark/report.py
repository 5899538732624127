"""Benchmark reports from a run folder (see :mod:`gsal_edge.benchmark`): nothing is recomputed.

``write_report(RUN_DIR)`` reads ``run.json`` and ``results/*/seed-*.json`` and writes

- ``report.md``: the paper's Table 1/2 layout (strategy x labeled share, mean ± std over seeds) for
  micro and macro F1@0.5 (at the score thresholds chosen on the labeled validation split), mAP@50 and
  COCO AP; the round cost of each strategy relative to entropy's; rare-class retrieval; labeled instances per class; per-class AP at the
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
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.benchmark.plots import (
    plot_curves,
    plot_gallery,
    plot_instances_f1,
    plot_rare,
    plot_sensitivity,
)
from gsal_edge.benchmark.run_data import (
    METRICS,
    RunData,
    instances_f1_correlation,
    load_run,
    pct,
    record_field,
    round_cost_ratios,
    sensitivity_rows,
)

__all__ = ["check_driver", "metric_table", "rationale_check_rows", "write_report"]


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


def _threshold_text(info: dict[str, Any], cfg: dict[str, Any]) -> str:
    if cfg.get("f1_threshold", "validation") == "test_oracle" or not info.get("val_size"):
        return ("- F1 score threshold: **the best on the test split itself** (legacy `f1_threshold: test_oracle`, "
                "optimistic); micro F1 pools every detection, macro F1 averages the classes present in the test "
                "split")
    return (f"- F1 score thresholds chosen each round on the labeled validation split ({info['val_size']} images, "
            f"evaluation-only labels, disjoint from pool and test, fixed by the split seed, the same for every "
            f"strategy) and applied unchanged on the test split: micro F1 at the pooled threshold (the "
            f"frequent class dominates it), macro F1 = mean over the classes present in the test split, each at "
            f"its own validation threshold")


def _cost_rows(run: RunData, base: str = "entropy") -> list[list[str]]:
    def x(v: float) -> str:
        return "–" if math.isnan(v) else f"{v:.2f}x"

    return [[s, str(int(c["rounds"])), f"{c['round_wall']:.1f}", x(c["ratio"]),
             f"{1000 * c['score_per_slice']:.1f}", x(c["score_ratio"])]
            for s, c in round_cost_ratios(run, base).items()]


def check_driver(pick: dict[str, Any], class_to_concept: dict[str, str], rare_concepts: set[str],
                 iou_thr: float = 0.1) -> dict[str, bool] | None:
    """Judge one pick's rationale against the revealed truth: did the proposal that drove it lie on a
    labeled box (IoU >= ``iou_thr``), was its Eq. 3 concept that box's class, and did it claim a rare
    concept (and was it right)? ``None`` for picks without a driving proposal."""
    from gsal_edge.models.detection_metrics import box_iou

    rat = pick.get("rationale") or {}
    # GSAL-family picks name a proposal and its Eq. 3 concept; BADGE / PPAL name the detector's own box and
    # class (their "concept" is the detector class, judged the same way)
    prop = rat.get("proposal") or rat.get("driving_proposal")
    if not prop or "box" not in prop:
        return None
    gt = [(box, class_to_concept.get(c, c)) for box, c in pick.get("gt", [])]
    best = max(((float(box_iou(prop["box"], box)[0, 0]), c) for box, c in gt), default=(0.0, None))
    on_defect = best[0] >= iou_thr
    concept = prop.get("concept") or class_to_concept.get(prop.get("label", ""), prop.get("label"))
    right = on_defect and best[1] == concept
    margin = prop.get("margin")
    if margin is None and prop.get("similarity"):  # picks written before rationales carried the margin
        from gsal_edge.acquisition.rationale import concept_margin

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
        out.append(pct(hit) if hit is not None else "not yet")
    return ", ".join(out)


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md`` and the PNGs into ``run_dir``; returns the report path."""
    run = load_run(run_dir)
    out = run.run_dir
    info, cfg = run.info, run.info.get("config", {})
    heads = ["strategy", *[pct(b) for b in run.budgets]]
    lines: list[str] = [f"# GSAL active-learning benchmark: `{out.name}`", ""]
    modes = info.get("label_modes", {})
    mode_set = sorted(set(modes.values()))
    git = info.get("git", {})
    per_mode = "" if len(mode_set) == 1 else f" (per strategy: {', '.join(f'{k}={v}' for k, v in modes.items())})"
    counts = ", ".join(f"{c} {n}" for c, n in info.get("pool_class_counts", {}).items())
    lines += [
        (f"- preset `{cfg.get('preset')}`; data: {info['data'].get('path') or 'synthetic (generated)'} "
         f"({info['data']['n_images']} images: pool {info['pool_size']}, validation {info.get('val_size', 0)}, "
         f"held-out test {info['test_size']}); "
         f"graph `{info.get('graph')}`"),
        f"- label mode: {', '.join(mode_set)}{per_mode}",
        (f"- detector `{cfg.get('detector')}` {_retrain_text(cfg)}; {len(run.seeds)} seed(s) {run.seeds}; "
         f"labeled share {pct(run.budgets[0])} -> "
         f"{pct(run.budgets[-1])} in steps of {pct(cfg.get('step', 0))} ({info['labeled_sizes'][0]} -> "
         f"{info['labeled_sizes'][-1]} images)"),
        (f"- candidates per round: {'the whole unlabeled pool' if not cfg.get('candidates') else str(cfg['candidates']) + ' unlabeled images drawn at random (seeded by seed and round), the same rule for every strategy'}"),
        (f"- rare classes (bottom {pct(cfg.get('rare_fraction', 0.2))} by pool instances, or configured): "
         f"{', '.join(info.get('rare_classes', []))}; pool instances per class: {counts}"),
        _threshold_text(info, cfg),
        (f"- prior ({(cfg.get('models') or {}).get('prior_source', 'files')}) `{info['models']['prior']}` ({info['models']['prior_fingerprint']}), "
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
                  _md_table(heads, metric_table(run, record_field(f"metrics.{key}"))), ""]
    lines += ["![learning curves](learning_curves.png)", ""]
    lines += ["## Rare-class retrieval", "",
              "Rare classes with at least one labeled instance (mean ± std over seeds):", "",
              _md_table(heads, metric_table(run, record_field("rare.n_covered"), "{:.2f}")), "",
              "Rare instances labeled:", "", _md_table(heads, metric_table(run, record_field("rare.instances"), "{:.1f}")), "",
              "Labeled share at which every rare class had a labeled instance, per seed:", ""]
    lines += [f"- {s}: {_first_full_coverage(run, s)}" for s in run.strategies]
    lines += ["", "![rare-class retrieval](rare_retrieval.png)", ""]
    pick_heads = ["strategy", *[f"{pct(a)}→{pct(b)}" for a, b in zip(run.budgets, run.budgets[1:])]]

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
              _md_table(heads, metric_table(run, record_field("instances"), "{:.1f}")), ""]
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
                v = run.values(s, record_field(f"metrics.per_class.{c}.ap50"))[last]
                row.append(f"{np.mean(v):.3f}" if v else "–")
            rows.append(row)
        lines += [f"## Per-class AP@50 at {pct(run.budgets[-1])} (typed strategies, mean over seeds)", "",
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
    cost = _cost_rows(run)
    if cost:
        lines += ["## Round cost relative to entropy", "",
                  ("Whole-round wall = detector training + scoring the round's candidates + selection, summed over "
                   "the rounds a strategy and entropy both finished with a selection at the same seed and round "
                   "(same candidates), as a ratio of sums; scoring per slice = score seconds per candidate. Same "
                   "backend and threads within a run; round 0's shared training and cached records count at their "
                   "first computation's time for every strategy."), "",
                  _md_table(["strategy", "rounds", "round wall (s, mean)", "round cost / entropy",
                             "scoring per slice (ms)", "scoring per slice / entropy"], cost), ""]
    sens = sensitivity_rows(run)
    if sens:
        lines += [f"## Sensitivity (one at a time, F1@0.5 at {pct(run.budgets[-1])})", ""]
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
