"""The CT-specific parts of the Faster R-CNN (torchvision modules, ONNX-exportable):

* :class:`CTTransform` — inputs are float32 [0, 1] single-channel slices; they are normalized with
  the preset's CT mean/std and replicated to 3 channels only when the backbone needs 3
  (ResNet-50 / MobileNetV3); the ``small_cnn`` backbone takes the one channel as it is.
* :class:`ProbRoIHeads` — torchvision's RoI heads with a postprocess that also returns, for each kept
  detection, the softmax over background + classes of the proposal it came from (``class_probs``),
  written with tensor ops only so the model stays ONNX-exportable (opset 17, ``dynamo=False``).
* :class:`DropoutTwoMLPHead` — torchvision's ``TwoMLPHead`` (same parameter names, so torchvision
  checkpoints load) with dropout that can be switched on at inference for MC-dropout.
* :class:`SeparableRoIAlign` — RoIAlign as two matrix products (a fast CPU backward);
* :class:`SmallCNNBackbone` — the small single-map backbone of the ``small_cnn`` presets.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import boxes as box_ops
from torchvision.ops import roi_align

from gsal_edge.models.detector_config import DetectorConfigError


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
    switches dropout on at inference (MC-dropout, see :mod:`gsal_edge.models.mc_dropout`)."""

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
