"""Faster R-CNN for single-channel CT slices: builder, engine wrapper, inference, checkpoints.

Every preset (:mod:`gsal_edge.models.detector_config`) is a torchvision ``FasterRCNN`` with the
CT-specific parts of :mod:`gsal_edge.models.detector_layers` (:class:`CTTransform`,
:class:`ProbRoIHeads`, :class:`DropoutTwoMLPHead`), so every kept detection also carries its
``class_probs`` and the model stays ONNX-exportable.

Label convention: index 0 is background, class ``classes[i]`` is label ``i + 1``. In class-agnostic
mode the detector has a single foreground class named ``AGNOSTIC_CLASS``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models import mobilenet_v3_large, resnet50
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor, _resnet_fpn_extractor
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d

from gsal_edge.models.anchors import n_feature_maps, resolve_anchors
from gsal_edge.models.detector_config import DetectorConfig, DetectorConfigError, resolve_config
from gsal_edge.models.detector_layers import (
    CTTransform,
    DropoutTwoMLPHead,
    ProbRoIHeads,
    SeparableRoIAlign,
    SmallCNNBackbone,
)

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "gsal-detector/1"


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
        if cfg.anchors_auto:  # no training boxes here: the no-box default (train_detector resolves from boxes)
            cfg = resolve_anchors(cfg)
            log.info("anchors 'auto' without training boxes: sizes %s, ratios %s", cfg.anchor_sizes,
                     cfg.aspect_ratios)
        backbone, map_names = _build_backbone(cfg)
        if len(cfg.anchor_sizes) != n_feature_maps(cfg):
            n = n_feature_maps(cfg)
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
    cfg = with_model_anchors(cfg, model)
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


def model_anchors(model: CTFasterRCNN) -> tuple[list[list[float]], list[float]]:
    """The anchor sizes (per feature map) and aspect ratios the model's RPN actually uses."""
    gen = model.rpn.anchor_generator
    return [[float(v) for v in s] for s in gen.sizes], [float(r) for r in gen.aspect_ratios[0]]


def with_model_anchors(cfg: DetectorConfig, model: CTFasterRCNN) -> DetectorConfig:
    """``cfg`` with ``auto`` anchors replaced by the model's own (so a checkpoint reloads the same
    anchors); refuses a config whose concrete anchors differ from the model's."""
    sizes, ratios = model_anchors(model)
    if not cfg.anchors_auto:
        own_sizes, own_ratios = cfg.anchor_sizes, cfg.aspect_ratios
        same = [len(a) for a in own_sizes] == [len(a) for a in sizes] and len(own_ratios) == len(ratios) \
            and np.allclose([v for a in own_sizes for v in a], [v for a in sizes for v in a]) \
            and np.allclose(own_ratios, ratios)  # type: ignore[arg-type]
        if not same:
            raise DetectorConfigError(f"config anchors {own_sizes} / {own_ratios} are not the model's "
                                      f"{sizes} / {ratios}; save the model with its own config")
        return cfg
    return cfg.model_copy(update={"anchor_sizes": sizes, "aspect_ratios": ratios})


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
