"""Faster R-CNN for single-channel CT slices: presets, builder, engine wrapper, inference, checkpoints.

Every preset is a torchvision ``FasterRCNN`` with three CT-specific parts:

* :class:`CTTransform` — inputs are float32 [0, 1] single-channel slices; they are normalized with
  the preset's CT mean/std and replicated to 3 channels only when the backbone needs 3
  (ResNet-50 / MobileNetV3); the ``small_cnn`` backbone takes the one channel as it is.
* :class:`ProbRoIHeads` — torchvision's RoI heads with a postprocess that also returns, for each kept
  detection, the softmax over background + classes of the proposal it came from (``class_probs``),
  written with tensor ops only so the model stays ONNX-exportable (opset 17, ``dynamo=False``).
* :class:`DropoutTwoMLPHead` — torchvision's ``TwoMLPHead`` (same parameter names, so torchvision
  checkpoints load) with dropout that can be switched on at inference for MC-dropout.

Label convention: index 0 is background, class ``classes[i]`` is label ``i + 1``. In class-agnostic
mode the detector has a single foreground class named :data:`AGNOSTIC_CLASS`.
"""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_align
from torchvision.ops import boxes as box_ops
from torchvision.ops.misc import FrozenBatchNorm2d

from gsal_edge.config_files import CONFIGS_DIR, read_yaml_mapping

log = logging.getLogger(__name__)

PRESETS_FILE = CONFIGS_DIR / "detector_presets.yaml"
PRESET_NAMES = ("paper", "edge", "cpu", "tiny")
AGNOSTIC_CLASS = "defect"
CHECKPOINT_FORMAT = "gsal-detector/1"


class DetectorConfigError(ValueError):
    """A detector config, preset or checkpoint is malformed; the message names the field or file."""


# --------------------------------------------------------------------------------------------- config


class DetectorTrainConfig(BaseModel):
    """Optimizer, schedule and augmentation of :func:`gsal_edge.models.detector_training.train_detector`."""

    model_config = ConfigDict(extra="forbid")

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
    vflip_prob: float = Field(0.0, ge=0, le=1)  # off: a vertical flip puts the substrate on top

    @model_validator(mode="after")
    def _check_milestones(self) -> DetectorTrainConfig:
        if any(not 0 < m < 1 for m in self.lr_milestones) or self.lr_milestones != sorted(self.lr_milestones):
            raise ValueError(f"lr_milestones must be increasing fractions in (0, 1), got {self.lr_milestones}")
        return self


class DetectorConfig(BaseModel):
    """Everything that defines a detector's architecture, inference behaviour and default training."""

    model_config = ConfigDict(extra="forbid")

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
    anchor_sizes: list[list[int]] = Field(default_factory=lambda: [[8, 16, 32, 64]])  # one list per map
    aspect_ratios: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0])
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
        if not self.anchor_sizes or any(not a for a in self.anchor_sizes):
            raise ValueError(f"anchor_sizes needs one non-empty list per feature map, got {self.anchor_sizes}")
        if len({len(a) for a in self.anchor_sizes}) != 1:
            raise ValueError(f"anchor_sizes: every feature map needs the same number of sizes, got {self.anchor_sizes}")
        if self.max_size < self.min_size:
            raise ValueError(f"max_size {self.max_size} < min_size {self.min_size}")
        return self

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


# ------------------------------------------------------------------------------------------- modules


class CTTransform(GeneralizedRCNNTransform):
    """Normalization with CT statistics, replicating 1-channel slices when the backbone needs 3."""

    def __init__(self, min_size: int, max_size: int, image_mean: list[float], image_std: list[float],
                 in_channels: int) -> None:
        super().__init__(min_size, max_size, image_mean, image_std)
        self.in_channels = in_channels

    def normalize(self, image: Tensor) -> Tensor:
        if not image.is_floating_point():
            raise TypeError(f"detector input must be float in [0, 1], got dtype {image.dtype}")
        if image.shape[0] != 1 and image.shape[0] != self.in_channels:
            raise ValueError(f"detector input must have 1 or {self.in_channels} channels, got {tuple(image.shape)}")
        if image.shape[0] == 1 and self.in_channels == 3:
            image = image.expand(3, -1, -1)
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]


