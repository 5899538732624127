"""Retrain the detector on every stored label, gate it on a fixed validation split, export, deploy.

1. The training set is the store's labeled set (``PoolStore.labeled_dataset``); the architecture and
   preprocessing are the serving detector's. ``warm_start`` initialises from the serving weights,
   otherwise training starts from the configuration's own initialisation (spec section 9 retrains from
   scratch every round).
2. Both the new and the serving detector are evaluated on the same fixed validation split (a COCO /
   VOC / YOLO folder that never enters the pool). The gate passes when
   ``new[metric] >= serving[metric] - tolerance`` ("not worse"); both numbers go to the audit log.
3. On a pass: the new checkpoint plus the serving bundle's diffusion prior and CLIP are exported
   (``export.pipeline.run_export``) into ``<store>/bundles/`` and deployed (``trainer.deploy``); the
   bundle that served so far becomes ``previous`` (``trainer rollback``). On a fail nothing is deployed.

Training runs in this process by default. With ``nproc > 1`` (or ``launcher="torchrun"``) it runs
data-parallel: the labeled set is written as a COCO file over the stored images, and
``python -m torch.distributed.run --standalone --nproc_per_node N -m gsal_edge.models.detector_train_worker``
trains it with DDP (gloo on CPU, nccl on GPU); rank 0 writes the run folder, this process then loads
its ``detector.pt`` and evaluates it once (docs/distributed-training.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsal_edge.errors import GSALError
from gsal_edge.jsonio import to_jsonable
from trainer.audit_log import AuditLog
from trainer.deploy import DeployReport, StationAccess, deploy
from trainer.store.pool_store import PoolStore

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("f1", "map50", "ap", "precision", "recall", "f1_macro", "n_images")
LAUNCHERS = ("auto", "inprocess", "torchrun")  # auto: in this process for nproc 1, torchrun above
DDP_WORKER = "gsal_edge.models.detector_train_worker"


class RetrainError(GSALError, RuntimeError):
    """Retraining cannot start (no serving bundle, no labels, class mismatch); the message says why."""


@dataclass(frozen=True)
class RetrainOptions:
    val: Path  # the fixed validation split (a data set folder or COCO json)
    warm_start: bool = False
    epochs: int | None = None  # default: the detector config's
    seed: int = 0
    metric: str = "f1"  # gate metric: f1 | map50 | ap
    tolerance: float = 0.0  # "not worse": new >= serving - tolerance
    max_iters: int | None = None  # stop training early (bounded tests/demos)
    export_config: Path | None = None
    signing_key: Path | None = None
    models_dir: Path | None = None  # explicit sources (detector.pt, prior/, clip/) instead of the bundle's
    deploy: bool = True
    progress: bool = False
    nproc: int = 1  # training processes (DDP over torchrun when > 1)
    launcher: str = "auto"  # auto | inprocess | torchrun
    threads: int | None = None  # torch CPU threads per training process (torchrun; default cores / nproc)

    def uses_torchrun(self) -> bool:
        """Whether training goes through torchrun; refuses impossible combinations."""
        if self.launcher not in LAUNCHERS:
            raise RetrainError(f"launcher must be one of {LAUNCHERS}, got {self.launcher!r}")
        if self.nproc < 1:
            raise RetrainError(f"nproc must be >= 1, got {self.nproc}")
        if self.launcher == "inprocess" and self.nproc > 1:
            raise RetrainError(f"launcher inprocess trains in one process; nproc {self.nproc} needs torchrun")
        return self.launcher == "torchrun" or self.nproc > 1


@dataclass
class Gate:
    metric: str
    new: float
    serving: float
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.new >= self.serving - self.tolerance

    def sentence(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"gate {verdict}: new {self.metric} {self.new:.4f} vs serving {self.serving:.4f} "
                f"(tolerance {self.tolerance:g})")


@dataclass
class RetrainReport:
    run_dir: Path
    n_images: int
    n_boxes: int
    train_seconds: float
    new: dict[str, Any]
    serving: dict[str, Any]
    gate: Gate
    bundle_id: str | None = None
    bundle_dir: Path | None = None
    export_seconds: float | None = None
    deploy: DeployReport | None = None
    notes: list[str] = field(default_factory=list)


def gate(new: dict[str, Any], serving: dict[str, Any], metric: str, tolerance: float) -> Gate:
    """The deploy gate on two metric dicts (pure)."""
    if metric not in new or metric not in serving:
        raise RetrainError(f"gate metric {metric!r} not in the evaluation (have {sorted(new)})")
    if new[metric] is None or serving[metric] is None:
        raise RetrainError(f"gate metric {metric!r} is undefined on the validation split (no ground truth?)")
    return Gate(metric, float(new[metric]), float(serving[metric]), float(tolerance))


def summarize(metrics: dict[str, Any]) -> dict[str, Any]:
    """The headline numbers of an evaluation, JSON-safe (NaN, e.g. a class absent from val -> None)."""
    out = {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}
    out["per_class_f1"] = {c: v.get("f1") for c, v in (metrics.get("per_class") or {}).items()}
    return to_jsonable(out)


@dataclass(frozen=True)
class Sources:
    detector: Path
    prior: Path
    clip: Path
    graph: str
    gsal_config: Path | None
    serving_bundle: str | None


def resolve_sources(store: PoolStore, models_dir: Path | None) -> Sources:
    """Where the serving detector, prior and CLIP live: ``models_dir``, else the serving bundle."""
    if models_dir is not None:
        from export.sources import SourceError, discover_sources  # the export's own source layout

        try:
            s = discover_sources(models_dir)
        except SourceError as e:
            raise RetrainError(str(e)) from None
        serving = store.bundle_with_role("serving")
        return Sources(s.detector, s.prior, s.clip, s.graph, s.gsal_config, serving["bundle_id"] if serving else None)
    serving = store.bundle_with_role("serving")
    if serving is None or not serving.get("path"):
        raise RetrainError(f"{store.db_path}: no serving bundle registered; run `trainer deploy --bundle DIR` "
                           "first or pass --models DIR")
    from gsal_edge.scoring.bundle import BundleError, read_manifest

    try:
        m = read_manifest(serving["path"])
    except BundleError as e:
        raise RetrainError(str(e)) from None
    torch_part = m.data.get("torch") or {}
    src = m.data.get("sources") or {}

    def pick(key: str) -> Path:
        if key in torch_part:
            return m.path(torch_part[key])
        if key in src and Path(src[key]["path"]).exists():
            return Path(src[key]["path"])
        raise RetrainError(f"{m.root}: bundle has neither torch/{key} nor a reachable source path for {key}; "
                           "pass --models DIR")

    graph = src.get("graph", {}).get("path") if isinstance(src.get("graph"), dict) else None
    if not graph or not (Path(graph).exists() or "/" not in graph):
        graph = str(m.path("concept_graph.json"))
    cfg = src.get("gsal_config", {}).get("path") if isinstance(src.get("gsal_config"), dict) else None
    return Sources(pick("detector"), pick("prior"), pick("clip"), graph,
                   Path(cfg) if cfg and Path(cfg).exists() else None, m.bundle_id)


def train_with_torchrun(train_ds: Any, cfg: Any, run_dir: Path, opts: RetrainOptions,
                        window: tuple[float, float] | None) -> Any:
    """Train ``train_ds`` with DDP in ``opts.nproc`` torchrun processes; returns rank 0's detector.

    The workers read ``run_dir/train_set/annotations.json`` (COCO, pointing at the stored images) and
    ``run_dir/detector_config.json``; the torchrun output is kept in ``run_dir/torchrun.log``.
    """
    import os

    from gsal_edge.data.coco import write_coco
    from gsal_edge.models.detector import load_checkpoint
    from gsal_edge.models.detector_training import FINAL
    from gsal_edge.models.distributed import DistributedError, launch

    write_coco(train_ds, run_dir / "train_set", copy_images=False)
    (run_dir / "detector_config.json").write_text(cfg.model_dump_json(indent=2))
    threads = opts.threads or max(1, (os.cpu_count() or 1) // opts.nproc)
    args: list[Any] = ["--data", run_dir / "train_set", "--config", run_dir / "detector_config.json",
                       "--out", run_dir, "--seed", opts.seed, "--no-resume", "--threads", threads]
    if opts.epochs is not None:
        args += ["--epochs", opts.epochs]
    if opts.max_iters is not None:
        args += ["--max-iters", opts.max_iters]
    if window is not None:
        args += ["--window", *window]
    if opts.progress:
        args.append("--progress")
    try:
        launch(DDP_WORKER, args, opts.nproc, log_path=run_dir / "torchrun.log", echo=opts.progress,
               threads_per_proc=threads)
    except DistributedError as e:
        raise RetrainError(str(e)) from None
    model, _meta = load_checkpoint(run_dir / FINAL)
    return model


def retrain(
    store: PoolStore, opts: RetrainOptions, access: StationAccess | None = None,
    say: Callable[[str], None] | None = None,
) -> RetrainReport:
    """Train, evaluate against the serving model, gate, and (on a pass) export + deploy."""
    access = access or StationAccess()
    import torch  # noqa: F401 - fail early and clearly if the training stack is missing

    from gsal_edge.data.dataset import DatasetError
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models.detector import load_checkpoint
    from gsal_edge.models.detector_config import AGNOSTIC_CLASS
    from gsal_edge.models.detector_training import TrainingError, evaluate_detector, train_detector

    say = say or (lambda msg: log.info("%s", msg))
    distributed = opts.uses_torchrun()
    audit = AuditLog(store.audit_path)
    src = resolve_sources(store, opts.models_dir)
    serving_model, meta = load_checkpoint(src.detector)
    cfg = meta["config"]
    det_classes = list(meta["classes"])
    window = meta["preprocessing"].get("window")
    window = tuple(window) if window else None

    train_ds = store.labeled_dataset()
    if len(train_ds) == 0:
        raise RetrainError(f"{store.db_path}: no labeled images yet")
    if cfg.class_agnostic or det_classes == [AGNOSTIC_CLASS]:
        train_ds.classes = sorted({a.category for e in train_ds.images for a in e.annotations}) or [AGNOSTIC_CLASS]
    else:
        unknown = sorted({a.category for e in train_ds.images for a in e.annotations} - set(det_classes))
        if unknown:
            raise RetrainError(f"{store.db_path}: labeled classes {unknown} are not detector classes {det_classes}")
        train_ds.classes = det_classes
    try:
        val = load_dataset(opts.val)
    except DatasetError as e:
        raise RetrainError(f"validation split: {e}") from None
    n_boxes = sum(len(e.annotations) for e in train_ds.images)
    run_dir = store.root / "runs" / f"retrain-{time.strftime('%Y%m%d-%H%M%S')}-{len(train_ds)}"
    if opts.warm_start:
        cfg = cfg.model_copy(update={"weights": str(src.detector)})
    say(f"retrain: {len(train_ds)} labeled images / {n_boxes} boxes, {'warm start' if opts.warm_start else 'from scratch'}, "
        f"detector {cfg.name}, val {len(val)} images -> {run_dir}")
    t0 = time.perf_counter()
    try:
        if distributed:
            say(f"training with torchrun: {opts.nproc} process(es), global batch {cfg.train.batch_size}")
            model = train_with_torchrun(train_ds, cfg, run_dir, opts, window)
        else:
            model = train_detector(train_ds, cfg, opts.epochs, run_dir, opts.seed, False, window=window,
                                   progress=opts.progress, max_iters=opts.max_iters)
    except TrainingError as e:
        raise RetrainError(str(e)) from None
    train_s = time.perf_counter() - t0
    say(f"trained in {train_s:.1f}s; evaluating new and serving detectors on the validation split")
    classes = list(getattr(model, "classes", None) or det_classes)
    new_m = summarize(evaluate_detector(model, val, classes=classes, window=window))
    serving_m = summarize(evaluate_detector(serving_model, val, classes=det_classes, window=window))
    g = gate(new_m, serving_m, opts.metric, opts.tolerance)
    say(g.sentence())
    report = RetrainReport(run_dir, len(train_ds), n_boxes, train_s, new_m, serving_m, g)
    (run_dir / "gate.json").write_text(json.dumps(
        {"metric": g.metric, "new": new_m, "serving": serving_m, "tolerance": g.tolerance, "passed": g.passed},
        indent=2, default=float))
    entry: dict[str, Any] = {
        "run_dir": str(run_dir), "labeled_images": len(train_ds), "boxes": n_boxes, "warm_start": opts.warm_start,
        "epochs": opts.epochs, "max_iters": opts.max_iters, "seed": opts.seed, "train_seconds": round(train_s, 2),
        "val": str(opts.val), "val_images": len(val), "serving_bundle": src.serving_bundle,
        "processes": opts.nproc, "launcher": "torchrun" if distributed else "inprocess",
        "gate": {"metric": g.metric, "new": g.new, "serving": g.serving, "tolerance": g.tolerance, "passed": g.passed},
        "new": new_m, "serving": serving_m,
    }
    if src.serving_bundle:
        b = next(b for b in store.bundles() if b["bundle_id"] == src.serving_bundle)
        store.add_bundle(b["bundle_id"], b["path"], b["role"], serving_m)
    if not g.passed:
        audit.append("retrain", to_jsonable(entry | {"deployed": False}))
        return report

    # trainer -> export is allowed: retrain exports the new bundle (stations never import export/)
    from export.config import load_export_config
    from export.pipeline import run_export
    from export.sources import ModelSources

    key = None
    if opts.signing_key is not None:
        from export.signing import load_private_key

        key = load_private_key(opts.signing_key)
    t1 = time.perf_counter()
    res = run_export(
        ModelSources(run_dir / "detector.pt", src.prior, src.clip, src.graph, src.gsal_config),
        store.root / "bundles", load_export_config(opts.export_config), key, progress=say,
    )
    report.export_seconds = time.perf_counter() - t1
    report.bundle_id, report.bundle_dir = res.bundle_id, Path(res.bundle_dir)
    say(f"exported {res.bundle_id} in {report.export_seconds:.1f}s -> {res.bundle_dir}")
    audit.append("retrain", to_jsonable(entry | {"deployed": opts.deploy, "bundle_id": res.bundle_id,
                                                 "bundle_dir": str(res.bundle_dir)}))
    bundle_path = str(Path(res.bundle_dir).resolve())
    if opts.deploy:
        report.deploy = deploy(store, res.bundle_id, bundle_path, access, metrics=new_m,
                               note=f"retrain {run_dir.name}")
    else:
        store.add_bundle(res.bundle_id, bundle_path, "candidate", new_m, f"retrain {run_dir.name}")
        report.notes.append("not deployed (--no-deploy): registered as a candidate; `trainer deploy` pushes it")
    return report

