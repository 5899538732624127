"""Plain (numpy) containers of the detector's box-head outputs that BADGE and PPAL read.

Filled by :mod:`gsal_edge.models.box_head_features` (the torch side); kept here so the acquisition math
imports no torch. Label convention as the detector's: 0 = background, class ``classes[i]`` = label ``i + 1``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BoxHeadOutputs", "BoxRequest", "PoolBoxFeatures"]


@dataclass(frozen=True)
class BoxHeadOutputs:
    """The kept proposals of one image (highest detector score first).

    ``feats`` [k, d]: h, the box head's penultimate feature (input of the class-score layer);
    ``probs`` [k, C+1]: softmax over background + classes; ``scores`` [k]: max foreground probability;
    ``labels`` [k]: its label (1..C); ``boxes`` [k, 4]: that label's regressed box, image pixels."""

    feats: np.ndarray
    probs: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        k = self.scores.shape[0]
        for name in ("feats", "probs", "labels", "boxes"):
            if getattr(self, name).shape[0] != k:
                raise ValueError(f"BoxHeadOutputs: {name} has {getattr(self, name).shape[0]} rows, scores {k}")

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls, d: int, n_classes: int) -> BoxHeadOutputs:
        """No kept proposal (``n_classes`` foreground classes, feature size ``d``)."""
        return cls(np.zeros((0, d), np.float32), np.zeros((0, n_classes + 1), np.float32), np.zeros(0, np.float32),
                   np.zeros(0, np.int64), np.zeros((0, 4), np.float32))


@dataclass(frozen=True)
class PoolBoxFeatures:
    """One round's box-head outputs: ``images[i]`` belongs to the pool's ``image_ids[i]``.

    ``class_quality`` [C]: per foreground class, the labeled set's mean detection quality
    q = p_c^xi * IoU^(1 - xi) (PPAL's DCUS; None when the strategy did not ask for it)."""

    image_ids: tuple[str, ...]
    images: tuple[BoxHeadOutputs, ...]
    classes: tuple[str, ...]
    class_quality: np.ndarray | None = None

    def __post_init__(self) -> None:
        if len(self.image_ids) != len(self.images):
            raise ValueError(f"PoolBoxFeatures: {len(self.image_ids)} ids for {len(self.images)} images")

    def aligned_to(self, image_ids: np.ndarray | list[str]) -> tuple[BoxHeadOutputs, ...]:
        """The outputs in the order of ``image_ids``; a missing id raises a ValueError naming it."""
        pos = {i: j for j, i in enumerate(self.image_ids)}
        out = []
        for i in image_ids:
            j = pos.get(str(i))
            if j is None:
                raise ValueError(f"no box-head outputs for image_id={str(i)!r}")
            out.append(self.images[j])
        return tuple(out)


@dataclass(frozen=True)
class BoxRequest:
    """What a strategy asks of the round's detector: per candidate image the ``top_k`` proposals by
    detector score above ``min_score``; with ``quality_xi`` set, also the labeled set's per-class
    detection quality q = p^xi * IoU^(1 - xi) (PPAL)."""

    top_k: int
    min_score: float = 0.0
    quality_xi: float | None = None
