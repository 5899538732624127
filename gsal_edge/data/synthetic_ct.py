"""Synthetic thin-film CT slices: the product's embedded default data set.

A slice is a cross-section of a layered film on a substrate (air on top, horizontal layers of
different density, substrate below), seen through a CT system: Gaussian PSF blur, correlated
noise, ring and streak artifacts, slow spatial and temporal density drift, 16-bit counts.

Defects (labeled, one COCO category each) are small and low contrast; their contrast is drawn
in units of the slice's noise sigma so it stays "a few sigma" whatever the product:

=============  ========  ===========================================================
class          polarity  shape
=============  ========  ===========================================================
void           dark      round: filled ellipse
inclusion      bright    compact: irregular blob
petal          bright    u_shaped: tapering crescent arc
drill_hole     dark      linear: straight channel from the top surface, sharp edges
crack          dark      jagged: thin zig-zag line
=============  ========  ===========================================================

Benign look-alikes (NOT labeled, recorded per image): dust specks (tiny dots, mostly bright),
layer wobble (a local bump of an interface) and scratches (long, faint, perfectly straight).

Every knob lives in :class:`SynthConfig` (``configs/synth_default.yaml`` mirrors its defaults).
Image ``i`` of a data set with seed ``s`` is drawn from ``default_rng(slice_seed(s, i))`` alone,
so images can be generated in any order, in parallel, or streamed.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm import tqdm

from gsal_edge.config_files import CONFIGS_DIR, read_yaml_mapping, validation_message
from gsal_edge.data.coco import write_coco
from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry

DEFAULT_CONFIG_PATH = CONFIGS_DIR / "synth_default.yaml"


class SynthConfigError(ValueError):
    """A synthetic-data config is invalid; the message names the file and the field."""


def _ordered(v: tuple[float, float]) -> tuple[float, float]:
    if v[0] > v[1]:
        raise ValueError(f"range must be (low, high) with low <= high, got {list(v)}")
    return v


Range = Annotated[tuple[float, float], AfterValidator(_ordered)]
IntRange = Annotated[tuple[int, int], AfterValidator(_ordered)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Shape = Literal["round", "compact", "u_shaped", "linear", "jagged"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LayerSpec(_Model):
    """One film layer: thickness range (px) and density (unit intensity, 0 = air-black, 1 = white)."""

    thickness: Range
    density: Annotated[float, Field(ge=0.0, le=1.0)]


class ProductSpec(_Model):
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


class NoiseSpec(_Model):
    sigma: Annotated[float, Field(gt=0.0)] = 0.012  # noise std, unit intensity (before product scale)
    correlation_px: Annotated[float, Field(ge=0.0)] = 0.6  # Gaussian correlation length (0 = white)


class ArtifactSpec(_Model):
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


class DriftSpec(_Model):
    """Slow density drift: a smooth spatial gain field and a gain that drifts with slice index."""

    spatial_amplitude: Annotated[float, Field(ge=0.0)] = 0.03
    spatial_cells: Annotated[int, Field(ge=1)] = 3
    temporal_amplitude: Annotated[float, Field(ge=0.0)] = 0.02
    temporal_period: Annotated[float, Field(gt=0.0)] = 500.0  # slices


class DefectClassSpec(_Model):
    """One labeled defect class.

    ``frequency`` is the marginal probability that an image holds >= 1 instance; ``size`` is
    per shape: round = semi-major axis, compact = mean radius, u_shaped = arc radius, linear and
    jagged = length (all px). ``width`` is the stroke width of u_shaped/linear/jagged shapes.
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


class DustSpec(_Model):
    frequency: Probability = 0.5
    count: IntRange = (1, 4)
    radius: Range = (0.5, 1.1)  # px
    contrast: Range = (5.0, 10.0)  # noise sigmas
    bright_share: Probability = 0.75
    sharp: bool = True  # added after the PSF blur: crisp specks, unlike the blurred defects


class WobbleSpec(_Model):
    frequency: Probability = 0.25
    count: IntRange = (1, 2)
    half_width: Range = (6.0, 14.0)  # Gaussian sigma of the bump along x, px
    amplitude: Range = (1.5, 3.5)  # px of interface displacement


