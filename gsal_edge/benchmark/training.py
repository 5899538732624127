"""Each round's detector: its config for the label mode, training on the labeled set (from scratch, or
fine-tuned from the previous round's), evaluation on the fixed test split, and the shared round 0."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from gsal_edge.benchmark.config import BenchConfig, BenchError, StrategySpec
from gsal_edge.benchmark.fingerprints import digest
from gsal_edge.benchmark.state import model_path, shared_dir
from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.jsonio import read_json, to_jsonable, write_json_atomic

__all__ = ["DetectorRounds"]


class DetectorRounds:
    """Trains and evaluates the detectors of one run folder (``device``: where they train and run)."""

    def __init__(self, cfg: BenchConfig, dataset: DetectionDataset, test_ids: list[str], run_dir: Path,
                 device: str) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.test_ids = test_ids
        self.run_dir = run_dir
        self.device = device

    def detector_config(self, label_mode: str) -> Any:
        """The configured detector (preset or YAML, with overrides); class-agnostic in binary mode."""
        from gsal_edge.models.detector_config import DetectorConfigError, get_config, load_config

        try:
            base = load_config(self.cfg.detector) if self.cfg.detector.endswith((".yaml", ".yml")) else None
            ov = dict(self.cfg.detector_overrides)
            if label_mode == "binary":
                ov["class_agnostic"] = True
            if base is not None:
                from gsal_edge.models.detector_config import apply_overrides

                return apply_overrides(base, ov)
            return get_config(self.cfg.detector, ov)
        except DetectorConfigError as e:
            raise BenchError(f"detector {self.cfg.detector!r}: {e}") from None

    def epochs_for(self, n_labeled: int, batch_size: int, iters: int | None = None) -> int:
        """Epochs that give about ``iters`` (default ``train_iters``) iterations on ``n_labeled`` images."""
        per_epoch = math.ceil(n_labeled / batch_size)
        return max(1, round((iters or self.cfg.train_iters) / per_epoch))

    def train_and_eval(self, labeled: list[str], seed: int, r: int, label_mode: str,
                       init: Any | None = None) -> tuple[Any, dict, dict, bool]:
        """Train on ``labeled`` (from scratch, or fine-tune ``init``) and evaluate on the test split.

        Round 0 is always from scratch and shared by the strategies of a seed. Returns (model, metrics,
        times, whether round 0 was reused)."""
        from gsal_edge.models.detector import load_checkpoint, save_checkpoint
        from gsal_edge.models.detector_training import evaluate_detector, preprocessing_meta, train_detector

        dcfg = self.detector_config(label_mode)
        shared = shared_dir(self.run_dir, seed) / f"{label_mode}-{digest([dcfg.model_dump(mode='json'), self.cfg.train_iters])}"
        if r == 0 and (shared / "eval.json").is_file() and (shared / "detector.pt").is_file():
            saved = read_json(shared / "eval.json", BenchError)
            if saved.get("labeled") == labeled:
                model, _ = load_checkpoint(shared / "detector.pt")
                return model, saved["metrics"], saved["times"], True
        iters = self.cfg.finetune_iters if init is not None else self.cfg.train_iters
        epochs = self.epochs_for(len(labeled), dcfg.train.batch_size, iters)
        t0 = time.perf_counter()
        model = train_detector(self.dataset, dcfg, epochs=epochs, seed=int(seed) * 1000 + r, image_ids=labeled,
                               window=self.cfg.data.window, progress=False, init_from=init, device=self.device)
        t1 = time.perf_counter()
        metrics = evaluate_detector(model, self.dataset, self.test_ids, window=self.cfg.data.window,
                                    device=self.device)
        t2 = time.perf_counter()
        times = {"train": t1 - t0, "eval": t2 - t1, "epochs": epochs}
        if label_mode == "binary":
            metrics = {k: v for k, v in metrics.items() if k != "per_class"}
        if r == 0:
            save_checkpoint(shared / "detector.pt", model, dcfg, list(model.classes),
                            preprocessing_meta(dcfg, self.cfg.data.window))
            write_json_atomic(shared / "eval.json", {"labeled": labeled, "metrics": metrics, "times": times})
        return model, to_jsonable(metrics), times, False

    def previous_model(self, spec: StrategySpec, seed: int, r: int, in_memory: Any | None) -> Any | None:
        """The detector a fine-tuning round starts from: the previous round's (None: train from scratch)."""
        if self.cfg.retrain != "finetune" or r == 0:
            return None
        if in_memory is not None:
            return in_memory
        from gsal_edge.models.detector import load_checkpoint

        path = model_path(self.run_dir, spec, seed, r - 1)
        if not path.is_file():
            raise BenchError(f"{path}: missing; retrain=finetune resumes round {r} from round {r - 1}'s detector")
        model, _ = load_checkpoint(path)
        return model

    def keep_for_finetune(self, spec: StrategySpec, seed: int, r: int, model: Any) -> None:
        """Save round ``r``'s detector: the next round (or a resumed run) fine-tunes it."""
        from gsal_edge.models.detector import save_checkpoint
        from gsal_edge.models.detector_training import preprocessing_meta

        save_checkpoint(model_path(self.run_dir, spec, seed, r), model, model.config, list(model.classes),
                        preprocessing_meta(model.config, self.cfg.data.window))
