"""Where the checkpoints to export come from, and the reference (PyTorch) scorer built from them.

``--models DIR`` is searched by convention (each part can be named explicitly instead):

- detector: ``detector.pt`` (else ``detector/*.pt``, else the only ``*.pt``): a ``gsal_edge.models.detector`` checkpoint
- prior: the folder with ``unet/`` + ``vae/`` + ``scheduler/`` (``prior/``, ``diffusion_prior/`` or DIR itself)
- clip: the folder with ``gsal_clip.json`` (``clip/`` or any sub-folder)
- graph: ``graph.yaml`` / ``concept_graph.yaml`` / ``.json`` in DIR, else the packaged ``thin_film_ct``
- GSAL config: ``gsal.yaml`` in DIR, else ``GSALConfig`` defaults (K, t, M, proposal mode ...)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.errors import GSALError
from gsal_edge.scoring.bundle import build_torch_modules, sha256_file

DEFAULT_GRAPH = "thin_film_ct"


class SourceError(GSALError, FileNotFoundError):
    """A model source is missing or ambiguous; the message names the folder searched."""


@dataclass(frozen=True)
class ModelSources:
    """Paths of everything an export reads."""

    detector: Path
    prior: Path
    clip: Path
    graph: str  # a file path or a packaged graph name
    gsal_config: Path | None = None

    def as_dict(self) -> dict[str, str]:
        d = {"detector": str(self.detector), "prior": str(self.prior), "clip": str(self.clip), "graph": self.graph}
        if self.gsal_config:
            d["gsal_config"] = str(self.gsal_config)
        return d


def _first(cands: list[Path]) -> Path | None:
    return next((c for c in cands if c.exists()), None)


def discover_sources(
    models_dir: str | Path | None,
    detector: str | Path | None = None,
    prior: str | Path | None = None,
    clip: str | Path | None = None,
    graph: str | Path | None = None,
    gsal_config: str | Path | None = None,
) -> ModelSources:
    """Resolve each source: the explicit argument, else the convention inside ``models_dir``."""
    root = Path(models_dir) if models_dir else None
    if root is not None and not root.is_dir():
        raise SourceError(f"{root}: models folder does not exist")

    def need(what: str, found: Path | None, hint: str) -> Path:
        if found is None:
            raise SourceError(f"{root}: no {what} found ({hint}); name it explicitly")
        return found

    if detector is None and root is not None:
        pts = sorted(root.glob("*.pt"))
        detector = _first([root / "detector.pt"]) or (sorted((root / "detector").glob("*.pt")) or [None])[0]
        if detector is None and len(pts) == 1:
            detector = pts[0]
    det = need("detector checkpoint", Path(detector) if detector else None, "detector.pt")
    if prior is None and root is not None:
        prior = _first([d for d in (root / "prior", root / "diffusion_prior", root) if (d / "unet").is_dir()])
        if prior is None:
            prior = next((d for d in sorted(root.iterdir()) if (d / "unet").is_dir()), None)
    pri = need("diffusion prior folder", Path(prior) if prior else None, "a folder with unet/ vae/ scheduler/")
    if clip is None and root is not None:
        clip = _first([d for d in (root / "clip",) if (d / "gsal_clip.json").is_file()])
        if clip is None:
            clip = next((d for d in sorted(root.iterdir()) if (d / "gsal_clip.json").is_file()), None)
    cl = need("CLIP folder", Path(clip) if clip else None, "a folder with gsal_clip.json")
    if graph is None and root is not None:
        graph = _first([root / n for n in ("graph.yaml", "concept_graph.yaml", "graph.json", "concept_graph.json")])
    if gsal_config is None and root is not None:
        gsal_config = _first([root / "gsal.yaml"])
    for p, what in ((det, "detector checkpoint"), (pri, "diffusion prior folder"), (cl, "CLIP folder")):
        if not p.exists():
            raise SourceError(f"{p}: {what} does not exist")
    return ModelSources(det, pri, cl, str(graph or DEFAULT_GRAPH), Path(gsal_config) if gsal_config else None)


PRIOR_PARTS = ("vae", "unet", "scheduler", "text_encoder", "tokenizer", "gsal_prior.json")


def model_files(kind: str, path: str | Path) -> list[Path]:
    """The files a loader reads from a source (training state, latents caches etc. left out).

    ``prior``: vae/ unet/ scheduler/ [text_encoder/ tokenizer/] gsal_prior.json; ``clip``: gsal_clip.json
    and the config/checkpoint it names; a file source is itself.
    """
    p = Path(path)
    if p.is_file():
        return [p]
    if kind == "prior":
        parts = [p / n for n in PRIOR_PARTS if (p / n).exists()]
        return sorted(f for part in parts for f in ([part] if part.is_file() else part.rglob("*")) if f.is_file())
    if kind == "clip":
        import json

        meta = json.loads((p / "gsal_clip.json").read_text())
        names = ["gsal_clip.json", meta["config_file"], meta.get("checkpoint", "open_clip_model.safetensors")]
        return [p / n for n in names if (p / n).is_file()]
    return sorted(f for f in p.rglob("*") if f.is_file())


def hash_source(kind: str, path: str | Path) -> str:
    """sha256 of a file, or of the sorted (relative path, sha256) lines of the files a loader reads."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    if not p.is_dir():
        return ""  # a packaged name (graph)
    lines = "".join(f"{f.relative_to(p).as_posix()}\t{sha256_file(f)}\n" for f in model_files(kind, p))
    return hashlib.sha256(lines.encode()).hexdigest()