class ScratchSpec(_Model):
    frequency: Probability = 0.15
    count: IntRange = (1, 1)
    length: Range = (60.0, 180.0)
    width: Range = (0.8, 1.2)
    contrast: Range = (1.5, 3.0)  # noise sigmas
    bright_share: Probability = 0.5


class LookalikeSpec(_Model):
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


class SynthConfig(_Model):
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


# ----------------------------------------------------------------------------------------------
# pure math helpers


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


def slice_seed(dataset_seed: int, index: int) -> int:
    """The seed of image ``index`` in the data set with seed ``dataset_seed`` (independent of all others)."""
    return int(np.random.SeedSequence([int(dataset_seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint64)[0])


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float array (reflect padding); sigma in pixels, 0 = copy."""
    if sigma <= 0:
        return img.astype(np.float32, copy=True)
    r = max(1, math.ceil(3.0 * sigma))
    x = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).astype(np.float32)
    out = img.astype(np.float32, copy=False)
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect")
        acc = np.zeros_like(out)
        n = out.shape[axis]
        for i, w in enumerate(k):
            acc += w * (p[i:i + n, :] if axis == 0 else p[:, i:i + n])
        out = acc
    return out


def _coverage(d: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (negative inside); ``edge`` = ramp width in px."""
    return np.clip(0.5 - d / edge, 0.0, 1.0).astype(np.float32)


def _seg_dist(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    t = np.zeros_like(px) if ll == 0 else np.clip(((px - ax) * dx + (py - ay) * dy) / ll, 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


# ----------------------------------------------------------------------------------------------
# slices


@dataclass
class SynthSlice:
    """One generated slice: 16-bit image, labeled defects, unlabeled look-alikes, metadata."""

    image_id: str
    image: np.ndarray  # uint16 HxW
    annotations: list[Annotation] = field(default_factory=list)
    lookalikes: list[dict[str, Any]] = field(default_factory=list)  # {"type", "box", ...}; NOT labeled
    meta: dict[str, str] = field(default_factory=dict)  # product, line, ts


@dataclass
class _Patch:
    """A coverage mask (float32 in [0,1]) placed at (y0, x0) in the image."""

    cov: np.ndarray
    y0: int
    x0: int

    def box(self, thr: float = 0.5) -> tuple[int, int, int, int] | None:
        ys, xs = np.nonzero(self.cov >= thr)
        if ys.size == 0:
            return None
        return (self.x0 + int(xs.min()), self.y0 + int(ys.min()), self.x0 + int(xs.max()) + 1,
                self.y0 + int(ys.max()) + 1)

    def add_to(self, img: np.ndarray, value: float) -> None:
        h, w = self.cov.shape
        img[self.y0:self.y0 + h, self.x0:self.x0 + w] += value * self.cov


class _Scene:
    """Geometry of one slice: interface rows per column, and a pixel grid helper."""

    def __init__(self, cfg: SynthConfig, product: ProductSpec, rng: np.random.Generator,
                 wobbles: list[tuple[int, float, float, float]]):
        self.H, self.W = cfg.height, cfg.width
        xs = np.arange(self.W, dtype=np.float64) + 0.5
        y_surf = rng.uniform(*product.surface_y)
        slope = math.tan(math.radians(rng.uniform(-product.tilt_deg, product.tilt_deg)))
        offsets = np.concatenate([[0.0], np.cumsum([rng.uniform(*layer.thickness) for layer in product.layers])])
        self.interfaces: list[np.ndarray] = []
        for off in offsets:
            wav = np.zeros_like(xs)
            for _ in range(2):
                amp = product.waviness_px * rng.uniform(0.3, 1.0)
                wav += amp * np.sin(2 * math.pi * xs / rng.uniform(60.0, 200.0) + rng.uniform(0, 2 * math.pi))
            self.interfaces.append(y_surf + off + slope * (xs - self.W / 2) + wav)
        for k, cx, sx, amp in wobbles:
            self.interfaces[k] = self.interfaces[k] + amp * np.exp(-0.5 * ((xs - cx) / sx) ** 2)
        self.densities = [product.air] + [layer.density for layer in product.layers] + [product.substrate]

    def surface(self, x: float) -> float:
        return float(self.interfaces[0][int(np.clip(x, 0, self.W - 1))])

    def region(self, x: float, y: float) -> str:
        """Which layer the point lies in: 'air', 'layer-1'.., or 'substrate'."""
        xi = int(np.clip(x, 0, self.W - 1))
        k = sum(1 for itf in self.interfaces if y >= itf[xi])
        if k == 0:
            return "air"
        return "substrate" if k == len(self.interfaces) else f"layer-{k}"

    def material(self) -> np.ndarray:
        """Noise-free material intensity (anti-aliased interfaces)."""
        yc = np.arange(self.H, dtype=np.float32)[:, None] + 0.5
        img = np.full((self.H, self.W), self.densities[0], dtype=np.float32)
        for k, itf in enumerate(self.interfaces):
            jump = self.densities[k + 1] - self.densities[k]
            img += jump * np.clip(yc - itf[None, :].astype(np.float32) + 0.5, 0.0, 1.0)
        return img

    def grid(self, x0: float, y0: float, x1: float, y1: float) -> tuple[np.ndarray, np.ndarray, int, int] | None:
        """Pixel-center coordinates of the clipped window [x0,x1]x[y0,y1]."""
        ix0, iy0 = max(0, math.floor(x0)), max(0, math.floor(y0))
        ix1, iy1 = min(self.W, math.ceil(x1) + 1), min(self.H, math.ceil(y1) + 1)
        if ix1 <= ix0 or iy1 <= iy0:
            return None
        yy, xx = np.mgrid[iy0:iy1, ix0:ix1].astype(np.float32) + 0.5
        return xx, yy, ix0, iy0


# renderers: (scene, spec, rng, center) -> (patch, attributes) or None


def _render_round(sc: _Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    a = rng.uniform(*spec.size)
    b = a / rng.uniform(*spec.aspect)
    th = rng.uniform(0, math.pi)
    g = sc.grid(cx - a - 2, cy - a - 2, cx + a + 2, cy + a + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(th) + dy * math.sin(th)
    v = -dx * math.sin(th) + dy * math.cos(th)
    d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * b
    return _Patch(_coverage(d), y0, x0), {"semi_axes": [round(a, 3), round(b, 3)]}


def _render_compact(sc: _Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    r0 = rng.uniform(*spec.size)
    harm = [(k, rng.uniform(0, spec.irregularity), rng.uniform(0, 2 * math.pi)) for k in (2, 3, 4)]
    rmax = r0 * (1 + 3 * spec.irregularity)
    g = sc.grid(cx - rmax - 2, cy - rmax - 2, cx + rmax + 2, cy + rmax + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    rho = np.hypot(xx - cx, yy - cy)
    phi = np.arctan2(yy - cy, xx - cx)
    r = r0 * (1.0 + sum(amp * np.cos(k * phi + ph) for k, amp, ph in harm))
    return _Patch(_coverage(rho - r), y0, x0), {"radius": round(r0, 3)}


def _render_u_shaped(sc: _Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    R = rng.uniform(*spec.size)
    w = rng.uniform(*spec.width)
    half = math.radians(rng.uniform(*spec.arc_span_deg)) / 2
    thc = rng.uniform(-math.pi, math.pi)  # direction of the arc's middle (the U's bottom)
    g = sc.grid(cx - R - w - 2, cy - R - w - 2, cx + R + w + 2, cy + R + w + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    dx, dy = xx - cx, yy - cy
    rho = np.hypot(dx, dy)
    delta = np.angle(np.exp(1j * (np.arctan2(dy, dx) - thc)))
    # crescent: full width at the middle, tapering to 45% at the tips
    wd = w * (0.45 + 0.55 * np.cos(np.clip(np.abs(delta) / half, 0, 1) * math.pi / 2))
    d_arc = np.abs(rho - R) - wd / 2
    ends = [(cx + R * math.cos(thc + s * half), cy + R * math.sin(thc + s * half)) for s in (-1, 1)]
    d_end = np.minimum(np.hypot(xx - ends[0][0], yy - ends[0][1]),
                       np.hypot(xx - ends[1][0], yy - ends[1][1])) - 0.45 * w / 2
    d = np.where(np.abs(delta) <= half, d_arc, d_end)
    return _Patch(_coverage(d), y0, x0), {"radius": round(R, 3), "span_deg": round(math.degrees(2 * half), 2)}


def _render_linear(sc: _Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    L = rng.uniform(*spec.size)
    w = rng.uniform(*spec.width)
    tilt = math.radians(rng.uniform(-spec.tilt_deg, spec.tilt_deg))
    ux, uy = math.sin(tilt), math.cos(tilt)  # along the channel (downwards)
    if spec.from_surface:
        sx, sy = cx, sc.surface(cx) - 2.0
    else:
        sx, sy = cx - ux * L / 2, cy - uy * L / 2
    ex, ey = sx + ux * L, sy + uy * L
    g = sc.grid(min(sx, ex) - w - 2, min(sy, ey) - 2, max(sx, ex) + w + 2, max(sy, ey) + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    mx, my = (sx + ex) / 2, (sy + ey) / 2
    along = (xx - mx) * ux + (yy - my) * uy
    across = -(xx - mx) * uy + (yy - my) * ux
    qx, qy = np.abs(across) - w / 2, np.abs(along) - L / 2
    d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    cov = _coverage(d, edge=0.5 if spec.sharp else 1.0)
    if spec.from_surface:  # only inside material: the part above the surface is air anyway
        surf = np.stack([sc.interfaces[0][x0:x0 + cov.shape[1]]] * cov.shape[0]).astype(np.float32)
        cov *= np.clip(yy - surf + 0.5, 0.0, 1.0)
    return _Patch(cov, y0, x0), {"length": round(L, 3), "width": round(w, 3),
                                 "tilt_deg": round(math.degrees(tilt), 2)}


def _polyline(rng: np.random.Generator, cx: float, cy: float, length: float, n: int, heading: float,
              jag: float) -> list[tuple[float, float]]:
    step = length / n
    pts = [(0.0, 0.0)]
    for _ in range(n):
        h = heading + rng.uniform(-jag, jag)
        x, y = pts[-1]
        pts.append((x + step * math.cos(h), y + step * math.sin(h)))
    arr = np.array(pts)
    arr -= arr.mean(axis=0)
    return [(cx + float(x), cy + float(y)) for x, y in arr]


def _render_polyline_patch(sc: _Scene, pts: list[tuple[float, float]], w: float) -> _Patch | None:
    arr = np.array(pts)
    g = sc.grid(arr[:, 0].min() - w - 2, arr[:, 1].min() - w - 2, arr[:, 0].max() + w + 2, arr[:, 1].max() + w + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    d = np.full(xx.shape, np.inf, dtype=np.float32)
    for a, b in itertools.pairwise(pts):
        d = np.minimum(d, _seg_dist(xx, yy, a, b))
    return _Patch(_coverage(d - w / 2), y0, x0)


def _render_jagged(sc: _Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    L = rng.uniform(*spec.size)
    w = rng.uniform(*spec.width)
    n = int(rng.integers(spec.segments[0], spec.segments[1] + 1))
    heading = math.radians(rng.uniform(-spec.heading_deg, spec.heading_deg)) + (math.pi if rng.random() < 0.5 else 0)
    pts = _polyline(rng, cx, cy, L, n, heading, math.radians(spec.jag_deg))
    p = _render_polyline_patch(sc, pts, w)
    return None if p is None else (p, {"length": round(L, 3), "width": round(w, 3), "segments": n})


_RENDERERS: dict[str, Callable[..., Any]] = {
    "round": _render_round, "compact": _render_compact, "u_shaped": _render_u_shaped,
    "linear": _render_linear, "jagged": _render_jagged,
}


def _extent(spec: DefectClassSpec) -> float:
    """A generous radius of the shape, to keep centers away from borders and the surface."""
    if spec.shape in ("linear", "jagged"):
        return spec.size[1] / 2 + spec.width[1]
    if spec.shape == "compact":
        return spec.size[1] * (1 + 3 * spec.irregularity)
    return spec.size[1] + spec.width[1]


def _overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]], margin: float) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] - margin < x2 and y1 < b[3] + margin and b[1] - margin < y2 for b in boxes)


def _present_classes(cfg: SynthConfig, rng: np.random.Generator) -> list[str]:
    names = list(cfg.classes)
    if rng.random() < cfg.defect_free_share:
        return []
    rates = np.array(list(_rates(cfg).values()))
    for _ in range(10_000):
        hit = rng.random(len(names)) < rates
        if hit.any():
            return [n for n, h in zip(names, hit) if h]
    return [names[int(np.argmax(rates))]]  # pragma: no cover - only for absurd configs


_RATE_CACHE: dict[tuple, dict[str, float]] = {}


def _rates(cfg: SynthConfig) -> dict[str, float]:
    key = tuple((k, c.frequency) for k, c in cfg.classes.items()) + (cfg.defect_free_share,)
    if key not in _RATE_CACHE:
        _RATE_CACHE[key] = conditional_class_rates({k: c.frequency for k, c in cfg.classes.items()},
                                                   cfg.defect_free_share)
    return _RATE_CACHE[key]


def _count(rng: np.random.Generator, r: tuple[int, int]) -> int:
    return int(rng.integers(r[0], r[1] + 1))


def _ts(cfg: SynthConfig, index: int) -> str:
    t0 = _dt.datetime.fromisoformat(cfg.start_time)
    return (t0 + _dt.timedelta(seconds=cfg.cadence_s * index)).isoformat()


def _add_artifacts(img: np.ndarray, art: ArtifactSpec, rng: np.random.Generator, sigma: float) -> None:
    """Ring artifacts (circles around a jittered rotation center) and streaks (straight lines), in place."""
    H, W = img.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    if rng.random() < art.ring_probability:
        rcx = W / 2 + rng.uniform(-art.ring_center_jitter_px, art.ring_center_jitter_px)
        rcy = H / 2 + rng.uniform(-art.ring_center_jitter_px, art.ring_center_jitter_px)
        rho = np.hypot(xx - rcx, yy - rcy)
        for _ in range(_count(rng, art.ring_count)):
            r = rng.uniform(*art.ring_radius_px)
            amp = rng.uniform(*art.ring_amplitude) * sigma * (1 if rng.random() < 0.5 else -1)
            img += amp * np.exp(-0.5 * ((rho - r) / 0.7) ** 2)
    if rng.random() < art.streak_probability:
        for _ in range(_count(rng, art.streak_count)):
            th = rng.uniform(0, math.pi)
            px, py = rng.uniform(0, W), rng.uniform(0, H)
            d = np.abs((xx - px) * math.sin(th) - (yy - py) * math.cos(th))
            amp = rng.uniform(*art.streak_amplitude) * sigma * (1 if rng.random() < 0.5 else -1)
            img += amp * np.exp(-0.5 * (d / 0.8) ** 2)


def _drift_gain(dr: DriftSpec, rng: np.random.Generator, index: int, H: int, W: int) -> np.ndarray:
    """Multiplicative gain: a bilinear-smooth random field times a slow sinusoid of the slice index."""
    c = dr.spatial_cells
    knots = np.arange(c + 1)

    def interp(n: int) -> np.ndarray:  # n x (c+1) linear-interpolation weights
        return np.stack([np.interp(np.linspace(0, c, n), knots, row) for row in np.eye(c + 1)], axis=1)

    field_ = interp(H) @ rng.standard_normal((c + 1, c + 1)) @ interp(W).T
    temporal = 1.0 + dr.temporal_amplitude * math.sin(2 * math.pi * index / dr.temporal_period)
    return ((1.0 + dr.spatial_amplitude * field_) * temporal).astype(np.float32)


def generate_slice(cfg: SynthConfig, seed: int, index: int = 0) -> SynthSlice:
    """Draw one slice from ``default_rng(seed)``; ``index`` sets its id, timestamp and temporal drift.

    In a data set, ``seed = slice_seed(dataset_seed, index)``.
    """
    rng = np.random.default_rng(seed)
    H, W = cfg.height, cfg.width
    product = cfg.products[int(rng.choice(len(cfg.products), p=_weights(cfg)))]
    line = cfg.lines[int(rng.integers(len(cfg.lines)))]
    sigma = cfg.noise.sigma * product.noise_scale
    m = cfg.margin_px
    lookalikes: list[dict[str, Any]] = []
    taken: list[tuple[float, ...]] = []

    # benign interface wobble is geometry: decide it before drawing the stack
    n_itf = len(product.layers) + 1
    wob_specs: list[tuple[int, float, float, float]] = []
    ws = cfg.lookalikes.wobble
    if rng.random() < ws.frequency:
        for _ in range(_count(rng, ws.count)):
            sx, amp = rng.uniform(*ws.half_width), rng.uniform(*ws.amplitude) * (1 if rng.random() < 0.5 else -1)
            cx = rng.uniform(m + 2 * sx, W - m - 2 * sx)
            wob_specs.append((int(rng.integers(n_itf)), cx, sx, amp))
    scene = _Scene(cfg, product, rng, wob_specs)
    for k, cx, sx, amp in wob_specs:
        y_bump = float(scene.interfaces[k][int(np.clip(cx, 0, W - 1))])  # interface row at the bump's peak
        y_lo, y_hi = min(y_bump, y_bump - amp) - 2, max(y_bump, y_bump - amp) + 2
        box = tuple(float(round(v)) for v in (max(0.0, cx - 2.5 * sx), max(0.0, y_lo),
                                              min(float(W), cx + 2.5 * sx), min(float(H), y_hi)))
        taken.append(box)
        lookalikes.append({"type": "wobble", "box": list(box), "interface": k, "amplitude_px": round(abs(amp), 3)})

    soft = scene.material()  # blurred by the PSF
    sharp = np.zeros_like(soft)  # added after the PSF (crisp edges)
    annotations: list[Annotation] = []
    for name in _present_classes(cfg, rng):
        spec = cfg.classes[name]
        for _ in range(_count(rng, spec.count)):
            ext = _extent(spec)
            for _try in range(cfg.max_placement_tries):
                cx = rng.uniform(m + ext, W - m - ext)
                top = scene.surface(cx) + (0.0 if spec.from_surface else ext + m)
                if top >= H - m - ext:
                    continue
                cy = rng.uniform(top, H - m - ext)
                out = _RENDERERS[spec.shape](scene, spec, rng, cx, cy)
                if out is None:
                    continue
                patch, geo = out
                box = patch.box()
                if box is None or _overlaps(box, taken, m):
                    continue
                cnr = rng.uniform(*spec.contrast)
                delta = cnr * sigma * (-1.0 if spec.polarity == "dark" else 1.0)
                patch.add_to(sharp if spec.sharp else soft, delta)
                taken.append(box)
                bw, bh = box[2] - box[0], box[3] - box[1]
                attrs = {"polarity": spec.polarity, "shape": spec.shape, "contrast": round(abs(delta), 6),
                         "cnr": round(cnr, 4), "area_fraction": bw * bh / (H * W),
                         "mask_pixels": int((patch.cov >= 0.5).sum()), "sharp_boundary": spec.sharp,
                         "region": scene.region(cx, cy if not spec.from_surface else scene.surface(cx) + 2),
                         **geo}
                annotations.append(Annotation(box=tuple(float(v) for v in box), category=name, attributes=attrs))
                break

    ds_ = cfg.lookalikes.dust
    if rng.random() < ds_.frequency:
        for _ in range(_count(rng, ds_.count)):
            for _try in range(cfg.max_placement_tries):
                r = rng.uniform(*ds_.radius)
                cx, cy = rng.uniform(m + 2, W - m - 2), rng.uniform(m + 2, H - m - 2)
                g = scene.grid(cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
                if g is None:
                    continue
                xx, yy, x0, y0 = g
                patch = _Patch(_coverage(np.hypot(xx - cx, yy - cy) - r), y0, x0)
                box = patch.box(0.25)
                if box is None or _overlaps(box, taken, m):
                    continue
                bright = rng.random() < ds_.bright_share
                patch.add_to(sharp if ds_.sharp else soft, rng.uniform(*ds_.contrast) * sigma * (1 if bright else -1))
                taken.append(box)
                lookalikes.append({"type": "dust", "box": [float(v) for v in box],
                                   "polarity": "bright" if bright else "dark"})
                break

    sc_ = cfg.lookalikes.scratch
    if rng.random() < sc_.frequency:
        for _ in range(_count(rng, sc_.count)):
            L, w = rng.uniform(*sc_.length), rng.uniform(*sc_.width)
            th = rng.uniform(0, math.pi)
            cx, cy = rng.uniform(0.25 * W, 0.75 * W), rng.uniform(0.25 * H, 0.75 * H)
            a = (cx - L / 2 * math.cos(th), cy - L / 2 * math.sin(th))
            b = (cx + L / 2 * math.cos(th), cy + L / 2 * math.sin(th))
            patch = _render_polyline_patch(scene, [a, b], w)
            box = None if patch is None else patch.box(0.25)
            if box is None:
                continue
            bright = rng.random() < sc_.bright_share
            patch.add_to(soft, rng.uniform(*sc_.contrast) * sigma * (1 if bright else -1))
            lookalikes.append({"type": "scratch", "box": [float(v) for v in box],
                               "polarity": "bright" if bright else "dark"})

    _add_artifacts(soft, cfg.artifacts, rng, sigma)
    img = gaussian_blur(soft, cfg.artifacts.blur_sigma_px) + sharp
    img *= _drift_gain(cfg.drift, rng, index, H, W)

    noise = rng.standard_normal((H, W)).astype(np.float32)
    if cfg.noise.correlation_px > 0:
        noise = gaussian_blur(noise, cfg.noise.correlation_px)
        noise /= max(float(noise.std()), 1e-12)
    img = img + sigma * noise

    u16 = np.clip(np.rint(img * 65535.0), 0, 65535).astype(np.uint16)
    meta = {"product": product.name, "line": line, "ts": _ts(cfg, index)}
    return SynthSlice(image_id=f"{cfg.id_prefix}-{index:06d}", image=u16, annotations=annotations,
                      lookalikes=lookalikes, meta=meta)


def _weights(cfg: SynthConfig) -> np.ndarray:
    w = np.array([p.weight for p in cfg.products], dtype=np.float64)
    return w / w.sum()


def iter_slices(cfg: SynthConfig, n: int, seed: int, start: int = 0) -> Iterator[SynthSlice]:
    """Stream slices ``start .. start+n-1`` of the data set with seed ``seed`` (nothing written)."""
    for i in range(start, start + n):
        yield generate_slice(cfg, slice_seed(seed, i), i)


# ----------------------------------------------------------------------------------------------
# data sets on disk


def write_png16(path: str | Path, image: np.ndarray) -> None:
    """Write a 2-D uint16 array as a 16-bit grayscale PNG (byte-identical for identical input)."""
    from PIL import Image

    if image.dtype != np.uint16 or image.ndim != 2:
        raise ValueError(f"{path}: write_png16 needs a 2-D uint16 array, got {image.dtype} {image.shape}")
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", compress_level=6)


def _make_one(args: tuple[SynthConfig, int, int, str]) -> tuple[str, list[Annotation], list[dict], dict[str, str]]:
    cfg, seed, index, img_dir = args
    s = generate_slice(cfg, slice_seed(seed, index), index)
    write_png16(Path(img_dir) / f"{s.image_id}.png", s.image)
    return s.image_id, s.annotations, s.lookalikes, s.meta


def generate_dataset(out_dir: str | Path, n: int, seed: int, cfg: SynthConfig | None = None, *,
                     workers: int = 1, progress: bool = True) -> DetectionDataset:
    """Write ``n`` slices to ``out_dir/images/*.png`` (16-bit) plus COCO ``out_dir/annotations.json``.

    Deterministic per (``seed``, ``cfg``): the same arguments give byte-identical files whatever
    ``workers`` is. Returns the in-memory data set.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = cfg if cfg is not None else SynthConfig()
    out = Path(out_dir)
    img_dir = out / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(cfg, seed, i, str(img_dir)) for i in range(n)]
    entries: list[ImageEntry] = []
    no_bar = not progress or bool(os.environ.get("GSAL_NO_PROGRESS"))
    with tqdm(total=n, desc=f"synth {n} slices", unit="img", disable=no_bar) as bar, \
            (ProcessPoolExecutor(max_workers=workers) if workers > 1 else nullcontext()) as pool:
        results = pool.map(_make_one, jobs, chunksize=16) if pool is not None else map(_make_one, jobs)
        for image_id, anns, looks, meta in results:
            entries.append(ImageEntry(image_id=image_id, file_name=f"images/{image_id}.png", width=cfg.width,
                                      height=cfg.height, annotations=anns, meta=meta, lookalikes=looks))
            bar.update(1)
    ds = DetectionDataset(root=out, classes=list(cfg.classes), images=entries)
    info = {"description": "GSAL Edge synthetic thin-film CT", "generator": "gsal_edge.data.synthetic_ct",
            "seed": int(seed), "n": int(n), "config": cfg.model_dump(mode="json")}
    write_coco(ds, out, copy_images=False, info=info)
    return ds
