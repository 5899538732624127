"""The embedded defaults (diffusion prior + CLIP): their config file and the cached build of both.

``train_defaults`` trains both under one folder; its cache key (:func:`defaults_key`) hashes the
config, the code of every module that shapes the weights (:func:`code_version`) and the training
slices, so a second call with the same inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from gsal_edge.config_files import CONFIGS_DIR, StrictModel, read_yaml_mapping, validation_message
from gsal_edge.errors import GSALError
from gsal_edge.models.clip_training import ClipTrainConfig
from gsal_edge.models.diffusion_training import DiffusionTrainConfig

DEFAULT_MODELS_CONFIG = CONFIGS_DIR / "models_default.yaml"
DEFAULTS_RECORD = "defaults.json"
POOL_RECORD = "pool.json"  # the generated pool's {n, seed}: another seed or size regenerates it
# modules whose code shapes the trained weights (part of the cache key)
_CODE_MODULES = ("models.diffusion_training", "models.clip_training", "models.diffusion_prior", "models.clip_model",
                 "data.model_inputs", "acquisition.diffusion_difficulty", "data.synthetic.config", "data.synthetic.render",
                 "data.synthetic.generator", "data.preprocessing", "data.image_io")


class ModelsConfigError(GSALError, ValueError):
    """The models config file is unreadable or invalid; the message names the file and field."""


class DefaultsConfig(StrictModel):
    """``configs/models_default.yaml``: both embedded defaults and how train-defaults builds them."""

    pool_slices: int = Field(600, ge=1, description="slices generated when no --data is given")
    pool_seed: int = Field(4242, description="generator seed of that pool: no benchmark preset's data seed")
    long_factor: float = Field(4.0, ge=1.0, description="--long multiplies every step count by this")
    parallel: bool = True
    diffusion: DiffusionTrainConfig = DiffusionTrainConfig()
    clip: ClipTrainConfig = ClipTrainConfig()

    def lengthened(self, factor: float) -> DefaultsConfig:
        """The same config with every training step count multiplied by ``factor``."""
        d = self.model_dump()
        d["diffusion"]["vae"]["steps"] = round(d["diffusion"]["vae"]["steps"] * factor)
        d["diffusion"]["unet"]["steps"] = round(d["diffusion"]["unet"]["steps"] * factor)
        d["clip"]["steps"] = round(d["clip"]["steps"] * factor)
        return DefaultsConfig.model_validate(d)


def load_models_config(path: str | Path | None = None) -> DefaultsConfig:
    """The models config at ``path`` (default: the packaged YAML); errors name the file and field."""
    p = Path(path) if path is not None else DEFAULT_MODELS_CONFIG
    data = read_yaml_mapping(p, ModelsConfigError, "models config")
    try:
        return DefaultsConfig.model_validate(data)
    except ValidationError as e:
        raise ModelsConfigError(f"{p}: {validation_message(e)}") from None


def _normalized_source(path: Path) -> str:
    """The module's AST without docstrings: comments, formatting and docs do not change the key."""
    import ast

    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.dump(tree, annotate_fields=False)


def code_version() -> str:
    """sha256 over the package version and the (normalized) code of the modules that shape the weights."""
    import importlib

    from gsal_edge import __version__

    h = hashlib.sha256(__version__.encode())
    for name in _CODE_MODULES:
        mod = importlib.import_module(f"gsal_edge.{name}")
        h.update(name.encode())
        h.update(_normalized_source(Path(mod.__file__)).encode())  # type: ignore[arg-type]
    return h.hexdigest()


