"""GSALScorer: CT slices in, raw spec §11 score records out, through four engines.

Per image x (spec §4 and §2, procedure steps 1-2):

1. detector -> boxes after NMS, top-M by score (the prefilter), class probabilities (for baselines);
2. VAE encoder -> z0; K seeded trajectories through the UNet -> E_rec, V_den (Eqs. 5-6) for the image,
   and per proposal either by ``latent_roi`` (reduce the per-position maps over the box footprint)
   or by ``crop`` (the enlarged box region gets its own K trajectories);
3. CLIP image tower on each proposal region -> Eq. 3 assignment against the concept embeddings.

Nothing here depends on the pool: normalization and fusion happen at selection time. The engines are
:class:`gsal_edge.scoring.runtime.Engine` objects, so the same code runs on PyTorch, ONNX Runtime or TensorRT.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gsal_edge.acquisition import diffusion_difficulty as dd
from gsal_edge.acquisition.assignment import Assigner, make_assigner
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.uncertainty import image_uncertainty
from gsal_edge.data.model_inputs import prepare_clip_input, prepare_vae_input
from gsal_edge.data.preprocessing import resize_image, to_unit_float
from gsal_edge.scoring.proposals import select_proposals
from gsal_edge.scoring.runtime.base import Engine


@dataclass
class ScorerSpec:
    """Everything besides the engines that a scorer needs; a bundle ships it as JSON."""

    classes: list[str]  # detector class names (label i+1)
    concepts: list[str]  # fine concept names, in the order of ``concept_embeddings`` rows
    alphas_cumprod: list[float]  # the diffusion scheduler's abar_t, t = 0..T-1
    prior_resolution: int = 128  # side length the VAE/UNet see for the whole image
    crop_resolution: int = 64  # side length of a proposal crop in `crop` mode
    clip_resolution: int = 64  # CLIP image tower input side length
    clip_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    clip_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    window: tuple[float, float] | None = None  # CT intensity window applied before everything
    K: int = 4  # trajectories per image (and per proposal crop)
    K_image: int | None = None  # [ours] trajectories of the whole-slice term only (None = K)
    t_frac: float = 0.25  # t = t_frac * T
    ddim_steps: int = 0  # [ours] 0 = one-step x0 prediction
    M: int = 8  # proposal prefilter: top-M detector boxes after NMS
    min_score: float = 0.0  # detections below this never become proposals
    proposal_nms_iou: float | None = None  # [ours] class-agnostic NMS before top-M (None = per-class only)
    context_margin: float = 1.5
    crop_shape: str = "square"  # [ours] diffusion crops: "square" | "stretch" | "masked" (dd.crop_regions_weighted)
    crop_border: str = "shift"  # [ours] diffusion crops at the image edge: "shift" | "reflect" (masked out)
    proposal_mode: str = "crop"  # "crop" (paper, GSALConfig default) | "latent_roi" [ours]
    roi_reduce: str = "mean"  # "mean" | "max"
    novelty_threshold: float | None = None  # [ours] best cosine below this -> "unknown"
    base_seed: int = 0
    noise: str = "per_image"  # [ours] "per_image" | "common" (spec §4); a manifest without it = per_image
    antithetic: bool = False  # [ours] eps_(2j+1) = -eps_(2j)
    max_unet_batch: int = 64
    image_embedding: bool = True  # attach the whole-slice CLIP embedding (core-set baselines)
    proposal_embedding: bool = True  # attach each proposal's region f_I (the trainer's round assigner re-assigns)

    def to_dict(self) -> dict[str, Any]:
        """The spec as a bundle ships it; ``proposal_embedding`` only when off, so a default bundle's spec (and
        every digest of it) is what it was before the field existed and older stations still load it."""
        d = asdict(self)
        if d["proposal_embedding"]:
            d.pop("proposal_embedding")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScorerSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"scorer spec: unknown field(s) {unknown}")
        d = dict(d)
        for k in ("clip_mean", "clip_std"):
            if k in d:
                d[k] = tuple(d[k])
        if d.get("window") is not None:
            d["window"] = tuple(d["window"])
        return cls(**d)

    @property
    def t_index(self) -> int:
        """t = t_frac * T on the scheduler's integer grid."""
        return dd.timestep_index(self.t_frac, len(self.alphas_cumprod))


