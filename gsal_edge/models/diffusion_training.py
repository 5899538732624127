"""Trains the embedded default diffusion prior (spec §4) on UNLABELED slices.

Two stages, both with diffusers models, on a folder of images (labels are never read, so using the
unlabeled pool is fair in active learning):

1. a small ``AutoencoderKL`` (4x downsampling, 4 latent channels) on random patches, L1 + KL;
   then the posterior means of all slices are encoded once and their std fixes the scaling factor
   (z0 = mean * scaling_factor has unit std, as SD's 0.18215 does for its VAE);
2. a small unconditional ``UNet2DModel`` with diffusers' ``DDPMScheduler`` (eps-prediction, MSE)
   on those latents, on random latent patches and a timestep range around the scoring t [ours].

The result is an SD-like folder (``vae/``, ``unet/``, ``scheduler/`` via ``save_pretrained`` and
``gsal_prior.json``) that :meth:`gsal_edge.models.diffusion_prior.DiffusionPrior.from_pretrained` reads.
Training is resumable: a checkpoint (models, optimizers, step) is written every
``checkpoint_every`` steps, and every step draws its batch from ``default_rng([seed, stage, step])``,
so a resumed run gives the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from gsal_edge.config_files import StrictModel
from gsal_edge.models.diffusion_prior import PRIOR_META
from gsal_edge.provenance import git_state

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
STATE_FILE = "train_state.pt"
LATENT_CACHE = "latents.npy"
CROP_LATENT_CACHE = "crop_latents.npy"

__all__ = [
    "DiffusionTrainConfig",
    "UnetTrainConfig",
    "VaeTrainConfig",
    "build_scheduler",
    "build_unet",
    "build_vae",
    "data_fingerprint",
    "list_images",
    "load_unlabeled",
    "lr_at",
    "train_diffusion",
]


class VaeTrainConfig(StrictModel):
    """The small AutoencoderKL and its training schedule."""

    block_out_channels: tuple[int, ...] = (16, 32, 64)  # n blocks -> 2^(n-1) downsampling
    layers_per_block: int = Field(1, ge=1)
    latent_channels: int = Field(4, ge=1)
    norm_num_groups: int = Field(8, ge=1)
    mid_block_attention: bool = False
    steps: int = Field(400, ge=0)
    batch_size: int = Field(16, ge=1)
    patch: int = Field(32, ge=8, description="side of the random training patches (px at working resolution)")
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(20, ge=0)
    kl_weight: float = Field(1e-6, ge=0)

    @model_validator(mode="after")
    def _check(self) -> VaeTrainConfig:
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"vae.block_out_channels {c} is not a multiple of norm_num_groups {self.norm_num_groups}")
        if not 2 <= len(self.block_out_channels) <= 4:
            raise ValueError("vae.block_out_channels: 2-4 blocks (2x-8x downsampling)")
        return self

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)


class UnetTrainConfig(StrictModel):
    """The small unconditional UNet2DModel, its DDPM schedule and training schedule."""

    block_out_channels: tuple[int, ...] = (32, 64, 128)
    attention_lowest: bool = True  # self-attention in the lowest-resolution block only
    attention_head_dim: int = Field(32, ge=1)
    layers_per_block: int = Field(1, ge=1)
    norm_num_groups: int = Field(16, ge=1)
    steps: int = Field(1000, ge=0)
    batch_size: int = Field(32, ge=1)
    latent_patch: int | None = Field(16, ge=4, description="random latent crops (None = whole latents)")
    border_share: float = Field(0.3, ge=0, le=1, description="[ours] share of patches snapped to an image edge "
                                "(per axis), so the UNet learns the latents at slice borders")
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(20, ge=0)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    t_range: tuple[float, float] = Field((0.0, 0.3), description="[ours] training timesteps t/T in this range")

    @model_validator(mode="after")
    def _check(self) -> UnetTrainConfig:
        lo, hi = self.t_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"unet.t_range must satisfy 0 <= lo < hi <= 1, got {self.t_range}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"unet.block_out_channels {c} is not a multiple of norm_num_groups {self.norm_num_groups}")
        return self


class DiffusionTrainConfig(StrictModel):
    """Everything `train-diffusion` does; ``models_default.yaml`` section ``diffusion``."""

    seed: int = 0
    resolution: int = Field(128, ge=16, description="side the whole slice is resized to")
    crop_resolution: int = Field(64, ge=8, description="side of a proposal crop in `crop` mode")
    max_images: int = Field(2000, ge=1)
    hflip: bool = True
    crop_share: float = Field(0.3, ge=0, le=1, description="[ours] share of training samples that are magnified "
                              "region crops (so `crop` mode inputs are in distribution)")
    crops_per_image: int = Field(2, ge=0)
    crop_side_range: tuple[float, float] = Field((12.0, 128.0), description="crop side, px of the stored slice")
    checkpoint_every: int = Field(100, ge=1)
    threads: int = Field(1, ge=1)
    window: Any = Field(None, description="intensity window of the slices (data.preprocessing.parse_window: "
                        "None = the dtype's range, 'auto', 'bits:12', [lo, hi]); the prior must see what the "
                        "scorer will feed it")
    vae: VaeTrainConfig = VaeTrainConfig()
    unet: UnetTrainConfig = UnetTrainConfig()

    @model_validator(mode="after")
    def _check(self) -> DiffusionTrainConfig:
        d = self.vae.downsample
        if self.resolution % d or self.crop_resolution % d:
            raise ValueError(f"resolution {self.resolution} and crop_resolution {self.crop_resolution} "
                             f"must be multiples of the VAE downsampling {d}")
        if self.vae.patch > self.resolution:
            raise ValueError(f"vae.patch {self.vae.patch} exceeds resolution {self.resolution}")
        if self.crop_share > 0:
            if self.crops_per_image < 1:
                raise ValueError("crop_share > 0 needs crops_per_image >= 1")
            if self.vae.patch > self.crop_resolution:
                raise ValueError(f"crop_share > 0: vae.patch {self.vae.patch} exceeds crop_resolution")
            lp = self.unet.latent_patch
            if lp is None or lp > self.crop_resolution // d:
                raise ValueError(f"crop_share > 0 needs unet.latent_patch <= crop_resolution/{d} "
                                 f"= {self.crop_resolution // d}")
        lo, hi = self.crop_side_range
        if not 1 <= lo <= hi:
            raise ValueError(f"crop_side_range must satisfy 1 <= lo <= hi, got {self.crop_side_range}")
        return self

    def digest(self) -> str:
        """sha256 of the canonical JSON of what shapes the weights (threads, checkpointing excluded)."""
        exclude = {"threads", "checkpoint_every"} | ({"window"} if self.window is None else set())
        d = self.model_dump(mode="json", exclude=exclude)  # no window = the digest of older configs
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- data (labels never read)
def list_images(data_dir: str | Path) -> list[Path]:
    """Image files under ``data_dir`` (recursive, sorted); annotation files are ignored."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return files


