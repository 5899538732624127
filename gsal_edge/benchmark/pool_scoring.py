"""What each round computes of the unlabeled pool for a strategy, through the station's own scorer.

The detector engine of a :class:`gsal_edge.scoring.scorer.GSALScorer` is swapped every round; the
diffusion prior and CLIP are fixed, so the image-level E_rec / V_den stage is memoized in the run's
:class:`~gsal_edge.benchmark.diffusion_cache.DiffusionCache`. A strategy declares what it reads
(``needs_scores``, ``needs_embeddings``, ``needs_mc_dropout``); :class:`RoundInputs` turns that into
what the round computes, so a strategy that reads no records never pays for scoring.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from gsal_edge.acquisition.box_outputs import BoxRequest
from gsal_edge.acquisition.concept_graph import BACKGROUND, ConceptGraph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.strategies import Strategy
from gsal_edge.benchmark.config import BenchConfig, BenchError
from gsal_edge.benchmark.diffusion_cache import DiffusionCache
from gsal_edge.benchmark.fingerprints import digest
from gsal_edge.benchmark.inputs import FixedModels
from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.data.image_io import load_image
from gsal_edge.data.preprocessing import resize_image, to_unit_float

__all__ = ["DetectorScores", "PoolScoring", "RoundInputs", "embed_regions", "ids_only_pool", "uncertainty_columns"]


@dataclass(frozen=True)
class RoundInputs:
    """What a round computes for a strategy, read from its declarations (never from its name).

    ``pool``: ``"ids"`` (image ids only), ``"embeddings"`` (ids and whole-slice CLIP embeddings: they do not
    depend on the round's detector, so they are computed once per image instead of re-scoring the pool) or
    ``"records"`` (the scorer's records of every candidate) or ``"detector"`` (only the records' detector
    uncertainty, from the detector engine alone: entropy, margin, MC-dropout); ``labeled_embeddings``: the labeled images'
    whole-slice embeddings too; ``mc_dropout``: T stochastic detector passes per candidate;
    ``box_features``: the round detector's box-head outputs per candidate (BADGE, PPAL), as requested."""

    pool: Literal["ids", "embeddings", "records", "detector"]
    labeled_embeddings: bool
    mc_dropout: bool
    box_features: BoxRequest | None = None

    @classmethod
    def of(cls, strategy: Strategy) -> RoundInputs:
        if strategy.needs_mc_dropout and not strategy.needs_scores:
            raise BenchError(f"strategy {strategy.name!r} declares needs_mc_dropout without needs_scores: "
                             "the MC-dropout value is added to the score records")
        box = None
        if getattr(strategy, "needs_box_features", False):
            box = getattr(strategy, "box_request", None)
            if box is None:
                raise BenchError(f"strategy {strategy.name!r} declares needs_box_features without a box_request")
        pool = ("embeddings" if strategy.needs_embeddings else "ids") if not strategy.needs_scores else \
            "detector" if getattr(strategy, "reads_detector_only", False) else "records"
        return cls(pool, bool(strategy.needs_embeddings), bool(strategy.needs_mc_dropout), box)


@dataclass
class DetectorScores:
    """One candidate's detector-only outputs: what a ``reads_detector_only`` strategy reads."""

    image_id: str
    uncertainty: dict[str, float]


def uncertainty_columns(scores: Sequence[DetectorScores]) -> dict[str, np.ndarray]:
    """Per-key columns of ``scores``' uncertainties (NaN where one lacks a key), in ``scores`` order."""
    keys = sorted({k for s in scores for k in s.uncertainty})
    return {k: np.array([s.uncertainty.get(k, np.nan) for s in scores], dtype=np.float64) for k in keys}


def ids_only_pool(ids: list[str], embeddings: np.ndarray | None = None,
                  uncertainty: dict[str, np.ndarray] | None = None) -> Any:
    """A ScorePool holding only image ids (and, when given, whole-slice embeddings or the detector's
    per-image uncertainty columns): no diffusion or CLIP stage ran."""
    from gsal_edge.acquisition.score_pool import ScorePool

    n = len(ids)
    z = np.zeros(0)
    return ScorePool(image_ids=np.array(ids, dtype=str), e_rec=np.zeros(n), v_den=np.zeros(n),
                     prop_image=np.zeros(0, np.int64), prop_box=np.zeros((0, 4)), prop_score=z, prop_e_rec=z,
                     prop_v_den=z, prop_concept=np.zeros(0, np.int64), concepts=(), embeddings=embeddings,
                     uncertainty=dict(uncertainty or {}))


def embed_regions(clip: Any, image01: np.ndarray, boxes: np.ndarray, margin: float) -> np.ndarray:
    """CLIP f_I [n, d] of box regions of one slice in [0, 1], cropped as the scorer crops its proposals.

    The benchmark's one crop-and-embed of regions outside a scorer (for the labeled ground-truth boxes)."""
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions

    if len(boxes) == 0:
        return np.zeros((0, clip.embed_dim), np.float32)
    return clip.encode_images(crop_regions(image01, boxes, margin, clip.image_size))


class PoolScoring:
    """Images, embeddings, scorers and score records of one run's pool (in-memory caches per run)."""

    def __init__(self, cfg: BenchConfig, dataset: DetectionDataset, class_to_concept: dict[str, str],
                 graph: ConceptGraph, models: FixedModels, pool_ids: list[str], cache: DiffusionCache,
                 device: str, progress: bool = True) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.by_id = dataset.by_id()
        self.class_to_concept = class_to_concept
        self.graph = graph
        self.models = models
        self.pool_ids = pool_ids
        self.diffusion_cache = cache
        self.device = device
        self.progress = progress
        self._raw: dict[str, np.ndarray] = {}
        self._gt_emb: dict[str, np.ndarray] = {}
        self._img_emb: dict[str, np.ndarray] = {}
        self._scorers: dict[str, Any] = {}
        self._scorer_key: dict[int, str] = {}
        self._text_emb: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ images, embeddings
    def raw(self, image_id: str) -> np.ndarray:
        """The slice as stored (cached in memory)."""
        a = self._raw.get(image_id)
        if a is None:
            a = load_image(self.dataset.image_path(self.by_id[image_id]))
            self._raw[image_id] = a
        return a

    def unit(self, image_id: str) -> np.ndarray:
        return to_unit_float(self.raw(image_id), self.cfg.data.window)

    def gt_embeddings(self, image_id: str, margin: float) -> np.ndarray:
        """CLIP f_I of the image's ground-truth box regions (same crops as the scorer's proposals)."""
        key = f"{image_id}|{margin}"
        e = self._gt_emb.get(key)
        if e is None:
            boxes = np.array([a.box for a in self.by_id[image_id].annotations], dtype=np.float64).reshape(-1, 4)
            e = embed_regions(self.models.clip, self.unit(image_id), boxes, margin)
            self._gt_emb[key] = e
        return e

    def image_embeddings(self, ids: Sequence[str]) -> np.ndarray:
        """Whole-slice CLIP embeddings (what the scorer attaches to a record), for core-set centers."""
        clip = self.models.clip
        todo = [i for i in ids if i not in self._img_emb]
        S = clip.image_size
        for start in range(0, len(todo), 64):
            chunk = todo[start:start + 64]
            emb = clip.encode_images(np.stack([resize_image(self.unit(i), (S, S)) for i in chunk]))
            for i, e in zip(chunk, emb):
                self._img_emb[i] = np.round(e.astype(np.float64), 6)
        return np.stack([self._img_emb[i] for i in ids]) if ids else np.zeros((0, clip.embed_dim))

    # ------------------------------------------------------------------ scoring
    def scorer_for(self, gcfg: GSALConfig, model: Any) -> Any:
        """The station scorer for this strategy's settings, with this round's detector engine."""
        from gsal_edge.models.detector import DetectorWrapper
        from gsal_edge.scoring.runtime.torch_backend import TorchEngine
        from gsal_edge.scoring.scorer import spec_settings
        from gsal_edge.scoring.torch_scorer import scorer_from_models

        m = self.models
        spec_kw = spec_settings(gcfg)
        key = digest(spec_kw)
        sc = self._scorers.get(key)
        if sc is None:
            sc = scorer_from_models(model, list(model.classes), m.prior, m.clip, self.graph,
                                    bundle_id=f"bench-{m.prior_fp[:8]}-{m.clip_fp[:8]}", station="bench",
                                    device=self.device, window=self.cfg.data.window, **spec_kw)
            self._text_emb[key] = np.array(sc.assigner.embeddings, copy=True)
            noise = [] if sc.spec.noise == "per_image" and not sc.spec.antithetic else [sc.spec.noise,
                                                                                     sc.spec.antithetic]
            ns = digest([m.prior_fp, sc.spec.K_image or sc.spec.K, sc.spec.t_index, sc.spec.ddim_steps, sc.spec.base_seed,
                         sc.spec.prior_resolution, self.cfg.data.window, *noise])
            self.diffusion_cache.attach(sc, ns, set(self.pool_ids))
            self._scorers[key] = sc
        sc.engines["detector"] = TorchEngine("detector", DetectorWrapper(model), device=self.device)
        sc.spec.classes = list(model.classes)
        self._scorer_key[id(sc)] = key
        return sc

    def set_round_assigner(self, scorer: Any, gcfg: GSALConfig, labeled: list[str]) -> dict[str, str]:
        """Eq. 3 assigner for this round (assignment.round_assigner): text, or prototype/hybrid refreshed from
        the labeled crops (text prompts the cold start of every concept with < hybrid_k exemplars), calibrated
        on the same crops when ``calibration`` says so; the fitted T is ``scorer.assigner.temperature``.

        Labeled crops: the labeled boxes; with ``exemplars="boxes+proposals"`` also this round's detector
        proposals on the labeled slices (IoU >= ``exemplar_iou`` with a box: its concept, else background)."""
        from gsal_edge.acquisition.assignment import round_assigner
        from gsal_edge.acquisition.exemplars import label_proposals

        names = list(scorer.spec.concepts)
        text = self._text_emb[self._scorer_key[id(scorer)]]
        ex: dict[str, list[np.ndarray]] = {}
        if gcfg.label_mode == "typed" and (gcfg.assigner != "text" or gcfg.calibration != "none"):
            for i in labeled:
                anns = self.by_id[i].annotations
                for a, e in zip(anns, self.gt_embeddings(i, gcfg.context_margin)):
                    ex.setdefault(self.class_to_concept[a.category], []).append(e)
                if gcfg.exemplars != "boxes+proposals":
                    continue
                x = self.unit(i)
                boxes = scorer._detect(x)["boxes"].astype(np.float64)
                if not len(boxes):
                    continue
                gt = np.array([a.box for a in anns], dtype=np.float64).reshape(-1, 4)
                emb = embed_regions(self.models.clip, x, boxes, gcfg.context_margin)
                gt_concepts = [self.class_to_concept[a.category] for a in anns]
                for c, e in zip(label_proposals(boxes, gt, gt_concepts, gcfg.exemplar_iou), emb):
                    ex.setdefault(c, []).append(e)
        exemplars = {c: np.stack(v) for c, v in ex.items() if c in names}
        kind = gcfg.assigner if gcfg.label_mode == "typed" else "text"
        try:
            asg = round_assigner(kind, names, text, exemplars, gcfg.hybrid_k, gcfg.novelty_threshold,
                                 gcfg.calibration, gcfg.temperature_bounds, gcfg.calibration_min_crops)
        except ValueError as e:
            raise BenchError(f"assigner {gcfg.assigner!r}: {e} (with few labels, assigner=hybrid falls back "
                             "to text prompts per concept)") from None
        scorer.set_assigner(asg)
        return dict(zip(names, asg.sources))

    def _in_batches(self, ids: list[str], desc: str, fn: Any) -> list[Any]:
        """``fn(chunk_ids, chunk_raw_slices)`` over ``ids`` in ``score_batch`` chunks, concatenated, with a bar."""
        from tqdm.auto import tqdm

        out: list[Any] = []
        bar = tqdm(total=len(ids), desc=desc, disable=not self.progress, leave=False)
        for s in range(0, len(ids), self.cfg.score_batch):
            chunk = ids[s:s + self.cfg.score_batch]
            out.extend(fn(chunk, [self.raw(i) for i in chunk]))
            bar.update(len(chunk))
        bar.close()
        return out

    def score_pool(self, scorer: Any, ids: list[str]) -> list[Any]:
        """Score record per image, in batches (the station's scoring code)."""
        return self._in_batches(ids, "score", lambda chunk, raw: scorer.score(
            raw, chunk, [{k: str(v) for k, v in self.by_id[i].meta.items()} for i in chunk]))

    def detector_uncertainty(self, scorer: Any, ids: list[str]) -> list[DetectorScores]:
        """Each candidate's detector uncertainty from the scorer's detector engine alone, in batches."""
        return self._in_batches(ids, "detect", lambda chunk, raw: [
            DetectorScores(i, u) for i, u in zip(chunk, scorer.detector_uncertainty(raw))])

    def add_mc_dropout(self, records: list[Any], model: Any, seed: int, r: int) -> None:
        """Add ``uncertainty["mc_dropout"]`` (T = ``mc_dropout_T`` stochastic passes) to each record."""
        from gsal_edge.models.mc_dropout import mc_dropout_uncertainty

        for rec in records:
            rec.uncertainty["mc_dropout"] = mc_dropout_uncertainty(
                model, self.unit(rec.image_id), T=self.cfg.mc_dropout_T, seed=int(seed) * 1000 + r)

    def box_features(self, model: Any, request: BoxRequest, ids: list[str], labeled: list[str]) -> Any:
        """The round detector's box-head outputs of ``ids`` (:class:`PoolBoxFeatures`); with
        ``request.quality_xi`` also the per-class detection quality on the ``labeled`` images (PPAL)."""
        from gsal_edge.acquisition.box_outputs import PoolBoxFeatures
        from gsal_edge.acquisition.ppal import class_quality
        from gsal_edge.models.box_head_features import box_head_outputs, class_quality_sums

        classes = tuple(model.classes)
        outs = box_head_outputs(model, [self.unit(i) for i in ids], request.top_k, request.min_score,
                                batch_size=self.cfg.score_batch)
        quality = None
        if request.quality_xi is not None:
            label_of = {c: j + 1 for j, c in enumerate(classes)}
            agnostic = bool(model.config.class_agnostic)
            boxes, labels = [], []
            for i in labeled:
                anns = self.by_id[i].annotations
                boxes.append(np.array([a.box for a in anns], dtype=np.float64).reshape(-1, 4))
                try:
                    labels.append(np.array([1 if agnostic else label_of[a.category] for a in anns], np.int64))
                except KeyError as e:
                    raise BenchError(f"image {i}: class {e.args[0]!r} is not one of the detector's {classes}") from None
            sums, n = class_quality_sums(model, [self.unit(i) for i in labeled], boxes, labels, request.quality_xi,
                                         batch_size=self.cfg.score_batch)
            quality = class_quality(sums, n)
        return PoolBoxFeatures(tuple(ids), tuple(outs), classes, quality)

    def counts(self, gcfg: GSALConfig, scorer: Any | None, labeled: list[str]) -> dict[str, int]:
        """Coverage n(v) of the fine nodes (spec §3): truth in typed mode, CLIP concepts of boxes in binary."""
        from gsal_edge.acquisition.selection import labeled_counts

        if gcfg.label_mode == "typed":
            labels = [self.class_to_concept[a.category] for i in labeled for a in self.by_id[i].annotations]
            return labeled_counts(self.graph, "typed", labels=labels)
        if scorer is None:
            raise BenchError("binary label mode needs the scorer's assigner for the labeled boxes")
        embs = [self.gt_embeddings(i, gcfg.context_margin) for i in labeled]
        embs = [e for e in embs if len(e)]
        # a labeled box is a defect by definition: background is never its concept (else it drops out of n(v))
        assigned = scorer.assigner(np.concatenate(embs), exclude=(BACKGROUND,)).concepts if embs else []
        return labeled_counts(self.graph, "binary", assigned_concepts=assigned)
