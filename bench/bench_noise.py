"""Probe: does the diffusion difficulty rank slices, or noise draws? (issue 16, item 0)

For one pool of generated slices and one diffusion prior, computes D_img = alpha z(E_rec) + beta z(V_den)
over the pool and D(p) over ground-truth box crops (the regions a proposal would cut, `crop` mode),
twice, with two noise seeds (base_seed 0 and 1), for each variant of the estimator (``--variants``):

    per_image:K=4        eps_k seeded by (seed, image id, k)  (the paper-literal reading)
    common:K=8           common random numbers: one set of K draws for every slice and crop
    common+anti:K=8      common random numbers in antithetic pairs
    common:K=4:ddim=2    2 deterministic DDIM steps per trajectory instead of the one-step x0

It prints, per variant, the Spearman rank correlation of D_img and of D(p) between the two seeds (target
>= 0.95), the within-slice spread of D_img (std over the two seeds, averaged over slices) over its
between-slice spread (std over slices), and the seconds per slice of the whole-slice term and per crop
(the image term is cached per slice in the benchmark, so its K can be larger than the crops'; GSALConfig
``K_image``). ``--lottery`` adds the check of E_rec of the same pixels under 5 slice ids.

    .venv/bin/python bench/bench_noise.py --prior artifacts/models/prior --preset dev-a --n 120
Data: a `dev` preset's generator config, seed and intensity window (never the quick preset's data), or
with no --preset the synthetic default at --data-seed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition import diffusion_difficulty as dd
from gsal_edge.jsonio import write_json_atomic
from gsal_edge.provenance import provenance

MODES = {"per_image": ("per_image", False), "common": ("common", False), "common+anti": ("common", True)}
DEFAULT_VARIANTS = ("common:K=4,common+anti:K=4,common:K=8,common+anti:K=8,common:K=16,common+anti:K=16,"
                    "common:K=32,common:K=4:ddim=2")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation (continuous scores: no ties to average)."""
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def z(x: np.ndarray) -> np.ndarray:
    """Spec §10 z-score (population std + 1e-8)."""
    return (x - x.mean()) / (x.std() + 1e-8)


def parse_variant(text: str) -> dict[str, Any]:
    """``mode:K=8[:ddim=S]`` -> {noise, antithetic, K, ddim_steps, name}."""
    parts = text.strip().split(":")
    if parts[0] not in MODES:
        raise SystemExit(f"variant {text!r}: mode must be one of {list(MODES)}")
    out: dict[str, Any] = {"name": text.strip(), "mode": parts[0], "K": 4, "ddim_steps": 0}
    for p in parts[1:]:
        key, _, val = p.partition("=")
        if key not in ("K", "ddim"):
            raise SystemExit(f"variant {text!r}: unknown option {key!r} (K=, ddim=)")
        out["K" if key == "K" else "ddim_steps"] = int(val)
    return out


def scores(prior: Any, z0: np.ndarray, ids: list[str], v: dict[str, Any], t_index: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, float]:
    """(E_rec, V_den, seconds) of the latents ``z0`` under variant ``v`` and noise seed ``seed``."""
    noise, anti = MODES[v["mode"]]
    t0 = time.perf_counter()
    zhat = dd.reconstruct(z0, ids, prior.predict_eps, prior.alphas_cumprod, v["K"], t_index, seed,
                          ddim_steps=v["ddim_steps"], max_batch=64, noise=noise, antithetic=anti)
    E, V, _, _ = dd.difficulty(z0, zhat)
    return E, V, time.perf_counter() - t0


def load_prior(path: Path, models_config: Path | None) -> Any:
    """A finished prior folder, or (no unet/ yet) the last UNet-stage checkpoint of a run still training, read
    with the diffusion section of ``models_config`` (that run's models_default.yaml)."""
    from gsal_edge.models.diffusion_prior import DiffusionPrior

    if (path / "unet").is_dir():
        return DiffusionPrior.from_pretrained(path)
    from gsal_edge.models.defaults import load_models_config
    from gsal_edge.models.diffusion_training import prior_from_checkpoint

    return prior_from_checkpoint(path, load_models_config(models_config).diffusion)