@dataclass
class Reference:
    """The PyTorch side of an export: engine modules, scorer spec, concept graph and text embeddings."""

    modules: dict[str, Any]  # engine name -> nn.Module wrapper
    spec: Any  # gsal_edge.scoring.scorer.ScorerSpec
    concept_embeddings: np.ndarray  # [len(spec.concepts), d]
    graph: Any  # gsal_edge.acquisition.concept_graph.ConceptGraph
    info: dict[str, Any]  # per-model info() for the manifest

    def scorer(self, device: str = "cpu") -> Any:
        """A :class:`GSALScorer` on the PyTorch backend over these modules."""
        from gsal_edge.scoring.runtime.torch_backend import TorchEngine
        from gsal_edge.scoring.scorer import GSALScorer

        engines = {n: TorchEngine(n, m, device=device) for n, m in self.modules.items()}
        return GSALScorer(engines, self.spec, self.concept_embeddings, backend="torch", graph_name=self.graph.name)


def load_reference(sources: ModelSources, device: str = "cpu") -> Reference:
    """Load the checkpoints, build the engine wrappers, the scorer spec and the concept text embeddings."""
    from gsal_edge.acquisition.concept_graph import load_graph
    from gsal_edge.acquisition.config import GSALConfig
    from gsal_edge.models.clip_model import ClipModel
    from gsal_edge.models.detector import load_checkpoint
    from gsal_edge.models.diffusion_prior import DiffusionPrior
    from gsal_edge.scoring.torch_scorer import concept_embedding_matrix, model_spec

    graph = load_graph(sources.graph)
    gcfg = GSALConfig.from_yaml(sources.gsal_config) if sources.gsal_config else GSALConfig()
    prior = DiffusionPrior.from_pretrained(sources.prior, device=device)
    clip = ClipModel.from_folder(sources.clip, device=device)
    _, det_meta = load_checkpoint(sources.detector, map_location=device)
    modules = build_torch_modules(
        {"detector": str(sources.detector), "prior": str(sources.prior), "clip": str(sources.clip)},
        device=device,
        loaded={"prior": prior, "clip": clip},
    )
    emb = concept_embedding_matrix(clip, graph)
    window = (det_meta.get("preprocessing") or {}).get("window")
    spec = model_spec(list(det_meta["classes"]), prior, clip, graph, gcfg, window=window)
    info = {
        "detector": {"classes": list(det_meta["classes"]), "config": det_meta["config"].model_dump(mode="json")},
        "prior": prior.info(),
        "clip": clip.info(),
    }
    return Reference(modules, spec, emb, graph, info)
