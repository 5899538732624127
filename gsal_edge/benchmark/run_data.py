"""A benchmark run folder read back (nothing is recomputed): its config and every finished round, and the
analyses both the report's tables and its plots draw on (sensitivity points, labeled instances vs F1)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "METRICS",
    "RunData",
    "cost_ratio_lines",
    "instances_f1_correlation",
    "instances_f1_points",
    "load_run",
    "pct",
    "record_field",
    "round_cost_ratios",
    "sensitivity_rows",
]

# record key, label: micro F1 pools every detection (the frequent class dominates it), macro F1 averages the
# classes present in the test split; both at the score thresholds chosen on the validation split
METRICS = (("f1", "F1@0.5 (micro)"), ("f1_macro", "macro F1@0.5"), ("map50", "mAP@50"), ("ap", "COCO AP"))
COST_PARTS = ("train", "score", "select")  # a round's acquisition cost (eval is the benchmark's own)


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


def pct(b: float) -> str:
    """A labeled share as a percentage: 0.05 -> ``5%``."""
    return f"{100 * b:g}%"


def record_field(path: str) -> Any:
    """A function reading the dotted ``path`` of a round record (None where it is missing)."""
    keys = path.split(".")

    def g(rec: dict[str, Any]) -> Any:
        cur: Any = rec
        for k in keys:
            if not isinstance(cur, dict) or k not in cur:
                return None
            cur = cur[k]
        return cur

    return g


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
        out[name] = [(v, key, run.values(key, record_field("metrics.f1"))[last] if key in run.results else [])
                     for v, key in pts]
    return out


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


def _total(recs: dict[tuple[int, int], dict[str, Any]], keys: list[tuple[int, int]], parts: tuple[str, ...]) -> float:
    return float(sum(recs[k]["times"].get(p, 0.0) for k in keys for p in parts))


def _per_slice(recs: dict[tuple[int, int], dict[str, Any]], keys: list[tuple[int, int]]) -> float:
    """Score seconds per candidate over the rounds ``keys``."""
    n = sum(int(recs[k].get("n_candidates") or 0) for k in keys)
    return _total(recs, keys, ("score",)) / n if n else math.nan


def round_cost_ratios(run: RunData, base: str = "entropy") -> dict[str, dict[str, float]]:
    """Per strategy: its whole-round wall (train + score + select) relative to ``base``'s over the rounds
    both finished with a selection, at the same seed and round (so the same candidate count), as a ratio of
    sums; and the per-slice scoring cost ratio (score seconds per candidate). ``{}`` without ``base``."""
    if base not in run.results:
        return {}

    def selection_rounds(s: str) -> dict[tuple[int, int], dict[str, Any]]:
        return {(seed, r["round"]): r for seed, rounds in run.results[s].items() for r in rounds
                if "picks" in r and "times" in r}

    ref = selection_rounds(base)
    out: dict[str, dict[str, float]] = {}
    for s in run.strategies:
        mine = selection_rounds(s)
        keys = sorted(k for k in mine if k in ref and mine[k].get("n_candidates") == ref[k].get("n_candidates"))
        if not keys:
            continue

        wall, wall_ref = _total(mine, keys, COST_PARTS), _total(ref, keys, COST_PARTS)
        ps, ps_ref = _per_slice(mine, keys), _per_slice(ref, keys)
        out[s] = {"rounds": float(len(keys)), "round_wall": wall / len(keys), "base_round_wall": wall_ref / len(keys),
                  "ratio": wall / wall_ref if wall_ref > 0 else math.nan,
                  "score_per_slice": ps, "base_score_per_slice": ps_ref,
                  "score_ratio": ps / ps_ref if ps_ref > 0 else math.nan}
    return out


def cost_ratio_lines(run: RunData, base: str = "entropy") -> list[str]:
    """One line per strategy: its round cost relative to ``base`` (printed at the end of every run)."""
    ratios = round_cost_ratios(run, base)
    if not ratios:
        return [f"round cost ratio: no {base} rounds in this run to compare with"]

    def x(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{v:.2f}x"

    return [f"round cost {s} / {base}: {x(c['ratio'])} (train + score + select, {c['round_wall']:.1f}s vs "
            f"{c['base_round_wall']:.1f}s per round, {int(c['rounds'])} rounds, same candidates); scoring per "
            f"slice {x(c['score_ratio'])} ({1000 * c['score_per_slice']:.1f} vs {1000 * c['base_score_per_slice']:.1f} ms)"
            for s, c in ratios.items() if s != base]