def load_pool(preset: str | None, n: int, data_seed: int) -> tuple[list[Any], np.ndarray, tuple | None]:
    """Slices, their [0,1] images and the window: a preset's generator config, seed and window (resolved
    from these slices, as the benchmark resolves 'auto' from its pool), or the default config at ``data_seed``."""
    from gsal_edge.data.preprocessing import resolve_window, to_unit_float
    from gsal_edge.data.synthetic.config import SynthConfig, load_config
    from gsal_edge.data.synthetic.generator import iter_slices

    if preset:
        from gsal_edge.benchmark.config import load_preset

        bc = load_preset(preset)
        syn = bc.data.synthetic
        cfg, seed, win_spec = SynthConfig.model_validate(syn.synth), syn.seed, bc.data.window
    else:
        cfg, seed, win_spec = load_config(), data_seed, None
    slices = list(iter_slices(cfg, n, seed))
    win = resolve_window(win_spec, [s.image for s in slices]) if win_spec is not None else None
    return slices, np.stack([to_unit_float(s.image, window=win) for s in slices]), win


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prior", type=Path, default=Path("artifacts/models/prior"), help="diffusers-style prior folder")
    ap.add_argument("--models-config", type=Path, default=None,
                    help="models_default.yaml of a run still training (--prior = its folder, read from its checkpoint)")
    ap.add_argument("--preset", default=None, help="take data from this bench preset (dev-a, dev-b)")
    ap.add_argument("--n", type=int, default=120, help="slices in the pool")
    ap.add_argument("--data-seed", type=int, default=101, help="generator seed without --preset (a dev seed)")
    ap.add_argument("--t-frac", type=float, default=0.1)
    ap.add_argument("--margin", type=float, default=1.5, help="context margin of the crops")
    ap.add_argument("--variants", default=DEFAULT_VARIANTS, help="comma-separated mode:K=k[:ddim=s]")
    ap.add_argument("--no-crops", action="store_true", help="skip D(p) (image-level term only)")
    ap.add_argument("--lottery", action="store_true", help="add the same-pixels-under-5-ids check")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("artifacts/bench/noise.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    prior = load_prior(args.prior, args.models_config)
    print(f"prior: {prior.source}")
    slices, imgs, win = load_pool(args.preset, args.n, args.data_seed)
    ids = [s.image_id for s in slices]
    boxes = [(i, a.box) for i, s in enumerate(slices) for a in s.annotations]
    crops = np.concatenate([dd.crop_regions(imgs[i], [b], args.margin, prior.crop_resolution) for i, b in boxes])
    crop_ids = [f"{ids[i]}#p{j}" for j, (i, _) in enumerate(boxes)]
    t_index = dd.timestep_index(args.t_frac, prior.num_train_timesteps)
    from gsal_edge.data.preprocessing import resize_image

    R = prior.resolution
    z_img = prior.encode(np.stack([resize_image(x, (R, R)) for x in imgs]))
    z_crop = prior.encode(crops, size=prior.crop_resolution)
    print(f"pool: {len(ids)} slices {imgs.shape[1]}x{imgs.shape[2]} (window {win}), {len(crop_ids)} ground-truth "
          f"crops; latent {z_img.shape[1:]}, crop latent {z_crop.shape[1:]}; t = {t_index}")

    rows: list[dict[str, Any]] = []
    for v in (parse_variant(s) for s in args.variants.split(",")):
        D_img, D_p, EV, sec_img, sec_crop = [], [], [], 0.0, 0.0
        for seed in (0, 1):
            E, V, s_i = scores(prior, z_img, ids, v, t_index, seed)
            D_img.append(0.5 * z(E) + 0.5 * z(V))
            EV.append((E, V))
            sec_img += s_i
            if not args.no_crops:
                Ep, Vp, s_c = scores(prior, z_crop, crop_ids, v, t_index, seed)
                D_p.append(0.5 * z(Ep) + 0.5 * z(Vp))
                sec_crop += s_c
        pair = np.stack(D_img)
        within = float(pair.std(axis=0).mean())  # spread of one slice's D_img over the two seeds
        between = float(pair.mean(axis=0).std())  # spread of D_img over slices
        row = {**v, "rho_D_img": spearman(*D_img), "rho_E_img": spearman(EV[0][0], EV[1][0]),
               "rho_V_img": spearman(EV[0][1], EV[1][1]), "rho_D_p": spearman(*D_p) if D_p else None,
               "within_over_between_D_img": within / max(between, 1e-12),
               "ms_per_slice_image_term": 1000 * sec_img / (2 * len(ids)),
               "ms_per_crop": 1000 * sec_crop / (2 * len(crop_ids)) if D_p else None}
        rows.append(row)
        rho_p = f"{row['rho_D_p']:.3f}" if D_p else "-"
        ms_c = f"{row['ms_per_crop']:.1f}" if D_p else "-"
        print(f"{v['name']:22s} Spearman D_img {row['rho_D_img']:.3f} (E {row['rho_E_img']:.3f}, V "
              f"{row['rho_V_img']:.3f})  D(p) {rho_p}  within/between D_img "
              f"{row['within_over_between_D_img']:.3f}  image term {row['ms_per_slice_image_term']:.1f} ms/slice, "
              f"crop {ms_c} ms/crop", flush=True)

    lottery = {}
    if args.lottery:  # the same pixels under 5 ids vs 20 different slices (K = 4, seed 0)
        same = np.repeat(z_img[:1], 5, axis=0)
        five = [f"{ids[0]}-as-{j}" for j in range(5)]
        for name in MODES:
            v = {"mode": name, "K": 4, "ddim_steps": 0}
            E_same, _, _ = scores(prior, same, five, v, t_index, 0)
            E_diff, _, _ = scores(prior, z_img[:20], ids[:20], v, t_index, 0)
            lottery[name] = {"same_pixels_range": [float(E_same.min()), float(E_same.max())],
                             "twenty_slices_range": [float(E_diff.min()), float(E_diff.max())],
                             "within_over_between": float(np.ptp(E_same) / max(np.ptp(E_diff), 1e-12))}
            print(f"{name:12s} E_rec same pixels under 5 ids: {E_same.min():.5f}-{E_same.max():.5f}; "
                  f"20 slices: {E_diff.min():.5f}-{E_diff.max():.5f}; within/between = "
                  f"{lottery[name]['within_over_between']:.3f}")
    write_json_atomic(args.out, {"rows": rows, "lottery": lottery, "args": {k: str(x) for k, x in vars(args).items()},
                                 "provenance": provenance()})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
