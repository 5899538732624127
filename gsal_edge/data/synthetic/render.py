"""Drawing one synthetic CT slice: the layer geometry (``Scene``), defect and look-alike shapes as
anti-aliased coverage ``Patch``-es, the PSF blur, ring / streak artifacts and the density drift.

Every function draws from the ``rng`` it is given, in a fixed order: the generator's output depends on
that order, so changing it changes every generated data set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gsal_edge.data.synthetic.config import ArtifactSpec, DefectClassSpec, DriftSpec, ProductSpec, SynthConfig


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


def coverage(d: np.ndarray, edge: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage from a signed distance (negative inside); ``edge`` = ramp width in px."""
    return np.clip(0.5 - d / edge, 0.0, 1.0).astype(np.float32)


def _seg_dist(px: np.ndarray, py: np.ndarray, a: tuple[float, float], b: tuple[float, float]) -> np.ndarray:
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    t = np.zeros_like(px) if ll == 0 else np.clip(((px - ax) * dx + (py - ay) * dy) / ll, 0.0, 1.0)
    return np.hypot(px - ax - t * dx, py - ay - t * dy)


@dataclass
class Patch:
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


class Scene:
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


def _render_round(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
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
    return Patch(coverage(d), y0, x0), {"semi_axes": [round(a, 3), round(b, 3)]}


def _render_compact(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
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
    return Patch(coverage(rho - r), y0, x0), {"radius": round(r0, 3)}


def _render_u_shaped(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
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
    return Patch(coverage(d), y0, x0), {"radius": round(R, 3), "span_deg": round(math.degrees(2 * half), 2)}


def _render_linear(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
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
    cov = coverage(d, edge=0.5 if spec.sharp else 1.0)
    if spec.from_surface:  # only inside material: the part above the surface is air anyway
        surf = np.stack([sc.interfaces[0][x0:x0 + cov.shape[1]]] * cov.shape[0]).astype(np.float32)
        cov *= np.clip(yy - surf + 0.5, 0.0, 1.0)
    return Patch(cov, y0, x0), {"length": round(L, 3), "width": round(w, 3),
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


def polyline_patch(sc: Scene, pts: list[tuple[float, float]], w: float) -> Patch | None:
    """A stroke of width ``w`` along the polyline ``pts`` (cracks, scratches); None if off the image."""
    arr = np.array(pts)
    g = sc.grid(arr[:, 0].min() - w - 2, arr[:, 1].min() - w - 2, arr[:, 0].max() + w + 2, arr[:, 1].max() + w + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    d = np.full(xx.shape, np.inf, dtype=np.float32)
    for a, b in itertools.pairwise(pts):
        d = np.minimum(d, _seg_dist(xx, yy, a, b))
    return Patch(coverage(d - w / 2), y0, x0)


def _render_jagged(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    L = rng.uniform(*spec.size)
    w = rng.uniform(*spec.width)
    n = int(rng.integers(spec.segments[0], spec.segments[1] + 1))
    heading = math.radians(rng.uniform(-spec.heading_deg, spec.heading_deg)) + (math.pi if rng.random() < 0.5 else 0)
    pts = _polyline(rng, cx, cy, L, n, heading, math.radians(spec.jag_deg))
    p = polyline_patch(sc, pts, w)
    return None if p is None else (p, {"length": round(L, 3), "width": round(w, 3), "segments": n})


def _render_interface(sc: Scene, spec: DefectClassSpec, rng: np.random.Generator, cx: float, cy: float):
    """A delamination: a thin stroke of length L centred at column ``cx`` that follows one inner
    interface (layer/layer or layer/substrate, never the top surface); ``cy`` is not used."""
    L = rng.uniform(*spec.size)
    w = rng.uniform(*spec.width)
    k = int(rng.integers(1, len(sc.interfaces)))
    itf = sc.interfaces[k]
    cols = itf[int(np.clip(cx - L / 2, 0, sc.W - 1)):int(np.clip(cx + L / 2, 0, sc.W - 1)) + 1]
    g = sc.grid(cx - L / 2 - 2, float(cols.min()) - w - 2, cx + L / 2 + 2, float(cols.max()) + w + 2)
    if g is None:
        return None
    xx, yy, x0, y0 = g
    row = itf[np.clip(xx.astype(np.int64), 0, sc.W - 1)].astype(np.float32)  # the interface's row per pixel
    qx, qy = np.abs(xx - cx) - L / 2, np.abs(yy - row) - w / 2
    d = np.hypot(np.maximum(qx, 0), np.maximum(qy, 0)) + np.minimum(np.maximum(qx, qy), 0)
    return Patch(coverage(d), y0, x0), {"length": round(L, 3), "width": round(w, 3), "interface": k,
                                        "region": f"interface-{k}"}


RENDERERS: dict[str, Callable[..., Any]] = {  # DefectClassSpec.shape -> renderer
    "round": _render_round, "compact": _render_compact, "u_shaped": _render_u_shaped,
    "linear": _render_linear, "jagged": _render_jagged, "interface": _render_interface,
}


def extent(spec: DefectClassSpec) -> float:
    """A generous radius of the shape, to keep centers away from borders and the surface."""
    if spec.shape in ("linear", "jagged", "interface"):
        return spec.size[1] / 2 + spec.width[1]
    if spec.shape == "compact":
        return spec.size[1] * (1 + 3 * spec.irregularity)
    return spec.size[1] + spec.width[1]


def overlaps(box: tuple[float, ...], boxes: list[tuple[float, ...]], margin: float) -> bool:
    """Whether ``box`` comes within ``margin`` px of any of ``boxes``."""
    x1, y1, x2, y2 = box
    return any(x1 < b[2] + margin and b[0] - margin < x2 and y1 < b[3] + margin and b[1] - margin < y2 for b in boxes)


def draw_count(rng: np.random.Generator, r: tuple[int, int]) -> int:
    """A count drawn uniformly from the inclusive range ``r``."""
    return int(rng.integers(r[0], r[1] + 1))


def add_artifacts(img: np.ndarray, art: ArtifactSpec, rng: np.random.Generator, sigma: float) -> None:
    """Ring artifacts (circles around a jittered rotation center) and streaks (straight lines), in place."""
    H, W = img.shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32) + 0.5
    if rng.random() < art.ring_probability:
        rcx = W / 2 + rng.uniform(-art.ring_center_jitter_px, art.ring_center_jitter_px)
        rcy = H / 2 + rng.uniform(-art.ring_center_jitter_px, art.ring_center_jitter_px)
        rho = np.hypot(xx - rcx, yy - rcy)
        for _ in range(draw_count(rng, art.ring_count)):
            r = rng.uniform(*art.ring_radius_px)
            amp = rng.uniform(*art.ring_amplitude) * sigma * (1 if rng.random() < 0.5 else -1)
            img += amp * np.exp(-0.5 * ((rho - r) / 0.7) ** 2)
    if rng.random() < art.streak_probability:
        for _ in range(draw_count(rng, art.streak_count)):
            th = rng.uniform(0, math.pi)
            px, py = rng.uniform(0, W), rng.uniform(0, H)
            d = np.abs((xx - px) * math.sin(th) - (yy - py) * math.cos(th))
            amp = rng.uniform(*art.streak_amplitude) * sigma * (1 if rng.random() < 0.5 else -1)
            img += amp * np.exp(-0.5 * (d / 0.8) ** 2)


def drift_gain(dr: DriftSpec, rng: np.random.Generator, index: int, H: int, W: int) -> np.ndarray:
    """Multiplicative gain: a bilinear-smooth random field times a slow sinusoid of the slice index."""
    c = dr.spatial_cells
    knots = np.arange(c + 1)

    def interp(n: int) -> np.ndarray:  # n x (c+1) linear-interpolation weights
        return np.stack([np.interp(np.linspace(0, c, n), knots, row) for row in np.eye(c + 1)], axis=1)

    field_ = interp(H) @ rng.standard_normal((c + 1, c + 1)) @ interp(W).T
    temporal = 1.0 + dr.temporal_amplitude * math.sin(2 * math.pi * index / dr.temporal_period)
    return ((1.0 + dr.spatial_amplitude * field_) * temporal).astype(np.float32)
