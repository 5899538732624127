"""Probe: does the diffusion difficulty rank slices, or noise draws? (issue 16, item 0)

For one pool of generated slices and one diffusion prior, computes D_img = alpha z(E_rec) + beta z(V_den)
over the pool and D(p) over ground-truth box crops (the regions a proposal would cut, `crop` mode),
twice, with two noise seeds (base_seed 0 and 1), for each noise mode:

* ``per_image``  eps_k seeded by (seed, image id, k)  (the paper-literal default)
* ``common``     common random numbers: one set of K draws for every slice and crop
* ``common+anti`` common random numbers in antithetic pairs
and K in {4, 8, 16} (``--K``). It prints the Spearman rank correlation of D between the two seeds (target >= 0.95)
and the "lottery" check: E_rec of the same pixels under 5 different slice ids vs the spread of E_rec over
20 different slices.

    .venv/bin/python bench/bench_noise.py --prior artifacts/models/diffusion --n 120
Data: the synthetic generator's default config with a `dev` seed (never the quick preset's seed 0).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition import diffusion_difficulty as dd
from gsal_edge.data.preprocessing import to_unit_float
from gsal_edge.data.synthetic.config import load_config
from gsal_edge.data.synthetic.generator import iter_slices
from gsal_edge.jsonio import write_json_atomic
from gsal_edge.provenance import provenance

MODES = {"per_image": ("per_image", False), "common": ("common", False), "common+anti": ("common", True)}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (continuous scores: no ties to average)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def z(x: np.ndarray) -> np.ndarray:
    """Spec §10 z-score (population std + 1e-8)."""
    return (x - x.mean()) / (x.std() + 1e-8)


def scores(prior: Any, z0: np.ndarray, ids: list[str], K: int, t_index: int, seed: int, noise: str,
           anti: bool) -> tuple[np.ndarray, np.ndarray]:
    zhat = dd.reconstruct(z0, ids, prior.predict_eps, prior.alphas_cumprod, K, t_index, seed, max_batch=64,
                          noise=noise, antithetic=anti)
    E, V, _, _ = dd.difficulty(z0, zhat)
    return E, V


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", type=Path, default=Path("artifacts/models/diffusion"), help="diffusers-style prior folder")
    ap.add_argument("--n", type=int, default=120, help="slices in the pool")
    ap.add_argument("--data-seed", type=int, default=101, help="generator seed (a dev seed)")
    ap.add_argument("--t-frac", type=float, default=0.25)
    ap.add_argument("--margin", type=float, default=1.5, help="context margin of the crops")
    ap.add_argument("--K", default="4,8,16", help="comma-separated K values")
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/noise.json"))
    args = ap.parse_args()

    import torch

    from gsal_edge.models.diffusion_prior import DiffusionPrior

    torch.set_num_threads(2)
    prior = DiffusionPrior.from_pretrained(args.prior)
    cfg = load_config()
    slices = list(iter_slices(cfg, args.n, args.data_seed))
    imgs = np.stack([to_unit_float(s.image) for s in slices])
    ids = [s.image_id for s in slices]
    boxes = [(i, a.box) for i, s in enumerate(slices) for a in s.annotations]
    crops = np.concatenate([dd.crop_regions(imgs[i], [b], args.margin, prior.crop_resolution) for i, b in boxes])
    crop_ids = [f"{ids[i]}#p{j}" for j, (i, _) in enumerate(boxes)]
    t_index = dd.timestep_index(args.t_frac, prior.num_train_timesteps)
    z_img = prior.encode(imgs)
    z_crop = prior.encode(crops, size=prior.crop_resolution)
    print(f"pool: {len(ids)} slices {imgs.shape[1]}x{imgs.shape[2]}, {len(crop_ids)} ground-truth crops; "
          f"latent {z_img.shape[1:]}, crop latent {z_crop.shape[1:]}")

    rows: list[dict[str, Any]] = []
    for K in (int(k) for k in args.K.split(",")):
        for name, (noise, anti) in MODES.items():
            t0 = time.perf_counter()
            D_img, D_p = [], []
            for seed in (0, 1):
                E, V = scores(prior, z_img, ids, K, t_index, seed, noise, anti)
                D_img.append(0.5 * z(E) + 0.5 * z(V))
                Ep, Vp = scores(prior, z_crop, crop_ids, K, t_index, seed, noise, anti)
                D_p.append(0.5 * z(Ep) + 0.5 * z(Vp))
            row = {"K": K, "noise": name, "rho_D_img": spearman(*D_img),
                   "rho_D_p": spearman(*D_p), "seconds": time.perf_counter() - t0}
            rows.append(row)
            print(f"K={K} {name:12s} Spearman(D_img seed0, seed1) {row['rho_D_img']:.3f}   "
                  f"Spearman(D(p)) {row['rho_D_p']:.3f}   ({row['seconds']:.0f} s)")

    # the lottery: the same pixels under 5 ids vs 20 different slices (K = 4, seed 0)
    same = np.repeat(z_img[:1], 5, axis=0)
    five = [f"{ids[0]}-as-{j}" for j in range(5)]
    lottery = {}
    for name, (noise, anti) in MODES.items():
        E_same, _ = scores(prior, same, five, 4, t_index, 0, noise, anti)
        E_diff, _ = scores(prior, z_img[:20], ids[:20], 4, t_index, 0, noise, anti)
        lottery[name] = {"same_pixels_range": [float(E_same.min()), float(E_same.max())],
                         "twenty_slices_range": [float(E_diff.min()), float(E_diff.max())],
                         "within_over_between": float(np.ptp(E_same) / max(np.ptp(E_diff), 1e-12))}
        print(f"{name:12s} E_rec same pixels under 5 ids: {E_same.min():.5f}-{E_same.max():.5f}; "
              f"20 slices: {E_diff.min():.5f}-{E_diff.max():.5f}; within/between = "
              f"{lottery[name]['within_over_between']:.3f}")
    write_json_atomic(args.out, {"rows": rows, "lottery": lottery, "args": vars(args),
                                 "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
