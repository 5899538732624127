"""Probe: do proposals at the image border, the surface line or a layer interface win D(p)? And which crop
shape separates defects from background best? (issue 16, items 0 and 7)

For ``--n`` slices of a `dev` preset (its generator config, seed and 'auto' window), each slice gets ``--M``
proposals, as an untrained detector would give them: its ground-truth boxes jittered (``--jitter`` of their
size) and, for the other slots, background boxes of the pool's ground-truth sizes placed uniformly anywhere
(never overlapping a defect). Every proposal is then scored as the station scores it (``crop`` mode,
common noise, K, t) under each crop variant (``--variants`` shape/border, GSALConfig ``crop_shape`` /
``crop_border``), D(p) = 0.5 z(E_rec(p)) + 0.5 z(V_den(p)) over the whole pool, and the script prints:

* per variant, the share of slices whose top-D(p) proposal touches the image border (within ``--border-px``),
  the surface line or a layer interface (within ``--line-px``), and the same shares among the top-15 slices
  (by max D(p)) - next to the base rate of those locations among all proposals and among defects;
* how often that top proposal is a defect (precision of the driving proposal);
* AUROC of E_rec(p), V_den(p) and D(p) for defect vs background proposals (``bench/eval_models.auroc``).

The surface and interface rows come from the generator's own geometry (its Scene, recorded while the slice
is drawn), mirrored like the slice when the preset flips stacks.

    .venv/bin/python bench/bench_border.py --prior artifacts/models/prior --preset dev-a --n 150
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition import diffusion_difficulty as dd
from gsal_edge.jsonio import write_json_atomic
from gsal_edge.provenance import provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_noise import load_prior
from eval_models import auroc

DEFAULT_VARIANTS = "square/shift,square/reflect,masked/shift,masked/reflect,stretch/shift"


def z(x: np.ndarray) -> np.ndarray:
    """Spec §10 z-score (population std + 1e-8)."""
    return (x - x.mean()) / (x.std() + 1e-8)


def slices_with_geometry(preset: str, n: int) -> tuple[list[Any], list[list[np.ndarray]], tuple | None]:
    """The preset's first ``n`` slices and, per slice, its interface rows (one [W] array per interface, the
    first the surface) in the stored slice's orientation; the 'auto' window resolved from these slices."""
    import gsal_edge.data.synthetic.generator as gen
    from gsal_edge.benchmark.config import load_preset
    from gsal_edge.data.preprocessing import resolve_window
    from gsal_edge.data.synthetic.config import SynthConfig

    bc = load_preset(preset)
    syn = bc.data.synthetic
    cfg = SynthConfig.model_validate(syn.synth)
    seen: list[list[np.ndarray]] = []

    class RecordingScene(gen.Scene):  # the generator's own Scene, remembering its interfaces
        def __init__(self, *a: Any, **k: Any) -> None:
            super().__init__(*a, **k)
            seen.append(self.interfaces)

    orig = gen.Scene
    gen.Scene = RecordingScene  # type: ignore[misc]
    try:
        slices, lines = [], []
        for s in gen.iter_slices(cfg, n, syn.seed):
            itf = [np.asarray(a, np.float64) for a in seen[-1]]
            flip = s.meta.get("flip", "none")
            if flip in ("vertical", "both"):
                itf = [cfg.height - a for a in itf]
            if flip in ("horizontal", "both"):
                itf = [a[::-1] for a in itf]
            slices.append(s)
            lines.append(itf)
    finally:
        gen.Scene = orig  # type: ignore[misc]
    win = resolve_window(bc.data.window, [s.image for s in slices]) if bc.data.window is not None else None
    return slices, lines, win


def _iou_any(b: np.ndarray, others: np.ndarray) -> bool:
    if not len(others):
        return False
    x1 = np.maximum(b[0], others[:, 0])
    y1 = np.maximum(b[1], others[:, 1])
    x2 = np.minimum(b[2], others[:, 2])
    y2 = np.minimum(b[3], others[:, 3])
    return bool(((x2 > x1) & (y2 > y1)).any())


