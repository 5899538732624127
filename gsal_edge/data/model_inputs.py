"""Engine inputs from [0,1] grayscale slices: the numpy side of the ``vae_encoder`` and ``clip_image`` engines.

The scorer (gsal_edge.scoring, on any backend) and the PyTorch models (:mod:`gsal_edge.models.diffusion_prior`,
:mod:`gsal_edge.models.clip_model`) prepare their inputs here, so the station's ONNX path never
imports torch and both sides feed the engines the same arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gsal_edge.data.preprocessing import resize_image

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's image normalization (OpenAI checkpoints)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["OPENAI_MEAN", "OPENAI_STD", "prepare_clip_input", "prepare_vae_input", "resize_batch"]


def resize_batch(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of float images [B,H,W] to [B,size,size] (float32).

    Uses ``preprocessing.resize_image`` (PIL), the same resampling as the scorer's inputs.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 3:
        raise ValueError(f"expected images [B, H, W], got shape {x.shape}")
    if x.shape[1:] == (size, size):
        return x.copy()
    return np.stack([resize_image(im, (size, size)) for im in x]).astype(np.float32, copy=False) if len(x) \
        else np.zeros((0, size, size), np.float32)


def prepare_vae_input(images01: np.ndarray, size: int | None = None) -> np.ndarray:
    """Grayscale slices in [0,1] ([B,H,W]) -> VAE input f32 [B,3,S,S] in [-1,1] (channel-replicated)."""
    x = np.asarray(images01, dtype=np.float32)
    if size is not None:
        x = resize_batch(x, size)
    if x.ndim != 3:
        raise ValueError(f"expected images [B, H, W], got shape {x.shape}")
    return np.repeat(np.clip(x, 0.0, 1.0)[:, None] * 2.0 - 1.0, 3, axis=1).astype(np.float32)


def prepare_clip_input(
    images01: np.ndarray,
    size: int,
    mean: Sequence[float] = OPENAI_MEAN,
    std: Sequence[float] = OPENAI_STD,
) -> np.ndarray:
    """Grayscale crops in [0,1] ([N,H,W]) -> CLIP input f32 [N,3,size,size]: resize, replicate, (x-mean)/std."""
    x = resize_batch(np.clip(np.asarray(images01, dtype=np.float32), 0.0, 1.0), size)
    m = np.asarray(mean, np.float32)[None, :, None, None]
    s = np.asarray(std, np.float32)[None, :, None, None]
    return ((np.repeat(x[:, None], 3, axis=1) - m) / s).astype(np.float32)
