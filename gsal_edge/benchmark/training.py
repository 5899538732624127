"""Each round's detector: its config for the label mode, training on the labeled set (from scratch, or
fine-tuned from the previous round's), evaluation on the fixed test split, and the shared round 0.

Evaluation (``f1_threshold: validation``): the detector is first run on the labeled validation split, where
the F1 score thresholds are chosen (the pooled one for micro F1, one per class for macro F1); those fixed
thresholds are then applied on the test split. The record's ``metrics`` are the test split's, with the
validation split's own numbers and the thresholds under ``metrics.validation``."""

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
                 device: str, val_ids: list[str] | None = None) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.test_ids = test_ids
        self.val_ids = list(val_ids or [])
        if cfg.f1_threshold == "validation" and not self.val_ids:
            raise BenchError("f1_threshold=validation: the run has no validation split (data.val_fraction)")
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

    def iterations_for(self, n_labeled: int, from_scratch: bool, dcfg: Any | None = None) -> int:
        """Optimizer iterations of one round's training on ``n_labeled`` images: ``train_iters`` from
        scratch, ``finetune_iters`` when fine-tuning; with the detector's ``train.schedule: scaled``,
        :func:`gsal_edge.models.detector_schedule.scaled_iterations` of ``n_labeled`` from scratch, and
        that times ``finetune_iters / train_iters`` when fine-tuning."""
        if dcfg is None or dcfg.train.schedule != "scaled":
            return self.cfg.train_iters if from_scratch else self.cfg.finetune_iters
        from gsal_edge.models.detector_schedule import scaled_iterations

        it = scaled_iterations(n_labeled, dcfg)
        return it if from_scratch else max(1, round(it * self.cfg.finetune_iters / self.cfg.train_iters))

    def evaluate(self, model: Any) -> dict[str, Any]:
        """Test-split metrics; with ``f1_threshold: validation`` at the F1 thresholds chosen on the
        validation split (whose own metrics and the thresholds go under ``validation``)."""
        from gsal_edge.models.detection_metrics import FixedThresholds
        from gsal_edge.models.detector_training import evaluate_detector

        kw = {"window": self.cfg.data.window, "device": self.device}
        if self.cfg.f1_threshold == "test_oracle":
            return {**evaluate_detector(model, self.dataset, self.test_ids, **kw), "threshold_source": "test_oracle"}
        val = evaluate_detector(model, self.dataset, self.val_ids, **kw)
        thr = FixedThresholds.from_metrics(val)
        test = evaluate_detector(model, self.dataset, self.test_ids, score_threshold=thr, **kw)
        test["threshold_source"] = "validation"
        test["validation"] = {"f1": val["f1"], "f1_macro": val["f1_macro"], "map50": val["map50"],
                              "n_images": val["n_images"], "n_gt": val["n_gt"], "thresholds": thr.to_dict()}
        return test

    def _protocol(self) -> dict[str, Any]:
        """What the round-0 evaluation depends on besides the detector (a stale shared eval is not reused)."""
        return {"f1_threshold": self.cfg.f1_threshold, "val": digest(self.val_ids), "test": digest(self.test_ids)}

    def train_and_eval(self, labeled: list[str], seed: int, r: int, label_mode: str,
                       init: Any | None = None) -> tuple[Any, dict, dict, bool]:
        """Train on ``labeled`` (from scratch, or fine-tune ``init``) and evaluate on the test split.

        Round 0 is always from scratch and shared by the strategies of a seed. Returns (model, metrics,
        times, whether round 0 was reused)."""
        from gsal_edge.models.detector import load_checkpoint, save_checkpoint
        from gsal_edge.models.detector_training import preprocessing_meta, train_detector

        dcfg = self.detector_config(label_mode)
        shared = shared_dir(self.run_dir, seed) / f"{label_mode}-{digest([dcfg.model_dump(mode='json'), self.cfg.train_iters])}"
        if r == 0 and (shared / "eval.json").is_file() and (shared / "detector.pt").is_file():
            saved = read_json(shared / "eval.json", BenchError)
            if saved.get("labeled") == labeled and saved.get("protocol") == self._protocol():
                model, _ = load_checkpoint(shared / "detector.pt")
                return model, saved["metrics"], saved["times"], True
        iters = self.iterations_for(len(labeled), from_scratch=init is None, dcfg=dcfg)
        epochs = self.epochs_for(len(labeled), dcfg.train.batch_size, iters)
        t0 = time.perf_counter()
        model = train_detector(self.dataset, dcfg, epochs=epochs, seed=int(seed) * 1000 + r, image_ids=labeled,
                               window=self.cfg.data.window, progress=False, init_from=init, device=self.device)
        t1 = time.perf_counter()
        metrics = self.evaluate(model)
        t2 = time.perf_counter()
        times = {"train": t1 - t0, "eval": t2 - t1, "epochs": epochs, "iters": iters}
        if label_mode == "binary":
            metrics = {k: v for k, v in metrics.items() if k != "per_class"}
        if r == 0:
            save_checkpoint(shared / "detector.pt", model, dcfg, list(model.classes),
                            preprocessing_meta(dcfg, self.cfg.data.window))
            write_json_atomic(shared / "eval.json", {"labeled": labeled, "metrics": metrics, "times": times,
                                                     "protocol": self._protocol()})
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
