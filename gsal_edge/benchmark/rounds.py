"""The benchmark's round loop: prepare a run folder, then for every (strategy, seed) train, evaluate,
score what the strategy reads, select and reveal, one finished round at a time (a killed run resumes)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import ConceptGraph, load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.strategies import Strategy
from gsal_edge.benchmark.config import (
    BenchConfig,
    BenchError,
    StrategySpec,
    expand_strategies,
    gsal_config,
    resolve_device,
    sweep_specs,
)
from gsal_edge.benchmark.diffusion_cache import DiffusionCache
from gsal_edge.benchmark.fingerprints import dataset_fingerprint, digest, sha
from gsal_edge.benchmark.inputs import class_map, data_window, load_data, load_fixed_models
from gsal_edge.benchmark.pool_scoring import PoolScoring, RoundInputs, ids_only_pool, uncertainty_columns
from gsal_edge.benchmark.split import (
    budget_schedule,
    candidate_ids,
    choose_rare_classes,
    class_counts,
    initial_set,
    labeled_summary,
    pool_test_split,
    validation_split,
)
from gsal_edge.benchmark.state import (
    BENCH_PACKAGES,
    STATE_FORMAT,
    check_resumable,
    load_state,
    model_path,
    picks_path,
    shared_dir,
    state_path,
)
from gsal_edge.benchmark.training import DetectorRounds
from gsal_edge.jsonio import read_json, to_jsonable, write_json_atomic, write_text_atomic
from gsal_edge.provenance import git_state, package_versions

__all__ = ["Benchmark", "RoundHook"]

log = logging.getLogger(__name__)

RoundHook = Callable[[dict[str, Any]], None]


class Benchmark:
    """One benchmark run folder: prepare (data, split, models), run all (strategy, seed) pairs, resume."""

    def __init__(self, cfg: BenchConfig, run_dir: str | Path, progress: bool = True,
                 on_round_end: RoundHook | None = None, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.progress = progress
        self.on_round_end = on_round_end
        self.say = say or (lambda s: log.info("%s", s))
        self.specs = expand_strategies(cfg)
        self._prepared = False

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        """Load data and models, draw the split and initial sets, write or check ``run.json``."""
        import torch

        torch.set_num_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.graph: ConceptGraph = load_graph(self.cfg.graph)
        self.dataset = load_data(self.cfg.data, self.progress)
        self.by_id = self.dataset.by_id()
        self.class_to_concept = class_map(self.dataset, self.graph, self.cfg.class_map)
        self.test_ids, self.pool_ids = pool_test_split(self.dataset, self.cfg.data.test_fraction,
                                                       self.cfg.data.split_seed)
        self.val_ids, self.pool_ids = validation_split(self.dataset, self.pool_ids, self.cfg.data.val_fraction,
                                                       self.cfg.data.test_fraction, self.cfg.data.split_seed)
        self.cfg.data.window = data_window(self.cfg.data, self.dataset, self.pool_ids)  # 'auto' -> (lo, hi)
        self.budgets, self.sizes = budget_schedule(len(self.pool_ids), self.cfg.init, self.cfg.step, self.cfg.budget)
        self.pool_class_counts = class_counts(self.dataset, self.pool_ids)
        self.rare = choose_rare_classes(self.pool_class_counts, self.cfg.rare_classes, self.cfg.rare_fraction)
        self.gsal_cfgs: dict[str, GSALConfig] = {s.key: gsal_config(self.cfg, s) for s in self.specs}
        for s in self.specs:
            g = self.gsal_cfgs[s.key]
            if g.label_mode == "binary" and g.assigner != "text":
                raise BenchError(f"strategy {s.key!r}: label_mode=binary has no class labels to build "
                                 f"{g.assigner} prototypes from; use assigner=text")
        self.init_sets = {seed: initial_set(self.pool_ids, self.sizes[0], seed) for seed in self.cfg.seeds}
        self.models = m = load_fixed_models(self.cfg.models, self.dataset, self.pool_ids, self.cfg.data.window,
                                            self.cfg.threads, self.progress, self.say)
        self.prior_dir, self.clip_dir, self.prior, self.clip = m.prior_dir, m.clip_dir, m.prior, m.clip
        self.prior_fp, self.clip_fp = m.prior_fp, m.clip_fp
        self.diffusion_cache = DiffusionCache(self.run_dir / "cache" / f"diffusion-{self.prior_fp}.npz")
        self.scoring = PoolScoring(self.cfg, self.dataset, self.class_to_concept, self.graph, m, self.pool_ids,
                                   self.diffusion_cache, self.device, self.progress)
        self.detectors = DetectorRounds(self.cfg, self.dataset, self.test_ids, self.run_dir, self.device,
                                        self.val_ids)
        self._write_run_json()
        self._prepared = True

    def _write_run_json(self) -> None:
        """``split.json`` and ``run.json`` of a new folder; for an existing one, check it may resume."""
        path = self.run_dir / "run.json"
        split = {"test": self.test_ids, "pool": self.pool_ids, "init": {str(s): v for s, v in self.init_sets.items()}}
        if self.val_ids:
            split["val"] = self.val_ids
        if path.is_file():
            check_resumable(self.run_dir, self.cfg.to_dict(), split, self.prior_fp, self.prior_dir)
            return
        write_json_atomic(self.run_dir / "split.json", split)
        write_json_atomic(path, self._run_info())

    def _run_info(self) -> dict[str, Any]:
        """The contents of ``run.json``: config, strategies, schedule, split sizes, classes, models, provenance."""
        return {
            "format": STATE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": self.cfg.to_dict(),
            "strategies": [s.key for s in self.specs],
            "strategy_slugs": {s.key: s.slug for s in self.specs},
            "label_modes": {s.key: self.gsal_cfgs[s.key].label_mode for s in self.specs},
            "gsal_configs": {s.key: self.gsal_cfgs[s.key].to_dict() for s in self.specs},
            "sweep": {name: [[to_jsonable(v), s.key] for v, s in rows] for name, rows in sweep_specs(self.cfg).items()},
            "seeds": list(self.cfg.seeds),
            "budgets": self.budgets,
            "labeled_sizes": self.sizes,
            "pool_size": len(self.pool_ids),
            "test_size": len(self.test_ids),
            "val_size": len(self.val_ids),
            "classes": list(self.dataset.classes),
            "class_to_concept": self.class_to_concept,
            "pool_class_counts": self.pool_class_counts,
            "rare_classes": self.rare,
            "data": {"root": str(self.dataset.root), "path": self.cfg.data.path, "n_images": len(self.dataset),
                     "fingerprint": dataset_fingerprint(self.dataset)},
            "graph": self.graph.name,
            "models": {"prior": str(self.prior_dir), "prior_fingerprint": self.prior_fp, "clip": str(self.clip_dir),
                       "clip_fingerprint": self.clip_fp, "prior_info": to_jsonable(self.prior.info()),
                       "clip_info": to_jsonable(self.clip.info())},
            "detector": self.detectors.detector_config("typed").model_dump(mode="json"),
            "versions": package_versions(BENCH_PACKAGES, missing="not installed"),
            "git": git_state(),
            "threads": self.cfg.threads,
        }

    # ------------------------------------------------------------------ the pool (PoolScoring)
    def raw(self, image_id: str) -> np.ndarray:
        """The slice as stored."""
        return self.scoring.raw(image_id)

    def scorer_for(self, gcfg: GSALConfig, model: Any) -> Any:
        """The station scorer for these settings with ``model`` as its detector engine."""
        return self.scoring.scorer_for(gcfg, model)

    def score_pool(self, scorer: Any, ids: list[str]) -> list[Any]:
        """Score records of ``ids`` through ``scorer``."""
        return self.scoring.score_pool(scorer, ids)

    def candidate_ids(self, unlabeled: list[str], seed: int, r: int) -> list[str]:
        """The round's candidates: the unlabeled pool, or a seeded random subset of ``candidates`` images."""
        return candidate_ids(unlabeled, self.cfg.candidates, seed, r)

    # ------------------------------------------------------------------ rounds
    def run_pair(self, spec: StrategySpec, seed: int) -> dict[str, Any]:
        """All remaining rounds of one (strategy, seed); returns the final state."""
        from gsal_edge.acquisition.strategies import get_strategy

        st_path = state_path(self.run_dir, spec, seed)
        gcfg = self.gsal_cfgs[spec.key]
        state = load_state(st_path, spec, seed, gcfg.label_mode, self.init_sets[seed])
        strategy = get_strategy(spec.base)
        n_rounds = len(self.sizes)
        model = None
        while not state["finished"]:
            r = len(state["rounds"])
            labeled = list(state["labeled"])
            if len(labeled) != self.sizes[r]:
                raise BenchError(f"{st_path}: round {r} has {len(labeled)} labeled images, expected {self.sizes[r]}")
            init = self.detectors.previous_model(spec, seed, r, model)
            model, metrics, times, shared = self.detectors.train_and_eval(labeled, seed, r, gcfg.label_mode, init)
            times = {"train": times["train"], "eval": times["eval"], "epochs": times["epochs"],
                     "score": 0.0, "select": 0.0}
            rec: dict[str, Any] = {"round": r, "budget": self.budgets[r], "n_labeled": len(labeled),
                                   "metrics": metrics, **labeled_summary(self.dataset, labeled, self.rare),
                                   "shared_round0": shared}
            last = r == n_rounds - 1
            if not last:
                picked = self._select(spec, strategy, gcfg, model, labeled, seed, r, rec, times)
                state["labeled"] = labeled + picked
            rec["times"] = times
            rec["retrain"] = "finetune" if init is not None else "scratch"
            state["rounds"].append(to_jsonable(rec))
            state["finished"] = last
            if self.cfg.retrain == "finetune" and not last:
                self.detectors.keep_for_finetune(spec, seed, r, model)
            write_json_atomic(st_path, state)
            if r > 0:
                model_path(self.run_dir, spec, seed, r - 1).unlink(missing_ok=True)
            m = rec["metrics"]
            self.say(f"[{spec.key} seed {seed}] round {r + 1}/{n_rounds} labeled {len(labeled)} "
                     f"F1 {_f(m.get('f1'))} macro {_f(m.get('f1_macro'))} mAP50 {_f(m.get('map50'))} "
                     f"AP {_f(m.get('ap'))} "
                     f"rare {rec['rare']['n_covered']}/{rec['rare']['n_rare']} | train {times['train']:.1f}s "
                     f"eval {times['eval']:.1f}s score {times['score']:.1f}s select {times['select']:.2f}s"
                     + (" (round 0 shared)" if shared else ""))
            if self.on_round_end is not None:
                self.on_round_end({"strategy": spec.key, "seed": seed, "round": r, "record": rec})
        return state

    def _select(self, spec: StrategySpec, strategy: Strategy, gcfg: GSALConfig, model: Any, labeled: list[str],
                seed: int, r: int, rec: dict[str, Any], times: dict[str, Any]) -> list[str]:
        """Score what the strategy reads, select the round's batch, write its picks; returns the picked ids."""
        b = self.sizes[r + 1] - self.sizes[r]
        lab_set = set(labeled)
        unlabeled = self.candidate_ids([i for i in self.pool_ids if i not in lab_set], seed, r)
        rec["n_candidates"] = len(unlabeled)
        needs = RoundInputs.of(strategy)
        pool, scorer = self._round_pool(needs, gcfg, model, labeled, unlabeled, seed, r, rec, times)
        box_kw = self._box_features(needs, model, labeled, unlabeled, times)
        if scorer is not None and scorer.assigner.temperature is not None:  # fitted on the labeled crops
            gcfg = gcfg.replace(temperature=scorer.assigner.temperature)
        t1 = time.perf_counter()
        counts = (self.scoring.counts(gcfg, scorer, labeled)
                  if scorer is not None or gcfg.label_mode == "typed" else None)
        lab_emb = self.scoring.image_embeddings(labeled) if needs.labeled_embeddings else None
        rng = np.random.default_rng([int(seed), r, int(sha(spec.key, 8), 16)])
        sel = strategy.select(pool, counts or {}, self.graph, gcfg, b, rng, labeled_embeddings=lab_emb, **box_kw)
        times["select"] = time.perf_counter() - t1
        if len(sel.picks) != min(b, len(unlabeled)):
            raise BenchError(f"strategy {spec.key!r} picked {len(sel.picks)} images, expected {b}")
        write_text_atomic(picks_path(self.run_dir, spec, seed, r), sel.to_json(gcfg))
        rec["counts"] = counts
        rec["picks"] = [self._pick_record(p) for p in sel.picks]
        return [p.image_id for p in sel.picks]

    def _round_pool(self, needs: RoundInputs, gcfg: GSALConfig, model: Any, labeled: list[str],
                    unlabeled: list[str], seed: int, r: int, rec: dict[str, Any],
                    times: dict[str, Any]) -> tuple[Any, Any | None]:
        """The ScorePool of ``unlabeled`` that the strategy reads, and the scorer when one ran.

        Round 0's records are shared by the strategies of a seed with the same scorer settings."""
        from gsal_edge.acquisition.records import read_jsonl, write_jsonl
        from gsal_edge.acquisition.score_pool import ScorePool

        t0 = time.perf_counter()
        if needs.pool == "ids":
            rec["assigner_sources"] = None
            return ids_only_pool(unlabeled), None
        if needs.pool == "embeddings":
            pool = ids_only_pool(unlabeled, self.scoring.image_embeddings(unlabeled))
            times["score"] = time.perf_counter() - t0
            rec["assigner_sources"] = None
            return pool, None
        scorer = self.scoring.scorer_for(gcfg, model)
        if needs.pool == "detector":  # entropy / margin / MC-dropout: the detector engine alone, their own cost
            rec["assigner_sources"] = None
            dets = self.scoring.detector_uncertainty(scorer, unlabeled)
            if needs.mc_dropout:
                self.scoring.add_mc_dropout(dets, model, seed, r)
            times["score"] = time.perf_counter() - t0
            return ids_only_pool(unlabeled, uncertainty=uncertainty_columns(dets)), None
        rec["assigner_sources"] = self.scoring.set_round_assigner(scorer, gcfg, labeled)
        records = None
        cache_file = None
        if r == 0:
            fit = ([gcfg.calibration, gcfg.exemplars, gcfg.exemplar_iou, list(gcfg.temperature_bounds),
                    gcfg.calibration_min_crops] if (gcfg.calibration, gcfg.exemplars) != ("none", "boxes") else [])
            key = digest([scorer.spec.to_dict(), rec["assigner_sources"], gcfg.assigner, gcfg.hybrid_k,
                          self.prior_fp, self.clip_fp, labeled, unlabeled, *fit])
            cache_file = shared_dir(self.run_dir, seed) / f"records-{gcfg.label_mode}-{key}.jsonl"
            if cache_file.is_file() and cache_file.with_suffix(".json").is_file():
                records = list(read_jsonl(cache_file))
                times["score"] = float(read_json(cache_file.with_suffix(".json"), BenchError)["score"])
        if records is None:
            records = self.scoring.score_pool(scorer, unlabeled)
            times["score"] = time.perf_counter() - t0
            if cache_file is not None:
                write_jsonl(cache_file, records)
                write_json_atomic(cache_file.with_suffix(".json"), {"score": times["score"]})
            self.diffusion_cache.save()
        if needs.mc_dropout:
            t_mc = time.perf_counter()
            self.scoring.add_mc_dropout(records, model, seed, r)
            times["score"] += time.perf_counter() - t_mc
        return ScorePool.from_records(records), scorer

    def _box_features(self, needs: RoundInputs, model: Any, labeled: list[str], unlabeled: list[str],
                      times: dict[str, Any]) -> dict[str, Any]:
        """``{"box_features": ...}`` for a strategy that reads the detector's box head (its time counts as
        scoring), else ``{}`` (strategies that do not declare it are called as before)."""
        if needs.box_features is None:
            return {}
        t0 = time.perf_counter()
        feats = self.scoring.box_features(model, needs.box_features, unlabeled, labeled)
        times["score"] += time.perf_counter() - t0
        return {"box_features": feats}

    def _pick_record(self, p: Any) -> dict[str, Any]:
        e = self.by_id[p.image_id]
        return {"image_id": p.image_id, "rank": p.rank, "acquisition": p.acquisition, "sentence": p.sentence,
                "path": str(self.dataset.image_path(e).resolve()),
                "gt": [[[round(float(v), 1) for v in a.box], a.category] for a in e.annotations]}

    def run(self) -> None:
        """Every seed x strategy, resuming finished rounds; writes the report at the end."""
        if not self._prepared:
            self.prepare()
        t0 = time.perf_counter()
        for seed in self.cfg.seeds:
            for spec in self.specs:
                self.run_pair(spec, seed)
        self.say(f"all rounds done in {time.perf_counter() - t0:.0f}s this session; writing the report")
        from gsal_edge.benchmark.report import write_report
        from gsal_edge.benchmark.run_data import cost_ratio_lines, load_run

        write_report(self.run_dir)
        for line in cost_ratio_lines(load_run(self.run_dir)):
            self.say(line)


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"
