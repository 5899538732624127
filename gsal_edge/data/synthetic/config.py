"""The synthetic thin-film CT generator's config: every knob, validated (``SynthConfig``).

``configs/synth_default.yaml`` mirrors the defaults. Defect contrasts and artifact amplitudes are in
units of the slice's noise sigma; class frequencies are marginal presence rates, turned into the
per-class rates inside defective images by :func:`conditional_class_rates`.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import (
    AfterValidator,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from gsal_edge.config_files import CONFIGS_DIR, FrozenModel, read_yaml_mapping, validation_message
from gsal_edge.errors import GSALError

DEFAULT_CONFIG_PATH = CONFIGS_DIR / "synth_default.yaml"


class SynthConfigError(GSALError, ValueError):
    """A synthetic-data config is invalid; the message names the file and the field."""


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {list(v)}")
    return v


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Shape = Literal["round", "compact", "u_shaped", "linear", "jagged", "interface"]
BitDepth = Literal[16, 12, 8]
Flip = Literal["none", "vertical", "horizontal", "random"]

# Output options added after data sets were published: a config dump leaves them out while they hold
# these defaults, so the default data set (its COCO info, the benchmark's cache key) stays byte-identical.
OUTPUT_DEFAULTS: dict[str, object] = {"bit_depth": 16, "flip": "none", "invert": False}


class LayerSpec(FrozenModel):
    """One film layer: thickness range (px) and density (unit intensity, 0 = air-black, 1 = white)."""

    thickness: Range
    density: Annotated[float, Field(ge=0.0, le=1.0)]


class ProductSpec(FrozenModel):
    """One product type: its layer stack, brightness and noise level."""

    name: str
    weight: Annotated[float, Field(gt=0.0)] = 1.0
    air: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    substrate: Annotated[float, Field(ge=0.0, le=1.0)]
    layers: list[LayerSpec] = Field(min_length=1)
    surface_y: Range = (40.0, 70.0)  # top surface row, px from the top of the image
    tilt_deg: Annotated[float, Field(ge=0.0)] = 1.0  # max |tilt| of the stack
    waviness_px: Annotated[float, Field(ge=0.0)] = 0.8  # natural interface waviness amplitude
    noise_scale: Annotated[float, Field(gt=0.0)] = 1.0  # multiplies NoiseSpec.sigma


class NoiseSpec(FrozenModel):
    sigma: Annotated[float, Field(gt=0.0)] = 0.012  # noise std, unit intensity (before product scale)
    correlation_px: Annotated[float, Field(ge=0.0)] = 0.6  # Gaussian correlation length (0 = white)


class ArtifactSpec(FrozenModel):
    """Imaging artifacts; amplitudes are in units of the slice's noise sigma."""

    blur_sigma_px: Annotated[float, Field(ge=0.0)] = 0.7  # Gaussian PSF
    ring_probability: Probability = 0.35
    ring_count: IntRange = (1, 4)
    ring_radius_px: Range = (25.0, 180.0)
    ring_amplitude: Range = (0.5, 1.5)
    ring_center_jitter_px: Annotated[float, Field(ge=0.0)] = 15.0
    streak_probability: Probability = 0.2
    streak_count: IntRange = (1, 2)
    streak_amplitude: Range = (0.4, 1.0)


class DriftSpec(FrozenModel):
    """Slow density drift: a smooth spatial gain field and a gain that drifts with slice index."""

    spatial_amplitude: Annotated[float, Field(ge=0.0)] = 0.03
    spatial_cells: Annotated[int, Field(ge=1)] = 3
    temporal_amplitude: Annotated[float, Field(ge=0.0)] = 0.02
    temporal_period: Annotated[float, Field(gt=0.0)] = 500.0  # slices


class DefectClassSpec(FrozenModel):
    """One labeled defect class.

    ``frequency`` is the marginal probability that an image holds >= 1 instance; ``size`` is
    per shape: round = semi-major axis, compact = mean radius, u_shaped = arc radius, linear,
    jagged and interface = length (all px); ``interface`` is a thin line that follows one inner layer
    interface (a delamination: the gap between two layers, or a layer and the substrate). ``width`` is the stroke width of u_shaped/linear/jagged shapes.
    ``contrast`` is in units of the slice's noise sigma.
    """

    frequency: Probability
    count: IntRange = (1, 2)
    shape: Shape
    polarity: Literal["dark", "bright"]
    size: Range
    width: Range = (1.5, 2.5)
    contrast: Range
    aspect: Range = (1.0, 1.5)  # round: major/minor axis ratio
    irregularity: Annotated[float, Field(ge=0.0, le=0.5)] = 0.12  # compact: radial harmonic amplitude
    arc_span_deg: Range = (150.0, 250.0)  # u_shaped
    tilt_deg: Annotated[float, Field(ge=0.0)] = 6.0  # linear: max deviation from vertical
    jag_deg: Annotated[float, Field(ge=0.0)] = 35.0  # jagged: max per-segment heading change
    heading_deg: Annotated[float, Field(ge=0.0)] = 30.0  # jagged: max |overall heading| from horizontal
    segments: IntRange = (5, 9)  # jagged
    sharp: bool = False  # rendered after the PSF blur (crisp edges)
    from_surface: bool = False  # starts at the top surface and goes down (drill holes)


