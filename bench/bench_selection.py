"""Benchmark: GSAL selection over a synthetic pool of 1,000,000 score records (spec §7 runtime).

Builds the pool in columnar form directly (no JSON, no record objects): N images, on average 3
proposals each (uniform 0..6), thin-film CT concepts. Times, separately:

1. data generation (numpy, not part of the product path),
2. `ScorePool` construction (validation, unique-id check, run offsets),
3. fusion (Eqs. 7-10, A(x)) and top-b, and the whole `gsal_select` (prefilter + fusion + top-b +
   rationale of the b picks),

and reports wall time per phase plus memory: the process peak RSS (ru_maxrss) and, in a second
traced pass, the peak bytes allocated by each phase (tracemalloc; numpy reports its buffers to it).

    .venv/bin/python bench/bench_selection.py                  # 1M images, b = 1000
    .venv/bin/python bench/bench_selection.py --n 100000 --soft --group-by --batch-aware
Target (issue 5): selection over 1M images < 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.fusion import fuse
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.score_pool import ScorePool
from gsal_edge.acquisition.selection import gsal_select, top_b

# thin-film CT concepts and their share among proposals (background dominates; crack/drill_hole rare)
CONCEPT_SHARE = {"background": 0.50, "void": 0.20, "inclusion": 0.15, "petal": 0.08, "drill_hole": 0.04,
                 "crack": 0.03}


def make_arrays(n: int, seed: int, similarity: bool, groups: bool) -> dict[str, Any]:
    """Columnar synthetic score records (raw e_rec / v_den, log-normal like real reconstruction errors)."""
    rng = np.random.default_rng(seed)
    n_props = rng.integers(0, 7, size=n)  # mean 3
    p = int(n_props.sum())
    prop_image = np.repeat(np.arange(n, dtype=np.int64), n_props)
    concepts = tuple(CONCEPT_SHARE)
    prop_concept = rng.choice(len(concepts), size=p, p=np.array(list(CONCEPT_SHARE.values())))
    x1 = rng.uniform(0, 500, size=p)
    y1 = rng.uniform(0, 500, size=p)
    wh = rng.uniform(4, 40, size=(p, 2))
    arrays: dict[str, Any] = dict(  # noqa: C408 (keyword form mirrors ScorePool fields)
        image_ids=np.char.add("slice-", np.char.zfill(np.arange(n).astype(str), 7)),
        e_rec=rng.lognormal(-4.0, 0.5, size=n),
        v_den=rng.lognormal(-7.0, 0.7, size=n),
        prop_image=prop_image,
        prop_box=np.stack([x1, y1, x1 + wh[:, 0], y1 + wh[:, 1]], axis=1),
        prop_score=rng.uniform(0.05, 1.0, size=p),
        prop_e_rec=rng.lognormal(-3.5, 0.6, size=p),
        prop_v_den=rng.lognormal(-6.5, 0.8, size=p),
        prop_concept=prop_concept,
        concepts=concepts,
        uncertainty={"entropy": rng.uniform(0, 1, size=n)},
    )
    if similarity:
        sim = rng.normal(0.2, 0.03, size=(p, len(concepts)))
        sim[np.arange(p), prop_concept] += 0.05
        arrays["similarity"] = sim
    if groups:
        arrays["meta"] = {"product": np.array(["film-A", "film-B", "film-C"], dtype=object)[rng.integers(0, 3, n)]}
    return arrays


def records_from_arrays(arrays: dict[str, Any], n: int) -> list[ScoreRecord]:
    """The first n images of the columnar pool as spec §11 record objects (for from_records timing)."""
    concepts = arrays["concepts"]
    starts = np.searchsorted(arrays["prop_image"], np.arange(n + 1))
    sim = arrays.get("similarity")  # with --soft: every proposal carries its similarity dict, as a station sends
    out = []
    for i in range(n):
        props = [ProposalScore(tuple(arrays["prop_box"][j].tolist()), float(arrays["prop_score"][j]),
                               float(arrays["prop_e_rec"][j]), float(arrays["prop_v_den"][j]),
                               concepts[int(arrays["prop_concept"][j])],
                               {} if sim is None else dict(zip(concepts, sim[j].tolist())))
                 for j in range(starts[i], starts[i + 1])]
        out.append(ScoreRecord(str(arrays["image_ids"][i]), float(arrays["e_rec"][i]), float(arrays["v_den"][i]),
                               props, {"entropy": float(arrays["uncertainty"]["entropy"][i])}))
    return out


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def traced_peak(fn: Callable[[], Any]) -> float:
    """Peak MiB allocated while ``fn`` runs (tracemalloc)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak / 2**20


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="images in the pool")
    ap.add_argument("--budget", type=int, default=1000, help="b")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions of the selection (best is reported)")
    ap.add_argument("--soft", action="store_true", help="soft assignment (needs a similarity matrix)")
    ap.add_argument("--group-by", action="store_true", help="z-scores per product (3 groups)")
    ap.add_argument("--batch-aware", action="store_true", help="batch_aware greedy selection")
    ap.add_argument("--no-trace", action="store_true", help="skip the tracemalloc pass")
    ap.add_argument("--records", type=int, default=0,
                    help="also time ScorePool.from_records on this many in-memory ScoreRecord objects")
    ap.add_argument("--json", type=str, default=None, help="also write the results here")
    args = ap.parse_args()

    graph = load_graph("thin_film_ct")
    counts = {"void": 40, "inclusion": 25, "petal": 6, "drill_hole": 1, "crack": 0}
    overrides = []
    if args.soft:
        overrides.append("assignment=soft")
    if args.group_by:
        overrides.append("group_by=product")
    if args.batch_aware:
        overrides.append("batch_aware=true")
    cfg = GSALConfig(seed=args.seed).with_overrides(overrides)

    arrays, t_gen = timed(lambda: make_arrays(args.n, args.seed, args.soft, args.group_by))
    pool, t_pool = timed(lambda: ScorePool(**arrays))
    rss_after_pool = rss_mib()

    def fuse_top() -> np.ndarray:
        res = fuse(pool, graph, counts, cfg)
        return top_b(res.A, pool.image_ids, args.budget)

    t_fuse = min(timed(fuse_top)[1] for _ in range(args.repeat))
    sel, _ = timed(lambda: gsal_select(pool, graph, counts, cfg, args.budget))
    t_select = min([timed(lambda: gsal_select(pool, graph, counts, cfg, args.budget))[1]
                    for _ in range(args.repeat)])
    rss_after_select = rss_mib()
    result: dict[str, Any] = {
        "n_images": pool.n_images,
        "n_proposals": pool.n_proposals,
        "budget": args.budget,
        "config_overrides": overrides,
        "threads_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "cpu_count": os.cpu_count(),
        "seconds": {
            "generate_arrays": round(t_gen, 3),
            "scorepool_construction": round(t_pool, 3),
            "fusion_plus_top_b_best": round(t_fuse, 3),
            "gsal_select_best": round(t_select, 3),
        },
        "peak_rss_mib": {"after_pool": round(rss_after_pool, 1), "after_selection": round(rss_after_select, 1)},
        "first_picks": [p.image_id for p in sel.picks[:5]],
        "first_sentence": sel.picks[0].sentence if sel.picks else None,
    }
    if args.records:
        recs = records_from_arrays(arrays, args.records)
        rpool, t_rec = timed(lambda: ScorePool.from_records(recs))
        result["seconds"][f"from_records_{args.records}"] = round(t_rec, 3)
        del recs, rpool
    if not args.no_trace:
        result["traced_peak_mib"] = {
            "scorepool_construction": round(traced_peak(lambda: ScorePool(**arrays)), 1),
            "gsal_select": round(traced_peak(lambda: gsal_select(pool, graph, counts, cfg, args.budget)), 1),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
