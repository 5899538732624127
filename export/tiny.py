"""Tiny random-init models in the ``--models DIR`` layout, as export :class:`ModelSources`.

The writers live in :mod:`gsal_edge.models.tiny_models` (the station's transport tests use them too).
"""

from __future__ import annotations

from pathlib import Path

from export.sources import ModelSources
from gsal_edge.models.tiny_models import TinySizes
from gsal_edge.models.tiny_models import write_tiny_models as _write

__all__ = ["TinySizes", "write_tiny_models"]


def write_tiny_models(root: str | Path, graph: str = "thin_film_ct", seed: int = 0,
                      sizes: TinySizes | None = None) -> ModelSources:
    """Write detector.pt, prior/, clip/ under ``root`` and return their :class:`ModelSources`."""
    p = _write(root, graph=graph, seed=seed, sizes=sizes or TinySizes())
    return ModelSources(p.detector, p.prior, p.clip, p.graph)