# GSALConfig fields the scorer consumes; ScorerSpec has the same names (plus base_seed <- seed)
SCORER_CONFIG_FIELDS = ("K", "t_frac", "ddim_steps", "M", "context_margin", "proposal_mode", "roi_reduce",
                        "novelty_threshold", "noise", "antithetic", "min_score", "proposal_nms_iou",
                        "K_image", "crop_shape", "crop_border")


def spec_settings(gsal_config: Any) -> dict[str, Any]:
    """The ScorerSpec settings a :class:`gsal_edge.acquisition.config.GSALConfig` fixes (one mapping for every caller)."""
    out = {k: getattr(gsal_config, k) for k in SCORER_CONFIG_FIELDS}
    out["base_seed"] = int(gsal_config.seed)
    return out


@dataclass
class ScoreTimings:
    """Seconds spent per stage over the scorer's lifetime (for benchmarks and logs)."""

    detector: float = 0.0
    diffusion: float = 0.0
    clip: float = 0.0
    images: int = 0
    extra: dict[str, float] = field(default_factory=dict)


DifficultyResult = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
DifficultyStage = Callable[[np.ndarray, list[str]], DifficultyResult]
# a memo around the diffusion stage: (images01, ids, compute) -> the stage's result, calling ``compute``
# for what it does not hold (e.g. the benchmark's cache of whole-slice scores, which never change per model)
DifficultyMemo = Callable[[np.ndarray, list[str], DifficultyStage], DifficultyResult]


