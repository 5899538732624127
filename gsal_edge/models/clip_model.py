"""CLIP for concept assignment (spec §2, Eq. 3): f_I (image tower) and f_T (text tower).

One loader, :meth:`ClipModel.from_checkpoint`, builds an open_clip model from a config name (built-in
or registered with ``open_clip.add_model_config``) or a model-config JSON file, and loads its
weights from a LOCAL checkpoint file via ``open_clip.create_model_and_transforms(name,
pretrained=PATH)``. The embedded default CLIP (``clip_training``) is saved in exactly this form
(``<name>.json`` + ``open_clip_model.safetensors`` + ``gsal_clip.json``), read by
:meth:`ClipModel.from_folder`. Nothing is ever downloaded.

``ClipImageWrapper`` is the ``clip_image`` engine module (docs/DESIGN.md "Engines"): image f32
[B,3,S,S] CLIP-normalized -> L2-normalized embedding f_I [B,d]. Text embeddings f_T(c) are computed
once (:func:`concept_text_embeddings`) and shipped with the image tower.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from gsal_edge.data.model_inputs import OPENAI_MEAN, OPENAI_STD, prepare_clip_input
from gsal_edge.errors import GSALError

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CLIP_META = "gsal_clip.json"
CLIP_WEIGHTS = "open_clip_model.safetensors"

__all__ = [
    "ClipError",
    "ClipImageWrapper",
    "ClipMeta",
    "ClipModel",
    "concept_text_embeddings",
    "register_model_config",
]


class ClipError(GSALError, ValueError):
    """A CLIP config or checkpoint is missing or malformed; the message names the file."""


class ClipMeta(BaseModel):
    """``gsal_clip.json``: how to load and feed a saved CLIP (model name, weights, normalization)."""

    model_config = ConfigDict(extra="allow")

    model_name: str
    config_file: str = Field(description="open_clip model config JSON, relative to the folder")
    checkpoint: str = CLIP_WEIGHTS
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    image_std: tuple[float, float, float] = OPENAI_STD


def register_model_config(config: str | Path | Mapping[str, Any], name: str | None = None) -> str:
    """Register a custom open_clip model config (a JSON file or a dict) and return its model name.

    A dict is written to a temporary ``<name>.json`` first (open_clip registers files by stem).
    """
    import open_clip

    if isinstance(config, Mapping):
        if not name:
            raise ClipError("a model config given as a dict needs a name")
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(config)
        if missing:
            raise ClipError(f"open_clip model config {name!r} lacks {sorted(missing)}")
        path = Path(tempfile.mkdtemp(prefix="gsal_clip_cfg_")) / f"{name}.json"
        path.write_text(json.dumps(dict(config)))
    else:
        path = Path(config)
        if not path.is_file():
            raise ClipError(f"open_clip model config {path} does not exist")
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ClipError(f"{path}: invalid JSON ({e})") from e
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(cfg)
        if missing:
            raise ClipError(f"{path}: open_clip model config lacks {sorted(missing)}")
        if name and name != path.stem:
            raise ClipError(f"{path}: open_clip names a config file by its stem ({path.stem!r}), not {name!r}")
    open_clip.add_model_config(path)
    return path.stem


class ClipImageWrapper(torch.nn.Module):
    """``clip_image`` engine: image [B,3,S,S] (CLIP-normalized) -> f_I(x) / ||f_I(x)|| [B,d]."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.visual = model.visual

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.visual(image), dim=-1)


