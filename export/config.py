"""Export settings: ONNX options, parity tolerances per engine/output, TensorRT profiles.

Defaults live here as pydantic models; ``gsal-edge export --config FILE.yaml`` overrides any field
(unknown fields are errors that name the field).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from gsal_edge.config_files import StrictModel, read_yaml_mapping
from gsal_edge.errors import GSALError


class ExportConfigError(GSALError, ValueError):
    """An export config file is invalid; the message names the file and field."""


class Tolerance(StrictModel):
    """Polygraphy-style closeness: an element passes if |a-b| <= atol or |a-b| <= rtol*|b|."""

    atol: float = Field(1e-4, ge=0)
    rtol: float = Field(1e-3, ge=0)


def _tol(atol: float, rtol: float) -> Tolerance:
    return Tolerance(atol=atol, rtol=rtol)


class ParityConfig(StrictModel):
    """Tolerances of ONNX Runtime vs PyTorch (CPU, fp32) per engine output, and end-to-end."""

    engines: dict[str, dict[str, Tolerance]] = Field(
        default_factory=lambda: {
            "vae_encoder": {"latent": _tol(1e-4, 1e-3)},
            "unet": {"eps": _tol(1e-4, 1e-3)},
            "clip_image": {"embedding": _tol(1e-4, 1e-3)},
            # labels are compared exactly; boxes in input pixels
            "detector": {
                "boxes": _tol(1e-2, 1e-4),
                "scores": _tol(1e-4, 1e-3),
                "class_probs": _tol(1e-4, 1e-3),
            },
        }
    )
    # end-to-end score records (raw e_rec / v_den of images and proposals, cosine similarities)
    records: dict[str, Tolerance] = Field(
        default_factory=lambda: {
            "e_rec": _tol(1e-6, 1e-3),
            "v_den": _tol(1e-7, 1e-3),
            "similarity": _tol(1e-4, 1e-3),
            "box": _tol(1e-2, 1e-4),
            "score": _tol(1e-4, 1e-3),
            "uncertainty": _tol(1e-4, 1e-3),
        }
    )
    images: int = Field(6, ge=1, description="slices scored for the end-to-end check")
    image_size: int = Field(128, ge=16, description="side of the generated parity slices")
    top_b: int = Field(3, ge=1, description="selection size compared end-to-end")
    detector_sizes: list[int] = Field(
        default_factory=lambda: [96, 160], description="extra square input sides the detector is checked at"
    )
    seed: int = 0


class TrtProfile(StrictModel):
    """min/opt/max of one dynamic axis for a TensorRT optimization profile."""

    min: int = Field(1, ge=1)
    opt: int = Field(8, ge=1)
    max: int = Field(64, ge=1)


class TensorRTConfig(StrictModel):
    """TensorRT engine build: precision, workspace, and the batch sizes the server batches to.

    With the server's ``max_batch_size`` 8 and K = 4, the UNet sees up to 32 latents per call and
    ``GSALScorer`` chunks every engine call to ``max_unet_batch`` (64): hence the defaults.
    """

    mode: Literal["auto", "off", "on"] = "auto"
    fp16: bool = False
    workspace_mib: int = Field(2048, ge=64)
    batch: dict[str, TrtProfile] = Field(
        default_factory=lambda: {
            "vae_encoder": TrtProfile(min=1, opt=8, max=64),
            "unet": TrtProfile(min=1, opt=32, max=64),
            "clip_image": TrtProfile(min=1, opt=16, max=64),
        }
    )
    detector_side: TrtProfile = Field(default_factory=lambda: TrtProfile(min=64, opt=256, max=1024))
    # TensorRT vs ONNX Runtime (Polygraphy-style), by precision
    tolerance_fp32: Tolerance = Field(default_factory=lambda: _tol(1e-3, 1e-3))
    tolerance_fp16: Tolerance = Field(default_factory=lambda: _tol(2e-2, 2e-2))
    engines: list[str] = Field(
        default_factory=lambda: ["vae_encoder", "unet", "clip_image", "detector"],
        description="engines to build plans for; a failed build falls back to ORT (recorded)",
    )


class QuantizeConfig(StrictModel):
    """Dynamic INT8 quantization after export (export/quantize.py); kept only where parity holds."""

    mode: Literal["off", "int8"] = "off"
    engines: list[str] = Field(default_factory=lambda: ["detector", "clip_image"],
                               description="engines to quantize")
    op_types: list[str] = Field(default_factory=lambda: ["MatMul", "Gemm"],
                                description="ONNX op types quantized (ConvInteger is slower than fp32 on CPU)")


class ExportConfig(StrictModel):
    """Everything ``gsal-edge export`` needs besides the model sources."""

    opset: int = Field(17, ge=13)
    simplify: bool = Field(False, description="run onnxslim on every exported graph")
    dynamic_batch: bool = True
    dynamic_spatial: bool = Field(True, description="dynamic H/W for the VAE/UNet (crop vs image resolution)")
    detector_dynamic_hw: bool = Field(True, description="False: fixed detector input size, recorded in the manifest")
    detector_input_size: int = Field(128, ge=16, description="trace size (and the fixed size when not dynamic)")
    export_batch: int = Field(2, ge=1, description="batch of the sample inputs used for tracing")
    torch_weights: bool = Field(True, description="copy the PyTorch sources into the bundle (backend='torch')")
    parity: ParityConfig = Field(default_factory=ParityConfig)
    tensorrt: TensorRTConfig = Field(default_factory=TensorRTConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)


def load_export_config(path: str | Path | None = None, **overrides: object) -> ExportConfig:
    """Defaults, then a YAML file's fields, then keyword overrides (CLI flags)."""
    data: dict[str, object] = {}
    where = "export config"
    if path is not None:
        where = str(path)
        data.update(read_yaml_mapping(path, ExportConfigError, "export config"))
    try:
        cfg = ExportConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        field = ".".join(str(x) for x in first["loc"])
        raise ExportConfigError(f"{where}: field {field!r}: {first['msg']}") from e
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "tensorrt_mode":
            cfg.tensorrt.mode = value  # type: ignore[assignment]
        elif key == "quantize":
            if value not in ("off", "int8"):
                raise ExportConfigError(f"--quantize must be off or int8, got {value!r}")
            cfg.quantize.mode = value  # type: ignore[assignment]
        elif key == "fp16":
            cfg.tensorrt.fp16 = bool(value)
        elif key in ExportConfig.model_fields:
            setattr(cfg, key, value)
        else:
            raise ExportConfigError(f"unknown export override {key!r}")
    return cfg
