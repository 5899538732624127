"""Active-learning benchmark: the paper's protocol (spec §§8-9) on any detection data set.

For every seed and every strategy (spec §8 names, optionally with GSAL config overrides written
``gsal[proposal_mode=latent_roi,assigner=hybrid]``), starting from the seed's initial labeled set
(shared by all strategies of that seed), each round:

1. train the detector from scratch on the labeled set (``detector_training.train_detector``);
2. evaluate it on the fixed held-out test split (F1@0.5, mAP@50, COCO AP, per class);
3. score the unlabeled pool through the station's own :class:`gsal_edge.scoring.scorer.GSALScorer` (the
   detector engine is swapped each round; the diffusion prior and CLIP are fixed, so image-level
   E_rec / V_den and their per-position maps are cached per (image, prior, diffusion settings) and
   only what depends on the detector is recomputed);
4. select a batch with the strategy and reveal its ground truth (simulated annotator).

Label modes (spec §3): ``typed`` trains a typed detector and counts labeled classes; ``binary``
trains a class-agnostic detector and counts the CLIP-assigned concepts of the labeled boxes. The
mode is part of each strategy's GSAL config (``--set label_mode=binary`` or ``gsal[label_mode=binary]``).

Run folder (``RUN_DIR``):

- ``run.json``: config, seeds, expanded strategies, schedule, split sizes, rare classes, package
  versions, git commit;  ``split.json``: test ids, pool ids, each seed's initial labeled set;
- ``results/<strategy>/seed-<s>.json``: one record per finished round (metrics, rare-class retrieval,
  labeled instances per class, wall times, picks), rewritten atomically after each round: a killed run
  continues from its last finished round;
- ``picks/<strategy>/seed-<s>/round-<r>.json``: the selection with full rationale;
- ``shared/seed-<s>/...``: the round-0 detector, metrics and score records, computed once per seed
  and label mode and reused by every strategy; ``cache/``: the diffusion-score cache.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gsal_edge.acquisition.concept_graph import ConceptGraph, load_graph
from gsal_edge.acquisition.config import ConfigError, GSALConfig
from gsal_edge.config_files import CONFIGS_DIR, read_yaml_mapping
from gsal_edge.data.datasets import DetectionDataset, load_dataset, load_image
from gsal_edge.data.preprocessing import resize_image, to_unit_float

log = logging.getLogger(__name__)

PRESETS_FILE = CONFIGS_DIR / "bench_presets.yaml"
DEFAULT_MODELS_DIR = Path("artifacts/models")  # where `gsal-edge models train-defaults` writes by default
STATE_FORMAT = "gsal-bench-state/1"
NO_SCORES = frozenset({"random"})  # strategies that read nothing of the score records
# strategies that read only the whole-slice CLIP embedding: it does not depend on the round's detector, so it is
# computed once per image (the same f_I the scorer attaches to a record) instead of re-scoring the pool
EMBEDDING_ONLY = frozenset({"coreset"})
SWEEPABLE = ("alpha", "beta", "alpha_beta", "gamma", "lambda", "mu", "rho", "eta", "M", "K", "t_frac",
             "percentile", "temperature", "hybrid_k", "context_margin")

__all__ = [
    "BenchConfig",
    "BenchError",
    "Benchmark",
    "DiffusionCache",
    "StrategySpec",
    "budget_schedule",
    "expand_strategies",
    "load_preset",
    "parse_strategy",
    "preset_names",
    "rare_classes",
    "run_benchmark",
]


class BenchError(ValueError):
    """The benchmark cannot run as configured; the message names the field, file or strategy."""


# ---------------------------------------------------------------------------------------- config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SyntheticData(_Strict):
    """The preset's generated data set (used when no ``data.path`` is given)."""

    n: int = Field(1800, ge=4, description="images generated (pool + test split)")
    seed: int = 0
    synth: dict[str, Any] = Field(default_factory=dict, description="SynthConfig fields overriding the default")


class DataConfig(_Strict):
    """Where the data comes from and how the fixed test split is drawn."""

    path: str | None = Field(None, description="COCO json / COCO folder / VOC folder / YOLO folder")
    format: Literal["auto", "coco", "voc", "yolo"] = "auto"
    synthetic: SyntheticData = Field(default_factory=SyntheticData)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out test share (stratified, seeded)")
    split_seed: int = 0
    max_images: int | None = Field(None, ge=4, description="use a seeded subset of this many images")
    window: tuple[float, float] | None = None
    cache_dir: str = Field("artifacts/bench_data", description="generated data sets, by content hash")


class ModelsConfig(_Strict):
    """The fixed generative prior and CLIP (local folders only)."""

    dir: str | None = Field(None, description="folder with prior/ (or diffusion/) and clip/; default "
                            "artifacts/models, where `gsal-edge models train-defaults` writes")
    prior: str | None = Field(None, description="diffusers/SD prior folder (overrides dir/prior)")
    clip: str | None = Field(None, description="CLIP folder with gsal_clip.json (overrides dir/clip)")