class ClipModel:
    """An open_clip model with its tokenizer and the normalization its image tower expects."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, model_name: str,
                 image_mean: Sequence[float], image_std: Sequence[float], source: str = "") -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        size = getattr(model.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.source = source
        self._image_mod = ClipImageWrapper(self.model).eval()

    @classmethod
    def from_checkpoint(
        cls,
        model_name_or_config: str | Path | Mapping[str, Any],
        checkpoint_path: str | Path,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        device: str = "cpu",
        name: str | None = None,
    ) -> ClipModel:
        """Build an open_clip model and load LOCAL weights: ``create_model_and_transforms(name, pretrained=PATH)``.

        ``model_name_or_config``: an open_clip config name (built-in or registered), a model-config
        JSON path, or a config dict (with ``name``). mean/std default to the checkpoint's (OpenAI's).
        """
        import open_clip

        ckpt = Path(checkpoint_path)
        if not ckpt.is_file():  # never let open_clip treat the argument as a download tag
            raise ClipError(f"CLIP checkpoint {ckpt} does not exist (only local files are loaded)")
        if isinstance(model_name_or_config, Mapping) or str(model_name_or_config).endswith(".json"):
            model_name = register_model_config(model_name_or_config, name)  # type: ignore[arg-type]
        else:
            model_name = str(model_name_or_config)
            if model_name not in open_clip.list_models():
                raise ClipError(f"unknown open_clip model config {model_name!r}; pass its JSON file instead")
        try:
            model, _, _preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(ckpt), device=device,
                image_mean=tuple(image_mean) if image_mean is not None else None,
                image_std=tuple(image_std) if image_std is not None else None,
            )
        except RuntimeError as e:
            raise ClipError(f"{ckpt}: cannot load into open_clip model {model_name!r}: {e}") from e
        pp = getattr(model.visual, "preprocess_cfg", {}) or {}
        mean = tuple(image_mean) if image_mean is not None else tuple(pp.get("mean", OPENAI_MEAN))
        std = tuple(image_std) if image_std is not None else tuple(pp.get("std", OPENAI_STD))
        tok = open_clip.get_tokenizer(model_name)
        return cls(model, tok, model_name, mean, std, source=str(ckpt))

    @classmethod
    def from_folder(cls, folder: str | Path, device: str = "cpu") -> ClipModel:
        """Load a CLIP saved as ``gsal_clip.json`` + model-config JSON + checkpoint (the embedded default)."""
        folder = Path(folder)
        meta_path = folder / CLIP_META
        if not meta_path.is_file():
            raise ClipError(f"{folder}: missing {CLIP_META}")
        try:
            meta = ClipMeta.model_validate(json.loads(meta_path.read_text()))
        except (ValueError, json.JSONDecodeError) as e:
            raise ClipError(f"{meta_path}: {e}") from e
        cfg_path = folder / meta.config_file
        if cfg_path.stem != meta.model_name:
            raise ClipError(f"{meta_path}: config_file stem {cfg_path.stem!r} != model_name {meta.model_name!r}")
        clip = cls.from_checkpoint(cfg_path, folder / meta.checkpoint, meta.image_mean, meta.image_std, device)
        clip.source = str(folder)
        return clip

    # ------------------------------------------------------------------ engines and embeddings
    @property
    def embed_dim(self) -> int:
        """d, the joint embedding size."""
        return int(self.model.visual.output_dim)

    def image_module(self) -> ClipImageWrapper:
        """The ``clip_image`` engine module (shared by the torch backend and ONNX export)."""
        return self._image_mod

    def prepare(self, images01: np.ndarray) -> np.ndarray:
        """Crops in [0,1] [N,H,W] -> this model's input [N,3,S,S] (its size, mean and std)."""
        return prepare_clip_input(images01, self.image_size, self.image_mean, self.image_std)

    @torch.no_grad()
    def encode_images(self, images01: np.ndarray, batch: int = 128) -> np.ndarray:
        """f_I for grayscale crops in [0,1] [N,H,W] -> L2-normalized [N,d] float32."""
        x = self.prepare(images01)
        dev = next(self.model.parameters()).device
        outs = [self._image_mod(torch.from_numpy(x[i : i + batch]).to(dev)).cpu().numpy()
                for i in range(0, len(x), batch)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """f_T for prompts -> L2-normalized [N,d] float32."""
        if not len(texts):
            raise ValueError("encode_text needs at least one prompt")
        dev = next(self.model.parameters()).device
        tokens = self.tokenizer(list(texts)).to(dev)
        return F.normalize(self.model.encode_text(tokens), dim=-1).cpu().numpy().astype(np.float32)

    def info(self) -> dict[str, Any]:
        """Sizes and settings, for reports and bundle manifests."""
        return {
            "source": self.source,
            "model_name": self.model_name,
            "image_size": self.image_size,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "params": sum(p.numel() for p in self.model.parameters()),
            "image_params": sum(p.numel() for p in self.model.visual.parameters()),
        }


def concept_text_embeddings(clip: ClipModel, prompts: Mapping[str, Sequence[str]]) -> dict[str, np.ndarray]:
    """f_T(c) per concept (spec §2): mean of c's L2-normalized prompt embeddings, re-normalized ([d] each).

    Computed once (export time) and shipped with the image tower.
    """
    out: dict[str, np.ndarray] = {}
    for concept, texts in prompts.items():
        if not texts:
            raise ValueError(f"concept {concept!r} has no prompt")
        m = clip.encode_text(list(texts)).astype(np.float64).mean(axis=0)
        out[concept] = (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)
    return out
