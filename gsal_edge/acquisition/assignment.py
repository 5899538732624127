"""Concept assignment, Eq. 3 (spec §2):

    fine(p) = argmax_{c in fine nodes} cos( f_I(crop_p), f_T(c) )

f_T(c) is the mean of the L2-normalized text embeddings of c's prompts. Besides the text assigner,
**[ours]** assigners: ``prototype`` (cosine to the mean L2-normalized exemplar embedding per concept)
and ``hybrid`` (prototypes for concepts with >= k labeled exemplars, text for the rest). **[ours]**
``novelty``: a best similarity below a threshold gives ``unknown``. **[ours]** soft assignment
probabilities softmax(cos / T).

All functions are pure numpy: embeddings in, names + similarity matrix out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN
from gsal_edge.errors import GSALError

__all__ = [
    "Assigner",
    "Assignment",
    "assign",
    "cosine_similarity",
    "hybrid_concept_embeddings",
    "l2_normalize",
    "make_assigner",
    "prototype_embeddings",
    "soft_probabilities",
    "text_concept_embeddings",
]


class AssignmentError(GSALError, ValueError):
    """An assigner cannot be built from what it was given (missing embeddings or exemplars, unknown kind)."""


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """x / max(||x||_2, eps) along ``axis`` (float64)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def text_concept_embeddings(prompt_embeddings: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """f_T(c) = mean over c's prompts of the L2-normalized text embeddings ([n_prompts, d] each).

    Returns (concept names in mapping order, [C, d] matrix). The mean is not re-normalized here;
    `cosine_similarity` normalizes.
    """
    names = list(prompt_embeddings)
    if not names:
        raise AssignmentError("no concepts given")
    rows = []
    for name in names:
        e = np.atleast_2d(np.asarray(prompt_embeddings[name], dtype=np.float64))
        if e.shape[0] == 0:
            raise AssignmentError(f"concept {name!r} has no prompt embedding")
        rows.append(l2_normalize(e).mean(axis=0))
    return names, np.stack(rows)


def prototype_embeddings(exemplars: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Prototype per concept: mean of its L2-normalized exemplar embeddings ([n_i, d] each)."""
    out = {}
    for name, e in exemplars.items():
        e = np.atleast_2d(np.asarray(e, dtype=np.float64))
        if e.shape[0] == 0:
            continue
        out[name] = l2_normalize(e).mean(axis=0)
    return out


def cosine_similarity(image_embeddings: np.ndarray, concept_embeddings: np.ndarray) -> np.ndarray:
    """cos(f_I(x_i), f(c_j)) for all pairs: [N, d] x [C, d] -> [N, C] (both sides L2-normalized)."""
    a = l2_normalize(np.atleast_2d(image_embeddings))
    b = l2_normalize(np.atleast_2d(concept_embeddings))
    if a.shape[1] != b.shape[1]:
        raise AssignmentError(f"embedding sizes differ: images d={a.shape[1]}, concepts d={b.shape[1]}")
    return a @ b.T


def soft_probabilities(similarity: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(cos / T) per row, computed stably (max subtracted). NaN entries get probability 0."""
    if temperature <= 0:
        raise AssignmentError(f"temperature must be > 0, got {temperature}")
    e = np.asarray(similarity, dtype=np.float64) / temperature  # the one large allocation; then in place
    e[np.isnan(e)] = -np.inf
    m = np.max(e, axis=-1, keepdims=True)
    m[~np.isfinite(m)] = 0.0
    e -= m
    np.exp(e, out=e)
    tot = e.sum(axis=-1, keepdims=True)
    np.divide(e, tot, out=e, where=tot > 0)
    return e


@dataclass(frozen=True)
class Assignment:
    """Eq. 3 output: assigned concept per row, best similarity, the [N, C] similarity matrix."""

    concepts: list[str]
    best: np.ndarray
    similarity: np.ndarray
    names: list[str]

    def similarity_dicts(self) -> list[dict[str, float]]:
        """Per-row {concept: cosine}, the form of the score record (spec §11)."""
        return [dict(zip(self.names, map(float, row))) for row in self.similarity]


def assign(image_embeddings: np.ndarray, names: Sequence[str], concept_embeddings: np.ndarray,
           novelty_threshold: float | None = None, exclude: Sequence[str] = ()) -> Assignment:
    """fine(p) = argmax_c cos(f_I(p), f(c)) (Eq. 3); ties go to the first concept in ``names``.

    ``exclude`` removes concepts from the argmax (e.g. ``("background",)`` when assigning ground-truth
    boxes in binary-label mode, which are defects by definition); their similarity is still reported.
    With ``novelty_threshold`` **[ours]**, rows whose best similarity is below it become ``unknown``.
    """
    names = list(names)
    sim = cosine_similarity(image_embeddings, concept_embeddings)
    if sim.shape[1] != len(names):
        raise AssignmentError(f"{len(names)} names for {sim.shape[1]} concept embeddings")
    allowed = np.array([n not in exclude for n in names], dtype=bool)
    if not allowed.any():
        raise AssignmentError("every concept is excluded")
    masked = np.where(allowed[None, :], sim, -np.inf)
    idx = np.argmax(masked, axis=1)
    best = masked[np.arange(sim.shape[0]), idx] if sim.shape[0] else np.zeros(0)
    concepts = [names[i] for i in idx]
    if novelty_threshold is not None:
        concepts = [UNKNOWN if b < novelty_threshold else c for c, b in zip(concepts, best)]
    return Assignment(concepts=concepts, best=np.asarray(best, dtype=np.float64), similarity=sim, names=names)


def hybrid_concept_embeddings(names: Sequence[str], text_embeddings: np.ndarray,
                              exemplars: Mapping[str, np.ndarray] | None, k: int) -> tuple[np.ndarray, list[str]]:
    """**[ours]** hybrid assigner: each concept's row is its prototype if it has >= k exemplars
    (labeled crops, refreshed each round), else its text embedding f_T(c).

    Returns ([C, d] matrix, source per concept: "prototype" or "text"). Note: image-image cosines
    (prototypes) usually run higher than image-text cosines, so prototype concepts tend to win the argmax.
    """
    text = np.asarray(text_embeddings, dtype=np.float64)
    out = l2_normalize(text).copy()
    sources = ["text"] * len(names)
    exemplars = exemplars or {}
    for i, name in enumerate(names):
        e = exemplars.get(name)
        if e is not None and np.atleast_2d(e).shape[0] >= k:
            out[i] = l2_normalize(prototype_embeddings({name: e})[name])
            sources[i] = "prototype"
    return out, sources


@dataclass
class Assigner:
    """A configured Eq. 3 assigner: ``kind`` in text | prototype | hybrid."""

    kind: str
    names: list[str]
    embeddings: np.ndarray
    sources: list[str]
    novelty_threshold: float | None = None

    def __call__(self, image_embeddings: np.ndarray, exclude: Sequence[str] = ()) -> Assignment:
        return assign(image_embeddings, self.names, self.embeddings, self.novelty_threshold, exclude)


def make_assigner(kind: str, names: Sequence[str], text_embeddings: np.ndarray | None = None,
                  exemplars: Mapping[str, np.ndarray] | None = None, k: int = 5,
                  novelty_threshold: float | None = None) -> Assigner:
    """Build the assigner named by config ``assigner`` (text | prototype | hybrid).

    ``prototype`` needs exemplars for every concept except ``background`` may fall back to text when
    given; a concept with neither raises a clear error.
    """
    names = list(names)
    if kind == "text":
        if text_embeddings is None:
            raise AssignmentError("text assigner needs text_embeddings")
        emb = l2_normalize(np.asarray(text_embeddings, dtype=np.float64))
        return Assigner(kind, names, emb, ["text"] * len(names), novelty_threshold)
    if kind == "hybrid":
        if text_embeddings is None:
            raise AssignmentError("hybrid assigner needs text_embeddings")
        emb, src = hybrid_concept_embeddings(names, text_embeddings, exemplars, k)
        return Assigner(kind, names, emb, src, novelty_threshold)
    if kind == "prototype":
        protos = prototype_embeddings(exemplars or {})
        rows, src = [], []
        for i, name in enumerate(names):
            if name in protos:
                rows.append(l2_normalize(protos[name]))
                src.append("prototype")
            elif text_embeddings is not None and name == BACKGROUND:
                rows.append(l2_normalize(np.asarray(text_embeddings, dtype=np.float64)[i]))
                src.append("text")
            else:
                raise AssignmentError(f"prototype assigner: concept {name!r} has no exemplar embeddings")
        return Assigner(kind, names, np.stack(rows), src, novelty_threshold)
    raise AssignmentError(f"assigner must be 'text', 'prototype' or 'hybrid', got {kind!r}")
