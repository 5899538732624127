"""`gsal-edge models ...`: train the embedded default diffusion prior and CLIP, inspect model folders.

Thin IO over :mod:`gsal_edge.models.diffusion_training` and :mod:`gsal_edge.models.clip_training`. The one piece
of logic here is the build cache of ``train-defaults``: its key hashes the models config, the code
of every module that shapes the weights, and the training slices, so a second call with the same
inputs does nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

import typer
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gsal_edge.config_files import CONFIGS_DIR, read_yaml_mapping, validation_message
from gsal_edge.models.clip_training import ClipTrainConfig
from gsal_edge.models.diffusion_training import DiffusionTrainConfig

DEFAULT_MODELS_CONFIG = CONFIGS_DIR / "models_default.yaml"
DEFAULTS_RECORD = "defaults.json"
# modules whose code shapes the trained weights (part of the cache key)
_CODE_MODULES = ("models.diffusion_training", "models.clip_training", "models.diffusion_prior", "models.clip_model",
                 "acquisition.diffusion_difficulty", "data.synthetic.config", "data.synthetic.render",
                 "data.synthetic.generator", "data.preprocessing", "data.image_io")

app = typer.Typer(help="Diffusion prior and CLIP: embedded defaults and real weights.", no_args_is_help=True)


class ModelsConfigError(ValueError):
    """The models config file is unreadable or invalid; the message names the file and field."""


class ModelsConfig(BaseModel):
    """``configs/models_default.yaml``: both embedded defaults and how train-defaults builds them."""

    model_config = ConfigDict(extra="forbid")

    pool_slices: int = Field(600, ge=1, description="slices generated when no --data is given")
    pool_seed: int = 0
    long_factor: float = Field(4.0, ge=1.0, description="--long multiplies every step count by this")
    parallel: bool = True
    diffusion: DiffusionTrainConfig = DiffusionTrainConfig()
    clip: ClipTrainConfig = ClipTrainConfig()

    def lengthened(self, factor: float) -> ModelsConfig:
        """The same config with every training step count multiplied by ``factor``."""
        d = self.model_dump()
        d["diffusion"]["vae"]["steps"] = round(d["diffusion"]["vae"]["steps"] * factor)
        d["diffusion"]["unet"]["steps"] = round(d["diffusion"]["unet"]["steps"] * factor)
        d["clip"]["steps"] = round(d["clip"]["steps"] * factor)
        return ModelsConfig.model_validate(d)


def load_models_config(path: str | Path | None = None) -> ModelsConfig:
    """The models config at ``path`` (default: the packaged YAML); errors name the file and field."""
    p = Path(path) if path is not None else DEFAULT_MODELS_CONFIG
    data = read_yaml_mapping(p, ModelsConfigError, "models config")
    try:
        return ModelsConfig.model_validate(data)
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


def defaults_key(cfg: ModelsConfig, data_fingerprint: str) -> str:
    """Cache key of train-defaults: config (minus threads/parallelism) + code version + data."""
    parts = {"diffusion": cfg.diffusion.digest(), "clip": cfg.clip.digest(), "code": code_version(),
             "data": data_fingerprint}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load(config: Path | None) -> ModelsConfig:
    try:
        return load_models_config(config)
    except ModelsConfigError as e:
        _fail(str(e))


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


# -------------------------------------------------------------------- commands
@app.command("train-diffusion")
def train_diffusion_cmd(
    data: Path = typer.Option(..., "--data", help="Folder of UNLABELED slices (searched recursively; labels never read)."),
    out: Path = typer.Option(..., "--out", help="Prior folder to write (vae/, unet/, scheduler/, gsal_prior.json)."),
    steps: int | None = typer.Option(None, "--steps", min=0, help="UNet training steps (default: config)."),
    vae_steps: int | None = typer.Option(None, "--vae-steps", min=0, help="VAE training steps (default: config)."),
    config: Path | None = typer.Option(None, "--config", help="Models config YAML (its `diffusion` section)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: config)."),
    restart: bool = typer.Option(False, "--restart", help="Ignore an existing checkpoint in --out."),
) -> None:
    """Train the embedded default diffusion prior (VAE, then UNet); resumes from --out's checkpoint."""
    from gsal_edge.models.diffusion_training import train_diffusion

    d = _load(config).diffusion.model_dump()
    if steps is not None:
        d["unet"]["steps"] = steps
    if vae_steps is not None:
        d["vae"]["steps"] = vae_steps
    if threads:
        d["threads"] = threads
    cfg = DiffusionTrainConfig.model_validate(d)
    try:
        s = train_diffusion(data, out, cfg, progress=True, restart=restart, log=typer.echo)
    except (FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    t = s["train"]
    typer.echo(f"wrote {out}: {t['images']} slices, scaling factor {s['scaling_factor']:.4f}, "
               f"VAE {t['vae_params']:,} + UNet {t['unet_params']:,} params, wall seconds {t['wall_seconds']}")


@app.command("train-clip")
def train_clip_cmd(
    out: Path = typer.Option(..., "--out", help="CLIP folder to write (config json, safetensors, gsal_clip.json)."),
    steps: int | None = typer.Option(None, "--steps", min=0, help="Training steps (default: config)."),
    config: Path | None = typer.Option(None, "--config", help="Models config YAML (its `clip` section)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch threads (default: config)."),
    restart: bool = typer.Option(False, "--restart", help="Ignore an existing checkpoint in --out."),
) -> None:
    """Train the embedded default CLIP on its own generated caption corpus (never the pool)."""
    from gsal_edge.models.clip_training import train_clip

    d = _load(config).clip.model_dump()
    if steps is not None:
        d["steps"] = steps
    if threads:
        d["threads"] = threads
    try:
        s = train_clip(out, ClipTrainConfig.model_validate(d), progress=True, restart=restart, log=typer.echo)
    except RuntimeError as e:
        _fail(str(e))
    t = s["train"]
    typer.echo(f"wrote {out}: {s['model_name']} ({t['params']:,} params), corpus {sum(t['corpus_regions'].values())} "
               f"regions, wall seconds {t['wall_seconds']}")


def train_defaults(out: Path, data: Path | None = None, cfg: ModelsConfig | None = None, long: bool = False,
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
        if not (data / "annotations.json").is_file():
            from gsal_edge.data.synthetic.config import SynthConfig
            from gsal_edge.data.synthetic.generator import generate_dataset

            echo(f"no --data: generating {cfg.pool_slices} unlabeled pool slices into {data}")
            generate_dataset(data, cfg.pool_slices, cfg.pool_seed, SynthConfig(), progress=True)
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


@app.command("train-defaults")
def train_defaults_cmd(
    out: Path = typer.Option(Path("artifacts/models"), "--out", help="Folder for diffusion/ and clip/."),
    data: Path | None = typer.Option(None, "--data", help="Unlabeled slices for the prior (default: generate a pool)."),
    config: Path | None = typer.Option(None, "--config", help="Models config YAML (default: the packaged one)."),
    long: bool = typer.Option(False, "--long", help="Longer schedules (every step count x long_factor)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when the cache key matches."),
) -> None:
    """Build every embedded default (diffusion prior + CLIP) in one go, cached by content hash."""
    try:
        rec = train_defaults(out, data, _load(config), long, force, echo=typer.echo)
    except (FileNotFoundError, RuntimeError) as e:
        _fail(str(e))
    typer.echo(f"embedded defaults in {out} (key {rec['key'][:12]}), built in {rec['wall_seconds']} s")


@app.command("info")
def info_cmd(
    prior: Path | None = typer.Option(None, "--prior", help="Diffusion prior folder (SD layout)."),
    clip: Path | None = typer.Option(None, "--clip", help="CLIP folder (gsal_clip.json)."),
) -> None:
    """Load model folders through the real-weights code and print their sizes and settings."""
    if prior is None and clip is None:
        _fail("give --prior and/or --clip")
    if prior is not None:
        from gsal_edge.models.diffusion_prior import DiffusionPrior, PriorError

        try:
            typer.echo(json.dumps({"prior": DiffusionPrior.from_pretrained(prior).info()}, indent=2))
        except PriorError as e:
            _fail(str(e))
    if clip is not None:
        from gsal_edge.models.clip_model import ClipError, ClipModel

        try:
            typer.echo(json.dumps({"clip": ClipModel.from_folder(clip).info()}, indent=2))
        except ClipError as e:
            _fail(str(e))
