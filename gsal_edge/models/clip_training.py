"""Trains the embedded default CLIP (spec §2) on a SEPARATE generated caption corpus.

Stand-in for web-scale pretraining without leaking the pool's labels: CT crops are generated
with a different seed AND shifted generator settings (other layer stacks, wider contrast and size
ranges, balanced class frequencies), captioned from their attributes ("a small dark round void in
a layered film", "a bright compact inclusion", "a dust speck", "plain layered film" ...), and a
small open_clip model (custom config: small ViT image tower, small text tower, open_clip's offline
SimpleTokenizer) learns them contrastively. Captions that are exactly equal within a batch count
as positives of each other (multi-positive InfoNCE), so repeated short captions are not pushed
apart.

Saved as ``<model_name>.json`` (open_clip model config) + ``open_clip_model.safetensors`` +
``gsal_clip.json``, which :meth:`gsal_edge.models.clip_model.ClipModel.from_folder` loads. Resumable:
the corpus is cached, a checkpoint is written every ``checkpoint_every`` steps, and every step
draws its batch from ``default_rng([seed, step])``.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from gsal_edge.config_files import StrictModel
from gsal_edge.models.clip_model import CLIP_META, CLIP_WEIGHTS

STATE_FILE = "train_state.pt"
CORPUS_FILE = "corpus.npz"

__all__ = [
    "ClipArchConfig",
    "ClipTrainConfig",
    "CorpusConfig",
    "background_boxes",
    "build_corpus",
    "caption",
    "corpus_synth_config",
    "multi_positive_clip_loss",
    "proposal_view",
    "train_clip",
]


class ClipArchConfig(StrictModel):
    """The custom open_clip model config (small ViT + small text transformer)."""

    embed_dim: int = Field(64, ge=8)
    image_size: int = Field(48, ge=16)
    patch_size: int = Field(8, ge=2)
    vision_width: int = Field(96, ge=16)
    vision_layers: int = Field(3, ge=1)
    head_width: int = Field(32, ge=8)
    context_length: int = Field(20, ge=8)
    text_width: int = Field(64, ge=16)
    text_heads: int = Field(2, ge=1)
    text_layers: int = Field(2, ge=1)

    def open_clip_config(self) -> dict[str, Any]:
        """The JSON open_clip registers (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {"image_size": self.image_size, "layers": self.vision_layers, "width": self.vision_width,
                           "head_width": self.head_width, "patch_size": self.patch_size},
            "text_cfg": {"context_length": self.context_length, "vocab_size": 49408, "width": self.text_width,
                         "heads": self.text_heads, "layers": self.text_layers},
        }


class CorpusConfig(StrictModel):
    """The pretraining corpus: how many slices, which seed, how the generator is shifted."""

    n_slices: int = Field(1000, ge=1)
    seed: int = Field(7_700_001, description="never the pool's seed")
    margin_range: tuple[float, float] = (1.2, 2.2)  # context margin jitter of object crops
    background_per_slice: int = Field(2, ge=0)
    contrast_scale: tuple[float, float] = (0.8, 1.25)  # class contrast range widened by these factors
    size_scale: tuple[float, float] = (0.8, 1.25)  # class size range widened by these factors
    class_frequency: float = Field(0.35, gt=0, le=1)  # balanced: every class this often
    defect_free_share: float = Field(0.15, ge=0, lt=1)
    # Detector proposals are rarely tight: a young detector's box can be 3-4x the defect and off
    # centre, and a CLIP that only saw tight crops calls such a view something else (a small bright
    # inclusion in a corner of a loose box reads as a petal). So each region also gets `views - 1`
    # proposal-like views (see `proposal_view`), captioned like the region itself.
    views: int = Field(1, ge=1, description="crops per region: its own box plus views-1 proposal-like views")
    view_scale: tuple[float, float] = (0.7, 3.5)  # log-uniform side scale of a view's box, per axis
    view_shift: float = Field(0.8, ge=0, le=1, description="view centre offset, fraction of its half side")
    # A detector's false positives sit where the background has structure (layer interfaces, the
    # surface, noise clumps), not at uniformly random places: this share of the background boxes is
    # the highest-contrast of `hard_background_candidates` random placements.
    hard_background_share: float = Field(0.0, ge=0, le=1)
    hard_background_candidates: int = Field(16, ge=1)

    @model_validator(mode="after")
    def _check_ranges(self) -> CorpusConfig:
        for name in ("margin_range", "contrast_scale", "size_scale", "view_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (lo, hi) with 0 < lo <= hi, got {(lo, hi)}")
        return self


