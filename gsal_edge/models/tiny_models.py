"""Tiny random-init models written through the real builders, in the ``--models DIR`` layout.

For tests and the runtime benchmark where no trained checkpoints exist: a ``tiny``-preset Faster
R-CNN checkpoint (``gsal_edge.models.detector``), an SD-layout prior folder (diffusers VAE + UNet2DModel +
DDPM scheduler), and an open_clip ViT saved as the embedded-default CLIP folder. Sizes are
parameters, so the benchmark can make them less tiny.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TinySizes:
    """Knobs of the generated models (defaults: seconds to export, kilobytes to megabytes on disk)."""

    detector_preset: str = "tiny"
    prior_resolution: int = 32
    crop_resolution: int = 16
    vae_channels: tuple[int, ...] = (8, 16)
    unet_channels: tuple[int, ...] = (16, 32)
    timesteps: int = 100
    clip_image_size: int = 32
    clip_width: int = 32
    clip_layers: int = 1
    clip_embed_dim: int = 16


@dataclass(frozen=True)
class TinyModelPaths:
    """Where :func:`write_tiny_models` put each model."""

    detector: Path
    prior: Path
    clip: Path
    graph: str


def write_tiny_models(root: str | Path, graph: str = "thin_film_ct", seed: int = 0,
                      sizes: TinySizes = TinySizes()) -> TinyModelPaths:
    """Write detector.pt, prior/, clip/ under ``root`` and return their paths."""
    import torch

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    from gsal_edge.acquisition.concept_graph import load_graph

    g = load_graph(graph)
    _write_detector(root / "detector.pt", list(g.defects), sizes, seed)
    torch.manual_seed(seed + 1)
    _write_prior(root / "prior", sizes)
    torch.manual_seed(seed + 2)
    _write_clip(root / "clip", sizes)
    return TinyModelPaths(root / "detector.pt", root / "prior", root / "clip", graph)


def _write_detector(path: Path, classes: list[str], sizes: TinySizes, seed: int) -> None:
    from gsal_edge.models.detector import build_detector, save_checkpoint
    from gsal_edge.models.detector_config import resolve_config

    cfg = resolve_config(sizes.detector_preset)
    model = build_detector(cfg, len(classes), seed=seed)
    save_checkpoint(path, model, cfg, classes, preprocessing={"window": None})


def _write_prior(folder: Path, s: TinySizes) -> None:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DModel

    n = len(s.vae_channels)
    AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=s.vae_channels, layers_per_block=1,
        latent_channels=4, norm_num_groups=min(s.vae_channels), sample_size=s.prior_resolution, scaling_factor=0.5,
    ).save_pretrained(folder / "vae")
    m = len(s.unet_channels)
    UNet2DModel(
        sample_size=s.prior_resolution // 2 ** (n - 1), in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=s.unet_channels, down_block_types=("DownBlock2D",) * m,
        up_block_types=("UpBlock2D",) * m, norm_num_groups=min(8, min(s.unet_channels)),
    ).save_pretrained(folder / "unet")
    DDPMScheduler(num_train_timesteps=s.timesteps).save_pretrained(folder / "scheduler")
    (folder / "gsal_prior.json").write_text(
        json.dumps({"resolution": s.prior_resolution, "crop_resolution": s.crop_resolution})
    )


def _write_clip(folder: Path, s: TinySizes) -> None:
    import open_clip
    from safetensors.torch import save_file

    name = f"gsal-tiny-vit-{s.clip_image_size}-{s.clip_width}-{s.clip_layers}-{s.clip_embed_dim}"
    cfg = {
        "embed_dim": s.clip_embed_dim,
        "vision_cfg": {"image_size": s.clip_image_size, "layers": s.clip_layers, "width": s.clip_width,
                       "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder / f"{name}.json")
    model = open_clip.create_model(name, pretrained=None)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "gsal_clip.json").write_text(json.dumps({
        "model_name": name, "config_file": f"{name}.json", "checkpoint": "open_clip_model.safetensors",
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25],
    }))