def defaults_key(cfg: DefaultsConfig, data_fingerprint: str) -> str:
    """Cache key of train-defaults: config (minus threads/parallelism) + code version + data."""
    parts = {"diffusion": cfg.diffusion.digest(), "clip": cfg.clip.digest(), "code": code_version(),
             "data": data_fingerprint}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def ensure_generated_pool(data: Path, n: int, seed: int, echo: Any = print) -> Path:
    """The generated unlabeled pool of ``n`` slices with generator ``seed`` in ``data`` (POOL_RECORD says
    which); regenerated when missing or made with another seed or size (a pool without the record was
    made before it existed, with seed 0)."""
    made = {"n": n, "seed": seed}
    record = data / POOL_RECORD
    if (data / "annotations.json").is_file() and record.is_file() and json.loads(record.read_text()) == made:
        return data
    import shutil

    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset

    if data.exists():
        shutil.rmtree(data)
    echo(f"no --data: generating {n} unlabeled pool slices (seed {seed}) into {data}")
    generate_dataset(data, n, seed, SynthConfig(), progress=True)
    record.write_text(json.dumps(made))
    return data


# -------------------------------------------------------------------- workers (top level: picklable)
def _diffusion_job(data: str, out: str, cfg_json: dict[str, Any], restart: bool, position: int,
                   code: str) -> dict[str, Any]:
    from gsal_edge.models.diffusion_training import train_diffusion

    return train_diffusion(data, out, DiffusionTrainConfig.model_validate(cfg_json), progress=True, restart=restart,
                           bar_position=position, key_extra=code, on_mismatch="restart")


def _clip_job(out: str, cfg_json: dict[str, Any], restart: bool, position: int, code: str) -> dict[str, Any]:
    from gsal_edge.models.clip_training import train_clip

    return train_clip(out, ClipTrainConfig.model_validate(cfg_json), progress=True, restart=restart,
                      bar_position=position, key_extra=code, on_mismatch="restart")


def train_defaults(out: Path, data: Path | None = None, cfg: DefaultsConfig | None = None, long: bool = False,
                   force: bool = False, echo: Any = print) -> dict[str, Any]:
    """Build (or reuse) both embedded defaults under ``out``: ``out/diffusion`` and ``out/clip``.

    Without ``data`` the unlabeled pool is generated into ``out/pool`` (pool generator). Cached by
    :func:`defaults_key`; returns the ``defaults.json`` record.
    """
    from gsal_edge.models.diffusion_training import data_fingerprint, list_images

    cfg = cfg or load_models_config()
    if long:
        cfg = cfg.lengthened(cfg.long_factor)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if data is None:
        data = out / "pool"
        ensure_generated_pool(data, cfg.pool_slices, cfg.pool_seed, echo)
    paths = list_images(data)
    code = code_version()
    key = defaults_key(cfg, data_fingerprint(paths, data))
    rec_path = out / DEFAULTS_RECORD
    if rec_path.is_file() and not force:
        rec = json.loads(rec_path.read_text())
        if rec.get("key") == key and (out / "diffusion" / "unet").is_dir() and (out / "clip" / "gsal_clip.json").is_file():
            echo(f"{out}: embedded defaults are up to date (key {key[:12]}); nothing to do")
            return rec
    restart = force
    dcfg, ccfg = cfg.diffusion, cfg.clip
    if cfg.parallel:  # one process and one thread each: two cores busy, no thread oversubscription
        dcfg = dcfg.model_copy(update={"threads": 1})
        ccfg = ccfg.model_copy(update={"threads": 1})
        with ProcessPoolExecutor(max_workers=2, mp_context=__import__("multiprocessing").get_context("spawn")) as ex:
            fd = ex.submit(_diffusion_job, str(data), str(out / "diffusion"), dcfg.model_dump(mode="json"), restart, 0,
                           code)
            fc = ex.submit(_clip_job, str(out / "clip"), ccfg.model_dump(mode="json"), restart, 1, code)
            ds, cs = fd.result(), fc.result()
    else:
        ds = _diffusion_job(str(data), str(out / "diffusion"), dcfg.model_dump(mode="json"), restart, 0, code)
        cs = _clip_job(str(out / "clip"), ccfg.model_dump(mode="json"), restart, 0, code)
    rec = {"key": key, "data": str(data), "images": len(paths), "long": long, "parallel": cfg.parallel,
           "wall_seconds": round(time.perf_counter() - t0, 1), "diffusion": ds, "clip": cs,
           "config": cfg.model_dump(mode="json")}
    rec_path.write_text(json.dumps(rec, indent=2))
    return rec