class ClipTrainConfig(StrictModel):
    """Everything `train-clip` does; ``models_default.yaml`` section ``clip``."""

    seed: int = 0
    model_name: str = "gsal-ct-clip-s"
    arch: ClipArchConfig = ClipArchConfig()
    corpus: CorpusConfig = CorpusConfig()
    steps: int = Field(600, ge=0)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(5e-4, gt=0)
    warmup: int = Field(40, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    intensity_jitter: float = Field(0.05, ge=0, description="gain/offset jitter of crops (unit intensity)")
    checkpoint_every: int = Field(100, ge=1)
    threads: int = Field(1, ge=1)

    def digest(self) -> str:
        """sha256 of what shapes the weights (threads and checkpointing excluded)."""
        d = self.model_dump(mode="json", exclude={"threads", "checkpoint_every"})
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------- corpus
def corpus_synth_config(cc: CorpusConfig) -> Any:
    """The SHIFTED generator: other layer stacks, balanced classes, widened contrast/size ranges."""
    from gsal_edge.data.synthetic.config import SynthConfig

    base = SynthConfig().model_dump()
    base["defect_free_share"] = cc.defect_free_share
    base["id_prefix"] = "corpus"
    L = lambda t, d: {"thickness": t, "density": d}
    base["products"] = [
        {"name": "corpus-D", "weight": 0.4, "substrate": 0.56, "surface_y": (35.0, 65.0), "noise_scale": 1.1,
         "layers": [L((12, 20), 0.38), L((6, 10), 0.50), L((10, 16), 0.30), L((6, 10), 0.46)]},
        {"name": "corpus-E", "weight": 0.3, "substrate": 0.68, "surface_y": (45.0, 75.0), "noise_scale": 0.8,
         "layers": [L((20, 35), 0.48), L((10, 18), 0.60)]},
        {"name": "corpus-F", "weight": 0.3, "substrate": 0.45, "surface_y": (30.0, 60.0), "noise_scale": 1.4,
         "layers": [L((16, 26), 0.28), L((16, 26), 0.40), L((8, 12), 0.33)]},
    ]
    lo_c, hi_c = cc.contrast_scale
    lo_s, hi_s = cc.size_scale
    for spec in base["classes"].values():
        spec["frequency"] = cc.class_frequency
        spec["contrast"] = (spec["contrast"][0] * lo_c, spec["contrast"][1] * hi_c)
        spec["size"] = (spec["size"][0] * lo_s, spec["size"][1] * hi_s)
    la = base["lookalikes"]
    la["dust"]["frequency"], la["wobble"]["frequency"], la["scratch"]["frequency"] = 0.6, 0.4, 0.35
    return SynthConfig.model_validate(base)


_NOUNS = {
    "void": ["void", "pore", "gas pore", "cavity"],
    "inclusion": ["inclusion", "foreign particle", "particle", "dense inclusion"],
    "petal": ["petal", "petal defect", "crescent", "arc"],
    "drill_hole": ["drill hole", "drilled channel", "hole", "channel"],
    "crack": ["crack", "hairline crack", "fracture"],
}
_SHAPES = {
    "round": ["round", "oval", "circular"],
    "compact": ["compact", "irregular", "blob-like"],
    "u_shaped": ["u-shaped", "curved", "petal-shaped", "crescent-shaped"],
    "linear": ["straight", "vertical", "linear"],
    "jagged": ["jagged", "thin", "zig-zag"],
}
_DEFECT_TEMPLATES = [
    "a {size} {pol} {shape} {noun}",
    "a {pol} {shape} {noun} in a layered film",
    "a {size} {pol} {noun}",
    "a {contrast} {pol} {shape} {noun}",
    "a {shape} {noun}",
    "a {pol} {noun}",
    "a CT slice with a {noun}",
    "a {noun} defect in a thin film",
    "a grayscale CT cross-section showing a {noun}",
    "a {noun}",
]
_BACKGROUND = [
    "plain layered film", "defect-free material", "uniform film texture", "plain thin-film texture with no defect",
    "a CT slice of defect-free material", "uniform grayscale material", "a clean layer boundary",
    "defect-free substrate", "plain material with no defect", "layered film without defects",
]
_LOOKALIKE = {
    "dust": ["a dust speck", "a tiny {pol} speck of dust", "a small {pol} dot", "a speck of dust on the film"],
    "scratch": ["a faint straight scratch", "a faint {pol} line across the film", "a long straight scratch"],
    "wobble": ["a wavy layer boundary", "a bump in a layer interface", "a slightly wavy interface"],
}


def proposal_view(box: tuple[float, ...] | np.ndarray, rng: np.random.Generator, scale: tuple[float, float],
                  shift: float) -> tuple[float, float, float, float]:
    """A detector-proposal-like box around a region: each side scaled log-uniformly in ``scale``, the
    centre moved by up to ``shift`` of the new half side, so the region's centre stays inside the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    lo, hi = np.log(scale[0]), np.log(scale[1])
    nw, nh = w * float(np.exp(rng.uniform(lo, hi))), h * float(np.exp(rng.uniform(lo, hi)))
    cx = (x0 + x1) / 2 + float(rng.uniform(-shift, shift)) * nw / 2
    cy = (y0 + y1) / 2 + float(rng.uniform(-shift, shift)) * nh / 2
    return (cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2)


def background_boxes(img: np.ndarray, taken: list[tuple[float, ...]], sizes: list[tuple[float, float]], n: int,
                     rng: np.random.Generator, scale: tuple[float, float] = (1.0, 1.0), hard_share: float = 0.0,
                     candidates: int = 16, gap: float = 4.0) -> list[tuple[float, float, float, float]]:
    """``n`` background boxes clear of every box in ``taken`` (by ``gap`` px; appended to it).

    Sides are a region size from ``sizes`` times a log-uniform factor in ``scale``. With probability
    ``hard_share`` a box is the highest-contrast (pixel std) of ``candidates`` clear placements:
    where a detector's false positives would be."""
    H, W = img.shape
    out: list[tuple[float, float, float, float]] = []
    lo, hi = np.log(scale[0]), np.log(scale[1])

    def clear(b: tuple[float, ...]) -> bool:
        return not any(b[0] < o[2] + gap and o[0] < b[2] + gap and b[1] < o[3] + gap and o[1] < b[3] + gap
                       for o in taken)

    for _ in range(n):
        w, h = sizes[int(rng.integers(len(sizes)))]
        f = float(np.exp(rng.uniform(lo, hi))) if hi > lo else float(np.exp(lo))  # no draw when fixed
        w, h = min(max(w * f, 4.0), W - 1.0), min(max(h * f, 4.0), H - 1.0)
        want = candidates if hard_share > 0 and rng.random() < hard_share else 1
        found: list[tuple[float, tuple[float, float, float, float]]] = []
        for _try in range(100):
            x0, y0 = float(rng.uniform(0, W - w)), float(rng.uniform(0, H - h))
            b = (x0, y0, x0 + w, y0 + h)
            if clear(b):
                patch = img[int(y0):int(np.ceil(y0 + h)), int(x0):int(np.ceil(x0 + w))]
                found.append((float(patch.std()) if want > 1 else 0.0, b))
                if len(found) == want:
                    break
        if found:
            b = max(found, key=lambda t: t[0])[1]
            out.append(b)
            taken.append(b)
    return out


def caption(kind: str, attrs: dict[str, Any], rng: np.random.Generator) -> str:
    """A caption drawn from the region's attributes: ``kind`` is a defect class, a look-alike type or
    ``background``; ``attrs`` holds polarity, shape, cnr and the box side (``side`` px)."""
    if kind == "background":
        return str(rng.choice(_BACKGROUND))
    pol = str(attrs.get("polarity", "dark"))
    if kind in _LOOKALIKE:
        return str(rng.choice(_LOOKALIKE[kind])).format(pol=pol)
    if kind not in _NOUNS:
        raise ValueError(f"no caption vocabulary for region kind {kind!r}")
    side = float(attrs.get("side", 10.0))
    size = "tiny" if side < 7 else "small" if side < 14 else ("long" if attrs.get("shape") in ("linear", "jagged")
                                                             else "large")
    cnr = float(attrs.get("cnr", 5.0))
    contrast = "faint" if cnr < 4.5 else "high-contrast" if cnr > 6.5 else "clear"
    words = {"size": size, "pol": pol, "shape": str(rng.choice(_SHAPES[str(attrs.get("shape", "round"))])),
             "noun": str(rng.choice(_NOUNS[kind])), "contrast": contrast}
    return str(rng.choice(_DEFECT_TEMPLATES)).format(**words)


def build_corpus(cfg: ClipTrainConfig, progress: bool = False) -> dict[str, Any]:
    """Generate the caption corpus: crops [N,S,S] float16 in [0,1], region kinds, attributes."""
    from gsal_edge.acquisition.diffusion_difficulty import crop_regions
    from gsal_edge.data.preprocessing import to_unit_float
    from gsal_edge.data.synthetic.generator import iter_slices

    cc = cfg.corpus
    scfg = corpus_synth_config(cc)
    rng = np.random.default_rng([cfg.seed, cc.seed, 11])
    S = cfg.arch.image_size
    crops: list[np.ndarray] = []
    kinds: list[str] = []
    attrs: list[dict[str, Any]] = []
    it = iter_slices(scfg, cc.n_slices, cc.seed)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, total=cc.n_slices, desc="caption corpus", unit="slice")
    for s in it:
        img = to_unit_float(s.image)
        taken = [tuple(a.box) for a in s.annotations] + [tuple(lk["box"]) for lk in s.lookalikes]
        regions: list[tuple[tuple[float, ...], str, dict[str, Any]]] = []
        for a in s.annotations:
            side = max(a.box[2] - a.box[0], a.box[3] - a.box[1])
            regions.append((tuple(a.box), a.category, {**a.attributes, "side": side}))
        for lk in s.lookalikes:
            regions.append((tuple(lk["box"]), lk["type"], {"polarity": lk.get("polarity", "dark")}))
        sizes = [(b[2] - b[0], b[3] - b[1]) for b, _, _ in regions] or [(12.0, 12.0)]
        n_bg = cc.background_per_slice * cc.views  # background gets as many crops as a region with its views
        for b in background_boxes(img, taken, sizes, n_bg, rng, cc.view_scale if cc.views > 1 else (1.0, 1.0),
                                  cc.hard_background_share, cc.hard_background_candidates):
            regions.append((b, "background", {}))
        for box, kind, at in regions:
            kept = {k: at[k] for k in ("polarity", "shape", "cnr", "side") if k in at}
            for v in range(1 if kind == "background" else cc.views):
                view = box if v == 0 else proposal_view(box, rng, cc.view_scale, cc.view_shift)
                m = float(rng.uniform(*cc.margin_range))
                crops.append(crop_regions(img, [view], margin=m, size=S)[0].astype(np.float16))
                kinds.append(kind)
                attrs.append(kept)
    return {"crops": np.stack(crops), "kinds": kinds, "attrs": attrs}


