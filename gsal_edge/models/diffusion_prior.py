"""The latent diffusion prior of spec §4: VAE encoder + UNet denoiser + noise schedule abar_t.

One loader, :meth:`DiffusionPrior.from_pretrained`, reads a local folder in the Stable Diffusion
(diffusers) layout — ``vae/``, ``unet/``, ``scheduler/`` and, for a text-conditioned UNet,
``text_encoder/`` + ``tokenizer/`` — which is also how the embedded default prior is saved
(plus ``gsal_prior.json``: scaling factor, working resolution). Nothing is ever downloaded.

The engine wrappers (:class:`VaeEncoderWrapper`, :class:`UnetWrapper`) are the ``nn.Module``s that
the PyTorch backend runs and ``export/`` turns into ONNX (docs/DESIGN.md "Engines"):

- ``vae_encoder``: image f32 [B,3,H,W] in [-1,1] -> latent z0 = (posterior mean - shift) * scaling_factor
- ``unet``: latent z_t [B,c,h,w], timestep int64 [B] -> eps [B,c,h,w]; the empty-prompt embedding of a
  conditional UNet is a buffer, and v- / sample-prediction outputs are converted to eps with abar_t.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from gsal_edge.data.model_inputs import prepare_vae_input
from gsal_edge.errors import GSALError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PRIOR_META = "gsal_prior.json"
PredictionType = Literal["epsilon", "v_prediction", "sample"]

__all__ = [
    "DiffusionPrior",
    "PriorError",
    "PriorMeta",
    "UnetWrapper",
    "VaeEncoderWrapper",
]


class PriorError(GSALError, ValueError):
    """A diffusion prior folder is incomplete or malformed; the message names the file."""


class PriorMeta(BaseModel):
    """``gsal_prior.json``: what the diffusers configs do not say about how the prior is used."""

    model_config = ConfigDict(extra="allow")

    scaling_factor: float | None = Field(None, description="latent scale; None = the VAE config's")
    shift_factor: float | None = None
    resolution: int | None = Field(None, gt=0, description="side the whole slice is resized to")
    crop_resolution: int | None = Field(None, gt=0, description="side of a proposal crop (`crop` mode)")
    latent_std: float | None = Field(None, description="measured std of unscaled latents (embedded prior)")


class VaeEncoderWrapper(torch.nn.Module):
    """``vae_encoder`` engine: image [B,3,H,W] in [-1,1] -> z0 = (posterior mean - shift) * scaling_factor."""

    def __init__(self, vae: torch.nn.Module, scaling_factor: float, shift_factor: float | None = None) -> None:
        super().__init__()
        self.encoder = vae.encoder
        self.quant_conv = getattr(vae, "quant_conv", None)
        self.latent_channels = int(vae.config.latent_channels)
        self.scaling_factor = float(scaling_factor)
        self.shift_factor = float(shift_factor or 0.0)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.encoder(image)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean = h[:, : self.latent_channels]
        return (mean - self.shift_factor) * self.scaling_factor


class UnetWrapper(torch.nn.Module):
    """``unet`` engine: (z_t [B,c,h,w], t int64 [B]) -> eps [B,c,h,w].

    A conditional UNet gets the empty-prompt embedding (a buffer, computed once); learned-variance
    outputs keep their first c channels; ``v_prediction``/``sample`` outputs become eps through abar_t.
    """

    def __init__(
        self,
        unet: torch.nn.Module,
        alphas_cumprod: np.ndarray,
        prediction_type: PredictionType = "epsilon",
        encoder_hidden_states: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise PriorError(f"unsupported scheduler prediction_type {prediction_type!r}")
        self.unet = unet
        self.prediction_type = prediction_type
        self.register_buffer("abar", torch.as_tensor(np.asarray(alphas_cumprod), dtype=torch.float32))
        self.conditional = encoder_hidden_states is not None
        if encoder_hidden_states is not None:
            self.register_buffer("ehs", encoder_hidden_states.detach().float().clone())

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if self.conditional:
            ehs = self.ehs.expand(latent.shape[0], -1, -1)
            out = self.unet(latent, timestep, encoder_hidden_states=ehs, return_dict=False)[0]
        else:
            out = self.unet(latent, timestep, return_dict=False)[0]
        out = out[:, : latent.shape[1]]
        if self.prediction_type == "epsilon":
            return out
        a = self.abar[timestep].reshape(-1, 1, 1, 1)
        if self.prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1-a) x0
            return a.sqrt() * out + (1 - a).sqrt() * latent
        return (latent - a.sqrt() * out) / (1 - a).sqrt()  # sample: out = x0


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise PriorError(f"missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise PriorError(f"{path}: invalid JSON ({e})") from e


def load_alphas_cumprod(scheduler_dir: Path) -> tuple[np.ndarray, PredictionType]:
    """abar_t (float64 [T]) and the prediction type from a diffusers ``scheduler/`` folder."""
    from diffusers import DDPMScheduler

    cfg = _read_json(Path(scheduler_dir) / "scheduler_config.json")
    keep = {"num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
            "prediction_type", "rescale_betas_zero_snr"}
    try:
        sched = DDPMScheduler(**{k: v for k, v in cfg.items() if k in keep})
    except (ValueError, NotImplementedError, TypeError) as e:
        raise PriorError(f"{scheduler_dir}/scheduler_config.json: {e}") from e
    abar = sched.alphas_cumprod.double().numpy()
    if cfg.get("rescale_betas_zero_snr"):  # abar_T = 0 would divide by zero in the x0 prediction
        abar = np.maximum(abar, 1e-8)
    return abar, cfg.get("prediction_type", "epsilon")


def empty_prompt_embedding(folder: Path) -> torch.Tensor:
    """Text-encoder output for the empty prompt (SD's unconditional embedding), [1, L, d]."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tdir, kdir = Path(folder) / "text_encoder", Path(folder) / "tokenizer"
    for d in (tdir, kdir):
        if not d.is_dir():
            raise PriorError(f"{folder}: the UNet is text-conditioned but {d.name}/ is missing")
    tok = CLIPTokenizer.from_pretrained(str(kdir), local_files_only=True)
    enc = CLIPTextModel.from_pretrained(str(tdir), local_files_only=True).eval()
    ids = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return enc(input_ids=ids.input_ids).last_hidden_state.float()


class DiffusionPrior:
    """VAE + UNet + abar_t, loaded from a local diffusers/SD folder (never downloaded)."""

    def __init__(
        self,
        vae: torch.nn.Module,
        unet: torch.nn.Module,
        alphas_cumprod: np.ndarray,
        prediction_type: PredictionType = "epsilon",
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        resolution: int | None = None,
        crop_resolution: int | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        source: str = "",
    ) -> None:
        self.vae = vae.eval()
        self.unet = unet.eval()
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.prediction_type = prediction_type
        self.scaling_factor = float(scaling_factor if scaling_factor is not None else vae.config.scaling_factor)
        sf = shift_factor if shift_factor is not None else getattr(vae.config, "shift_factor", None)
        self.shift_factor = float(sf) if sf is not None else None
        self.resolution = int(resolution or getattr(vae.config, "sample_size", 512) or 512)
        self.crop_resolution = int(crop_resolution or self.resolution)
        self.encoder_hidden_states = encoder_hidden_states
        self.source = source
        self._vae_mod = VaeEncoderWrapper(self.vae, self.scaling_factor, self.shift_factor).eval()
        self._unet_mod = UnetWrapper(self.unet, self.alphas_cumprod, prediction_type, encoder_hidden_states).eval()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> DiffusionPrior:
        """Load ``folder`` in the SD layout (vae/, unet/, scheduler/[, text_encoder/, tokenizer/]).

        ``unet/config.json``'s ``_class_name`` picks UNet2DModel or UNet2DConditionModel; a
        conditional UNet gets the empty-prompt embedding from text_encoder/ + tokenizer/, once.
        ``gsal_prior.json`` (optional) overrides scaling factor and sets the working resolution.
        """
        from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel

        folder = Path(folder)
        if not folder.is_dir():
            raise PriorError(f"diffusion prior folder {folder} does not exist")
        for sub in ("vae", "unet", "scheduler"):
            if not (folder / sub).is_dir():
                raise PriorError(f"{folder}: missing {sub}/ (expected the Stable Diffusion folder layout)")
        meta = PriorMeta()
        if (folder / PRIOR_META).is_file():
            try:
                meta = PriorMeta.model_validate(_read_json(folder / PRIOR_META))
            except ValueError as e:
                raise PriorError(f"{folder / PRIOR_META}: {e}") from e
        ucfg = _read_json(folder / "unet" / "config.json")
        cls_name = ucfg.get("_class_name", "")
        unet_cls = {"UNet2DModel": UNet2DModel, "UNet2DConditionModel": UNet2DConditionModel}.get(cls_name)
        if unet_cls is None:
            raise PriorError(f"{folder}/unet/config.json: _class_name {cls_name!r} is not UNet2DModel "
                             "or UNet2DConditionModel")
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True, low_cpu_mem_usage=False)
        unet = unet_cls.from_pretrained(str(folder / "unet"), local_files_only=True, low_cpu_mem_usage=False)
        abar, ptype = load_alphas_cumprod(folder / "scheduler")
        ehs = empty_prompt_embedding(folder) if unet_cls is UNet2DConditionModel else None
        prior = cls(vae.to(device), unet.to(device), abar, ptype, meta.scaling_factor, meta.shift_factor,
                    meta.resolution, meta.crop_resolution, ehs, source=str(folder))
        return prior

    # ------------------------------------------------------------------ engines
    @property
    def num_train_timesteps(self) -> int:
        """T, the length of abar_t."""
        return int(self.alphas_cumprod.shape[0])

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def downsample(self) -> int:
        """Pixel-to-latent factor of the VAE (2 ** number of downsampling blocks)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def vae_encoder_module(self) -> VaeEncoderWrapper:
        """The ``vae_encoder`` engine module (shared by the torch backend and ONNX export)."""
        return self._vae_mod

    def unet_module(self) -> UnetWrapper:
        """The ``unet`` engine module (shared by the torch backend and ONNX export)."""
        return self._unet_mod

    @torch.no_grad()
    def encode(self, images01: np.ndarray, size: int | None = None, batch: int = 32) -> np.ndarray:
        """z0 = E(x) for grayscale slices in [0,1] [B,H,W], resized to ``size`` (default: resolution)."""
        x = prepare_vae_input(images01, size or self.resolution)
        dev = next(self.vae.parameters()).device
        outs = [self._vae_mod(torch.from_numpy(x[i : i + batch]).to(dev)).cpu().numpy()
                for i in range(0, len(x), batch)]
        return np.concatenate(outs) if outs else np.zeros((0, self.latent_channels, 0, 0), np.float32)

    @torch.no_grad()
    def predict_eps(self, z_t: np.ndarray, t: np.ndarray) -> np.ndarray:
        """eps_theta(z_t, t) as numpy (the ``predict_eps`` callable of ``diffusion_difficulty.reconstruct``)."""
        dev = next(self.unet.parameters()).device
        out = self._unet_mod(torch.from_numpy(np.ascontiguousarray(z_t, np.float32)).to(dev),
                             torch.from_numpy(np.asarray(t, np.int64)).to(dev))
        return out.float().cpu().numpy()

    def info(self) -> dict[str, Any]:
        """Sizes and settings, for reports and bundle manifests."""
        return {
            "source": self.source,
            "resolution": self.resolution,
            "crop_resolution": self.crop_resolution,
            "latent_channels": self.latent_channels,
            "downsample": self.downsample,
            "scaling_factor": self.scaling_factor,
            "num_train_timesteps": self.num_train_timesteps,
            "prediction_type": self.prediction_type,
            "conditional": self.encoder_hidden_states is not None,
            "vae_params": sum(p.numel() for p in self.vae.parameters()),
            "vae_encoder_params": sum(p.numel() for p in self._vae_mod.parameters()),
            "unet_params": sum(p.numel() for p in self.unet.parameters()),
        }
