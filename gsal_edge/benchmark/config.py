"""A benchmark run's configuration: its fields and presets, strategy specs and one-at-a-time sweeps.

:class:`BenchConfig` holds every knob (presets in ``configs/bench_presets.yaml``, CLI options merged over
them); a strategy is written ``name`` or ``name[k=v,...]`` with GSAL config overrides
(:class:`StrategySpec`); ``sweep`` expands into one strategy per swept value.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from gsal_edge.acquisition.config import ConfigError, GSALConfig
from gsal_edge.config_files import CONFIGS_DIR, StrictModel, read_yaml_mapping
from gsal_edge.errors import GSALError

__all__ = [
    "PRESETS_FILE",
    "SWEEPABLE",
    "BenchConfig",
    "BenchError",
    "BenchModels",
    "DataConfig",
    "StrategySpec",
    "SyntheticData",
    "expand_strategies",
    "gsal_config",
    "load_preset",
    "parse_strategy",
    "preset_names",
    "resolve_device",
    "split_top",
    "sweep_specs",
]

PRESETS_FILE = CONFIGS_DIR / "bench_presets.yaml"
SWEEPABLE = ("alpha", "beta", "alpha_beta", "gamma", "lambda", "mu", "rho", "eta", "M", "K", "t_frac",
             "percentile", "temperature", "hybrid_k", "context_margin")


class BenchError(GSALError, ValueError):
    """The benchmark cannot run as configured; the message names the field, file or strategy."""


class SyntheticData(StrictModel):
    """The preset's generated data set (used when no ``data.path`` is given)."""

    n: int = Field(1800, ge=4, description="images generated (pool + test split)")
    seed: int = 0
    synth: dict[str, Any] = Field(default_factory=dict, description="SynthConfig fields overriding the default")


class DataConfig(StrictModel):
    """Where the data comes from and how the fixed test split is drawn."""

    path: str | None = Field(None, description="COCO json / COCO folder / VOC folder / YOLO folder")
    format: Literal["auto", "coco", "voc", "yolo"] = "auto"
    synthetic: SyntheticData = Field(default_factory=SyntheticData)
    test_fraction: float = Field(0.2, gt=0, lt=1, description="held-out test share (stratified, seeded)")
    val_fraction: float = Field(
        0.1, ge=0, lt=1, description="labeled validation share of all images, drawn from what the test split "
                                     "leaves (stratified, seeded by split_seed), never in the pool: "
                                     "evaluation-only labels, the same for every strategy; each round's F1 "
                                     "score thresholds are chosen on it and applied to the test split")
    split_seed: int = 0
    max_images: int | None = Field(None, ge=4, description="use a seeded subset of this many images")
    window: tuple[float, float] | str | None = Field(
        None, description="intensity window of the slices (gsal_edge.data.preprocessing): None = the dtype's "
                          "range (uint16 / 65535); 'auto' = p0.5-p99.5 of a sample of the pool, computed once; "
                          "'bits:12' = 0..4095 (12-bit data in 16-bit files); [lo, hi] in stored units. Resolved "
                          "to [lo, hi] when the run starts (run.json, detector checkpoints and bundles carry it)")
    cache_dir: str = Field("artifacts/bench_data", description="generated data sets, by content hash")

    @model_validator(mode="after")
    def _fractions(self) -> DataConfig:
        if self.test_fraction + self.val_fraction >= 0.9:
            raise ValueError(f"test_fraction {self.test_fraction} + val_fraction {self.val_fraction} leave "
                             "less than 10% of the images for the pool")
        return self

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, v: Any) -> Any:
        from gsal_edge.data.preprocessing import parse_window

        return parse_window(v)


class BenchModels(StrictModel):
    """The benchmark's fixed generative prior and CLIP (local folders only)."""

    dir: str | None = Field(None, description="folder with prior/ (or diffusion/) and clip/; default "
                            "artifacts/models, where `gsal-edge models train-defaults` writes")
    prior: str | None = Field(None, description="diffusers/SD prior folder (overrides dir/prior)")
    clip: str | None = Field(None, description="CLIP folder with gsal_clip.json (overrides dir/clip)")
    prior_source: Literal["files", "pool"] = Field(
        "files", description="files: the prior folder above (e.g. the embedded default); pool: train one on "
                             "this run's unlabeled POOL slices only (never validation or test) with the "
                             "`models train-diffusion` code, cached by content hash of the pool images and "
                             "the training config under prior_cache_dir")
    prior_config: str | None = Field(None, description="prior_source=pool: a models config YAML whose "
                                                      "`diffusion` section is used (default: the packaged "
                                                      "configs/models_default.yaml)")
    prior_overrides: dict[str, Any] = Field(default_factory=dict, description="prior_source=pool: "
                                            "DiffusionTrainConfig fields merged over that section, e.g. "
                                            "{vae: {steps: 40}}")
    prior_cache_dir: str = Field("artifacts/bench_priors", description="prior_source=pool: trained priors, "
                                                                        "by content hash")


class BenchConfig(StrictModel):
    """Every knob of a benchmark run (presets in ``configs/bench_presets.yaml``)."""

    preset: str = "custom"
    data: DataConfig = Field(default_factory=DataConfig)
    graph: str = "thin_film_ct"
    class_map: dict[str, str] = Field(default_factory=dict, description="data class -> graph fine node")
    models: BenchModels = Field(default_factory=BenchModels)
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
    f1_threshold: Literal["validation", "test_oracle"] = Field(
        "validation", description="validation: F1 score thresholds chosen on the labeled validation split, "
                                  "applied to the test split; test_oracle (legacy, optimistic): the best "
                                  "threshold on the test split itself (also recorded as f1_oracle either way)")
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
        if self.f1_threshold == "validation" and self.data.val_fraction <= 0:
            raise ValueError("f1_threshold=validation needs data.val_fraction > 0 (or f1_threshold=test_oracle)")
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


def split_top(text: str) -> list[str]:
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
    for item in split_top(inner or ""):
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




def gsal_config(cfg: BenchConfig, spec: StrategySpec) -> GSALConfig:
    """The GSAL config of ``spec``: defaults, then the run's ``gsal`` overrides, then the strategy's."""
    try:
        base = GSALConfig().with_overrides(cfg.gsal)
        return base.with_overrides([f"{k}={v}" for k, v in spec.overrides])
    except ConfigError as e:
        raise BenchError(f"strategy {spec.key!r}: {e}") from None
