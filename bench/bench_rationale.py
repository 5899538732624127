"""Rationale check on the `dev-a` pool (issue 16): is the concept of the proposal that drives each GSAL pick
right, and are its rare claims right, per assigner and bonus variant?

Stages (each cached under ``--out``):

1. dev-a's data (generated into ``--cache``), its pool/test split; ``--n-labeled`` random pool slices
   (seed ``--seed``) train a quick detector (the preset's detector, ``--iters`` iterations).
2. ``--n-candidates`` other random pool slices are scored once by the station scorer (default GSAL config,
   text assigner, embedded prior + CLIP from ``--models``); every proposal crop's CLIP embedding is kept.
3. Each variant re-assigns the kept crops (text or hybrid assigner refreshed from the labeled crops, with or
   without calibration), fuses the 200 candidates (bonus hard / soft / confidence; thresholds hard /
   relative) and picks the top ``--budget``; each pick's driving proposal is judged against the truth with
   the report's own ``check_driver`` (IoU >= 0.1): concept right, rare claim (a rare class of the run) right.
   Labeled-set levels: the first ``--low`` labeled slices (counts and exemplars from those only) and all.

    nice -n 10 python bench/bench_rationale.py --models /work/main/artifacts/models --out /tmp/bench-rationale

Nothing here reads the test split's labels; the detector never sees the candidates' labels.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="dev-a")
    ap.add_argument("--models", required=True, help="folder with prior/ (or diffusion/) and clip/")
    ap.add_argument("--prior", default=None, help="prior folder (overrides --models'; the proposal-level "
                    "assignment numbers do not depend on it, the pick-level ones do)")
    ap.add_argument("--clip", default=None, help="CLIP folder (overrides --models')")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path("artifacts/bench_data"))
    ap.add_argument("--n-labeled", type=int, default=40)
    ap.add_argument("--low", type=int, default=3, help="slices of the low-label level")
    ap.add_argument("--n-candidates", type=int, default=200)
    ap.add_argument("--budget", type=int, default=30)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args()


def _setup(a: argparse.Namespace) -> dict[str, Any]:
    import torch

    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.benchmark.config import load_preset
    from gsal_edge.benchmark.inputs import class_map, data_window, load_data
    from gsal_edge.benchmark.split import choose_rare_classes, class_counts, pool_test_split

    torch.set_num_threads(a.threads)
    cfg = load_preset(a.preset, {"data": {**load_preset(a.preset).data.model_dump(), "cache_dir": str(a.cache)},
                                 "models": {"dir": a.models, "prior": a.prior, "clip": a.clip,
                                            "prior_source": "files"}})
    graph = load_graph(cfg.graph)
    ds = load_data(cfg.data, progress=False)
    c2c = class_map(ds, graph, cfg.class_map)
    _, pool_ids = pool_test_split(ds, cfg.data.test_fraction, cfg.data.split_seed)
    cfg.data.window = data_window(cfg.data, ds, pool_ids)
    rare = choose_rare_classes(class_counts(ds, pool_ids), cfg.rare_classes, cfg.rare_fraction)
    rng = np.random.default_rng(a.seed)
    order = [pool_ids[i] for i in rng.permutation(len(pool_ids))]
    labeled, cand = order[: a.n_labeled], sorted(order[a.n_labeled: a.n_labeled + a.n_candidates])
    return {"cfg": cfg, "graph": graph, "ds": ds, "c2c": c2c, "rare": rare, "labeled": labeled, "cand": cand,
            "pool_ids": pool_ids}


def _detector(a: argparse.Namespace, s: dict[str, Any]) -> Any:
    from gsal_edge.benchmark.training import DetectorRounds
    from gsal_edge.models.detector import load_checkpoint, save_checkpoint
    from gsal_edge.models.detector_training import preprocessing_meta, train_detector

    path = a.out / "detector.pt"
    if path.is_file():
        return load_checkpoint(path)[0]
    dr = DetectorRounds(s["cfg"], s["ds"], [], a.out, "cpu")
    dcfg = dr.detector_config("typed")
    t0 = time.perf_counter()
    model = train_detector(s["ds"], dcfg, epochs=dr.epochs_for(len(s["labeled"]), dcfg.train.batch_size, a.iters),
                           seed=a.seed, image_ids=s["labeled"], window=s["cfg"].data.window, progress=False)
    print(f"detector trained in {time.perf_counter() - t0:.0f}s", flush=True)
    save_checkpoint(path, model, dcfg, list(model.classes), preprocessing_meta(dcfg, s["cfg"].data.window))
    return model


def main() -> None:
    a = _args()
    a.out.mkdir(parents=True, exist_ok=True)
    from gsal_edge.acquisition.concept_graph import BACKGROUND
    from gsal_edge.acquisition.config import GSALConfig
    from gsal_edge.acquisition.records import ProposalScore, ScoreRecord, read_jsonl, write_jsonl
    from gsal_edge.acquisition.score_pool import ScorePool
    from gsal_edge.acquisition.selection import gsal_select
    from gsal_edge.benchmark.diffusion_cache import DiffusionCache
    from gsal_edge.benchmark.inputs import load_fixed_models
    from gsal_edge.benchmark.pool_scoring import PoolScoring, embed_regions
    from gsal_edge.benchmark.report import check_driver
    from gsal_edge.models.detection_metrics import box_iou

    s = _setup(a)
    print(f"{a.preset}: pool {len(s['pool_ids'])}, labeled {len(s['labeled'])}, candidates {len(s['cand'])}, "
          f"rare {s['rare']}", flush=True)
    model = _detector(a, s)
    models = load_fixed_models(s["cfg"].models)
    cache = DiffusionCache(a.out / "diffusion.npz")
    ps = PoolScoring(s["cfg"], s["ds"], s["c2c"], s["graph"], models, s["pool_ids"], cache, "cpu", progress=False)
    base = GSALConfig()
    scorer = ps.scorer_for(base, model)
    ps.set_round_assigner(scorer, base, s["labeled"])
    rec_path, emb_path = a.out / "records.jsonl", a.out / "proposal_emb.npy"
    t0 = time.perf_counter()
    if rec_path.is_file() and emb_path.is_file():
        records = list(read_jsonl(rec_path))
        emb = np.load(emb_path)
    else:
        records = ps.score_pool(scorer, s["cand"])
        cache.save()
        write_jsonl(rec_path, records)
        emb = np.concatenate([embed_regions(models.clip, ps.unit(r.image_id), np.array([p.box for p in r.proposals]),
                                            base.context_margin) for r in records if r.proposals])
        np.save(emb_path, emb)
        print(f"scored {len(records)} candidates in {time.perf_counter() - t0:.0f}s", flush=True)
    by_id = s["ds"].by_id()
    c2c, rare = s["c2c"], {s["c2c"][c] for c in s["rare"]}
    gt = {r.image_id: [[list(ann.box), ann.category] for ann in by_id[r.image_id].annotations] for r in records}

    def reassigned(gcfg: GSALConfig, labeled: list[str]) -> tuple[ScorePool, dict[str, Any]]:
        ps.set_round_assigner(scorer, gcfg, labeled)
        asg = scorer.assigner
        out, row = [], 0
        for r in records:
            n = len(r.proposals)
            res = asg(emb[row: row + n]) if n else None
            props = [ProposalScore(p.box, p.score, p.e_rec, p.v_den, res.concepts[j],
                                   dict(zip(res.names, map(float, res.similarity[j]))), p.label)
                     for j, p in enumerate(r.proposals)]
            row += n
            out.append(ScoreRecord(r.image_id, r.e_rec, r.v_den, props, r.uncertainty, r.model, r.meta))
        return ScorePool.from_records(out), {"sources": dict(zip(asg.names, asg.sources)), "fit": asg.fit,
                                             "temperature": asg.temperature}

    def proposal_truth(pool: ScorePool) -> np.ndarray:
        """Per proposal: its truth concept by IoU >= 0.1 (best box), else background."""
        out = []
        for i, iid in enumerate(pool.image_ids):
            g = gt[str(iid)]
            boxes = np.array([b for b, _ in g]).reshape(-1, 4)
            for j in range(pool.starts[i], pool.starts[i + 1]):
                iou = box_iou(pool.prop_box[j], boxes)[0] if g else np.zeros(0)
                out.append(c2c[g[int(np.argmax(iou))][1]] if iou.size and iou.max() >= 0.1 else BACKGROUND)
        return np.array(out, dtype=object)

    def auroc(score: np.ndarray, pos: np.ndarray) -> float:
        """P(score of a positive > score of a negative), ties count half."""
        p, n = score[pos], score[~pos]
        if not p.size or not n.size:
            return float("nan")
        gt_ = (p[:, None] > n[None, :]).mean()
        eq = (p[:, None] == n[None, :]).mean()
        return float(gt_ + 0.5 * eq)

    def proposal_accuracy(pool: ScorePool) -> dict[str, float]:
        """Every proposal (not only drivers): named right when on a defect, background named rare."""
        right = on = bg = bg_rare = bg_bg = 0
        for i, iid in enumerate(pool.image_ids):
            g = gt[str(iid)]
            for j in range(pool.starts[i], pool.starts[i + 1]):
                c = pool.concepts[pool.prop_concept[j]]
                iou = box_iou(pool.prop_box[j], np.array([b for b, _ in g]).reshape(-1, 4))[0] if g else np.zeros(0)
                if iou.size and iou.max() >= 0.1:
                    on += 1
                    right += c2c[g[int(np.argmax(iou))][1]] == c
                else:
                    bg += 1
                    bg_rare += c in rare
                    bg_bg += c == BACKGROUND
        return {"defect_props": on, "defect_named_right": right / max(on, 1), "bg_props": bg,
                "bg_named_background": bg_bg / max(bg, 1), "bg_named_rare": bg_rare / max(bg, 1)}

    assigners = {
        "text": {"assigner": "text"},
        "text+T": {"assigner": "text", "calibration": "temperature"},
        "hybrid": {"assigner": "hybrid"},
        "hybrid+prop+T": {"assigner": "hybrid", "exemplars": "boxes+proposals", "calibration": "temperature"},
        "hybrid+prop+T+b": {"assigner": "hybrid", "exemplars": "boxes+proposals",
                            "calibration": "temperature_offset"},
    }
    bonuses = {"hard": {"assignment": "hard"}, "soft": {"assignment": "soft"},
               "confidence": {"assignment": "confidence"},
               "hard/relative": {"assignment": "hard", "thresholds": "relative"},
               "confidence/relative": {"assignment": "confidence", "thresholds": "relative"}}
    results = []
    levels = {f"{a.low} labeled": s["labeled"][: a.low], f"{len(s['labeled'])} labeled": s["labeled"]}
    for level, labeled in levels.items():
        counts = ps.counts(base, None, labeled)
        for an, ao in assigners.items():
            pool, info = reassigned(base.replace(**ao), labeled)
            pacc = proposal_accuracy(pool)
            for bn, bo in bonuses.items():
                gcfg = base.replace(**ao, **bo)
                if info["temperature"] is not None:
                    gcfg = gcfg.replace(temperature=info["temperature"])
                sel = gsal_select(pool, s["graph"], counts, gcfg, a.budget)
                truth = proposal_truth(sel.pool)
                S_p = sel.fusion.S_p
                is_rare, is_bg = np.isin(truth, list(rare)), truth == BACKGROUND
                sbonus = {"S_bg_mean": float(S_p[is_bg].mean()), "S_rare_mean": float(S_p[is_rare].mean()),
                          "S_auroc_rare": auroc(S_p, is_rare), "S_auroc_defect": auroc(S_p, ~is_bg)}
                judged = [j for p in sel.picks
                          if (j := check_driver({**p.to_dict(), "gt": gt[p.image_id]}, c2c, rare)) is not None]
                n = max(len(judged), 1)
                claims = sum(j["claims_rare"] for j in judged)
                row = {"level": level, "assigner": an, "bonus": bn, "judged": len(judged),
                       "on_defect": sum(j["on_defect"] for j in judged) / n,
                       "concept_right": sum(j["concept_right"] for j in judged) / n,
                       "rare_claims": claims, "rare_right": sum(j["rare_right"] for j in judged) / max(claims, 1),
                       "picks_with_rare": sum(any(c2c[c] in rare for _, c in gt[p.image_id]) for p in sel.picks),
                       "T": gcfg.temperature, "fit": info["fit"], **pacc, **sbonus}
                results.append(row)
                print(f"{level:>12} {an:>16} {bn:>20}: on defect {row['on_defect']:.2f} concept right "
                      f"{row['concept_right']:.2f} rare claims {claims} right {row['rare_right']:.2f} | picks with "
                      f"a rare instance {row['picks_with_rare']} | proposals on defects named right "
                      f"{pacc['defect_named_right']:.2f}, background named rare {pacc['bg_named_rare']:.2f} "
                      f"| T {gcfg.temperature:.4g} | S(p) AUROC rare {sbonus['S_auroc_rare']:.2f} defect "
                      f"{sbonus['S_auroc_defect']:.2f}, mean S bg {sbonus['S_bg_mean']:.2f} rare "
                      f"{sbonus['S_rare_mean']:.2f}", flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1, default=float))


if __name__ == "__main__":
    main()
