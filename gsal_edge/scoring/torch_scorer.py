"""Build a :class:`GSALScorer` straight from PyTorch models (no export): checkpoints on disk, or
tiny untrained models for transport tests and benchmarks.

The engines are the same wrapper modules that ``export/`` turns into ONNX, run by the PyTorch backend.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsal_edge.acquisition.concept_graph import ConceptGraph, load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.models.clip_model import ClipModel, concept_text_embeddings
from gsal_edge.models.detector import DetectorWrapper, load_checkpoint
from gsal_edge.models.diffusion_prior import DiffusionPrior
from gsal_edge.models.tiny_models import TinyModelPaths, TinySizes, write_tiny_models
from gsal_edge.scoring.runtime.torch_backend import TorchEngine
from gsal_edge.scoring.scorer import GSALScorer, ScorerSpec, spec_settings


def concept_embedding_matrix(clip: ClipModel, graph: ConceptGraph) -> np.ndarray:
    """f_T(c) for every fine concept of ``graph``, in ``graph.fine`` order ([C, d] float32, spec §2)."""
    text = concept_text_embeddings(clip, {c: list(graph.prompts(c)) for c in graph.fine})
    return np.stack([text[c] for c in graph.fine]).astype(np.float32)


def model_spec(
    classes: list[str],
    prior: DiffusionPrior,
    clip: ClipModel,
    graph: ConceptGraph,
    gsal_config: GSALConfig | None = None,
    window: tuple[float, float] | None = None,
    **spec_overrides: Any,
) -> ScorerSpec:
    """The ScorerSpec of these models: resolutions/normalization from the models, settings from the GSAL config."""
    settings = spec_settings(gsal_config or GSALConfig()) | spec_overrides
    return ScorerSpec(
        classes=list(classes),
        concepts=list(graph.fine),
        alphas_cumprod=[float(a) for a in prior.alphas_cumprod],
        prior_resolution=prior.resolution,
        crop_resolution=prior.crop_resolution,
        clip_resolution=clip.image_size,
        clip_mean=tuple(clip.image_mean),  # type: ignore[arg-type]
        clip_std=tuple(clip.image_std),  # type: ignore[arg-type]
        window=tuple(window) if window else None,  # type: ignore[arg-type]
        **settings,
    )


def scorer_from_models(
    detector: torch.nn.Module,
    classes: list[str],
    prior: DiffusionPrior,
    clip: ClipModel,
    graph: ConceptGraph | str | Path,
    bundle_id: str = "torch-unbundled",
    station: str = "",
    gsal_config: GSALConfig | None = None,
    device: str = "cpu",
    **spec_overrides: Any,
) -> GSALScorer:
    """Wrap loaded models as TorchEngines on ``device`` (on CUDA in fp32, TF32 off) and precompute f_T(c)
    for every fine concept (Eq. 3)."""
    g = load_graph(graph)
    spec = model_spec(classes, prior, clip, g, gsal_config, **spec_overrides)
    engines = {
        "detector": TorchEngine("detector", DetectorWrapper(detector), device=device),
        "vae_encoder": TorchEngine("vae_encoder", prior.vae_encoder_module(), device=device),
        "unet": TorchEngine("unet", prior.unet_module(), device=device),
        "clip_image": TorchEngine("clip_image", clip.image_module(), device=device),
    }
    return GSALScorer(engines, spec, concept_embedding_matrix(clip, g), bundle_id=bundle_id, station=station,
                      graph_name=g.name)


def scorer_from_paths(
    detector_ckpt: str | Path,
    prior_dir: str | Path,
    clip_dir: str | Path,
    graph: ConceptGraph | str | Path = "thin_film_ct",
    **kwargs: Any,
) -> GSALScorer:
    """Load a detector checkpoint, a diffusers prior folder and a CLIP folder from local paths."""
    det, meta = load_checkpoint(detector_ckpt)
    return scorer_from_models(
        det, list(meta["classes"]), DiffusionPrior.from_pretrained(prior_dir), ClipModel.from_folder(clip_dir),
        graph, **kwargs,
    )


@functools.lru_cache(maxsize=8)
def _tiny_model_dir(seed: int, image_size: int, graph: str) -> TinyModelPaths:
    root = Path(tempfile.mkdtemp(prefix=f"gsal-untrained-{seed}-"))
    sizes = TinySizes(prior_resolution=min(32, image_size), crop_resolution=16)
    return write_tiny_models(root, graph=graph, seed=seed, sizes=sizes)


def untrained_scorer(seed: int = 0, image_size: int = 64, graph: str = "thin_film_ct") -> GSALScorer:
    """A real scorer over tiny randomly initialised models, written to disk and loaded back through
    the real builders and loaders.

    Its scores carry no meaning, but they are deterministic: for transport tests and benchmarks of
    the station, where what matters is that the same slices give the same records.
    """
    p = _tiny_model_dir(seed, image_size, graph)
    return scorer_from_paths(p.detector, p.prior, p.clip, p.graph, bundle_id=f"untrained-{seed}", K=2, M=4)
