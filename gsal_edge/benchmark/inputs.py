"""What a run reads: its data set (a path, or a generated set cached by content hash), the map of data
classes onto graph nodes, and the fixed diffusion prior (a folder, or trained on the run's pool) and CLIP with
their fingerprints."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from gsal_edge.acquisition.concept_graph import ConceptGraph
from gsal_edge.benchmark.config import BenchError, BenchModels, DataConfig, SyntheticData
from gsal_edge.benchmark.fingerprints import digest, folder_fingerprint
from gsal_edge.benchmark.split import subsample
from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.data.formats import load_dataset

__all__ = ["DEFAULT_MODELS_DIR", "WINDOW_SAMPLE", "FixedModels", "class_map", "data_window", "load_data",
           "load_fixed_models", "synthetic_dataset"]

DEFAULT_MODELS_DIR = Path("artifacts/models")  # where `gsal-edge models train-defaults` writes by default
WINDOW_SAMPLE = 64  # pool images a `window: auto` is computed from (evenly spaced over the sorted ids)


def load_data(d: DataConfig, progress: bool = True) -> DetectionDataset:
    """The data set of ``d``: ``d.path`` in its format, else the cached synthetic set; then ``max_images``."""
    if d.path:
        try:
            ds = load_dataset(d.path, d.format)
        except (ValueError, OSError) as e:
            raise BenchError(f"data {d.path}: {e}") from None
    else:
        ds = synthetic_dataset(d.synthetic, Path(d.cache_dir).resolve(), progress)
    if not ds.images:
        raise BenchError(f"data {d.path or 'synthetic'}: no images")
    return subsample(ds, d.max_images, d.split_seed)


def data_window(d: DataConfig, ds: DetectionDataset, pool_ids: Sequence[str]) -> tuple[float, float] | None:
    """The run's fixed intensity window: ``d.window`` resolved (``auto`` from up to ``WINDOW_SAMPLE`` pool
    images, never the test split), so training, scoring and the gallery share one (lo, hi)."""
    from gsal_edge.data.image_io import load_image
    from gsal_edge.data.preprocessing import resolve_window

    by_id = ds.by_id()
    ids = sorted(pool_ids)
    sample = [ids[int(i)] for i in np.unique(np.linspace(0, len(ids) - 1, min(WINDOW_SAMPLE, len(ids))).round())] \
        if ids else []
    try:
        return resolve_window(d.window, (load_image(ds.image_path(by_id[i])) for i in sample))
    except ValueError as e:
        raise BenchError(f"data.window {d.window!r}: {e}") from None


def synthetic_dataset(spec: SyntheticData, cache_dir: Path, progress: bool = True) -> DetectionDataset:
    """The generated data set for ``spec``, cached under ``cache_dir/synth-<content hash>``."""
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset

    try:
        scfg = SynthConfig.model_validate(spec.synth)
    except ValidationError as e:
        raise BenchError(f"data.synthetic.synth: {e}") from None
    key = digest({"n": spec.n, "seed": spec.seed, "synth": scfg.model_dump(mode="json")}, 16)
    out = cache_dir / f"synth-{key}"
    if (out / ".complete").is_file():
        return load_dataset(out, "coco")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"synth-{key}.", dir=cache_dir))
    try:
        generate_dataset(tmp, spec.n, spec.seed, scfg, progress=progress)
        (tmp / ".complete").write_text(json.dumps({"n": spec.n, "seed": spec.seed}))
        if out.exists():  # a concurrent run finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return load_dataset(out, "coco")


def class_map(ds: DetectionDataset, graph: ConceptGraph, mapping: dict[str, str]) -> dict[str, str]:
    """Data class -> graph fine node (``mapping``, else the same name up to spaces/hyphens)."""
    out: dict[str, str] = {}
    fine = set(graph.defects)
    for c in ds.classes:
        target = mapping.get(c)
        if target is None:
            alt = c.strip().replace(" ", "_").replace("-", "_")
            target = c if c in fine else alt if alt in fine else None
        if target is None or target not in fine:
            raise BenchError(f"data class {c!r} is not a fine node of graph {graph.name!r} "
                             f"({', '.join(graph.defects)}); map it with class_map")
        out[c] = target
    return out


@dataclass
class FixedModels:
    """The run's diffusion prior and CLIP (fixed over all rounds), their folders and fingerprints."""

    prior_dir: Path
    clip_dir: Path
    prior: Any  # DiffusionPrior
    clip: Any  # ClipModel
    prior_fp: str
    clip_fp: str


def load_fixed_models(m: BenchModels, dataset: DetectionDataset | None = None, pool_ids: Sequence[str] = (),
                      window: Sequence[float] | None = None, threads: int = 1, progress: bool = True,
                      say: Any = print) -> FixedModels:
    """Find the prior and CLIP folders of ``m`` (default: ``artifacts/models``) and load them.

    ``m.prior_source == "pool"``: the prior is trained on ``pool_ids`` of ``dataset`` only (cached, see
    :mod:`gsal_edge.benchmark.pool_prior`) instead of read from a folder."""
    from gsal_edge.models.clip_model import ClipModel
    from gsal_edge.models.diffusion_prior import DiffusionPrior

    root = Path(m.dir) if m.dir else DEFAULT_MODELS_DIR
    clip = Path(m.clip) if m.clip else root / "clip"
    if m.prior_source == "pool":
        if m.prior:
            raise BenchError(f"models.prior {m.prior!r} and prior_source=pool: choose one")
        if dataset is None:
            raise BenchError("models.prior_source=pool needs the run's data set and pool")
        from gsal_edge.benchmark.pool_prior import train_pool_prior

        prior: Path | None = train_pool_prior(m, dataset, pool_ids, window, threads, progress, say)
    else:
        # the embedded defaults (`gsal-edge models train-defaults`) write diffusion/ and clip/; --models DIR
        # may also hold prior/ (the export layout)
        prior = Path(m.prior) if m.prior else next((root / d for d in ("prior", "diffusion") if (root / d).is_dir()),
                                                   None)
    if prior is None or not clip.is_dir():
        raise BenchError(f"no diffusion prior / CLIP in {root} (expected prior/ or diffusion/, and clip/): run "
                         "`gsal-edge models train-defaults` (writes artifacts/models), or pass --models DIR, "
                         "or --prior DIR --clip DIR")
    for what, p in (("prior", prior), ("clip", clip)):
        if not p.is_dir():
            raise BenchError(f"{what} folder {p} does not exist")
    return FixedModels(prior, clip, DiffusionPrior.from_pretrained(prior), ClipModel.from_folder(clip),
                       folder_fingerprint(prior), folder_fingerprint(clip))