class DropoutTwoMLPHead(TwoMLPHead):
    """``TwoMLPHead`` (same parameters) with dropout after each FC (``p`` while training); ``mc_p`` > 0
    switches dropout on at inference (MC-dropout, see :mod:`gsal_edge.acquisition.uncertainty`)."""

    def __init__(self, in_channels: int, representation_size: int, p: float = 0.0) -> None:
        super().__init__(in_channels, representation_size)
        self.p = p
        self.mc_p = 0.0  # > 0 only inside MC-dropout inference

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        p = self.mc_p if self.mc_p > 0 else self.p
        on = self.training or self.mc_p > 0
        x = F.relu(self.fc6(x))
        if p > 0:
            x = F.dropout(x, p, on)
        x = F.relu(self.fc7(x))
        if p > 0:
            x = F.dropout(x, p, on)
        return x


class ProbRoIHeads(RoIHeads):
    """RoI heads whose inference output also carries ``class_probs`` [N, C+1] per kept detection."""

    def postprocess_with_probs(
        self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """torchvision's ``postprocess_detections`` that also gathers each detection's softmax row."""
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = F.softmax(class_logits, -1)
        all_boxes, all_scores, all_labels, all_probs = [], [], [], []
        for boxes, scores, probs, image_shape in zip(
            pred_boxes.split(boxes_per_image, 0), pred_scores.split(boxes_per_image, 0),
            pred_scores.split(boxes_per_image, 0), image_shapes,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(scores)
            rows = torch.arange(scores.shape[0], device=device).view(-1, 1).expand_as(scores)
            boxes = boxes[:, 1:].reshape(-1, 4)
            labels = labels[:, 1:].reshape(-1)
            rows = rows[:, 1:].reshape(-1)
            scores = scores[:, 1:].reshape(-1)
            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels, rows = boxes[inds], scores[inds], labels[inds], rows[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, rows = boxes[keep], scores[keep], labels[keep], rows[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
            all_probs.append(probs[rows[keep]])
        return all_boxes, all_scores, all_labels, all_probs

    def forward(  # type: ignore[override]
        self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training:
            return super().forward(features, proposals, image_shapes, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)
        boxes, scores, labels, probs = self.postprocess_with_probs(class_logits, box_regression, proposals,
                                                                   image_shapes)
        result = [
            {"boxes": b, "labels": lab, "scores": s, "class_probs": p}
            for b, s, lab, p in zip(boxes, scores, labels, probs)
        ]
        return result, {}


def _axis_weights(start: Tensor, size: Tensor, pooled: int, sampling: int, length: int) -> Tensor:
    """[R, pooled, length] weights of torchvision's RoIAlign (aligned=False) along one axis.

    Written with tensor ops only (``length`` may be a traced size), so it exports with dynamic H/W."""
    size = torch.clamp(size, min=1.0)
    bin_size = size / pooled
    bins = torch.arange(pooled, dtype=start.dtype, device=start.device).view(1, -1, 1)
    sub = (torch.arange(sampling, dtype=start.dtype, device=start.device).view(1, 1, -1) + 0.5) / sampling
    pos = start.view(-1, 1, 1) + (bins + sub) * bin_size.view(-1, 1, 1)  # [R, pooled, sampling]
    grid = torch.arange(length, device=start.device).to(start.dtype)  # 0 .. length-1
    last = grid[-1]
    valid = ((pos >= -1.0) & (pos <= last + 1.0)).to(start.dtype)
    pos = torch.clamp(pos, min=0.0)
    low = torch.floor(pos)
    at_end = low >= last
    low = torch.minimum(low, last)
    pos = torch.where(at_end, low, pos)
    high = torch.where(at_end, low, low + 1.0)
    frac = pos - low
    g = grid.view(1, 1, 1, -1)
    w = (g == low.unsqueeze(-1)).to(start.dtype) * (1.0 - frac).unsqueeze(-1) + (
        g == high.unsqueeze(-1)
    ).to(start.dtype) * frac.unsqueeze(-1)
    return (w * valid.unsqueeze(-1)).sum(2) / sampling


def separable_roi_align(feat: Tensor, rois: Tensor, output_size: int, sampling_ratio: int,
                        spatial_scale: float) -> Tensor:
    """RoIAlign of one image's feature map ``feat`` [C, H, W] over ``rois`` [R, 4] (image pixels) as two
    matrix products; equals ``torchvision.ops.roi_align(..., aligned=False)``. Returns [R, C, p, p]."""
    c, h, w = feat.shape[0], feat.shape[1], feat.shape[2]
    p = output_size
    r = rois * spatial_scale
    wy = _axis_weights(r[:, 1], r[:, 3] - r[:, 1], p, sampling_ratio, h)  # [R, p, H]
    wx = _axis_weights(r[:, 0], r[:, 2] - r[:, 0], p, sampling_ratio, w)  # [R, p, W]
    n = rois.shape[0]
    # t[c*H + y, r*p + j] = sum_x F[c, y, x] wx[r, j, x]
    t = feat.reshape(c * h, w) @ wx.reshape(n * p, w).t()
    t = t.reshape(c, h, n, p).permute(2, 1, 0, 3).reshape(n, h, c * p)  # [R, H, C*p]
    return torch.bmm(wy, t).reshape(n, p, c, p).permute(0, 2, 1, 3)  # [R, C, p, p]


def _use_separable(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled()


class SeparableRoIAlign(nn.Module):
    """RoIAlign (torchvision semantics, aligned=False, fixed sampling ratio) on one feature map.

    Training: :func:`separable_roi_align`. RoIAlign's bilinear weights and bounds checks are
    separable in y and x, so it equals ``torchvision.ops.roi_align`` while its backward is a GEMM
    instead of torchvision's slow scatter on CPU. Inference (eval mode or no grad): torchvision's
    kernel itself (ONNX ``RoiAlign``). Same call signature as ``MultiScaleRoIAlign``."""

    def __init__(self, featmap_name: str, output_size: int, sampling_ratio: int, spatial_scale: float) -> None:
        super().__init__()
        if sampling_ratio < 1:
            raise DetectorConfigError(f"separable RoIAlign needs roi_sampling_ratio >= 1, got {sampling_ratio}")
        self.featmap_name = featmap_name
        self.output_size = output_size
        self.sampling_ratio = sampling_ratio
        self.spatial_scale = spatial_scale

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        feat = x[self.featmap_name]
        if not _use_separable(self):
            return roi_align(feat, boxes, self.output_size, self.spatial_scale, self.sampling_ratio, False)
        return torch.cat([separable_roi_align(feat[i], b, self.output_size, self.sampling_ratio, self.spatial_scale)
                          for i, b in enumerate(boxes)], 0)


def _conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(x + self.bn2(self.conv2(y)), inplace=True)


class SmallCNNBackbone(nn.Module):
    """A small single-map backbone for 1-channel slices: stride ``2**len(widths)``, ``out_channels`` = widths[-1]."""

    def __init__(self, widths: list[int], blocks: list[int], in_channels: int = 1, channels_last: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for w, nb in zip(widths, blocks):
            layers.append(_conv_bn(cin, w, 2))
            layers.extend(_ResBlock(w) for _ in range(nb))
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_channels = widths[-1]
        self.channels_last = channels_last
        if channels_last:  # ~20% faster convolutions (forward + backward) on CPU
            self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {"0": self.body(x)}


def _load_local_state_dict(path: str, what: str) -> dict[str, Tensor]:
    p = Path(path)
    if not p.is_file():
        raise DetectorConfigError(f"{what}: local weights file {p} does not exist (weights are never downloaded)")
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DetectorConfigError(f"{what}: cannot read {p}: {exc}") from exc
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise DetectorConfigError(f"{what}: {p} holds no state_dict")
    return sd


def _build_backbone(cfg: DetectorConfig) -> tuple[nn.Module, list[str]]:
    """The backbone (with ``out_channels``) and the names of the feature maps the RoI pool reads."""
    pretrained = cfg.weights is not None or cfg.weights_backbone is not None
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if cfg.backbone == "small_cnn":
        return SmallCNNBackbone(cfg.small_widths, cfg.small_blocks, cfg.in_channels, cfg.channels_last), ["0"]
    if cfg.backbone == "resnet50_fpn":
        body = resnet50(weights=None, norm_layer=norm_layer)
        if cfg.weights_backbone:
            _load_backbone_weights(body, cfg.weights_backbone)
        trainable = 5 if not pretrained else (3 if cfg.trainable_backbone_layers is None
                                              else cfg.trainable_backbone_layers)
        backbone = _resnet_fpn_extractor(body, trainable, returned_layers=cfg.fpn_returned_layers)
        n_maps = len(cfg.fpn_returned_layers or [1, 2, 3, 4])
    else:
        body = mobilenet_v3_large(weights=None, norm_layer=norm_layer)
        if cfg.weights_backbone:
            _load_backbone_weights(body, cfg.weights_backbone)
        trainable = 6 if not pretrained else (3 if cfg.trainable_backbone_layers is None
                                              else cfg.trainable_backbone_layers)
        backbone = _mobilenet_extractor(body, True, trainable, returned_layers=cfg.fpn_returned_layers)
        n_maps = len(cfg.fpn_returned_layers) if cfg.fpn_returned_layers else 2
    return backbone, [str(i) for i in range(n_maps)]


def _load_backbone_weights(body: nn.Module, path: str) -> None:
    sd = _load_local_state_dict(path, "weights_backbone")
    sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
    missing, unexpected = body.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.startswith(("fc.", "classifier."))]
    if missing or unexpected:
        raise DetectorConfigError(
            f"weights_backbone {path}: does not fit the {type(body).__name__} backbone "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]})"
        )


def _load_full_weights(model: nn.Module, path: str) -> None:
    """Load a torchvision detector state_dict; tensors whose shape differs (the class predictor) are skipped."""
    sd = _load_local_state_dict(path, "weights")
    own = model.state_dict()
    fit = {k: v for k, v in sd.items() if k in own and own[k].shape == v.shape}
    if not any(k.startswith("backbone.") for k in fit):
        raise DetectorConfigError(f"weights {path}: no backbone tensor fits this detector; wrong architecture?")
    model.load_state_dict(fit, strict=False)
    fresh = sorted(k for k in own if k not in fit)
    log.info("weights %s: loaded %d tensors; %d left as initialized (shape or name differs): %s", path, len(fit),
             len(fresh), ", ".join(fresh[:8]) + (" ..." if len(fresh) > 8 else ""))


class CTFasterRCNN(FasterRCNN):
    """torchvision Faster R-CNN with :class:`CTTransform` and :class:`ProbRoIHeads`; keeps its config."""

    def __init__(self, cfg: DetectorConfig, num_classes: int) -> None:
        backbone, map_names = _build_backbone(cfg)
        if len(cfg.anchor_sizes) != len(map_names) + (0 if cfg.backbone == "small_cnn" else 1):
            n = len(map_names) + (0 if cfg.backbone == "small_cnn" else 1)
            raise DetectorConfigError(
                f"anchor_sizes has {len(cfg.anchor_sizes)} lists but backbone {cfg.backbone} "
                f"(fpn_returned_layers={cfg.fpn_returned_layers}) yields {n} feature maps"
            )
        anchors = AnchorGenerator(tuple(tuple(a) for a in cfg.anchor_sizes),
                                  (tuple(cfg.aspect_ratios),) * len(cfg.anchor_sizes))
        roi_pool: nn.Module
        if cfg.roi_pool == "separable" and cfg.backbone == "small_cnn":
            roi_pool = SeparableRoIAlign(map_names[0], cfg.roi_output_size, cfg.roi_sampling_ratio,
                                         1.0 / 2 ** len(cfg.small_widths))
        else:
            roi_pool = MultiScaleRoIAlign(map_names, cfg.roi_output_size, cfg.roi_sampling_ratio)
        head = DropoutTwoMLPHead(backbone.out_channels * cfg.roi_output_size**2, cfg.representation_size,
                                 cfg.box_dropout)
        predictor = FastRCNNPredictor(cfg.representation_size, num_classes + 1)
        super().__init__(
            backbone, None, min_size=cfg.min_size, max_size=cfg.max_size, image_mean=cfg.image_mean,
            image_std=cfg.image_std, rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test, rpn_nms_thresh=cfg.rpn_nms_thresh,
            rpn_fg_iou_thresh=cfg.rpn_fg_iou_thresh, rpn_bg_iou_thresh=cfg.rpn_bg_iou_thresh,
            rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
            rpn_positive_fraction=cfg.rpn_positive_fraction,
            box_roi_pool=MultiScaleRoIAlign(map_names, cfg.roi_output_size, cfg.roi_sampling_ratio), box_head=head,
            box_predictor=predictor,
        )
        self.roi_heads = ProbRoIHeads(
            roi_pool, head, predictor, cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh,
            cfg.box_batch_size_per_image, cfg.box_positive_fraction, None, cfg.box_score_thresh,
            cfg.box_nms_thresh, cfg.box_detections_per_img,
        )
        self.transform = CTTransform(cfg.min_size, cfg.max_size, cfg.image_mean, cfg.image_std, cfg.in_channels)
        if cfg.backbone == "small_cnn" and cfg.channels_last:
            self.rpn.head.to(memory_format=torch.channels_last)  # it reads the backbone's channels-last map
        self.config = cfg
        self.num_classes = num_classes
        self.classes: list[str] | None = None  # class names in label order, once known (training / checkpoint)
        if cfg.weights:
            _load_full_weights(self, cfg.weights)


def build_detector(preset: str | DetectorConfig, num_classes: int, *, seed: int | None = None,
                   **overrides: Any) -> CTFasterRCNN:
    """A Faster R-CNN for ``num_classes`` foreground classes (1 when ``class_agnostic``).

    ``preset`` is a preset name (``paper``, ``edge``, ``cpu``, ``tiny``) or a :class:`DetectorConfig`;
    ``overrides`` replace top-level config fields. ``seed`` seeds the weight initialization.
    Weights come only from the local paths in ``weights`` / ``weights_backbone``.
    """
    cfg = resolve_config(preset, **overrides)
    if cfg.class_agnostic:
        num_classes = 1
    if num_classes < 1:
        raise DetectorConfigError(f"num_classes must be >= 1, got {num_classes}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CTFasterRCNN(cfg, num_classes)
    return CTFasterRCNN(cfg, num_classes)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ------------------------------------------------------------------------------- engine and inference


class DetectorWrapper(nn.Module):
    """The ``detector`` engine: image f32 [1,H,W] in [0,1] -> boxes [N,4], scores [N], labels i64 [N],
    class_probs [N, C+1] (softmax over background + classes of each kept detection's proposal)."""

    def __init__(self, model: CTFasterRCNN) -> None:
        super().__init__()
        self.model = model.eval()

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.model([image])
        det = out[1][0] if isinstance(out, tuple) else out[0]  # scripted models return (losses, dets)
        return det["boxes"], det["scores"], det["labels"], det["class_probs"]


@dataclass
class Prediction:
    """Detections of one image, in its own pixel coordinates (labels: 1..C, 0 = background)."""

    boxes: np.ndarray  # float32 [N, 4] x1, y1, x2, y2
    scores: np.ndarray  # float32 [N]
    labels: np.ndarray  # int64 [N]
    class_probs: np.ndarray  # float32 [N, C+1]

    def __len__(self) -> int:
        return int(self.scores.shape[0])


def _as_input(img: np.ndarray, index: int) -> Tensor:
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"image {index}: expected a 2-D HxW slice, got shape {arr.shape}")
    if arr.dtype != np.float32:
        raise ValueError(f"image {index}: expected float32 in [0, 1] (see preprocessing.to_unit_float), got {arr.dtype}")
    return torch.from_numpy(np.ascontiguousarray(arr))[None]


def predict(model: nn.Module, images: list[np.ndarray], batch_size: int = 8,
            device: str | torch.device = "cpu") -> list[Prediction]:
    """Run the detector on float32 HxW [0,1] slices; returns one :class:`Prediction` per image."""
    was_training = model.training
    model.eval().to(device)
    out: list[Prediction] = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = [_as_input(im, start + i).to(device) for i, im in enumerate(images[start:start + batch_size])]
                for det in model(batch):
                    out.append(Prediction(
                        det["boxes"].float().cpu().numpy(), det["scores"].float().cpu().numpy(),
                        det["labels"].long().cpu().numpy(), det["class_probs"].float().cpu().numpy(),
                    ))
    finally:
        model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, model: CTFasterRCNN, cfg: DetectorConfig, classes: list[str],
                    preprocessing: dict[str, Any], extra: dict[str, Any] | None = None) -> Path:
    """Write a self-describing checkpoint (weights + config + class list + preprocessing) atomically.

    ``classes`` are the detector's foreground classes in label order (``[AGNOSTIC_CLASS]`` when
    class-agnostic); ``preprocessing`` describes how raw slices become inputs (window, input size).
    ``extra`` holds anything else picklable with ``weights_only`` loading (e.g. training state).
    """
    n_out = model.roi_heads.box_predictor.cls_score.out_features - 1  # type: ignore[union-attr]
    if len(classes) != n_out:
        raise DetectorConfigError(f"checkpoint {path}: {len(classes)} class names {classes} for {n_out} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.model_dump(mode="json"),
        "classes": list(classes),
        "preprocessing": dict(preprocessing),
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[CTFasterRCNN, dict[str, Any]]:
    """Rebuild the model from a checkpoint; ``meta`` has ``config`` (DetectorConfig), ``classes``,
    ``preprocessing`` and ``extra``. The model is returned in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise DetectorConfigError(f"checkpoint {path} does not exist")
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise DetectorConfigError(f"checkpoint {path}: cannot read: {exc}") from exc
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise DetectorConfigError(f"checkpoint {path}: not a {CHECKPOINT_FORMAT} file")
    for key in ("config", "classes", "preprocessing", "state_dict"):
        if key not in blob:
            raise DetectorConfigError(f"checkpoint {path}: missing field {key!r}")
    try:
        cfg = DetectorConfig.model_validate(blob["config"])
    except ValueError as exc:
        raise DetectorConfigError(f"checkpoint {path}: bad config: {exc}") from exc
    # the state dict carries the weights; do not re-read the original local weight files
    model = CTFasterRCNN(cfg.model_copy(update={"weights": None, "weights_backbone": None}), len(blob["classes"]))
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise DetectorConfigError(f"checkpoint {path}: weights do not fit its config: {exc}") from exc
    model.config = cfg
    model.classes = list(blob["classes"])
    meta = {"config": cfg, "classes": list(blob["classes"]), "preprocessing": blob["preprocessing"],
            "extra": blob.get("extra", {})}
    return model.eval(), meta
