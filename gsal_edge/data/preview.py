"""Contact sheets: a grid of slices with their boxes, so a person can look at a data set.

Labeled boxes are drawn in one color per class (legend at the bottom); benign look-alikes, when
the data set records them, in a dashed neutral gray with their type. Each slice is shown with
its own window over the material (``display_window``), the way an operator would window a CT slice,
after the data set's normalization (``window``: the same declaration as the benchmark's ``data.window``,
through ``preprocessing.to_unit_float``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.data.image_io import load_image
from gsal_edge.data.preprocessing import WindowSpec, resolve_window, to_unit_float

LOOKALIKE_COLOR = "#b0b0b0"


def class_colors(classes: list[str]) -> dict[str, tuple[float, float, float, float]]:
    """A stable, distinct color per class (matplotlib tab10, then tab20)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    return {c: cmap(i % cmap.N) for i, c in enumerate(classes)}


def display_window(img: np.ndarray, floor: float = 0.25) -> tuple[float, float]:
    """A (lo, hi) display window over the material: the 0.5-99.5 percentiles of the pixels above
    ``floor`` of the way from the 1st to the 99th percentile (so air does not eat the gray range).
    ``floor`` 0 takes every pixel: right for inverted stacks, where the air is the bright end."""
    if floor <= 0:
        lo, hi = np.percentile(img, [0.5, 99.5])
        return float(lo), float(max(hi, lo + 1e-6))
    p1, p99 = np.percentile(img, [1, 99])
    vals = img[img > p1 + floor * (p99 - p1)]
    if vals.size < 0.05 * img.size:
        vals = img
    lo, hi = np.percentile(vals, [0.5, 99.5])
    return float(lo), float(max(hi, lo + 1e-6))


def pick_images(ds: DetectionDataset, n: int, seed: int, *, stratify: bool = True) -> list[int]:
    """Indices of ``n`` images drawn with ``seed``; with ``stratify``, first one image per class
    (rarest class first) so rare classes show up, then a random fill."""
    rng = np.random.default_rng(seed)
    n = min(n, len(ds.images))
    picked: list[int] = []
    if stratify:
        holders = {c: [i for i, e in enumerate(ds.images) if any(a.category == c for a in e.annotations)]
                   for c in ds.classes}
        for c in sorted(ds.classes, key=lambda c: (len(holders[c]), c)):
            free = [i for i in holders[c] if i not in picked]
            if free and len(picked) < n:
                picked.append(int(rng.choice(free)))
    rest = np.setdiff1d(np.arange(len(ds.images)), np.array(picked, dtype=int))
    picked += [int(i) for i in rng.choice(rest, size=n - len(picked), replace=False)]
    return picked


def contact_sheet(ds: DetectionDataset, out: str | Path, *, n: int = 16, seed: int = 0, cols: int | None = None,
                  stratify: bool = True, show_lookalikes: bool = True, pad_px: float = 2.0,
                  window: WindowSpec = None) -> list[str]:
    """Draw ``n`` images of ``ds`` into the PNG ``out``; returns the image ids shown, in order.

    ``window``: the data set's normalization (None, ``"bits:N"``, ``(lo, hi)``, or ``"auto"`` from the
    images shown). Each slice is then display-windowed on top of it: over its material (air left out, for
    the packaged data's dark air) without a window, over all its pixels with one (polarity-agnostic, so
    inverted and flipped stacks show too).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    idx = pick_images(ds, n, seed, stratify=stratify)
    if not idx:
        raise ValueError(f"{ds.root}: no images to show")
    cols = cols or int(np.ceil(np.sqrt(len(idx))))
    rows = int(np.ceil(len(idx) / cols))
    colors = class_colors(ds.classes)
    raw = {i: load_image(ds.image_path(ds.images[i])) for i in idx}
    win = resolve_window(window, raw.values())
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.0, rows * 3.15 + 0.6), squeeze=False)
    any_look = False
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, idx):
        e = ds.images[i]
        img = to_unit_float(raw[i], win)
        lo, hi = display_window(img, 0.25 if window is None else 0.0)
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
        for a in e.annotations:
            x1, y1, x2, y2 = a.box
            ax.add_patch(Rectangle((x1 - pad_px - 0.5, y1 - pad_px - 0.5), x2 - x1 + 2 * pad_px,
                                   y2 - y1 + 2 * pad_px, fill=False, lw=1.0, ec=colors[a.category]))
        if show_lookalikes:
            for lk in e.lookalikes:
                x1, y1, x2, y2 = lk["box"]
                any_look = True
                ax.add_patch(Rectangle((x1 - pad_px - 0.5, y1 - pad_px - 0.5), x2 - x1 + 2 * pad_px,
                                       y2 - y1 + 2 * pad_px, fill=False, lw=0.8, ec=LOOKALIKE_COLOR, ls="--"))
                ax.text(x1, y1 - pad_px - 1, str(lk.get("type", "")), color=LOOKALIKE_COLOR, fontsize=5, va="bottom")
        label = e.image_id + (f"  {e.meta['product']}" if "product" in e.meta else "")
        ax.set_title(label, fontsize=7)
    handles = [Patch(fill=False, ec=colors[c], label=c) for c in ds.classes]
    if any_look:
        handles.append(Line2D([], [], color=LOOKALIKE_COLOR, ls="--", label="look-alike (not labeled)"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.5 / (rows * 3.15 + 0.6), 1, 1))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return [ds.images[i].image_id for i in idx]