class DustSpec(FrozenModel):
    frequency: Probability = 0.5
    count: IntRange = (1, 4)
    radius: Range = (0.5, 1.1)  # px
    contrast: Range = (5.0, 10.0)  # noise sigmas
    bright_share: Probability = 0.75
    sharp: bool = True  # added after the PSF blur: crisp specks, unlike the blurred defects


class WobbleSpec(FrozenModel):
    frequency: Probability = 0.25
    count: IntRange = (1, 2)
    half_width: Range = (6.0, 14.0)  # Gaussian sigma of the bump along x, px
    amplitude: Range = (1.5, 3.5)  # px of interface displacement


class ScratchSpec(FrozenModel):
    frequency: Probability = 0.15
    count: IntRange = (1, 1)
    length: Range = (60.0, 180.0)
    width: Range = (0.8, 1.2)
    contrast: Range = (1.5, 3.0)  # noise sigmas
    bright_share: Probability = 0.5


class LookalikeSpec(FrozenModel):
    dust: DustSpec = DustSpec()
    wobble: WobbleSpec = WobbleSpec()
    scratch: ScratchSpec = ScratchSpec()


def _default_products() -> list[ProductSpec]:
    L = LayerSpec
    return [
        ProductSpec(name="film-A", weight=0.5, substrate=0.62, surface_y=(40.0, 70.0), noise_scale=1.0,
                    layers=[L(thickness=(14, 22), density=0.42), L(thickness=(10, 16), density=0.56),
                            L(thickness=(18, 28), density=0.36)]),
        ProductSpec(name="film-B", weight=0.35, substrate=0.50, surface_y=(30.0, 60.0), noise_scale=1.3,
                    layers=[L(thickness=(8, 12), density=0.30), L(thickness=(8, 12), density=0.40),
                            L(thickness=(8, 12), density=0.30), L(thickness=(8, 12), density=0.40),
                            L(thickness=(12, 18), density=0.34)]),
        ProductSpec(name="film-C", weight=0.15, substrate=0.74, surface_y=(50.0, 80.0), noise_scale=0.9,
                    layers=[L(thickness=(30, 45), density=0.66), L(thickness=(15, 25), density=0.52)]),
    ]


def _default_classes() -> dict[str, DefectClassSpec]:
    D = DefectClassSpec
    return {
        "void": D(frequency=0.30, count=(1, 3), shape="round", polarity="dark", size=(3.0, 8.0),
                  contrast=(3.5, 6.0)),
        "inclusion": D(frequency=0.25, count=(1, 3), shape="compact", polarity="bright", size=(2.5, 6.0),
                       contrast=(4.0, 7.0)),
        "petal": D(frequency=0.025, count=(1, 2), shape="u_shaped", polarity="bright", size=(6.0, 11.0),
                   width=(1.8, 2.8), contrast=(5.0, 8.0)),
        "drill_hole": D(frequency=0.02, count=(1, 2), shape="linear", polarity="dark", size=(14.0, 36.0),
                        width=(3.0, 5.0), contrast=(5.0, 8.0), sharp=True, from_surface=True),
        "crack": D(frequency=0.18, count=(1, 2), shape="jagged", polarity="dark", size=(14.0, 40.0),
                   width=(1.2, 1.8), contrast=(5.0, 8.0)),
    }