class GSALScorer:
    """Score slices with a detector, a latent diffusion prior and a CLIP image tower.

    ``difficulty_memo`` (optional, settable) wraps the diffusion stage (Eqs. 5-6) of both whole slices
    and proposal crops; it must return exactly what ``compute`` would.
    """

    def __init__(
        self,
        engines: dict[str, Engine],
        spec: ScorerSpec,
        concept_embeddings: np.ndarray,
        bundle_id: str = "unbundled",
        station: str = "",
        backend: str | None = None,
        graph_name: str = "",
    ) -> None:
        missing = {"detector", "vae_encoder", "unet", "clip_image"} - set(engines)
        if missing:
            raise ValueError(f"GSALScorer needs engines {sorted(missing)}")
        if spec.proposal_mode not in ("crop", "latent_roi"):
            raise ValueError(f"proposal_mode must be 'crop' or 'latent_roi', got {spec.proposal_mode!r}")
        if spec.roi_reduce not in ("mean", "max"):
            raise ValueError(f"roi_reduce must be 'mean' or 'max', got {spec.roi_reduce!r}")
        if spec.crop_shape not in dd.CROP_SHAPES or spec.crop_border not in dd.CROP_BORDERS:
            raise ValueError(f"crop_shape must be one of {dd.CROP_SHAPES} and crop_border one of "
                             f"{dd.CROP_BORDERS}; got {spec.crop_shape!r}, {spec.crop_border!r}")
        if spec.K_image is not None and spec.K_image < 1:
            raise ValueError(f"K_image must be >= 1 or None, got {spec.K_image}")
        emb = np.asarray(concept_embeddings, dtype=np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(spec.concepts):
            raise ValueError(f"concept_embeddings shape {emb.shape} does not match {len(spec.concepts)} concepts")
        self.engines = engines
        self.spec = spec
        self._embedding_dim = emb.shape[1]  # d of f_I and f_T
        self.assigner: Assigner = make_assigner(
            "text", spec.concepts, emb, novelty_threshold=spec.novelty_threshold
        )
        self.alphas_cumprod = np.asarray(spec.alphas_cumprod, dtype=np.float64)
        self.bundle_id = bundle_id
        self.station = station
        self.backend = backend or next(iter(engines.values())).backend
        self.graph_name = graph_name
        self.timings = ScoreTimings()
        self.difficulty_memo: DifficultyMemo | None = None

    # ------------------------------------------------------------------ public API
    def info(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle_id,
            "backend": self.backend,
            "graph": self.graph_name,
            "models": sorted(self.engines),
            "classes": list(self.spec.classes),
            "concepts": list(self.spec.concepts),
            "prior_resolution": self.spec.prior_resolution,
            "proposal_mode": self.spec.proposal_mode,
            "K": self.spec.K,
            "M": self.spec.M,
        }

    def set_assigner(self, assigner: Assigner) -> None:
        """Swap the Eq. 3 assigner (e.g. prototype/hybrid built from labeled crops each round)."""
        if list(assigner.names) != list(self.spec.concepts):
            raise ValueError(f"assigner concepts {assigner.names} differ from the scorer's {self.spec.concepts}")
        self.assigner = assigner

    def warmup(self, size: int = 64) -> None:
        """Run every engine once on a synthetic slice so first requests are not slow."""
        img = np.linspace(0, 1, size * size, dtype=np.float32).reshape(size, size)
        self.score([img], ["__warmup__"])
        self.timings = ScoreTimings()

    def detector_uncertainty(self, slices: Sequence[np.ndarray]) -> list[dict[str, float]]:
        """Each slice's record ``uncertainty`` from the detector engine alone (no diffusion, no CLIP).

        What entropy / margin sampling read, at the cost those baselines pay (spec §9's cost comparison)."""
        sp = self.spec
        t0 = time.perf_counter()
        out = []
        for s in slices:
            d = self._detect(to_unit_float(s, window=sp.window))
            out.append(image_uncertainty(d["all_class_probs"], d["all_scores"]))
        self.timings.detector += time.perf_counter() - t0
        self.timings.images += len(out)
        return out

    def score(
        self,
        slices: Sequence[np.ndarray],
        image_ids: Sequence[str],
        metas: Sequence[dict[str, str]] | None = None,
    ) -> list[ScoreRecord]:
        """Score one batch of slices (2-D uint8/uint16/float32 arrays) into raw score records."""
        if len(slices) != len(image_ids):
            raise ValueError(f"{len(slices)} slices but {len(image_ids)} image ids")
        if metas is not None and len(metas) != len(slices):
            raise ValueError(f"{len(slices)} slices but {len(metas)} metadata entries")
        if not slices:
            return []
        sp = self.spec
        images = [to_unit_float(s, window=sp.window) for s in slices]

        t0 = time.perf_counter()
        dets = [self._detect(x) for x in images]
        t1 = time.perf_counter()

        # image-level diffusion difficulty (Eqs. 5-6), all images of the batch together
        prior_in = np.stack([resize_image(x, (sp.prior_resolution, sp.prior_resolution)) for x in images])
        E_img, V_img, e_map, v_map = self.difficulty(prior_in, list(image_ids), K=sp.K_image or sp.K)
        prop_e: list[np.ndarray] = []
        prop_v: list[np.ndarray] = []
        if sp.proposal_mode == "latent_roi":
            for i, (x, d) in enumerate(zip(images, dets)):
                e, v = dd.roi_scores(
                    e_map[i], v_map[i], d["boxes"], x.shape, sp.context_margin, reduce=sp.roi_reduce
                )
                prop_e.append(np.asarray(e, dtype=np.float64))
                prop_v.append(np.asarray(v, dtype=np.float64))
        else:  # crop: every enlarged region gets its own K trajectories
            crops, weights, crop_ids, owner = [], [], [], []
            for i, (x, d) in enumerate(zip(images, dets)):
                if len(d["boxes"]):
                    cs, ws = dd.crop_regions_weighted(x, d["boxes"], sp.context_margin, sp.crop_resolution,
                                                      sp.crop_shape, sp.crop_border)
                    crops.extend(cs)
                    weights.extend(ws)
                    crop_ids.extend(f"{image_ids[i]}#p{j}" for j in range(len(cs)))
                    owner.extend([i] * len(cs))
            if crops:
                Ec, Vc, em, vm = self.difficulty(np.stack(crops), crop_ids)
                if sp.crop_shape == "masked" or sp.crop_border == "reflect":  # E_rec(p) over the weighted cells
                    Ec, Vc = dd.weighted_scores(em, vm, dd.latent_weights(np.stack(weights), em.shape[1:]))
            else:
                Ec = Vc = np.zeros(0)
            owner_arr = np.asarray(owner, dtype=np.int64)
            for i in range(len(images)):
                prop_e.append(np.asarray(Ec[owner_arr == i], dtype=np.float64))
                prop_v.append(np.asarray(Vc[owner_arr == i], dtype=np.float64))
        t2 = time.perf_counter()

        # Eq. 3 concept assignment on the proposal regions (+ whole-slice embedding for core-set)
        region_emb, img_emb = self._embed(images, [d["boxes"] for d in dets], sp.image_embedding)
        t3 = time.perf_counter()
        n_per_image = [len(e) for e in region_emb]
        assigned = self.assigner(np.concatenate(region_emb)) if sum(n_per_image) else None
        first_row = np.cumsum([0, *n_per_image])

        records = []
        for i, d in enumerate(dets):
            rows = range(first_row[i], first_row[i + 1])
            proposals = []
            for j, r in enumerate(rows):
                label_idx = int(d["labels"][j])
                proposals.append(
                    ProposalScore(
                        box=tuple(float(v) for v in d["boxes"][j]),  # type: ignore[arg-type]
                        score=float(d["scores"][j]),
                        e_rec=float(prop_e[i][j]),
                        v_den=float(prop_v[i][j]),
                        concept=assigned.concepts[r],
                        similarity={
                            c: round(float(s), 6) for c, s in zip(sp.concepts, assigned.similarity[r])
                        },
                        label=sp.classes[label_idx - 1] if 1 <= label_idx <= len(sp.classes) else None,
                        embedding=([round(float(v), 6) for v in region_emb[i][j]]
                                   if sp.proposal_embedding else None),
                    )
                )
            records.append(
                ScoreRecord(
                    image_id=str(image_ids[i]),
                    e_rec=float(E_img[i]),
                    v_den=float(V_img[i]),
                    proposals=proposals,
                    uncertainty=image_uncertainty(d["all_class_probs"], d["all_scores"]),
                    model={"bundle": self.bundle_id, "station": self.station},
                    meta=dict(metas[i]) if metas is not None else {},
                    embedding=[round(float(v), 6) for v in img_emb[i]] if sp.image_embedding else None,
                )
            )
        tm = self.timings
        tm.detector += t1 - t0
        tm.diffusion += t2 - t1
        tm.clip += t3 - t2
        tm.images += len(images)
        return records

    # ------------------------------------------------------------------ stages
    def _detect(self, x: np.ndarray) -> dict[str, np.ndarray]:
        out = self.engines["detector"].run({"image": x[None].astype(np.float32, copy=False)})
        scores = np.asarray(out["scores"], dtype=np.float32)
        keep = select_proposals(np.asarray(out["boxes"]), scores, self.spec.M, self.spec.min_score,
                                self.spec.proposal_nms_iou)
        return {
            "boxes": np.asarray(out["boxes"], dtype=np.float32)[keep].reshape(-1, 4),
            "scores": scores[keep],
            "labels": np.asarray(out["labels"], dtype=np.int64)[keep],
            "all_scores": scores,
            "all_class_probs": np.asarray(out["class_probs"], dtype=np.float32),
        }

    def difficulty(self, images01: np.ndarray, ids: list[str], K: int | None = None) -> DifficultyResult:
        """E_rec, V_den and their per-position maps for a stack of [0,1] slices (Eqs. 5-6), through
        ``difficulty_memo`` when one is set. ``ids`` seed the ``K`` (default: spec.K) trajectories (spec §4)."""
        compute = functools.partial(self._difficulty, K=K or self.spec.K)
        if self.difficulty_memo is not None:
            return self.difficulty_memo(images01, ids, compute)
        return compute(images01, ids)

    def _difficulty(self, images01: np.ndarray, ids: list[str], K: int) -> DifficultyResult:
        z0 = self._run_chunked("vae_encoder", {"image": prepare_vae_input(images01)}, "latent")
        unet = self.engines["unet"]

        def predict_eps(z_t: np.ndarray, t: np.ndarray) -> np.ndarray:
            return unet.run({"latent": z_t.astype(np.float32, copy=False), "timestep": t.astype(np.int64)})["eps"]

        zhat = dd.reconstruct(
            z0,
            ids,
            predict_eps,
            self.alphas_cumprod,
            K=K,
            t_index=self.spec.t_index,
            base_seed=self.spec.base_seed,
            ddim_steps=self.spec.ddim_steps,
            max_batch=self.spec.max_unet_batch,
            noise=self.spec.noise,
            antithetic=self.spec.antithetic,
        )
        return dd.difficulty(z0, zhat)

    def embed_regions(
        self, slices: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray | Sequence[Sequence[float]]]
    ) -> list[np.ndarray]:
        """f_I of box regions, cut exactly as :meth:`score` cuts proposals for Eq. 3: one L2-normalized
        float32 [n_i, d] array per slice (rows in box order).

        ``slices`` are raw slices as :meth:`score` takes them (the spec's window applies); boxes are
        (x1, y1, x2, y2) in slice pixels, enlarged by ``context_margin`` and resized to ``clip_resolution``.
        """
        if len(slices) != len(boxes_per_image):
            raise ValueError(f"{len(slices)} slices but {len(boxes_per_image)} box lists")
        images = [to_unit_float(s, window=self.spec.window) for s in slices]
        return self._embed(images, boxes_per_image, whole_images=False)[0]

    def _embed(
        self, images01: Sequence[np.ndarray], boxes_per_image: Sequence[Any], whole_images: bool
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """Region embeddings per image and, with ``whole_images``, one whole-slice embedding per image
        ([n_images, d]; else [0, d]), all through the ``clip_image`` engine in one batch."""
        sp = self.spec
        batch: list[np.ndarray] = []
        counts = []
        for x, boxes in zip(images01, boxes_per_image):
            n = len(boxes)
            if n:
                batch.extend(dd.crop_regions(x, boxes, sp.context_margin, sp.clip_resolution))
            counts.append(n)
        if whole_images:
            batch.extend(resize_image(x, (sp.clip_resolution, sp.clip_resolution)) for x in images01)
        emb = self._clip(np.stack(batch)) if batch else np.zeros((0, self._embedding_dim), np.float32)
        first = np.cumsum([0, *counts])
        return [emb[first[i] : first[i + 1]] for i in range(len(counts))], emb[first[-1] :]

    def _clip(self, regions01: np.ndarray) -> np.ndarray:
        sp = self.spec
        x = prepare_clip_input(regions01, sp.clip_resolution, sp.clip_mean, sp.clip_std)
        return self._run_chunked("clip_image", {"image": x}, "embedding")

    def _run_chunked(self, engine: str, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
        (name, arr), = feeds.items()
        step = max(1, self.spec.max_unet_batch)
        outs = [self.engines[engine].run({name: arr[i : i + step]})[output] for i in range(0, len(arr), step)]
        return np.concatenate(outs, axis=0)