def data_fingerprint(paths: list[Path], root: str | Path | None = None) -> str:
    """sha256 over (relative name, content sha256) of every file: the data part of a cache key."""
    h = hashlib.sha256()
    for p in paths:
        name = str(p.relative_to(root)) if root is not None else p.name
        h.update(name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def random_crops(image01: np.ndarray, n: int, size: int, side_range: tuple[float, float],
                 rng: np.random.Generator) -> np.ndarray:
    """``n`` random square windows (side log-uniform in ``side_range`` px) of one slice, resized to size x size."""
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions

    H, W = image01.shape
    lo, hi = side_range
    sides = np.exp(rng.uniform(np.log(lo), np.log(min(hi, H, W)), n))
    x0, y0 = rng.uniform(0, W - sides), rng.uniform(0, H - sides)
    boxes = np.stack([x0, y0, x0 + sides, y0 + sides], axis=1)
    return crop_regions(image01, boxes, margin=1.0, size=size)


def load_unlabeled(
    data_dir: str | Path, resolution: int, max_images: int, seed: int, progress: bool = False,
    crops_per_image: int = 0, crop_resolution: int = 64, crop_side_range: tuple[float, float] = (12.0, 128.0),
    window: Any = None,
) -> tuple[np.ndarray, list[Path]] | tuple[np.ndarray, list[Path], np.ndarray]:
    """Slices of ``data_dir`` as float32 [N, R, R] in [0,1] (a seeded subset of ``max_images`` at most),
    through the intensity ``window`` (a declaration, see ``data.preprocessing.parse_window``).

    With ``crops_per_image`` > 0 a third item is returned: [N*n, S, S] random magnified region crops.
    """
    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import resize_image, resolve_window, to_unit_float

    paths = list_images(data_dir)
    if len(paths) > max_images:
        keep = np.sort(np.random.default_rng([seed, 7]).choice(len(paths), max_images, replace=False))
        paths = [paths[i] for i in keep]
    out = np.empty((len(paths), resolution, resolution), np.float32)
    win = resolve_window(window, (load_image(p) for p in paths[:64])) if window is not None else None
    it = paths
    if progress:
        from tqdm import tqdm

        it = tqdm(paths, desc="load slices", unit="img")
    crop_list: list[np.ndarray] = []
    rng = np.random.default_rng([seed, 8])
    for i, p in enumerate(it):
        full = to_unit_float(load_image(p), window=win)
        out[i] = resize_image(full, (resolution, resolution))
        if crops_per_image:
            crop_list.append(random_crops(full, crops_per_image, crop_resolution, crop_side_range, rng))
    if crops_per_image:
        return out, paths, np.concatenate(crop_list)  # type: ignore[return-value]
    return out, paths


# ---------------------------------------------------------------------- models
def build_vae(cfg: VaeTrainConfig, sample_size: int) -> torch.nn.Module:
    """The small AutoencoderKL (3 image channels, ``latent_channels`` latent channels)."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, sample_size=sample_size, mid_block_add_attention=cfg.mid_block_attention,
        scaling_factor=1.0,
    )


def build_unet(cfg: UnetTrainConfig, in_channels: int, sample_size: int) -> torch.nn.Module:
    """The small unconditional UNet2DModel (eps-prediction)."""
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    down = tuple("AttnDownBlock2D" if (cfg.attention_lowest and i == n - 1) else "DownBlock2D" for i in range(n))
    up = tuple("AttnUpBlock2D" if d.startswith("Attn") else "UpBlock2D" for d in reversed(down))
    return UNet2DModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=tuple(cfg.block_out_channels), down_block_types=down, up_block_types=up,
        layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_num_groups,
        attention_head_dim=cfg.attention_head_dim,
    )


def build_scheduler(cfg: UnetTrainConfig) -> Any:
    """diffusers DDPMScheduler with the configured beta schedule (abar_t = prod (1 - beta))."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         beta_start=cfg.beta_start, beta_end=cfg.beta_end, prediction_type="epsilon")


def lr_at(step: int, total: int, base: float, warmup: int) -> float:
    """Linear warmup then cosine decay to 5% of ``base`` (a pure function of the step: resumable)."""
    if warmup and step < warmup:
        return base * (step + 1) / warmup
    frac = (step - warmup) / max(total - warmup, 1)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _to_vae_input(x01: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x01, np.float32))[:, None] * 2.0 - 1.0
    return t.expand(-1, 3, -1, -1).contiguous()


