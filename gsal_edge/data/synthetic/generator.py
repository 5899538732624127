"""Synthetic slices and data sets: ``generate_slice`` draws one slice (image, labeled defects,
look-alikes, metadata) from one seed; ``generate_dataset`` writes many as PNGs + COCO json (16-bit
files by default; ``SynthConfig.bit_depth`` 12 stores 0..4095 in 16-bit files, 8 writes 8-bit files).

Image ``i`` of a data set with seed ``s`` is drawn from ``default_rng(slice_seed(s, i))`` alone,
so images can be generated in any order, in parallel, or streamed.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gsal_edge.data.coco import write_coco
from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry
from gsal_edge.data.synthetic.config import SynthConfig, conditional_class_rates
from gsal_edge.data.synthetic.render import (
    RENDERERS,
    Patch,
    Scene,
    add_artifacts,
    coverage,
    draw_count,
    drift_gain,
    extent,
    gaussian_blur,
    overlaps,
    polyline_patch,
)


def slice_seed(dataset_seed: int, index: int) -> int:
    """The seed of image ``index`` in the data set with seed ``dataset_seed`` (independent of all others)."""
    return int(np.random.SeedSequence([int(dataset_seed) & 0xFFFFFFFF, int(index)]).generate_state(1, np.uint64)[0])


@dataclass
class SynthSlice:
    """One generated slice: its stored counts, labeled defects, unlabeled look-alikes, metadata."""

    image_id: str
    image: np.ndarray  # HxW: uint16 (bit_depth 16 or 12) or uint8 (bit_depth 8)
    annotations: list[Annotation] = field(default_factory=list)
    lookalikes: list[dict[str, Any]] = field(default_factory=list)  # {"type", "box", ...}; NOT labeled
    meta: dict[str, str] = field(default_factory=dict)  # product, line, ts


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


def _ts(cfg: SynthConfig, index: int) -> str:
    t0 = _dt.datetime.fromisoformat(cfg.start_time)
    return (t0 + _dt.timedelta(seconds=cfg.cadence_s * index)).isoformat()


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
        for _ in range(draw_count(rng, ws.count)):
            sx, amp = rng.uniform(*ws.half_width), rng.uniform(*ws.amplitude) * (1 if rng.random() < 0.5 else -1)
            cx = rng.uniform(m + 2 * sx, W - m - 2 * sx)
            wob_specs.append((int(rng.integers(n_itf)), cx, sx, amp))
    scene = Scene(cfg, product, rng, wob_specs)
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
        for _ in range(draw_count(rng, spec.count)):
            ext = extent(spec)
            for _try in range(cfg.max_placement_tries):
                cx = rng.uniform(m + ext, W - m - ext)
                top = scene.surface(cx) + (0.0 if spec.from_surface else ext + m)
                if top >= H - m - ext:
                    continue
                cy = rng.uniform(top, H - m - ext)
                out = RENDERERS[spec.shape](scene, spec, rng, cx, cy)
                if out is None:
                    continue
                patch, geo = out
                box = patch.box()
                if box is None or overlaps(box, taken, m):
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
        for _ in range(draw_count(rng, ds_.count)):
            for _try in range(cfg.max_placement_tries):
                r = rng.uniform(*ds_.radius)
                cx, cy = rng.uniform(m + 2, W - m - 2), rng.uniform(m + 2, H - m - 2)
                g = scene.grid(cx - r - 1, cy - r - 1, cx + r + 1, cy + r + 1)
                if g is None:
                    continue
                xx, yy, x0, y0 = g
                patch = Patch(coverage(np.hypot(xx - cx, yy - cy) - r), y0, x0)
                box = patch.box(0.25)
                if box is None or overlaps(box, taken, m):
                    continue
                bright = rng.random() < ds_.bright_share
                patch.add_to(sharp if ds_.sharp else soft, rng.uniform(*ds_.contrast) * sigma * (1 if bright else -1))
                taken.append(box)
                lookalikes.append({"type": "dust", "box": [float(v) for v in box],
                                   "polarity": "bright" if bright else "dark"})
                break

    sc_ = cfg.lookalikes.scratch
    if rng.random() < sc_.frequency:
        for _ in range(draw_count(rng, sc_.count)):
            L, w = rng.uniform(*sc_.length), rng.uniform(*sc_.width)
            th = rng.uniform(0, math.pi)
            cx, cy = rng.uniform(0.25 * W, 0.75 * W), rng.uniform(0.25 * H, 0.75 * H)
            a = (cx - L / 2 * math.cos(th), cy - L / 2 * math.sin(th))
            b = (cx + L / 2 * math.cos(th), cy + L / 2 * math.sin(th))
            patch = polyline_patch(scene, [a, b], w)
            box = None if patch is None else patch.box(0.25)
            if box is None:
                continue
            bright = rng.random() < sc_.bright_share
            patch.add_to(soft, rng.uniform(*sc_.contrast) * sigma * (1 if bright else -1))
            lookalikes.append({"type": "scratch", "box": [float(v) for v in box],
                               "polarity": "bright" if bright else "dark"})

    add_artifacts(soft, cfg.artifacts, rng, sigma)
    img = gaussian_blur(soft, cfg.artifacts.blur_sigma_px) + sharp
    img *= drift_gain(cfg.drift, rng, index, H, W)

    noise = rng.standard_normal((H, W)).astype(np.float32)
    if cfg.noise.correlation_px > 0:
        noise = gaussian_blur(noise, cfg.noise.correlation_px)
        noise /= max(float(noise.std()), 1e-12)
    img = img + sigma * noise

    if cfg.invert:
        img = 1.0 - img
    meta = {"product": product.name, "line": line, "ts": _ts(cfg, index)}
    if cfg.flip != "none":  # drawn last, so the flip never changes what the slice holds
        flip_v, flip_h = (cfg.flip == "vertical", cfg.flip == "horizontal") if cfg.flip != "random" \
            else tuple(bool(v) for v in rng.random(2) < 0.5)
        img, annotations, lookalikes = _flipped(img, annotations, lookalikes, flip_v, flip_h)
        meta["flip"] = {(False, False): "none", (True, False): "vertical", (False, True): "horizontal",
                        (True, True): "both"}[(flip_v, flip_h)]
    return SynthSlice(image_id=f"{cfg.id_prefix}-{index:06d}", image=quantize(img, cfg.bit_depth),
                      annotations=annotations, lookalikes=lookalikes, meta=meta)


def quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """Unit intensities -> stored counts: 16 -> uint16 0..65535, 12 -> uint16 0..4095, 8 -> uint8 0..255."""
    full = (1 << int(bit_depth)) - 1
    dtype = np.uint8 if bit_depth == 8 else np.uint16
    return np.clip(np.rint(img * float(full)), 0, full).astype(dtype)


def _flip_box(box: Any, H: int, W: int, flip_v: bool, flip_h: bool) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    if flip_h:
        x1, x2 = W - x2, W - x1
    if flip_v:
        y1, y2 = H - y2, H - y1
    return (x1, y1, x2, y2)


def _flipped(img: np.ndarray, annotations: list[Annotation], lookalikes: list[dict[str, Any]], flip_v: bool,
             flip_h: bool) -> tuple[np.ndarray, list[Annotation], list[dict[str, Any]]]:
    """The slice mirrored top-bottom and/or left-right, with its boxes mirrored alike."""
    H, W = img.shape
    out = img[::-1] if flip_v else img
    out = np.ascontiguousarray(out[:, ::-1] if flip_h else out)
    anns = [Annotation(box=_flip_box(a.box, H, W, flip_v, flip_h), category=a.category, attributes=a.attributes)
            for a in annotations]
    looks = [{**lk, "box": list(_flip_box(lk["box"], H, W, flip_v, flip_h))} for lk in lookalikes]
    return out, anns, looks


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


def write_png8(path: str | Path, image: np.ndarray) -> None:
    """Write a 2-D uint8 array as an 8-bit grayscale PNG (byte-identical for identical input)."""
    from PIL import Image

    if image.dtype != np.uint8 or image.ndim != 2:
        raise ValueError(f"{path}: write_png8 needs a 2-D uint8 array, got {image.dtype} {image.shape}")
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", compress_level=6)


def _make_one(args: tuple[SynthConfig, int, int, str]) -> tuple[str, list[Annotation], list[dict], dict[str, str]]:
    cfg, seed, index, img_dir = args
    s = generate_slice(cfg, slice_seed(seed, index), index)
    (write_png8 if s.image.dtype == np.uint8 else write_png16)(Path(img_dir) / f"{s.image_id}.png", s.image)
    return s.image_id, s.annotations, s.lookalikes, s.meta


def generate_dataset(out_dir: str | Path, n: int, seed: int, cfg: SynthConfig | None = None, *,
                     workers: int = 1, progress: bool = True) -> DetectionDataset:
    """Write ``n`` slices to ``out_dir/images/*.png`` (see ``bit_depth``) plus COCO ``out_dir/annotations.json``.

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
    # "generator" keeps the old module name: generated data sets stay byte-identical across the move
    info = {"description": "GSAL Edge synthetic thin-film CT", "generator": "gsal_edge.data.synthetic_ct",
            "seed": int(seed), "n": int(n), "config": cfg.model_dump(mode="json")}
    write_coco(ds, out, copy_images=False, info=info)
    return ds
