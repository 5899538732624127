"""Detector configuration: the :class:`DetectorConfig` / :class:`DetectorTrainConfig` models, the named
presets of ``configs/detector_presets.yaml``, and how overrides are merged in and validated.

Label convention: index 0 is background, class ``classes[i]`` is label ``i + 1``. In class-agnostic
mode the detector has a single foreground class named :data:`AGNOSTIC_CLASS`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from gsal_edge.config_files import CONFIGS_DIR, StrictModel, read_yaml_mapping
from gsal_edge.errors import GSALError

PRESETS_FILE = CONFIGS_DIR / "detector_presets.yaml"
PRESET_NAMES = ("paper", "edge", "cpu", "tiny")
AGNOSTIC_CLASS = "defect"
AUTO = "auto"  # anchor_sizes / aspect_ratios computed from the training boxes (gsal_edge.models.anchors)


class DetectorConfigError(GSALError, ValueError):
    """A detector config, preset or checkpoint is malformed; the message names the field or file."""


class DetectorTrainConfig(StrictModel):
    """Optimizer, schedule and augmentation of :func:`gsal_edge.models.detector_training.train_detector`."""

    batch_size: int = Field(8, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # sgd: the paper's; adamw: faster from scratch on small sets
    lr: float = Field(0.02, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd momentum (adamw: beta1)
    weight_decay: float = Field(1e-4, ge=0)
    epochs: int = Field(12, ge=1)
    warmup_iters: int = Field(200, ge=0)
    warmup_factor: float = Field(1e-3, gt=0, le=1)
    lr_schedule: Literal["multistep", "cosine"] = "multistep"
    lr_milestones: list[float] = Field(default_factory=lambda: [0.67, 0.89])  # fractions of all iterations
    lr_gamma: float = Field(0.1, gt=0, le=1)
    clip_grad_norm: float | None = Field(10.0, gt=0)
    # repeat-factor sampling (LVIS style): an image is seen round(max over its classes of
    # sqrt(t / f_c))) times per epoch (at least once), f_c = share of training images holding class c
    repeat_factor_threshold: float | None = Field(None, gt=0, le=1)
    hflip_prob: float = Field(0.5, ge=0, le=1)
    vflip_prob: float = Field(0.0, ge=0, le=1)  # a vertical flip puts the substrate on top (see the presets)
    # intensity augmentation in unit intensity (gsal_edge.models.detector_augment), applied with
    # ``intensity_prob``: x -> clip((x - lo) / (hi - lo)) ** gamma with lo ~ U(-w, w), hi ~ 1 + U(-w, w)
    # (w = window_jitter) and log(gamma) ~ U(-g, g) (g = gamma_jitter); 0 / 0: off
    intensity_prob: float = Field(0.0, ge=0, le=1)
    window_jitter: float = Field(0.0, ge=0, lt=0.5)
    gamma_jitter: float = Field(0.0, ge=0, le=1.5)
    # schedule: "epochs" trains ``epochs`` (or the caller's); "scaled" trains about
    # scaled_iterations(n_train) iterations (gsal_edge.models.detector_schedule) when no epochs are given:
    # ref_iters * (n / ref_images) ** exponent, clipped to [min_iters, max_iters]
    schedule: Literal["epochs", "scaled"] = "epochs"
    schedule_ref_images: int = Field(100, ge=1)
    schedule_ref_iters: int = Field(600, ge=1)
    schedule_exponent: float = Field(0.5, ge=0, le=1)
    schedule_min_iters: int = Field(200, ge=1)
    schedule_max_iters: int = Field(3000, ge=1)
    # validation on the LABELED images only: hold out ``val_fraction`` of the training ids (stratified,
    # at least ``val_min_images`` or none), evaluate every ``val_every`` share of the schedule, keep the
    # weights with the best ``val_metric`` and stop after ``val_patience`` evaluations without gain
    val_fraction: float = Field(0.0, ge=0, lt=0.5)
    val_min_images: int = Field(8, ge=1)
    val_every: float = Field(0.125, gt=0, le=1)
    val_metric: Literal["f1", "f1_macro", "map50"] = "map50"
    val_patience: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check_milestones(self) -> DetectorTrainConfig:
        if any(not 0 < m < 1 for m in self.lr_milestones) or self.lr_milestones != sorted(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {self.lr_milestones}")
        if self.schedule_min_iters > self.schedule_max_iters:
            raise ValueError(f"schedule_min_iters {self.schedule_min_iters} > schedule_max_iters "
                             f"{self.schedule_max_iters}")
        return self


class AnchorAutoConfig(StrictModel):
    """How ``anchor_sizes: auto`` / ``aspect_ratios: auto`` are computed from the training boxes
    (in the detector's input frame; see :mod:`gsal_edge.models.anchors`)."""

    n_sizes: int = Field(3, ge=1, le=8)  # per feature map
    n_ratios: int = Field(5, ge=1, le=9)
    quantiles: tuple[float, float] = (0.02, 0.98)  # of sqrt(w h) and of h / w
    size_range: tuple[float, float] = (4.0, 64.0)  # px at the input size
    min_size_span: float = Field(4.0, ge=1)  # largest / smallest size at least this (few boxes)
    min_ratio_span: float = Field(2.0, ge=1)  # ratios cover at least [1 / span, span]
    ratio_range: tuple[float, float] = (0.1, 10.0)

    @model_validator(mode="after")
    def _check(self) -> AnchorAutoConfig:
        q0, q1 = self.quantiles
        if not 0 <= q0 < q1 <= 1:
            raise ValueError(f"anchor_auto.quantiles must be 0 <= lo < hi <= 1, got {self.quantiles}")
        for name in ("size_range", "ratio_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo < hi:
                raise ValueError(f"anchor_auto.{name} must be 0 < lo < hi, got {(lo, hi)}")
        return self


class DetectorConfig(StrictModel):
    """Everything that defines a detector's architecture, inference behaviour and default training."""

    name: str = "custom"
    backbone: Literal["resnet50_fpn", "mobilenet_v3_large_fpn", "small_cnn"] = "small_cnn"
    # small_cnn: a stem (stride 2) then one stride-2 stage per further width, ``small_blocks[i]``
    # residual blocks in stage i; the single output map has stride 2**len(small_widths)
    small_widths: list[int] = Field(default_factory=lambda: [16, 32, 64])
    small_blocks: list[int] = Field(default_factory=lambda: [0, 1, 2])
    channels_last: bool = True  # small_cnn: channels-last memory format (faster on CPU)
    fpn_returned_layers: list[int] | None = None  # torchvision's returned_layers for the FPN backbones
    trainable_backbone_layers: int | None = None  # only with pretrained weights; None: torchvision default
    min_size: int = Field(256, ge=16)
    max_size: int = Field(256, ge=16)
    image_mean: list[float] = Field(default_factory=lambda: [0.5])
    image_std: list[float] = Field(default_factory=lambda: [0.25])
    # px at the input size, one list per feature map; "auto": from the training boxes (anchor_auto)
    anchor_sizes: list[list[float]] | Literal["auto"] = Field(default_factory=lambda: [[8, 16, 32, 64]])
    aspect_ratios: list[float] | Literal["auto"] = Field(default_factory=lambda: [0.5, 1.0, 2.0])  # h / w
    anchor_auto: AnchorAutoConfig = Field(default_factory=AnchorAutoConfig)
    rpn_pre_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    # RoIAlign either way; "separable" (small_cnn only): GEMM backward, faster on CPU for one small map
    roi_pool: Literal["torchvision", "separable"] = "torchvision"
    roi_output_size: int = 7
    roi_sampling_ratio: int = 2
    representation_size: int = 1024
    box_dropout: float = Field(0.0, ge=0, lt=1)  # dropout in the box head while training
    mc_dropout_p: float = Field(0.1, gt=0, lt=1)  # dropout in the box head for MC-dropout inference
    box_score_thresh: float = Field(0.01, ge=0, le=1)  # low: the detections are GSAL's proposals
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = Field(100, ge=1)
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int = 512
    box_positive_fraction: float = 0.25
    class_agnostic: bool = False  # one "defect" class (binary-label setting)
    weights: str | None = None  # LOCAL torchvision Faster R-CNN state_dict (.pth); never downloaded
    weights_backbone: str | None = None  # LOCAL torchvision classifier state_dict (ResNet-50 / MobileNetV3)
    train: DetectorTrainConfig = Field(default_factory=DetectorTrainConfig)

    @model_validator(mode="after")
    def _check(self) -> DetectorConfig:
        if len(self.image_mean) != len(self.image_std) or len(self.image_mean) not in (1, 3):
            raise ValueError(
                f"image_mean / image_std need 1 or 3 values each, got {self.image_mean} / {self.image_std}"
            )
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}")
        if self.roi_pool == "separable" and self.backbone != "small_cnn":
            raise ValueError("roi_pool 'separable' is for backbone small_cnn (one small map); FPN maps use torchvision")
        if self.backbone == "small_cnn":
            if len(self.small_widths) != len(self.small_blocks) or not self.small_widths:
                raise ValueError(
                    f"small_widths {self.small_widths} and small_blocks {self.small_blocks} need the same length >= 1"
                )
            if len(self.image_mean) != 1:
                raise ValueError("small_cnn takes one channel: image_mean / image_std need exactly 1 value")
        if self.anchor_sizes != AUTO:
            if not self.anchor_sizes or any(not a for a in self.anchor_sizes):
                raise ValueError(f"anchor_sizes needs one non-empty list per feature map, got {self.anchor_sizes}")
            if len({len(a) for a in self.anchor_sizes}) != 1:
                raise ValueError(f"anchor_sizes: every feature map needs the same number of sizes, "
                                 f"got {self.anchor_sizes}")
            if any(v <= 0 for a in self.anchor_sizes for v in a):
                raise ValueError(f"anchor_sizes must be positive, got {self.anchor_sizes}")
        if self.aspect_ratios != AUTO and (not self.aspect_ratios or any(r <= 0 for r in self.aspect_ratios)):
            raise ValueError(f"aspect_ratios must be a non-empty list of positive h / w, got {self.aspect_ratios}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} < min_size {self.min_size}")
        return self

    @property
    def anchors_auto(self) -> bool:
        """Whether the anchors still need the training boxes (``auto`` sizes or ratios)."""
        return self.anchor_sizes == AUTO or self.aspect_ratios == AUTO

    @property
    def in_channels(self) -> int:
        """Channels the backbone consumes (grayscale slices are replicated up to this)."""
        return 1 if self.backbone == "small_cnn" else 3


def load_presets(path: str | Path = PRESETS_FILE) -> dict[str, dict[str, Any]]:
    """The raw preset dicts of a presets YAML file, by name."""
    return read_yaml_mapping(path, DetectorConfigError, "detector presets (preset name -> config)")


def _deep_update(base: dict[str, Any], upd: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_update(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def get_config(preset: str, overrides: dict[str, Any] | None = None) -> DetectorConfig:
    """The named preset as a :class:`DetectorConfig`, with ``overrides`` merged in (nested dicts merge)."""
    presets = load_presets()
    if preset not in presets:
        raise DetectorConfigError(f"unknown detector preset {preset!r}; known: {sorted(presets)}")
    raw = _deep_update({"name": preset, **presets[preset]}, overrides or {})
    try:
        return DetectorConfig.model_validate(raw)
    except ValueError as exc:
        raise DetectorConfigError(f"preset {preset!r} (+ overrides): {exc}") from exc


def load_config(path: str | Path) -> DetectorConfig:
    """A detector config from a YAML file: either a full config, or ``preset: NAME`` plus overrides."""
    raw = read_yaml_mapping(path, DetectorConfigError, "detector config")
    preset = raw.pop("preset", None)
    try:
        return get_config(preset, raw) if preset else DetectorConfig.model_validate(raw)
    except (ValueError, DetectorConfigError) as exc:
        raise DetectorConfigError(f"{path}: {exc}") from exc


def apply_overrides(cfg: DetectorConfig, overrides: dict[str, Any]) -> DetectorConfig:
    """``cfg`` with a nested override dict merged in (e.g. ``{"train": {"lr": 0.01}}``), validated."""
    try:
        return DetectorConfig.model_validate(_deep_update(cfg.model_dump(), overrides))
    except ValueError as exc:
        raise DetectorConfigError(f"config overrides {overrides}: {exc}") from exc


def resolve_config(preset: str | DetectorConfig, **overrides: Any) -> DetectorConfig:
    """A config object from a preset name or a config (copied), with field overrides merged in and
    validated (nested dicts merge, e.g. ``train={"lr": 0.01}``)."""
    cfg = get_config(preset) if isinstance(preset, str) else preset
    return apply_overrides(cfg, overrides) if overrides else cfg.model_copy(deep=True)