def _vae_batch(images: np.ndarray, cfg: DiffusionTrainConfig, step: int, crops: np.ndarray | None = None
               ) -> tuple[torch.Tensor, torch.Generator]:
    rng = np.random.default_rng([cfg.seed, 1, step])
    B, P = cfg.vae.batch_size, cfg.vae.patch
    use_crop = rng.random(B) < (cfg.crop_share if crops is not None else 0.0)
    pick = rng.random(B)
    posy, posx = rng.random(B), rng.random(B)
    flips = rng.random(B) < (0.5 if cfg.hflip else 0.0)
    patches = []
    for k in range(B):
        src = crops if use_crop[k] else images
        i = int(pick[k] * len(src))  # type: ignore[arg-type]
        R = src.shape[1]  # type: ignore[union-attr]
        y, x = int(posy[k] * (R - P + 1)), int(posx[k] * (R - P + 1))
        patches.append(src[i, y : y + P, x : x + P])  # type: ignore[index]
    b = np.stack(patches)
    b[flips] = b[flips, :, ::-1]
    return _to_vae_input(b), torch.Generator().manual_seed(int(rng.integers(2**62)))


def _patches(lat: np.ndarray, n: int, P: int | None, border_share: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` random latent patches (P x P, or whole latents) with a share snapped to the edges."""
    N, _c, h, w = lat.shape
    idx = rng.integers(0, N, n)
    if not P or P >= min(h, w):
        return lat[idx]
    ys, xs = rng.integers(0, h - P + 1, n), rng.integers(0, w - P + 1, n)
    snap_y, snap_x = rng.random(n) < border_share, rng.random(n) < border_share
    ys = np.where(snap_y, np.where(rng.random(n) < 0.5, 0, h - P), ys)
    xs = np.where(snap_x, np.where(rng.random(n) < 0.5, 0, w - P), xs)
    return np.stack([lat[i, :, y : y + P, x : x + P] for i, y, x in zip(idx, ys, xs)])


def _unet_batch(latents: np.ndarray, cfg: DiffusionTrainConfig, step: int, crop_latents: np.ndarray | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng([cfg.seed, 2, step])
    u = cfg.unet
    B = u.batch_size
    n_crop = int((rng.random(B) < cfg.crop_share).sum()) if crop_latents is not None else 0
    parts = [_patches(latents, B - n_crop, u.latent_patch, u.border_share, rng)]
    if n_crop:
        parts.append(_patches(crop_latents, n_crop, u.latent_patch, u.border_share, rng))  # type: ignore[arg-type]
    z0 = np.concatenate(parts)
    T = u.num_train_timesteps
    lo = int(u.t_range[0] * (T - 1))
    hi = max(round(u.t_range[1] * (T - 1)), lo + 1)
    t = rng.integers(lo, hi + 1, B)
    noise = rng.standard_normal(z0.shape, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(z0)), torch.from_numpy(noise), torch.from_numpy(t.astype(np.int64))


@torch.no_grad()
def encode_means(vae: torch.nn.Module, images: np.ndarray, hflip: bool, batch: int = 32) -> np.ndarray:
    """Unscaled posterior means of all slices (and of their mirror images when ``hflip``)."""
    vae.eval()
    srcs = [images] + ([images[:, :, ::-1]] if hflip else [])
    outs = []
    for src in srcs:
        for i in range(0, len(src), batch):
            outs.append(vae.encode(_to_vae_input(src[i : i + batch])).latent_dist.mean.numpy())
    return np.concatenate(outs).astype(np.float32)


# ---------------------------------------------------------------------- training
def _run_info() -> dict[str, Any]:
    import diffusers

    from gsal_edge import __version__

    return {"gsal_edge": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "numpy": np.__version__, "python": platform.python_version(), "git_commit": git_state()["commit"] or ""}


class _Clock:
    """Accumulates wall and process-CPU seconds of a stage into ``state`` (survives resume)."""

    def __init__(self, state: dict[str, Any], name: str) -> None:
        self.state, self.name = state, name
        self.restart()

    def restart(self) -> None:
        self.w, self.c = time.perf_counter(), time.process_time()

    def lap(self) -> None:
        for key, now, then in (("seconds", time.perf_counter(), self.w), ("cpu_seconds", time.process_time(), self.c)):
            self.state[key][self.name] = self.state[key].get(self.name, 0.0) + now - then
        self.restart()


def _loss_summary(losses: list[float], n: int = 20) -> dict[str, float]:
    """Mean training loss over the first and the last ``n`` steps (VAE: L1, UNet: eps MSE)."""
    if not losses:
        return {}
    return {"first": round(float(np.mean(losses[:n])), 5), "last": round(float(np.mean(losses[-n:])), 5)}


def _bar(total: int, initial: int, desc: str, enabled: bool, position: int = 0) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, position=position,
                leave=position == 0)


def _run_stage(name: str, desc: str, shown: str, stage_cfg: Any, opt: torch.optim.Optimizer,
               step_loss: Callable[[int], tuple[torch.Tensor, torch.Tensor]], state: dict[str, Any], budget: int,
               save_state: Callable[[], None], checkpoint_every: int, progress: bool, bar_position: int) -> int:
    """Optimizer steps of one stage from ``state["step"]`` up to ``stage_cfg.steps`` or until ``budget`` steps
    are spent (-1: no limit), with the warmup-cosine lr, a checkpoint every ``checkpoint_every`` steps and the
    stage's clock. ``step_loss(step)`` returns (loss to minimize, value to log). Returns the budget left."""
    bar = _bar(stage_cfg.steps, state["step"], desc, progress, bar_position)
    clock = _Clock(state, name)
    while state["step"] < stage_cfg.steps and budget != 0:
        step = state["step"]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, stage_cfg.steps, stage_cfg.lr, stage_cfg.warmup)
        loss, logged = step_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state["loss"][name].append(float(logged.item()))
        state["step"] = step + 1
        budget -= 1
        bar.update(1)
        bar.set_postfix({shown: f"{logged.item():.4f}"})
        if state["step"] % checkpoint_every == 0:
            clock.lap()
            save_state()
    bar.close()
    clock.lap()
    return budget


def train_diffusion(
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: DiffusionTrainConfig | None = None,
    progress: bool = True,
    restart: bool = False,
    stop_after: int | None = None,
    log: Callable[[str], None] | None = None,
    bar_position: int = 0,
    key_extra: str = "",
    on_mismatch: Literal["raise", "restart"] = "raise",
) -> dict[str, Any]:
    """Train VAE then UNet on the slices of ``data_dir``; write the SD-like prior folder ``out_dir``.

    Resumes from ``out_dir/checkpoints/train_state.pt`` when its config and data fingerprint match
    (a mismatch raises, or starts over with ``on_mismatch="restart"``; ``key_extra``, e.g. a code
    version, joins that key). ``restart`` ignores any checkpoint. ``stop_after`` (tests) stops after that many new steps,
    leaving the checkpoint. Returns the training summary that is also written to ``gsal_prior.json``.
    """
    cfg = cfg or DiffusionTrainConfig()
    out = Path(out_dir)
    ck_dir = out / "checkpoints"
    ck_dir.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    torch.set_num_threads(cfg.threads)

    crops = None
    if cfg.crop_share > 0:
        images, paths, crops = load_unlabeled(data_dir, cfg.resolution, cfg.max_images, cfg.seed, progress,  # type: ignore[misc]
                                              cfg.crops_per_image, cfg.crop_resolution, cfg.crop_side_range,
                                              cfg.window)
    else:
        images, paths = load_unlabeled(data_dir, cfg.resolution, cfg.max_images, cfg.seed, progress,
                                       window=cfg.window)
    fingerprint = data_fingerprint(paths, Path(data_dir))
    key = {"config": cfg.digest(), "data": fingerprint, "extra": key_extra}

    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.vae, cfg.resolution)
    d = cfg.vae.downsample
    unet = build_unet(cfg.unet, cfg.vae.latent_channels, cfg.resolution // d)
    sched = build_scheduler(cfg.unet)
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae.lr, weight_decay=0.0)
    unet_opt = torch.optim.AdamW(unet.parameters(), lr=cfg.unet.lr, weight_decay=0.0)
    state: dict[str, Any] = {"stage": "vae", "step": 0, "key": key, "seconds": {}, "cpu_seconds": {},
                             "loss": {"vae": [], "unet": []}}

    state_path = ck_dir / STATE_FILE
    saved = None
    if state_path.is_file() and not restart:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("key") != key:
            old = saved.get("key", {})
            what = next((k for k in ("config", "data", "extra") if old.get(k) != key[k]), "config")
            what = {"extra": "code version"}.get(what, what)
            if on_mismatch != "restart":
                raise RuntimeError(f"{state_path}: checkpoint was made with another {what}; "
                                   "use another --out folder or --restart")
            say(f"{state_path}: made with another {what}; starting over")
            saved = None
    if saved is not None:
        vae.load_state_dict(saved["vae"])
        unet.load_state_dict(saved["unet"])
        vae_opt.load_state_dict(saved["vae_opt"])
        unet_opt.load_state_dict(saved["unet_opt"])
        state = {k: saved[k] for k in ("stage", "step", "key", "seconds", "cpu_seconds", "loss")}
        say(f"resuming {state['stage']} at step {state['step']}")

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({**state, "vae": vae.state_dict(), "unet": unet.state_dict(),
                    "vae_opt": vae_opt.state_dict(), "unet_opt": unet_opt.state_dict()}, tmp)
        tmp.replace(state_path)

    budget = stop_after if stop_after is not None else -1
    lat_path = ck_dir / LATENT_CACHE
    if state["stage"] == "vae":
        lat_path.unlink(missing_ok=True)  # latents of an older VAE must never be reused
        (ck_dir / CROP_LATENT_CACHE).unlink(missing_ok=True)
    # ---------------- stage 1: VAE
    if state["stage"] == "vae":
        vae.train()

        def vae_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            x, gen = _vae_batch(images, cfg, step, crops)
            post = vae.encode(x).latent_dist
            rec_loss = (vae.decode(post.sample(generator=gen)).sample - x).abs().mean()
            return rec_loss + cfg.vae.kl_weight * post.kl().mean(), rec_loss

        budget = _run_stage("vae", "train VAE", "l1", cfg.vae, vae_opt, vae_step, state, budget, save_state,
                            cfg.checkpoint_every, progress, bar_position)
        if state["step"] < cfg.vae.steps:
            save_state()
            return {"stopped": True, "stage": "vae", "step": state["step"]}
        state["stage"], state["step"] = "unet", 0
        save_state()

    # ---------------- latents and scaling factor (cached)
    crop_path = ck_dir / CROP_LATENT_CACHE
    if lat_path.is_file() and (crops is None or crop_path.is_file()):
        raw = np.load(lat_path)
        raw_crops = np.load(crop_path) if crops is not None else None
    else:
        clock = _Clock(state, "encode")
        raw = encode_means(vae, images, cfg.hflip)
        raw_crops = encode_means(vae, crops, cfg.hflip) if crops is not None else None
        np.save(lat_path, raw)
        if raw_crops is not None:
            np.save(crop_path, raw_crops)
        clock.lap()
    latent_std = float(raw.std())
    scaling = 1.0 / max(latent_std, 1e-8)
    latents = (raw * scaling).astype(np.float32)
    crop_latents = (raw_crops * scaling).astype(np.float32) if raw_crops is not None else None

    # ---------------- stage 2: UNet
    if state["stage"] == "unet":
        unet.train()

        def unet_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            z0, noise, t = _unet_batch(latents, cfg, step, crop_latents)
            loss = torch.nn.functional.mse_loss(unet(sched.add_noise(z0, noise, t), t).sample, noise)
            return loss, loss

        budget = _run_stage("unet", "train UNet", "mse", cfg.unet, unet_opt, unet_step, state, budget, save_state,
                            cfg.checkpoint_every, progress, bar_position)
        if state["step"] < cfg.unet.steps:
            save_state()
            return {"stopped": True, "stage": "unet", "step": state["step"]}
        state["stage"] = "done"
        save_state()

    # ---------------- write the SD-like folder
    vae.register_to_config(scaling_factor=scaling)
    vae.eval().save_pretrained(out / "vae")
    unet.eval().save_pretrained(out / "unet")
    sched.save_pretrained(out / "scheduler")
    summary = {
        "scaling_factor": scaling,
        "resolution": cfg.resolution,
        "crop_resolution": cfg.crop_resolution,
        "latent_std": latent_std,
        "train": {
            "images": len(paths),
            "data_fingerprint": fingerprint,
            "config_digest": key["config"],
            "wall_seconds": {k: round(v, 2) for k, v in state["seconds"].items()},
            "cpu_seconds": {k: round(v, 2) for k, v in state["cpu_seconds"].items()},
            "threads": cfg.threads,
            "loss": {stage: _loss_summary(v) for stage, v in state["loss"].items()},
            "vae_params": sum(p.numel() for p in vae.parameters()),
            "unet_params": sum(p.numel() for p in unet.parameters()),
        },
    }
    (out / PRIOR_META).write_text(json.dumps(summary, indent=2))
    (out / "run.json").write_text(json.dumps({"kind": "diffusion-prior", "config": cfg.model_dump(mode="json"),
                                              "data": str(data_dir), **_run_info(), **summary}, indent=2))
    return summary


def prior_from_checkpoint(out_dir: str | Path, cfg: DiffusionTrainConfig | None = None) -> Any:
    """The :class:`~gsal_edge.models.diffusion_prior.DiffusionPrior` of a run's last checkpoint in the UNet
    stage (its UNet as trained so far), for probes while training goes on; ``cfg`` must be the run's config."""
    from gsal_edge.models.diffusion_prior import DiffusionPrior

    cfg = cfg or DiffusionTrainConfig()
    ck_dir = Path(out_dir) / "checkpoints"
    state_path, lat_path = ck_dir / STATE_FILE, ck_dir / LATENT_CACHE
    if not state_path.is_file():
        raise FileNotFoundError(f"{ck_dir}: no {STATE_FILE}")
    saved = torch.load(state_path, map_location="cpu", weights_only=False)
    if saved.get("key", {}).get("config") != cfg.digest():
        raise RuntimeError(f"{state_path}: made with another config")
    if saved.get("stage") not in ("unet", "done") or not lat_path.is_file():
        raise RuntimeError(f"{state_path}: stage {saved.get('stage')!r}, no UNet-stage checkpoint yet")
    d = cfg.vae.downsample
    vae, unet = build_vae(cfg.vae, cfg.resolution), build_unet(cfg.unet, cfg.vae.latent_channels, cfg.resolution // d)
    vae.load_state_dict(saved["vae"])
    unet.load_state_dict(saved["unet"])
    scaling = 1.0 / max(float(np.load(lat_path).std()), 1e-8)
    abar = build_scheduler(cfg.unet).alphas_cumprod.double().numpy()
    return DiffusionPrior(vae, unet, abar, "epsilon", scaling, None, cfg.resolution, cfg.crop_resolution,
                          source=f"{state_path}@{saved['stage']}:{saved['step']}")
