"""Time the diffusion prior's training on a shortened config, to estimate what `prior_source: pool` costs.

    PYTHONPATH=. python bench/prior_cost.py --out /tmp/prior_cost --n 200 --vae-steps 40 --unet-steps 80

Generates ``--n`` default-generator slices (seed ``--seed``, not a benchmark preset's), trains the packaged
``diffusion`` config of configs/models_default.yaml with its step counts shortened, on 1 torch thread, and
prints wall and CPU seconds per stage plus the per-step / per-slice CPU costs to extrapolate from.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=424242)
    ap.add_argument("--vae-steps", type=int, default=40)
    ap.add_argument("--unet-steps", type=int, default=80)
    a = ap.parse_args()
    import torch

    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset
    from gsal_edge.models.defaults import load_models_config
    from gsal_edge.models.diffusion_training import train_diffusion

    torch.set_num_threads(1)
    data = a.out / "data"
    if not (data / "annotations.json").is_file():
        generate_dataset(data, a.n, a.seed, SynthConfig(), progress=False)
    cfg = load_models_config().diffusion
    full = {"vae": cfg.vae.steps, "unet": cfg.unet.steps}
    cfg = cfg.model_copy(update={"vae": cfg.vae.model_copy(update={"steps": a.vae_steps}),
                                 "unet": cfg.unet.model_copy(update={"steps": a.unet_steps}), "threads": 1})
    t0 = time.perf_counter()
    s = train_diffusion(data, a.out / "prior", cfg, progress=False, restart=True)
    cpu = s["train"]["cpu_seconds"]
    print(json.dumps({"wall": round(time.perf_counter() - t0, 1), "wall_stages": s["train"]["wall_seconds"],
                      "cpu_stages": cpu, "images": a.n, "full_steps": full,
                      "cpu_per_vae_step": cpu["vae"] / a.vae_steps, "cpu_per_unet_step": cpu["unet"] / a.unet_steps,
                      "cpu_per_slice_encoded": cpu["encode"] / a.n}, indent=1))


if __name__ == "__main__":
    main()
