"""A diffusion prior trained on the run's own unlabeled POOL (``models.prior_source: pool``).

The embedded default prior (`gsal-edge models train-defaults`) is trained on generator data of its own; a
benchmark that reports on a data set must not use a prior that has seen that set's validation or test
slices. With ``prior_source: pool`` the prior is trained on the pool slices only (unlabeled, so fair in
active learning), through the `models train-diffusion` code (:func:`gsal_edge.models.diffusion_training.
train_diffusion`), with the run's intensity window. It is cached under ``prior_cache_dir/pool-<key>``, the
key hashing the pool images (ids and file contents), the training config and the code version, so a rerun
(any strategy, seed or resumed run on the same pool) reuses it.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gsal_edge.benchmark.config import BenchError, BenchModels
from gsal_edge.data.dataset import DetectionDataset
from gsal_edge.jsonio import read_json, write_json_atomic

__all__ = ["POOL_PRIOR_RECORD", "pool_images_fingerprint", "pool_prior_config", "pool_prior_dir",
           "pool_prior_key", "stage_pool_images", "train_pool_prior"]

POOL_PRIOR_RECORD = "pool_prior.json"


def pool_prior_config(m: BenchModels, window: Sequence[float] | None, threads: int) -> Any:
    """The DiffusionTrainConfig: the ``diffusion`` section of ``m.prior_config`` (default: the packaged
    models config) with ``m.prior_overrides`` merged in, the run's resolved window and ``threads``."""
    from gsal_edge.benchmark.config import _deep_merge
    from gsal_edge.models.defaults import ModelsConfigError, load_models_config
    from gsal_edge.models.diffusion_training import DiffusionTrainConfig

    try:
        base = load_models_config(m.prior_config).diffusion.model_dump(mode="json")
    except ModelsConfigError as e:
        raise BenchError(f"models.prior_config: {e}") from None
    merged = _deep_merge(base, dict(m.prior_overrides))
    merged["window"] = None if window is None else [float(window[0]), float(window[1])]
    merged["threads"] = int(threads)
    try:
        return DiffusionTrainConfig.model_validate(merged)
    except ValidationError as e:
        raise BenchError(f"models.prior_overrides: {e}") from None


def pool_images_fingerprint(ds: DetectionDataset, pool_ids: Sequence[str]) -> str:
    """sha256 over (image id, file content sha256) of every pool image, in sorted id order."""
    by_id = ds.by_id()
    h = hashlib.sha256()
    for i in sorted(pool_ids):
        h.update(i.encode())
        h.update(hashlib.sha256(ds.image_path(by_id[i]).read_bytes()).digest())
    return h.hexdigest()


def pool_prior_key(pool_fp: str, cfg_digest: str, code: str) -> str:
    """The cache key: pool images, training config digest and code version."""
    return hashlib.sha256(json.dumps({"pool": pool_fp, "config": cfg_digest, "code": code},
                                     sort_keys=True).encode()).hexdigest()[:16]


def pool_prior_dir(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir).resolve() / f"pool-{key}"


def stage_pool_images(ds: DetectionDataset, pool_ids: Sequence[str], folder: Path) -> list[Path]:
    """Link exactly the pool images into ``folder`` (named by image id), the only folder the trainer reads."""
    by_id = ds.by_id()
    folder.mkdir(parents=True, exist_ok=True)
    wanted = {}
    for i in sorted(pool_ids):
        src = ds.image_path(by_id[i]).resolve()
        name = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in i)
        wanted[f"{name}-{hashlib.sha256(i.encode()).hexdigest()[:8]}{src.suffix.lower()}"] = src
    for p in folder.iterdir():
        if p.name not in wanted:
            p.unlink()
    out = []
    for name, src in wanted.items():
        dst = folder / name
        if not (dst.is_symlink() and dst.resolve() == src):
            dst.unlink(missing_ok=True)
            dst.symlink_to(src)
        out.append(dst)
    return out


def train_pool_prior(m: BenchModels, ds: DetectionDataset, pool_ids: Sequence[str],
                     window: Sequence[float] | None, threads: int = 1, progress: bool = True,
                     say: Callable[[str], None] = print) -> Path:
    """The prior folder trained on ``pool_ids`` only (cached; trained, or resumed, when missing)."""
    from gsal_edge.models.defaults import code_version
    from gsal_edge.models.diffusion_training import train_diffusion

    if not pool_ids:
        raise BenchError("models.prior_source=pool: the pool is empty")
    cfg = pool_prior_config(m, window, threads)
    code = code_version()
    key = pool_prior_key(pool_images_fingerprint(ds, pool_ids), cfg.digest(), code)
    root = pool_prior_dir(m.prior_cache_dir, key)
    rec_path = root / POOL_PRIOR_RECORD
    prior = root / "prior"
    if rec_path.is_file() and (prior / "unet").is_dir():
        rec = read_json(rec_path, BenchError)
        if rec.get("key") == key:
            say(f"pool prior {root} is up to date ({rec.get('n_images')} pool images); reusing it")
            return prior
    images = root / "images"
    stage_pool_images(ds, pool_ids, images)
    say(f"training the diffusion prior on the {len(pool_ids)} pool images only (-> {prior}; "
        f"VAE {cfg.vae.steps} + UNet {cfg.unet.steps} steps, {threads} thread(s))")
    t0 = time.perf_counter()
    summary = train_diffusion(images, prior, cfg, progress=progress, key_extra=code, on_mismatch="restart")
    if summary.get("stopped"):
        raise BenchError(f"{prior}: prior training stopped early ({summary})")
    write_json_atomic(root / "pool_ids.json", sorted(pool_ids))
    write_json_atomic(rec_path, {"key": key, "n_images": len(pool_ids), "config": cfg.model_dump(mode="json"),
                                 "code": code, "wall_seconds": round(time.perf_counter() - t0, 1),
                                 "train": summary.get("train", {})})
    return prior