def make_proposals(slices: list[Any], M: int, jitter: float, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per slice (boxes [M', 4], is_defect [M']): jittered ground truth, then uniform background boxes."""
    rng = np.random.default_rng(seed)
    gt_all = np.array([a.box for s in slices for a in s.annotations], np.float64).reshape(-1, 4)
    sizes = np.stack([gt_all[:, 2] - gt_all[:, 0], gt_all[:, 3] - gt_all[:, 1]], 1)
    out = []
    for s in slices:
        H, W = s.image.shape
        gt = np.array([a.box for a in s.annotations], np.float64).reshape(-1, 4)[:M]
        boxes, defect = [], []
        for b in gt:
            w, h = b[2] - b[0], b[3] - b[1]
            d = rng.uniform(-jitter, jitter, 4) * np.array([w, h, w, h])
            nb = np.clip(b + d, 0, [W, H, W, H])
            if nb[2] - nb[0] < 1 or nb[3] - nb[1] < 1:
                nb = b
            boxes.append(nb)
            defect.append(True)
        tries = 0
        while len(boxes) < M and tries < 200:
            tries += 1
            w, h = sizes[rng.integers(len(sizes))]
            x0, y0 = rng.uniform(0, W - w), rng.uniform(0, H - h)
            b = np.array([x0, y0, x0 + w, y0 + h])
            if _iou_any(b, gt):
                continue
            boxes.append(b)
            defect.append(False)
        out.append((np.array(boxes).reshape(-1, 4), np.array(defect, bool)))
    return out


def locations(box: np.ndarray, hw: tuple[int, int], itf: list[np.ndarray], border_px: float, line_px: float
              ) -> dict[str, bool]:
    """Does the box touch the image border, the surface line (interface 0) or an inner/substrate interface?"""
    H, W = hw
    x1, y1, x2, y2 = box
    c0, c1 = int(np.clip(np.floor(x1), 0, W - 1)), int(np.clip(np.ceil(x2), 1, W))
    def touches(a: np.ndarray) -> bool:
        seg = a[c0:c1]
        return bool(((seg >= y1 - line_px) & (seg <= y2 + line_px)).any())
    return {"border": bool(x1 < border_px or y1 < border_px or x2 > W - border_px or y2 > H - border_px),
            "surface": touches(itf[0]), "interface": any(touches(a) for a in itf[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", type=Path, default=Path("artifacts/models/prior"))
    ap.add_argument("--models-config", type=Path, default=None, help="see bench_noise.py")
    ap.add_argument("--preset", default="dev-a")
    ap.add_argument("--n", type=int, default=150)
    ap.add_argument("--M", type=int, default=8, help="proposals per slice")
    ap.add_argument("--jitter", type=float, default=0.15, help="ground-truth box jitter, share of its size")
    ap.add_argument("--K", type=int, default=4)
    ap.add_argument("--t-frac", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=1.5)
    ap.add_argument("--border-px", type=float, default=8.0)
    ap.add_argument("--line-px", type=float, default=2.0)
    ap.add_argument("--top", type=int, default=15, help="top slices by max D(p)")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated shape/border")
    ap.add_argument("--seed", type=int, default=0, help="proposal placement and noise seed")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/border.json"))
    args = ap.parse_args()

    import torch

    from gsal_edge.data.preprocessing import to_unit_float
    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior, args.models_config)
    print(f"prior: {prior.source}")
    slices, lines, win = slices_with_geometry(args.preset, args.n)
    imgs = [to_unit_float(s.image, window=win) for s in slices]
    props = make_proposals(slices, args.M, args.jitter, args.seed)
    owner = np.concatenate([np.full(len(b), i) for i, (b, _) in enumerate(props)])
    is_def = np.concatenate([d for _, d in props])
    locs = [locations(b, s.image.shape, lines[i], args.border_px, args.line_px)
            for i, ((bs, _), s) in enumerate(zip(props, slices)) for b in bs]
    loc_names = ("border", "surface", "interface")
    L = {k: np.array([lc[k] for lc in locs]) for k in loc_names}
    t_index = dd.timestep_index(args.t_frac, prior.num_train_timesteps)
    S = prior.crop_resolution
    base = {k: {"all_proposals": float(L[k].mean()), "defects": float(L[k][is_def].mean())} for k in loc_names}
    print(f"{args.preset}: {len(slices)} slices, {len(is_def)} proposals ({int(is_def.sum())} defects); window {win}")
    print("base rates  " + "  ".join(f"{k}: proposals {base[k]['all_proposals']:.2f} defects {base[k]['defects']:.2f}"
                                      for k in loc_names))
    rows = []
    for var in args.variants.split(","):
        shape, border = var.strip().split("/")
        t0 = time.perf_counter()
        crops, wts = [], []
        for i, (bs, _) in enumerate(props):
            c, w = dd.crop_regions_weighted(imgs[i], bs, args.margin, S, shape, border)
            crops.append(c)
            wts.append(w)
        crops_a, wts_a = np.concatenate(crops), np.concatenate(wts)
        ids = [f"p{j}" for j in range(len(crops_a))]
        z0 = prior.encode(crops_a, size=S)
        zhat = dd.reconstruct(z0, ids, prior.predict_eps, prior.alphas_cumprod, args.K, t_index, args.seed,
                              max_batch=64, noise="common")
        _, _, em, vm = dd.difficulty(z0, zhat)
        weighted = shape == "masked" or border == "reflect"
        E, V = dd.weighted_scores(em, vm, dd.latent_weights(wts_a, em.shape[1:]) if weighted else None)
        D = 0.5 * z(E) + 0.5 * z(V)
        top = np.array([np.flatnonzero(owner == i)[np.argmax(D[owner == i])] for i in range(len(slices))])
        best_slices = np.argsort(-D[top], kind="stable")[: args.top]
        row: dict[str, Any] = {"variant": var, "seconds": time.perf_counter() - t0,
                               "auroc": {k: auroc(x[is_def], x[~is_def]) for k, x in (("E_rec", E), ("V_den", V),
                                                                                   ("D", D))},
                               "top1_defect": float(is_def[top].mean()),
                               f"top{args.top}_defect": float(is_def[top[best_slices]].mean())}
        for k in loc_names:
            row[f"top1_{k}"] = float(L[k][top].mean())
            row[f"top{args.top}_{k}"] = float(L[k][top[best_slices]].mean())
            bg = ~is_def
            row[f"auroc_D_{k}_bg_vs_other_bg"] = auroc(D[bg & L[k]], D[bg & ~L[k]])
        rows.append(row)
        print(f"{var:15s} AUROC defect/bg E {row['auroc']['E_rec']:.3f} V {row['auroc']['V_den']:.3f} "
              f"D {row['auroc']['D']:.3f} | top-1 is defect {row['top1_defect']:.2f} (top-{args.top} "
              f"{row[f'top{args.top}_defect']:.2f}) | top-1 at border {row['top1_border']:.2f} surface "
              f"{row['top1_surface']:.2f} interface {row['top1_interface']:.2f} | top-{args.top}: border "
              f"{row[f'top{args.top}_border']:.2f} surface {row[f'top{args.top}_surface']:.2f} interface "
              f"{row[f'top{args.top}_interface']:.2f} | bg D AUROC at vs off: border "
              f"{row['auroc_D_border_bg_vs_other_bg']:.2f} surface {row['auroc_D_surface_bg_vs_other_bg']:.2f} "
              f"interface {row['auroc_D_interface_bg_vs_other_bg']:.2f} ({row['seconds']:.0f} s)", flush=True)
    write_json_atomic(args.out, {"base_rates": base, "rows": rows, "args": {k: str(v) for k, v in vars(args).items()},
                                 "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