class BenchConfig(_Strict):
    """Every knob of a benchmark run (presets in ``configs/bench_presets.yaml``)."""

    preset: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    graph: str = "thin_film_ct"
    class_map: dict[str, str] = Field(default_factory=dict, description="data class -> graph fine node")
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    strategies: list[str] = Field(default_factory=lambda: ["gsal", "entropy", "random"], min_length=1)
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="one-at-a-time sweeps")
    sweep_base: str = "gsal"
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1)
    init: float = Field(0.01, gt=0, lt=1, description="initial labeled share of the pool")
    step: float = Field(0.01, gt=0, lt=1, description="labeled share added per round")
    budget: float = Field(0.10, gt=0, le=1, description="final labeled share")
    detector: str = Field("cpu", description="detector preset name or a detector config YAML")
    detector_overrides: dict[str, Any] = Field(default_factory=dict)
    train_iters: int = Field(300, ge=1, description="optimizer iterations of a from-scratch training (epochs derived)")
    retrain: Literal["scratch", "finetune"] = Field(
        "scratch", description="each round: train from scratch, or fine-tune the strategy's previous-round detector "
                               "(round 0 is always from scratch and shared by the strategies of a seed)")
    finetune_iters: int = Field(150, ge=1, description="optimizer iterations of a fine-tuning round (retrain=finetune)")
    candidates: int | None = Field(
        None, ge=1, description="score a seeded random subset of this many unlabeled images per round (all "
                                "strategies alike); None = the whole unlabeled pool")
    gsal: list[str] = Field(default_factory=list, description="GSALConfig name=value overrides (all strategies)")
    rare_fraction: float = Field(0.2, gt=0, le=1, description="rare = bottom share of classes by instances")
    rare_classes: list[str] | None = None
    threads: int = Field(1, ge=1)
    device: str = Field("cpu", description="where the detector trains and is evaluated and the pool is scored: "
                                           "cpu | cuda[:N] | auto (cuda when torch sees a GPU); on CUDA the "
                                           "scorer runs in fp32 (TF32 off), so its records match the CPU's")
    score_batch: int = Field(32, ge=1)
    mc_dropout_T: int = Field(10, ge=2)
    gallery_picks: int = Field(4, ge=1, description="picks per strategy shown in the gallery")

    @field_validator("strategies")
    @classmethod
    def _strategies(cls, v: list[str]) -> list[str]:
        for s in v:
            parse_strategy(s)
        if len({parse_strategy(s).key for s in v}) != len(v):
            raise ValueError(f"duplicate strategy in {v}")
        return v

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        if self.init > self.budget + 1e-9:
            raise ValueError(f"init {self.init} exceeds budget {self.budget}")
        for name, values in self.sweep.items():
            if name not in SWEEPABLE:
                raise ValueError(f"sweep: {name!r} is not sweepable; choose from {', '.join(SWEEPABLE)}")
            if not values:
                raise ValueError(f"sweep {name!r}: no values")
        return self

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):
            raise ValueError(f"device must be cpu, auto, cuda or cuda:N, got {v!r}")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; a named cuda device must exist."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"device {device!r}: torch sees no GPU here (use --device cpu or auto)")
    return device


def preset_names(path: str | Path = PRESETS_FILE) -> list[str]:
    """Names of the benchmark presets."""
    return list(_read_presets(path))


def _read_presets(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path, BenchError, "benchmark presets (preset name -> config)")


def _deep_merge(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_preset(name: str, overrides: dict[str, Any] | None = None, path: str | Path = PRESETS_FILE) -> BenchConfig:
    """The preset ``name`` with a nested ``overrides`` dict merged in, validated."""
    presets = _read_presets(path)
    if name not in presets:
        raise BenchError(f"unknown benchmark preset {name!r}; known: {', '.join(presets)}")
    data = _deep_merge({"preset": name, **(presets[name] or {})}, overrides or {})
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc']) or '(root)'}: {err['msg']}" for err in e.errors())
        raise BenchError(f"benchmark preset {name!r} (+ options): {errs}") from None


# ------------------------------------------------------------------------------------ strategies


@dataclass(frozen=True)
class StrategySpec:
    """A strategy name plus GSAL config overrides, e.g. ``gsal[proposal_mode=latent_roi]``."""

    base: str
    overrides: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> str:
        if not self.overrides:
            return self.base
        return f"{self.base}[{','.join(f'{k}={v}' for k, v in self.overrides)}]"

    @property
    def slug(self) -> str:
        """A file-system-safe folder name for this strategy."""
        s = re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.key.replace("[", "__").replace("]", "")).strip("_")
        if s != self.key:
            s += "-" + hashlib.sha256(self.key.encode()).hexdigest()[:6]
        return s