class SynthConfig(FrozenModel):
    """Every knob of the thin-film CT generator (YAML: ``SynthConfig.from_yaml(path)``)."""

    height: Annotated[int, Field(ge=32)] = 256
    width: Annotated[int, Field(ge=32)] = 256
    seed: int = 0  # default data-set seed (the CLI's --seed overrides it)
    id_prefix: str = "slice"
    defect_free_share: Probability = 0.4
    products: list[ProductSpec] = Field(default_factory=_default_products, min_length=1)
    lines: list[str] = Field(default_factory=lambda: ["line-1", "line-2"], min_length=1)
    start_time: str = "2025-01-06T06:00:00+00:00"  # ts of slice 0 (ISO 8601)
    cadence_s: Annotated[float, Field(gt=0.0)] = 30.0  # seconds between consecutive slices
    noise: NoiseSpec = NoiseSpec()
    artifacts: ArtifactSpec = ArtifactSpec()
    drift: DriftSpec = DriftSpec()
    classes: dict[str, DefectClassSpec] = Field(default_factory=_default_classes, min_length=1)
    lookalikes: LookalikeSpec = LookalikeSpec()
    margin_px: Annotated[float, Field(ge=0.0)] = 4.0  # min gap between objects and to the image border
    max_placement_tries: Annotated[int, Field(ge=1)] = 50
    # how the slice is written (see OUTPUT_DEFAULTS: omitted from dumps at their defaults)
    bit_depth: BitDepth = 16  # 16: counts 0..65535 in 16-bit PNGs; 12: 0..4095 in 16-bit PNGs; 8: uint8 PNGs
    flip: Flip = "none"  # vertical: substrate on top; horizontal: mirrored; random: each axis with p = 0.5
    invert: bool = False  # inverted intensities (1 - x): air white, dense material dark

    @model_serializer(mode="wrap")
    def _omit_output_defaults(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for key, default in OUTPUT_DEFAULTS.items():
            if key in data and data[key] == default:
                del data[key]
        return data

    @model_validator(mode="after")
    def _check(self) -> SynthConfig:
        names = [p.name for p in self.products]
        if len(set(names)) != len(names):
            raise ValueError(f"products: names must be unique, got {names}")
        try:
            _dt.datetime.fromisoformat(self.start_time)
        except ValueError as exc:
            raise ValueError(f"start_time: not ISO 8601 ({exc})") from None
        for p in self.products:
            stack = p.surface_y[1] + sum(layer.thickness[1] for layer in p.layers)
            if stack >= self.height - 8:
                raise ValueError(f"products.{p.name}: surface + layers ({stack:.0f} px) leave no substrate "
                                 f"in a {self.height}-px image")
        conditional_class_rates({k: c.frequency for k, c in self.classes.items()}, self.defect_free_share)
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> SynthConfig:
        """Load a config; unknown keys and bad values raise SynthConfigError naming file and field."""
        data = read_yaml_mapping(path, SynthConfigError, "generator config")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise SynthConfigError(f"{path}: {validation_message(exc)}") from None

    def to_yaml(self, path: str | Path) -> None:
        """Write this config as YAML (round-trips through ``from_yaml``)."""
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False))


def load_config(path: str | Path | None = None) -> SynthConfig:
    """The config at ``path``, or the packaged default YAML when ``path`` is None."""
    return SynthConfig.from_yaml(DEFAULT_CONFIG_PATH if path is None else path)


def conditional_class_rates(frequencies: dict[str, float], defect_free_share: float) -> dict[str, float]:
    """Per-class presence rates r_c inside defective images so the marginals equal ``frequencies``.

    Image model: with probability q = ``defect_free_share`` an image has no defect; otherwise each
    class is present independently with rate r_c, redrawn until at least one is present. Then
    P(class c present) = (1 - q) r_c / (1 - prod(1 - r)). With r_c = K p_c / (1 - q) the condition
    reduces to one scalar equation 1 - prod(1 - K a_c) = K (a_c = p_c / (1 - q)), solved by bisection.
    Raises ValueError when no such rates exist.
    """
    q = float(defect_free_share)
    if not frequencies:
        raise ValueError("classes: at least one class is needed")
    if q >= 1.0:
        if any(p > 0 for p in frequencies.values()):
            raise ValueError("defect_free_share is 1 but some class frequency is > 0")
        return {k: 0.0 for k in frequencies}
    a = np.array([p / (1.0 - q) for p in frequencies.values()], dtype=np.float64)
    if np.any(a > 1.0 + 1e-12):
        bad = [k for k, p in frequencies.items() if p > 1.0 - q]
        raise ValueError(f"classes.{bad[0]}.frequency exceeds 1 - defect_free_share = {1 - q:.3f}")
    if np.any(a >= 1.0 - 1e-12):  # a class present in every defective image: the rest are independent
        return {k: min(1.0, float(v)) for k, v in zip(frequencies, a)}
    if a.sum() <= 1.0 + 1e-9:
        raise ValueError(
            f"class frequencies sum to {sum(frequencies.values()):.4f}, which must exceed "
            f"1 - defect_free_share = {1 - q:.4f} (each defective image holds >= 1 class); "
            f"raise the frequencies or defect_free_share")

    def f(k: float) -> float:
        return 1.0 - float(np.prod(1.0 - k * a)) - k

    lo, hi = 1e-9, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    k = 0.5 * (lo + hi)
    return {name: float(k * v) for name, v in zip(frequencies, a)}