def _save_corpus(path: Path, corpus: dict[str, Any]) -> None:
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, crops=corpus["crops"], meta=np.array(json.dumps({"kinds": corpus["kinds"], "attrs": corpus["attrs"]})))
    tmp.replace(path)


def _load_corpus(path: Path) -> dict[str, Any]:
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        return {"crops": z["crops"], **meta}


# ---------------------------------------------------------------------- loss
def multi_positive_clip_loss(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor,
                             caption_ids: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where pairs with the same caption id are all positives (soft targets).

    ``img``, ``txt``: L2-normalized [B,d]; ``caption_ids``: int [B]. With all ids distinct this is
    the standard CLIP loss.
    """
    logits = logit_scale.exp().clamp(max=100.0) * img @ txt.t()
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    targets = same / same.sum(1, keepdim=True)
    li = -(targets * F.log_softmax(logits, dim=1)).sum(1).mean()
    lt = -(targets * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (li + lt)


def _lr_at(step: int, cfg: ClipTrainConfig) -> float:
    if cfg.warmup and step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))


def _batch(corpus: dict[str, Any], cfg: ClipTrainConfig, step: int, mean: float, std: float
           ) -> tuple[torch.Tensor, list[str]]:
    rng = np.random.default_rng([cfg.seed, 21, step])
    n = len(corpus["kinds"])
    idx = rng.integers(0, n, cfg.batch_size)
    x = corpus["crops"][idx].astype(np.float32)
    flip = rng.random(len(idx)) < 0.5
    x[flip] = x[flip, :, ::-1]
    j = cfg.intensity_jitter
    x = x * rng.uniform(1 - j, 1 + j, (len(idx), 1, 1)) + rng.uniform(-j, j, (len(idx), 1, 1))
    x = (np.clip(x, 0, 1) - mean) / std
    caps = [caption(corpus["kinds"][i], corpus["attrs"][i], rng) for i in idx]
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))[:, None].expand(-1, 3, -1, -1).contiguous()
    return t, caps


# ---------------------------------------------------------------------- training
def train_clip(out_dir: str | Path, cfg: ClipTrainConfig | None = None, progress: bool = True,
               restart: bool = False, stop_after: int | None = None,
               log: Callable[[str], None] | None = None, bar_position: int = 0, key_extra: str = "",
               on_mismatch: Literal["raise", "restart"] = "raise") -> dict[str, Any]:
    """Generate the corpus (cached), train the small open_clip model, save it in ``out_dir``.

    Resumes from ``out_dir/checkpoints/train_state.pt`` when the config (and ``key_extra``, e.g. a code
    version) matches; a mismatch raises, or starts over with ``on_mismatch="restart"``; ``restart``
    ignores any checkpoint. ``stop_after`` (tests) stops after that many new steps. Returns the summary
    written to ``gsal_clip.json``.
    """
    import open_clip
    from safetensors.torch import save_file

    from gsal_edge.models.clip_model import register_model_config

    cfg = cfg or ClipTrainConfig()
    out = Path(out_dir)
    ck = out / "checkpoints"
    ck.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: None)
    torch.set_num_threads(cfg.threads)
    digest = cfg.digest() + key_extra
    state_path, corpus_path = ck / STATE_FILE, ck / CORPUS_FILE
    saved = None
    if state_path.is_file() and not restart:
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        if saved.get("digest") != digest:
            if on_mismatch != "restart":
                raise RuntimeError(f"{state_path}: checkpoint was made with another config; "
                                   "use another --out folder or --restart")
            say(f"{state_path}: made with another config or code version; starting over")
            saved = None
    if restart or saved is None:
        corpus_path.unlink(missing_ok=True)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    seconds: dict[str, float] = dict(saved["seconds"]) if saved else {}
    cpu_seconds: dict[str, float] = dict(saved["cpu_seconds"]) if saved else {}
    losses: list[float] = list(saved["losses"]) if saved else []
    if corpus_path.is_file():
        corpus = _load_corpus(corpus_path)
    else:
        corpus = build_corpus(cfg, progress)
        _save_corpus(corpus_path, corpus)
        seconds["corpus"] = time.perf_counter() - wall0
        cpu_seconds["corpus"] = time.process_time() - cpu0
    crops32 = corpus["crops"].astype(np.float32)
    mean, std = float(crops32.mean()), float(crops32.std())
    del crops32

    arch = cfg.arch.open_clip_config()
    cfg_file = out / f"{cfg.model_name}.json"
    cfg_file.write_text(json.dumps(arch, indent=2))
    name = register_model_config(cfg_file)
    torch.manual_seed(cfg.seed)
    model = open_clip.create_model(name, pretrained=None)
    tok = open_clip.get_tokenizer(name)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    step = 0
    if saved is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        step = int(saved["step"])
        say(f"resuming CLIP at step {step}")

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"digest": digest, "step": step, "model": model.state_dict(), "opt": opt.state_dict(),
                    "seconds": seconds, "cpu_seconds": cpu_seconds, "losses": losses}, tmp)
        tmp.replace(state_path)

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, desc="train CLIP", unit="step", disable=not progress,
               position=bar_position, leave=bar_position == 0)
    budget = stop_after if stop_after is not None else -1
    model.train()
    w0, c0 = time.perf_counter(), time.process_time()

    def lap() -> None:
        nonlocal w0, c0
        seconds["train"] = seconds.get("train", 0.0) + time.perf_counter() - w0
        cpu_seconds["train"] = cpu_seconds.get("train", 0.0) + time.process_time() - c0
        w0, c0 = time.perf_counter(), time.process_time()

    while step < cfg.steps and budget != 0:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        x, caps = _batch(corpus, cfg, step, mean, std)
        uniq = {c: i for i, c in enumerate(dict.fromkeys(caps))}
        ids = torch.tensor([uniq[c] for c in caps])
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tok(caps)), dim=-1)
        loss = multi_positive_clip_loss(img, txt, model.logit_scale, ids)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.item()))
        step += 1
        budget -= 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.checkpoint_every == 0:
            lap()
            save_state()
    bar.close()
    lap()
    save_state()
    if step < cfg.steps:
        return {"stopped": True, "step": step}

    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / CLIP_WEIGHTS))
    counts: dict[str, int] = {}
    for k in corpus["kinds"]:
        counts[k] = counts.get(k, 0) + 1
    summary = {
        "model_name": cfg.model_name,
        "config_file": cfg_file.name,
        "checkpoint": CLIP_WEIGHTS,
        "image_mean": [mean] * 3,
        "image_std": [std] * 3,
        "train": {
            "corpus_regions": counts,
            "corpus_slices": cfg.corpus.n_slices,
            "corpus_seed": cfg.corpus.seed,
            "config_digest": digest,
            "steps": cfg.steps,
            "loss": {"first": round(float(np.mean(losses[:20])), 4), "last": round(float(np.mean(losses[-20:])), 4)}
            if losses else {},
            "wall_seconds": {k: round(v, 2) for k, v in seconds.items()},
            "cpu_seconds": {k: round(v, 2) for k, v in cpu_seconds.items()},
            "threads": cfg.threads,
            "params": sum(p.numel() for p in model.parameters()),
            "image_params": sum(p.numel() for p in model.visual.parameters()),
        },
    }
    (out / CLIP_META).write_text(json.dumps(summary, indent=2))
    from gsal_edge.models.diffusion_training import _run_info

    (out / "run.json").write_text(json.dumps({"kind": "clip", "config": cfg.model_dump(mode="json"),
                                              **_run_info(), **summary}, indent=2))
    return summary
