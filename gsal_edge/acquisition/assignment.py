"""Concept assignment, Eq. 3 (spec §2):

    fine(p) = argmax_{c in fine nodes} cos( f_I(crop_p), f_T(c) )

f_T(c) is the mean of the L2-normalized text embeddings of c's prompts. Besides the text assigner,
**[ours]** assigners: ``prototype`` (cosine to the mean L2-normalized exemplar embedding per concept)
and ``hybrid`` (prototypes for concepts with >= k labeled exemplars, text for the rest). **[ours]**
``novelty``: a best similarity below a threshold gives ``unknown``. **[ours]** soft assignment
probabilities softmax(cos / T), with T (and, for hybrid, an offset of the text columns against the
prototype columns) fitted on the labeled crops (`fit_calibration`, `round_assigner`).

All functions are pure numpy: embeddings in, names + similarity matrix out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, UNKNOWN
from gsal_edge.errors import GSALError

__all__ = [
    "Assigner",
    "Assignment",
    "assign",
    "cosine_similarity",
    "fit_calibration",
    "hybrid_concept_embeddings",
    "l2_normalize",
    "leave_one_out_similarity",
    "make_assigner",
    "prototype_embeddings",
    "round_assigner",
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
           novelty_threshold: float | None = None, exclude: Sequence[str] = (),
           offsets: np.ndarray | None = None) -> Assignment:
    """fine(p) = argmax_c cos(f_I(p), f(c)) (Eq. 3); ties go to the first concept in ``names``.

    ``exclude`` removes concepts from the argmax (e.g. ``("background",)`` when assigning ground-truth
    boxes in binary-label mode, which are defects by definition); their similarity is still reported.
    With ``novelty_threshold`` **[ours]**, rows whose best similarity is below it become ``unknown``.
    ``offsets`` **[ours]** ([C], calibration of a hybrid assigner's text columns) are added to the
    cosines before the argmax, and the reported similarity includes them.
    """
    names = list(names)
    sim = cosine_similarity(image_embeddings, concept_embeddings)
    if sim.shape[1] != len(names):
        raise AssignmentError(f"{len(names)} names for {sim.shape[1]} concept embeddings")
    if offsets is not None:
        sim = sim + np.asarray(offsets, dtype=np.float64)[None, :]
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
    temperature: float | None = None  # fitted T of softmax(sim / T) (None = not fitted: the config's T)
    offsets: np.ndarray | None = None  # [C] added to the cosines (fitted text-vs-prototype offset)
    fit: dict[str, float] | None = None  # what the calibration saw: crops, log-likelihood, accuracy

    def __call__(self, image_embeddings: np.ndarray, exclude: Sequence[str] = ()) -> Assignment:
        return assign(image_embeddings, self.names, self.embeddings, self.novelty_threshold, exclude,
                      self.offsets)


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


# ---------------------------------------------------------------------- calibration on labeled crops [ours]
def _golden_max(f: Callable[[float], float], lo: float, hi: float, iters: int = 60) -> float:
    """argmax of a unimodal f on [lo, hi] by golden-section search (scipy is not a dependency)."""
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc >= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def _mean_log_likelihood(sim: np.ndarray, true_index: np.ndarray, beta: float, shift: np.ndarray) -> float:
    """mean_i log softmax(beta * sim_i + shift)[true_i] (``shift`` [C] = beta * offsets)."""
    z = beta * sim + shift[None, :]
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(z[np.arange(z.shape[0]), true_index] - lse))


def fit_calibration(similarity: np.ndarray, true_index: np.ndarray, bounds: tuple[float, float] = (0.002, 0.5),
                    offset_columns: np.ndarray | None = None, sweeps: int = 6) -> tuple[float, float, float]:
    """**[ours]** T (and an offset b of ``offset_columns``) maximising the mean log-likelihood of the
    labeled crops' true concept under softmax((sim + b * mask) / T), T within ``bounds``.

    The log-likelihood is concave in (1/T, b/T) (a linear function minus a log-sum-exp), so golden-section
    search on beta = 1/T alone is exact, and alternating it with a search on c = b/T (``sweeps`` times)
    converges to the joint optimum. Returns (T, b, mean log-likelihood); b = 0 without offset columns.
    """
    sim = np.asarray(similarity, dtype=np.float64)
    y = np.asarray(true_index, dtype=np.int64)
    if sim.ndim != 2 or y.shape != (sim.shape[0],) or sim.shape[0] == 0:
        raise AssignmentError(f"calibration needs [n, C] similarities and n true indices, got {sim.shape}, {y.shape}")
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 < lo < hi:
        raise AssignmentError(f"temperature bounds must satisfy 0 < low < high, got {bounds}")
    mask = np.zeros(sim.shape[1]) if offset_columns is None else np.asarray(offset_columns, dtype=np.float64)
    use_offset = bool(mask.any()) and not bool(mask.all())
    beta_lo, beta_hi = 1.0 / hi, 1.0 / lo
    c = 0.0
    beta = _golden_max(lambda bt: _mean_log_likelihood(sim, y, bt, c * mask), beta_lo, beta_hi)
    if use_offset:
        span = float(np.ptp(sim)) + 1.0
        for _ in range(sweeps):
            c = _golden_max(lambda cc, bt=beta: _mean_log_likelihood(sim, y, bt, cc * mask),  # type: ignore[misc]
                            -span * beta, span * beta)
            beta = _golden_max(lambda bt, cc=c: _mean_log_likelihood(sim, y, bt, cc * mask),  # type: ignore[misc]
                               beta_lo, beta_hi)
    return 1.0 / beta, c / beta, _mean_log_likelihood(sim, y, beta, c * mask)


def leave_one_out_similarity(assigner: Assigner, exemplars: Mapping[str, np.ndarray],
                             text_embeddings: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of every exemplar crop to the assigner's concepts, its own concept's prototype
    recomputed without it (else a crop would be scored against a mean it is part of, and T would come
    out overconfident); if the concept then has fewer than ``k`` exemplars, that column is its text
    similarity, as the hybrid assigner would have it. Returns ([n, C] cosines, [n] true concept index)."""
    names = list(assigner.names)
    text = l2_normalize(np.asarray(text_embeddings, dtype=np.float64))
    rows, ys = [], []
    for name, e in exemplars.items():
        if name not in names:
            raise AssignmentError(f"exemplar concept {name!r} is not one of the assigner's concepts {names}")
        e = l2_normalize(np.atleast_2d(np.asarray(e, dtype=np.float64)))
        if e.shape[0] == 0:
            continue
        j = names.index(name)
        sim = cosine_similarity(e, assigner.embeddings)
        if assigner.sources[j] == "prototype":
            n = e.shape[0]
            if n - 1 >= k:
                rest = l2_normalize(e.sum(axis=0)[None, :] - e)  # row i: the prototype without crop i
                sim[:, j] = np.sum(e * rest, axis=1)
            else:
                sim[:, j] = e @ text[j]
        rows.append(sim)
        ys.append(np.full(e.shape[0], j, dtype=np.int64))
    if not rows:
        return np.zeros((0, len(names))), np.zeros(0, dtype=np.int64)
    return np.concatenate(rows), np.concatenate(ys)


def round_assigner(kind: str, names: Sequence[str], text_embeddings: np.ndarray,
                   exemplars: Mapping[str, np.ndarray] | None, k: int = 5, novelty_threshold: float | None = None,
                   calibration: str = "none", bounds: tuple[float, float] = (0.002, 0.5),
                   min_crops: int = 10) -> Assigner:
    """**[ours]** The assigner of one selection round, refreshed from the labeled crops: ``make_assigner``
    (text prompts as the cold start of every concept with fewer than ``k`` exemplars), then calibrated on
    the same crops (leave-one-out for prototype concepts) when there are at least ``min_crops``:

    ``calibration``: ``none``; ``temperature`` (T of softmax(sim / T)); ``temperature_offset`` (T and, when
    text and prototype columns are mixed, an offset added to the text columns, since image-image cosines
    run higher than image-text ones). ``Assigner.fit`` records what was fitted on how many crops.
    """
    asg = make_assigner(kind, names, text_embeddings, exemplars, k, novelty_threshold)
    if calibration not in ("none", "temperature", "temperature_offset"):
        raise AssignmentError(f"calibration must be 'none', 'temperature' or 'temperature_offset', got {calibration!r}")
    if calibration == "none" or not exemplars:
        return asg
    sim, y = leave_one_out_similarity(asg, exemplars, text_embeddings, k)
    if sim.shape[0] < min_crops:
        asg.fit = {"crops": float(sim.shape[0]), "fitted": 0.0}
        return asg
    text_cols = np.array([s == "text" for s in asg.sources], dtype=np.float64)
    T, b, ll = fit_calibration(sim, y, bounds, text_cols if calibration == "temperature_offset" else None)
    offsets = b * text_cols if b != 0.0 else None
    adj = sim if offsets is None else sim + offsets[None, :]
    asg.temperature = T
    asg.offsets = offsets
    asg.fit = {"crops": float(sim.shape[0]), "fitted": 1.0, "temperature": T, "text_offset": b,
               "log_likelihood": ll, "accuracy": float(np.mean(np.argmax(adj, axis=1) == y))}
    return asg