def _split_top(text: str) -> list[str]:
    """Split on commas outside brackets: ``levels=[fine,coarse],gamma=1`` -> two items."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_strategy(text: str) -> StrategySpec:
    """Parse ``name`` or ``name[k=v,...]``; unknown names and parameters raise `BenchError`."""
    from gsal_edge.acquisition.strategies import available_strategies

    m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*(?:\[(.*)\])?\s*", text)
    if not m:
        raise BenchError(f"strategy {text!r}: expected NAME or NAME[param=value,...]")
    base, inner = m.group(1), m.group(2)
    if base not in available_strategies():
        raise BenchError(f"strategy {text!r}: unknown name {base!r}; available: {', '.join(available_strategies())}")
    overrides: list[tuple[str, str]] = []
    for item in _split_top(inner or ""):
        if "=" not in item:
            raise BenchError(f"strategy {text!r}: override {item!r} is not name=value")
        k, v = (s.strip() for s in item.split("=", 1))
        overrides.append(("lambda" if k == "lambda_" else k, v))
    spec = StrategySpec(base, tuple(overrides))
    try:
        GSALConfig().with_overrides([f"{k}={v}" for k, v in spec.overrides])
    except ConfigError as e:
        raise BenchError(f"strategy {text!r}: {e}") from None
    return spec


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def sweep_specs(cfg: BenchConfig) -> dict[str, list[tuple[Any, StrategySpec]]]:
    """One-at-a-time sweep: parameter -> [(value, strategy spec)], built on ``cfg.sweep_base``."""
    base = parse_strategy(cfg.sweep_base)
    out: dict[str, list[tuple[Any, StrategySpec]]] = {}
    for name, values in cfg.sweep.items():
        rows = []
        for v in values:
            if name == "alpha_beta":
                a = float(v)
                if not 0 <= a <= 1:
                    raise BenchError(f"sweep alpha_beta={v}: needs 0 <= value <= 1 (alpha = v, beta = 1 - v)")
                ov = (("alpha", _fmt_value(a)), ("beta", _fmt_value(round(1.0 - a, 10))))
            else:
                ov = ((name, _fmt_value(v)),)
            merged = tuple((k, x) for k, x in base.overrides if k not in {o[0] for o in ov}) + ov
            rows.append((v, parse_strategy(StrategySpec(base.base, merged).key)))
        out[name] = rows
    return out


def expand_strategies(cfg: BenchConfig) -> list[StrategySpec]:
    """The configured strategies followed by every sweep point not already listed."""
    specs = [parse_strategy(s) for s in cfg.strategies]
    keys = {s.key for s in specs}
    for rows in sweep_specs(cfg).values():
        for _, s in rows:
            if s.key not in keys:
                specs.append(s)
                keys.add(s.key)
    return specs


# ---------------------------------------------------------------------------------- pure helpers


def budget_schedule(n_pool: int, init: float, step: float, budget: float) -> tuple[list[float], list[int]]:
    """Labeled shares init, init+step, ..., budget and the labeled-set sizes at each (>= 1, increasing)."""
    n_steps = math.floor((budget - init) / step + 1e-9)
    fracs = [round(init + i * step, 10) for i in range(n_steps + 1)]
    sizes = [max(1, round(f * n_pool)) for f in fracs]
    for i in range(1, len(sizes)):
        if sizes[i] <= sizes[i - 1]:
            raise BenchError(f"a pool of {n_pool} images is too small for step {step}: budget {fracs[i]} "
                             f"labels {sizes[i]} images, no more than at {fracs[i - 1]}")
    if sizes[-1] > n_pool:
        raise BenchError(f"budget {budget} needs {sizes[-1]} images but the pool has {n_pool}")
    return fracs, sizes


def rare_classes(instance_counts: dict[str, int], fraction: float) -> list[str]:
    """Classes in the bottom ``fraction`` by instance count (at least one; ties by name)."""
    if not instance_counts:
        return []
    k = max(1, round(fraction * len(instance_counts)))
    return sorted(sorted(instance_counts), key=lambda c: instance_counts[c])[:k]


def _sha(data: bytes | str, n: int = 16) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()[:n]


def _digest(obj: Any, n: int = 12) -> str:
    return _sha(json.dumps(obj, sort_keys=True, default=str), n)


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf -> None, numpy scalars -> Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_clean(obj), fh, indent=1, allow_nan=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise BenchError(f"{path}: cannot read ({e})") from None


def package_versions() -> dict[str, str]:
    """Versions of Python and the packages whose behaviour the numbers depend on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("gsal-edge", "torch", "torchvision", "numpy", "diffusers", "open_clip_torch", "faster-coco-eval",
                "pydantic", "matplotlib"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def git_state() -> dict[str, Any]:
    """The commit of the checkout this package runs from, and whether it has local changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10,
                              check=False)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None, "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}


def folder_fingerprint(folder: Path, skip: Iterable[str] = ("checkpoints",), provenance: bool = False) -> str:
    """sha256 over the relative paths and contents of a model folder: its weights and the configs that load them.

    Training provenance is left out unless ``provenance``: ``checkpoints/``, the top-level ``run.json`` and the
    ``train`` section of a top-level JSON descriptor (``gsal_prior.json``, ``gsal_clip.json``: wall times,
    losses). So a retrain that gives bit-identical weights keeps the fingerprint, and with it the run folders
    and diffusion caches made with it. ``provenance=True`` is the old fingerprint (every file but checkpoints),
    still accepted when resuming run folders started before this rule.
    """
    h = hashlib.sha256()
    skip = set(skip)
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if not p.is_file() or (rel.parts and rel.parts[0] in skip):
            continue
        if not provenance and len(rel.parts) == 1 and p.suffix == ".json":
            if p.name == "run.json":
                continue
            doc = _read_json(p)
            if isinstance(doc, dict) and "train" in doc:
                h.update(str(rel).encode())
                h.update(json.dumps({k: v for k, v in doc.items() if k != "train"}, sort_keys=True).encode())
                continue
        h.update(str(rel).encode())
        with p.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


# ------------------------------------------------------------------------------ diffusion cache


class DiffusionCache:
    """Memoizes a scorer's image-level difficulty stage (E_rec, V_den and their per-position maps).

    The key is (namespace, image id, sha256 of the exact prior input row), so a hit is bit-identical
    to a recomputation; namespace = prior fingerprint + the diffusion settings (K, t, DDIM steps, base
    seed). Only rows of whole pool images are stored (proposal crops depend on the detector and are
    always recomputed). Persisted to ``path`` (npz) so a resumed run does not pay again.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, tuple[float, float, np.ndarray, np.ndarray]] = {}
        self.dirty = False
        self.hits = 0
        self.misses = 0
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, E, V, em, vm = z["keys"], z["E"], z["V"], z["e_map"], z["v_map"]
        except (OSError, KeyError, ValueError) as e:
            log.warning("%s: unreadable diffusion cache (%s); starting empty", path, e)
            return
        for i, k in enumerate(keys.tolist()):
            self.entries[str(k)] = (float(E[i]), float(V[i]), em[i], vm[i])

    def save(self) -> None:
        """Write the cache atomically when it changed (npz; maps of equal shape per file)."""
        if self.path is None or not self.dirty or not self.entries:
            return
        keys = sorted(self.entries)
        shapes = {self.entries[k][2].shape for k in keys}
        if len(shapes) != 1:  # several prior resolutions in one run: keep them in memory only
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), E=np.array([self.entries[k][0] for k in keys]),
                 V=np.array([self.entries[k][1] for k in keys]),
                 e_map=np.stack([self.entries[k][2] for k in keys]),
                 v_map=np.stack([self.entries[k][3] for k in keys]))
        os.replace(tmp, self.path)
        self.dirty = False

    def attach(self, scorer: Any, namespace: str, storable_ids: set[str]) -> None:
        """Memoize ``scorer``'s diffusion stage (``GSALScorer.difficulty_memo``) with this cache."""

        def memo(images01: np.ndarray, ids: list[str], compute: Callable[..., Any]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return self.lookup(images01, ids, compute, namespace, storable_ids)

        scorer.difficulty_memo = memo

    def lookup(self, images01: np.ndarray, ids: list[str], compute: Callable[..., Any], namespace: str,
               storable_ids: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The stage's result for these rows: cached rows from memory, the others from ``compute``
        (stored when their id is in ``storable_ids``: whole pool slices, never proposal crops)."""
        images01 = np.ascontiguousarray(images01)
        keys = [f"{namespace}|{iid}|{_sha(images01[j].tobytes(), 20)}" for j, iid in enumerate(ids)]
        miss = [j for j, k in enumerate(keys) if k not in self.entries]
        fresh: dict[int, tuple[float, float, np.ndarray, np.ndarray]] = {}
        if miss:
            E, V, em, vm = compute(images01[miss], [ids[j] for j in miss])
            for n, j in enumerate(miss):
                fresh[j] = (float(E[n]), float(V[n]), np.array(em[n]), np.array(vm[n]))
                if ids[j] in storable_ids:
                    self.entries[keys[j]] = fresh[j]
                    self.dirty = True
        self.hits += len(ids) - len(miss)
        self.misses += len(miss)
        rows = [fresh[j] if j in fresh else self.entries[keys[j]] for j in range(len(ids))]
        if not rows:
            return compute(images01, ids)
        return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]))


# ------------------------------------------------------------------------------------- the runner


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
        self._raw: dict[str, np.ndarray] = {}
        self._gt_emb: dict[str, np.ndarray] = {}
        self._img_emb: dict[str, np.ndarray] = {}
        self._scorers: dict[str, Any] = {}
        self._scorer_key: dict[int, str] = {}
        self._text_emb: dict[str, np.ndarray] = {}
        self._prepared = False

    # ------------------------------------------------------------------ preparation
    def prepare(self) -> None:
        """Load data and models, draw the split and initial sets, write or check ``run.json``."""
        import torch

        torch.set_num_threads(self.cfg.threads)
        self.device = resolve_device(self.cfg.device)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.graph: ConceptGraph = load_graph(self.cfg.graph)
        self.dataset = self._load_data()
        self.by_id = self.dataset.by_id()
        self.class_to_concept = self._class_map()
        self.test_ids, self.pool_ids = self._split()
        self.budgets, self.sizes = budget_schedule(len(self.pool_ids), self.cfg.init, self.cfg.step, self.cfg.budget)
        counts = {c: 0 for c in self.dataset.classes}
        for i in self.pool_ids:
            for a in self.by_id[i].annotations:
                counts[a.category] += 1
        self.pool_class_counts = counts
        if self.cfg.rare_classes is not None:
            unknown = sorted(set(self.cfg.rare_classes) - set(counts))
            if unknown:
                raise BenchError(f"rare_classes {unknown} are not classes of the data ({', '.join(counts)})")
            self.rare = list(self.cfg.rare_classes)
        else:
            self.rare = rare_classes({c: n for c, n in counts.items()}, self.cfg.rare_fraction)
        self.gsal_cfgs = {s.key: self._gsal_config(s) for s in self.specs}
        for s in self.specs:
            g = self.gsal_cfgs[s.key]
            if g.label_mode == "binary" and g.assigner != "text":
                raise BenchError(f"strategy {s.key!r}: label_mode=binary has no class labels to build "
                                 f"{g.assigner} prototypes from; use assigner=text")
        self.init_sets = {seed: self._initial_set(seed) for seed in self.cfg.seeds}
        self._load_models()
        self.diffusion_cache = DiffusionCache(self.run_dir / "cache" / f"diffusion-{self.prior_fp}.npz")
        self._write_run_json()
        self._prepared = True

    def _load_data(self) -> DetectionDataset:
        d = self.cfg.data
        if d.path:
            try:
                ds = load_dataset(d.path, d.format)
            except (ValueError, OSError) as e:
                raise BenchError(f"data {d.path}: {e}") from None
        else:
            ds = synthetic_dataset(d.synthetic, Path(d.cache_dir).resolve(), self.progress)
        if not ds.images:
            raise BenchError(f"data {d.path or 'synthetic'}: no images")
        if d.max_images is not None and len(ds.images) > d.max_images:
            rng = np.random.default_rng([d.split_seed, 7])
            keep = {ds.images[i].image_id for i in rng.permutation(len(ds.images))[: d.max_images]}
            ds = ds.subset(keep)
        return ds

    def _class_map(self) -> dict[str, str]:
        """Data class -> graph fine node (config ``class_map``, else same name up to spaces/hyphens)."""
        out: dict[str, str] = {}
        fine = set(self.graph.defects)
        for c in self.dataset.classes:
            target = self.cfg.class_map.get(c)
            if target is None:
                alt = c.strip().replace(" ", "_").replace("-", "_")
                target = c if c in fine else alt if alt in fine else None
            if target is None or target not in fine:
                raise BenchError(f"data class {c!r} is not a fine node of graph {self.graph.name!r} "
                                 f"({', '.join(self.graph.defects)}); map it with class_map")
            out[c] = target
        return out

    def _split(self) -> tuple[list[str], list[str]]:
        from gsal_edge.models.detector_training import split_ids

        pool, test = split_ids(self.dataset, self.cfg.data.test_fraction, self.cfg.data.split_seed)
        return sorted(test), sorted(pool)

    def _initial_set(self, seed: int) -> list[str]:
        rng = np.random.default_rng([int(seed), 1001])
        idx = rng.permutation(len(self.pool_ids))[: self.sizes[0]]
        return [self.pool_ids[i] for i in sorted(idx)]

    def _gsal_config(self, spec: StrategySpec) -> GSALConfig:
        try:
            base = GSALConfig().with_overrides(self.cfg.gsal)
            return base.with_overrides([f"{k}={v}" for k, v in spec.overrides])
        except ConfigError as e:
            raise BenchError(f"strategy {spec.key!r}: {e}") from None

    def _load_models(self) -> None:
        from gsal_edge.models.clip_model import ClipModel
        from gsal_edge.models.diffusion_prior import DiffusionPrior

        m = self.cfg.models
        root = Path(m.dir) if m.dir else DEFAULT_MODELS_DIR
        # the embedded defaults (`gsal-edge models train-defaults`) write diffusion/ and clip/; --models DIR
        # may also hold prior/ (the export layout)
        prior = Path(m.prior) if m.prior else next((root / d for d in ("prior", "diffusion") if (root / d).is_dir()),
                                                   None)
        clip = Path(m.clip) if m.clip else root / "clip"
        if prior is None or not clip.is_dir():
            raise BenchError(f"no diffusion prior / CLIP in {root} (expected prior/ or diffusion/, and clip/): run "
                             "`gsal-edge models train-defaults` (writes artifacts/models), or pass --models DIR, "
                             "or --prior DIR --clip DIR")
        for what, p in (("prior", prior), ("clip", clip)):
            if not p.is_dir():
                raise BenchError(f"{what} folder {p} does not exist")
        self.prior_dir, self.clip_dir = prior, clip
        self.prior = DiffusionPrior.from_pretrained(prior)
        self.clip = ClipModel.from_folder(clip)
        self.prior_fp = folder_fingerprint(prior)
        self.clip_fp = folder_fingerprint(clip)

    def _write_run_json(self) -> None:
        path = self.run_dir / "run.json"
        cfg = self.cfg.to_dict()
        split = {"test": self.test_ids, "pool": self.pool_ids, "init": {str(s): v for s, v in self.init_sets.items()}}
        if path.is_file():
            old = _read_json(path)
            # where and how fast it runs (threads, device) may change on resume; nothing else may
            # a field added after the run started counts as its default (older run folders stay resumable)
            old_cfg = {**BenchConfig().to_dict(), **old.get("config", {})}
            diff = _config_diff(old_cfg, cfg, ignore={"threads", "device"})
            if diff:
                raise BenchError(f"{path}: this run folder was started with another config ({'; '.join(diff[:6])}); "
                                 "resume it with the same options (or only --out), or use a new --out")
            old_split = _read_json(self.run_dir / "split.json") if (self.run_dir / "split.json").is_file() else None
            if old_split is not None and old_split != split:
                raise BenchError(f"{self.run_dir}/split.json: the data or split differ from the stored run")
            if old.get("models", {}).get("prior_fingerprint") not in (
                    None, self.prior_fp, folder_fingerprint(self.prior_dir, provenance=True)):
                raise BenchError(f"{path}: the diffusion prior changed since the run started ({self.prior_dir}): "
                                 "its weights or configs differ; resume with the same --models/--prior, or use a "
                                 "new --out")
            return
        write_json_atomic(self.run_dir / "split.json", split)
        info = {
            "format": STATE_FORMAT,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "config": cfg,
            "strategies": [s.key for s in self.specs],
            "strategy_slugs": {s.key: s.slug for s in self.specs},
            "label_modes": {s.key: self.gsal_cfgs[s.key].label_mode for s in self.specs},
            "gsal_configs": {s.key: self.gsal_cfgs[s.key].to_dict() for s in self.specs},
            "sweep": {name: [[_clean(v), s.key] for v, s in rows] for name, rows in sweep_specs(self.cfg).items()},
            "seeds": list(self.cfg.seeds),
            "budgets": self.budgets,
            "labeled_sizes": self.sizes,
            "pool_size": len(self.pool_ids),
            "test_size": len(self.test_ids),
            "classes": list(self.dataset.classes),
            "class_to_concept": self.class_to_concept,
            "pool_class_counts": self.pool_class_counts,
            "rare_classes": self.rare,
            "data": {"root": str(self.dataset.root), "path": self.cfg.data.path, "n_images": len(self.dataset),
                     "fingerprint": dataset_fingerprint(self.dataset)},
            "graph": self.graph.name,
            "models": {"prior": str(self.prior_dir), "prior_fingerprint": self.prior_fp, "clip": str(self.clip_dir),
                       "clip_fingerprint": self.clip_fp, "prior_info": _clean(self.prior.info()),
                       "clip_info": _clean(self.clip.info())},
            "detector": self.detector_config("typed").model_dump(mode="json"),
            "versions": package_versions(),
            "git": git_state(),
            "threads": self.cfg.threads,
        }
        write_json_atomic(path, info)

    # ------------------------------------------------------------------ images, embeddings
    def raw(self, image_id: str) -> np.ndarray:
        """The slice as stored (cached in memory)."""
        a = self._raw.get(image_id)
        if a is None:
            a = load_image(self.dataset.image_path(self.by_id[image_id]))
            self._raw[image_id] = a
        return a

    def unit(self, image_id: str) -> np.ndarray:
        return to_unit_float(self.raw(image_id), self.cfg.data.window)

    def gt_embeddings(self, image_id: str, margin: float) -> np.ndarray:
        """CLIP f_I of the image's ground-truth box regions (same crops as the scorer's proposals)."""
        from gsal_edge.acquisition.diffusion_difficulty import crop_regions

        key = f"{image_id}|{margin}"
        e = self._gt_emb.get(key)
        if e is None:
            boxes = np.array([a.box for a in self.by_id[image_id].annotations], dtype=np.float64).reshape(-1, 4)
            if len(boxes) == 0:
                e = np.zeros((0, self.clip.embed_dim), np.float32)
            else:
                e = self.clip.encode_images(crop_regions(self.unit(image_id), boxes, margin, self.clip.image_size))
            self._gt_emb[key] = e
        return e

    def image_embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """Whole-slice CLIP embeddings (what the scorer attaches to a record), for core-set centers."""
        todo = [i for i in ids if i not in self._img_emb]
        S = self.clip.image_size
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            emb = self.clip.encode_images(np.stack([resize_image(self.unit(i), (S, S)) for i in chunk]))
            for i, e in zip(chunk, emb):
                self._img_emb[i] = np.round(e.astype(np.float64), 6)
        return np.stack([self._img_emb[i] for i in ids]) if ids else np.zeros((0, self.clip.embed_dim))

    # ------------------------------------------------------------------ detector
    def detector_config(self, label_mode: str) -> Any:
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

        Round 0 is always from scratch and shared by the strategies of a seed."""
        from gsal_edge.models.detector import load_checkpoint, save_checkpoint
        from gsal_edge.models.detector_training import evaluate_detector, preprocessing_meta, train_detector

        dcfg = self.detector_config(label_mode)
        shared = self.run_dir / "shared" / f"seed-{seed}" / f"{label_mode}-{_digest([dcfg.model_dump(mode='json'), self.cfg.train_iters])}"
        if r == 0 and (shared / "eval.json").is_file() and (shared / "detector.pt").is_file():
            saved = _read_json(shared / "eval.json")
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
        return model, _clean(metrics), times, False

    # ------------------------------------------------------------------ scoring
    def scorer_for(self, gcfg: GSALConfig, model: Any) -> Any:
        """The station scorer for this strategy's settings, with this round's detector engine."""
        from gsal_edge.models.detector import DetectorWrapper
        from gsal_edge.scoring.runtime.torch_backend import TorchEngine
        from gsal_edge.scoring.scorer import spec_settings
        from gsal_edge.scoring.torch_scorer import scorer_from_models

        spec_kw = spec_settings(gcfg)
        key = _digest(spec_kw)
        sc = self._scorers.get(key)
        if sc is None:
            sc = scorer_from_models(model, list(model.classes), self.prior, self.clip, self.graph,
                                    bundle_id=f"bench-{self.prior_fp[:8]}-{self.clip_fp[:8]}", station="bench",
                                    device=self.device, **spec_kw)
            self._text_emb[key] = np.array(sc.assigner.embeddings, copy=True)
            ns = _digest([self.prior_fp, sc.spec.K, sc.spec.t_index, sc.spec.ddim_steps, sc.spec.base_seed,
                          sc.spec.prior_resolution, self.cfg.data.window])
            self.diffusion_cache.attach(sc, ns, set(self.pool_ids))
            self._scorers[key] = sc
        sc.engines["detector"] = TorchEngine("detector", DetectorWrapper(model), device=self.device)
        sc.spec.classes = list(model.classes)
        self._scorer_key[id(sc)] = key
        return sc

    def set_round_assigner(self, scorer: Any, gcfg: GSALConfig, labeled: list[str]) -> dict[str, str]:
        """Eq. 3 assigner for this round: text, or prototype/hybrid from the labeled boxes' crops."""
        from gsal_edge.acquisition.assignment import make_assigner

        names = list(scorer.spec.concepts)
        text = self._text_emb[self._scorer_key[id(scorer)]]
        if gcfg.assigner == "text":
            scorer.set_assigner(make_assigner("text", names, text,
                                              novelty_threshold=gcfg.novelty_threshold))
            return {c: "text" for c in names}
        ex: dict[str, list[np.ndarray]] = {}
        for i in labeled:
            emb = self.gt_embeddings(i, gcfg.context_margin)
            for a, e in zip(self.by_id[i].annotations, emb):
                ex.setdefault(self.class_to_concept[a.category], []).append(e)
        exemplars = {c: np.stack(v) for c, v in ex.items()}
        try:
            asg = make_assigner(gcfg.assigner, names, text, exemplars, gcfg.hybrid_k,
                                gcfg.novelty_threshold)
        except ValueError as e:
            raise BenchError(f"assigner {gcfg.assigner!r}: {e} (with few labels, assigner=hybrid falls back "
                             "to text prompts per concept)") from None
        scorer.set_assigner(asg)
        return dict(zip(names, asg.sources))

    def score_pool(self, scorer: Any, ids: list[str]) -> list[Any]:
        """Score record per image, in batches (the station's scoring code)."""
        from tqdm.auto import tqdm

        out = []
        bar = tqdm(total=len(ids), desc="score", disable=not self.progress, leave=False)
        for s in range(0, len(ids), self.cfg.score_batch):
            chunk = ids[s:s + self.cfg.score_batch]
            metas = [{k: str(v) for k, v in self.by_id[i].meta.items()} for i in chunk]
            out.extend(scorer.score([self.raw(i) for i in chunk], chunk, metas))
            bar.update(len(chunk))
        bar.close()
        return out

    def counts(self, gcfg: GSALConfig, scorer: Any | None, labeled: list[str]) -> dict[str, int]:
        """Coverage n(v) of the fine nodes (spec §3): truth in typed mode, CLIP concepts of boxes in binary."""
        from gsal_edge.acquisition.selection import labeled_counts

        if gcfg.label_mode == "typed":
            labels = [self.class_to_concept[a.category] for i in labeled for a in self.by_id[i].annotations]
            return labeled_counts(self.graph, "typed", labels=labels)
        if scorer is None:
            raise BenchError("binary label mode needs the scorer's assigner for the labeled boxes")
        embs = [self.gt_embeddings(i, gcfg.context_margin) for i in labeled]
        embs = [e for e in embs if len(e)]
        assigned = scorer.assigner(np.concatenate(embs)).concepts if embs else []
        return labeled_counts(self.graph, "binary", assigned_concepts=assigned)

    # ------------------------------------------------------------------ rounds
    def state_path(self, spec: StrategySpec, seed: int) -> Path:
        return self.run_dir / "results" / spec.slug / f"seed-{seed}.json"

    def model_path(self, spec: StrategySpec, seed: int, r: int) -> Path:
        """The round's detector, kept until the next round's state is written (retrain=finetune resumes from it)."""
        return self.run_dir / "results" / spec.slug / f"seed-{seed}-detector-r{r:02d}.pt"

    def previous_model(self, spec: StrategySpec, seed: int, r: int, in_memory: Any | None) -> Any | None:
        """The detector a fine-tuning round starts from: the previous round's (None: train from scratch)."""
        if self.cfg.retrain != "finetune" or r == 0:
            return None
        if in_memory is not None:
            return in_memory
        from gsal_edge.models.detector import load_checkpoint

        path = self.model_path(spec, seed, r - 1)
        if not path.is_file():
            raise BenchError(f"{path}: missing; retrain=finetune resumes round {r} from round {r - 1}'s detector")
        model, _ = load_checkpoint(path)
        return model

    def candidate_ids(self, unlabeled: list[str], seed: int, r: int) -> list[str]:
        """The round's candidates: the unlabeled pool, or a seeded random subset of ``candidates`` images."""
        n = self.cfg.candidates
        if n is None or len(unlabeled) <= n:
            return unlabeled
        rng = np.random.default_rng([int(seed), r, 0x5EED])
        keep = np.sort(rng.choice(len(unlabeled), size=n, replace=False))
        return [unlabeled[i] for i in keep]

    def load_state(self, spec: StrategySpec, seed: int) -> dict[str, Any]:
        path = self.state_path(spec, seed)
        if path.is_file():
            st = _read_json(path)
            if st.get("format") != STATE_FORMAT or st.get("strategy") != spec.key or st.get("seed") != seed:
                raise BenchError(f"{path}: not the state of strategy {spec.key!r} seed {seed}")
            return st
        return {"format": STATE_FORMAT, "strategy": spec.key, "seed": seed,
                "label_mode": self.gsal_cfgs[spec.key].label_mode, "labeled": list(self.init_sets[seed]),
                "rounds": [], "finished": False}

    def labeled_summary(self, labeled: list[str]) -> dict[str, Any]:
        """Labeled instances per class and rare-class retrieval (truth; both label modes)."""
        per = {c: 0 for c in self.dataset.classes}
        for i in labeled:
            for a in self.by_id[i].annotations:
                per[a.category] += 1
        covered = [c for c in self.rare if per[c] > 0]
        return {"instances_per_class": per, "instances": sum(per.values()),
                "rare": {"classes": list(self.rare), "covered": covered, "n_covered": len(covered),
                         "n_rare": len(self.rare), "instances": sum(per[c] for c in self.rare)}}

    def run_pair(self, spec: StrategySpec, seed: int) -> dict[str, Any]:
        """All remaining rounds of one (strategy, seed); returns the final state."""
        from gsal_edge.acquisition.fusion import ScorePool
        from gsal_edge.acquisition.records import read_jsonl, write_jsonl
        from gsal_edge.acquisition.strategies import get_strategy

        state = self.load_state(spec, seed)
        gcfg = self.gsal_cfgs[spec.key]
        strategy = get_strategy(spec.base)
        n_rounds = len(self.sizes)
        model = None
        while not state["finished"]:
            r = len(state["rounds"])
            labeled = list(state["labeled"])
            if len(labeled) != self.sizes[r]:
                raise BenchError(f"{self.state_path(spec, seed)}: round {r} has {len(labeled)} labeled images, "
                                 f"expected {self.sizes[r]}")
            init = self.previous_model(spec, seed, r, model)
            model, metrics, times, shared = self.train_and_eval(labeled, seed, r, gcfg.label_mode, init)
            times = {"train": times["train"], "eval": times["eval"], "epochs": times["epochs"],
                     "score": 0.0, "select": 0.0}
            rec: dict[str, Any] = {"round": r, "budget": self.budgets[r], "n_labeled": len(labeled),
                                   "metrics": metrics, **self.labeled_summary(labeled), "shared_round0": shared}
            last = r == n_rounds - 1
            if not last:
                b = self.sizes[r + 1] - self.sizes[r]
                lab_set = set(labeled)
                unlabeled = self.candidate_ids([i for i in self.pool_ids if i not in lab_set], seed, r)
                rec["n_candidates"] = len(unlabeled)
                scorer = None
                t0 = time.perf_counter()
                if spec.base in NO_SCORES:
                    pool = _ids_only_pool(unlabeled)
                    rec["assigner_sources"] = None
                elif spec.base in EMBEDDING_ONLY:
                    pool = _ids_only_pool(unlabeled, self.image_embeddings(unlabeled))
                    times["score"] = time.perf_counter() - t0
                    rec["assigner_sources"] = None
                else:
                    scorer = self.scorer_for(gcfg, model)
                    rec["assigner_sources"] = self.set_round_assigner(scorer, gcfg, labeled)
                    records = None
                    cache_file = None
                    if r == 0:
                        key = _digest([scorer.spec.to_dict(), rec["assigner_sources"], gcfg.assigner, gcfg.hybrid_k,
                                       self.prior_fp, self.clip_fp, labeled, unlabeled])
                        cache_file = self.run_dir / "shared" / f"seed-{seed}" / f"records-{gcfg.label_mode}-{key}.jsonl"
                        if cache_file.is_file() and cache_file.with_suffix(".json").is_file():
                            records = list(read_jsonl(cache_file))
                            times["score"] = float(_read_json(cache_file.with_suffix(".json"))["score"])
                    if records is None:
                        records = self.score_pool(scorer, unlabeled)
                        times["score"] = time.perf_counter() - t0
                        if cache_file is not None:
                            write_jsonl(cache_file, records)
                            write_json_atomic(cache_file.with_suffix(".json"), {"score": times["score"]})
                        self.diffusion_cache.save()
                    if spec.base == "mc_dropout":
                        t_mc = time.perf_counter()
                        self._add_mc_dropout(records, model, seed, r)
                        times["score"] += time.perf_counter() - t_mc
                    pool = ScorePool.from_records(records)
                t1 = time.perf_counter()
                counts = (self.counts(gcfg, scorer, labeled)
                          if scorer is not None or gcfg.label_mode == "typed" else None)
                lab_emb = self.image_embeddings(labeled) if spec.base == "coreset" else None
                rng = np.random.default_rng([int(seed), r, int(_sha(spec.key, 8), 16)])
                sel = strategy.select(pool, counts or {}, self.graph, gcfg, b, rng, labeled_embeddings=lab_emb)
                times["select"] = time.perf_counter() - t1
                if len(sel.picks) != min(b, len(unlabeled)):
                    raise BenchError(f"strategy {spec.key!r} picked {len(sel.picks)} images, expected {b}")
                pick_file = self.run_dir / "picks" / spec.slug / f"seed-{seed}" / f"round-{r:02d}.json"
                pick_file.parent.mkdir(parents=True, exist_ok=True)
                tmp = pick_file.with_name(pick_file.name + ".tmp")
                tmp.write_text(sel.to_json(gcfg))
                os.replace(tmp, pick_file)
                rec["counts"] = counts
                rec["picks"] = [self._pick_record(p) for p in sel.picks]
                state["labeled"] = labeled + [p.image_id for p in sel.picks]
            rec["times"] = times
            rec["retrain"] = "finetune" if init is not None else "scratch"
            state["rounds"].append(_clean(rec))
            state["finished"] = last
            if self.cfg.retrain == "finetune" and not last:
                from gsal_edge.models.detector import save_checkpoint
                from gsal_edge.models.detector_training import preprocessing_meta

                save_checkpoint(self.model_path(spec, seed, r), model, model.config, list(model.classes),
                                preprocessing_meta(model.config, self.cfg.data.window))
            write_json_atomic(self.state_path(spec, seed), state)
            if r > 0:
                self.model_path(spec, seed, r - 1).unlink(missing_ok=True)
            m = rec["metrics"]
            self.say(f"[{spec.key} seed {seed}] round {r + 1}/{n_rounds} labeled {len(labeled)} "
                     f"F1 {_f(m.get('f1'))} mAP50 {_f(m.get('map50'))} AP {_f(m.get('ap'))} "
                     f"rare {rec['rare']['n_covered']}/{rec['rare']['n_rare']} | train {times['train']:.1f}s "
                     f"eval {times['eval']:.1f}s score {times['score']:.1f}s select {times['select']:.2f}s"
                     + (" (round 0 shared)" if shared else ""))
            if self.on_round_end is not None:
                self.on_round_end({"strategy": spec.key, "seed": seed, "round": r, "record": rec})
        return state

    def _pick_record(self, p: Any) -> dict[str, Any]:
        e = self.by_id[p.image_id]
        return {"image_id": p.image_id, "rank": p.rank, "acquisition": p.acquisition, "sentence": p.sentence,
                "path": str(self.dataset.image_path(e).resolve()),
                "gt": [[[round(float(v), 1) for v in a.box], a.category] for a in e.annotations]}

    def _add_mc_dropout(self, records: list[Any], model: Any, seed: int, r: int) -> None:
        from gsal_edge.models.mc_dropout import mc_dropout_uncertainty

        for rec in records:
            rec.uncertainty["mc_dropout"] = mc_dropout_uncertainty(
                model, self.unit(rec.image_id), T=self.cfg.mc_dropout_T, seed=int(seed) * 1000 + r)

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

        write_report(self.run_dir)


def _f(v: Any) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _ids_only_pool(ids: list[str], embeddings: np.ndarray | None = None) -> Any:
    """A ScorePool holding only image ids (NO_SCORES strategies) and whole-slice embeddings (EMBEDDING_ONLY)."""
    from gsal_edge.acquisition.fusion import ScorePool

    n = len(ids)
    z = np.zeros(0)
    return ScorePool(image_ids=np.array(ids, dtype=str), e_rec=np.zeros(n), v_den=np.zeros(n),
                     prop_image=np.zeros(0, np.int64), prop_box=np.zeros((0, 4)), prop_score=z, prop_e_rec=z,
                     prop_v_den=z, prop_concept=np.zeros(0, np.int64), concepts=(), embeddings=embeddings)


def _config_diff(old: Any, new: Any, prefix: str = "", ignore: set[str] = frozenset()) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k in ignore and not prefix:
                continue
            out += _config_diff(old.get(k), new.get(k), f"{prefix}{k}.", ignore)
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def dataset_fingerprint(ds: DetectionDataset) -> str:
    """Hash of image ids, sizes and annotations (not pixels)."""
    rows = [[e.image_id, e.file_name, e.width, e.height, [[list(a.box), a.category] for a in e.annotations]]
            for e in ds.images]
    return _digest([ds.classes, rows], 16)


def synthetic_dataset(spec: SyntheticData, cache_dir: Path, progress: bool = True) -> DetectionDataset:
    """The generated data set for ``spec``, cached under ``cache_dir/synth-<content hash>``."""
    from gsal_edge.data.synthetic_ct import SynthConfig, generate_dataset

    try:
        scfg = SynthConfig.model_validate(spec.synth)
    except ValidationError as e:
        raise BenchError(f"data.synthetic.synth: {e}") from None
    key = _digest({"n": spec.n, "seed": spec.seed, "synth": scfg.model_dump(mode="json")}, 16)
    out = cache_dir / f"synth-{key}"
    if (out / ".complete").is_file():
        return load_dataset(out, "coco")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"synth-{key}.", dir=cache_dir))
    try:
        generate_dataset(tmp, spec.n, spec.seed, scfg, progress=progress)
        (tmp / ".complete").write_text(json.dumps({"n": spec.n, "seed": spec.seed}))
        if out.exists():  # a concurrent run finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset(out, "coco")


def run_benchmark(cfg: BenchConfig, run_dir: str | Path, progress: bool = True,
                  on_round_end: RoundHook | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) a benchmark into ``run_dir`` and write its report; returns ``run_dir``."""
    bench = Benchmark(cfg, run_dir, progress=progress, on_round_end=on_round_end, say=say)
    bench.run()
    return Path(run_dir)


def stored_config(run_dir: str | Path) -> BenchConfig:
    """The config a run folder was started with (for resuming with only ``--out``)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise BenchError(f"{path} does not exist: not a benchmark run folder")
    try:
        return BenchConfig.model_validate(_read_json(path)["config"])
    except (KeyError, ValidationError) as e:
        raise BenchError(f"{path}: bad stored config ({e})") from None

