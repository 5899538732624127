"""`gsal-edge models ...`: train the embedded default diffusion prior and CLIP, inspect model folders.

Thin IO over :mod:`gsal_edge.models.diffusion_training`, :mod:`gsal_edge.models.clip_training` and
:mod:`gsal_edge.models.defaults` (the cached build of ``train-defaults``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer

from gsal_edge.errors import GSALError
from gsal_edge.models.clip_training import ClipTrainConfig
from gsal_edge.models.defaults import DefaultsConfig, load_models_config, train_defaults
from gsal_edge.models.diffusion_training import DiffusionTrainConfig

app = typer.Typer(help="Diffusion prior and CLIP: embedded defaults and real weights.", no_args_is_help=True)


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _load(config: Path | None) -> DefaultsConfig:
    try:
        return load_models_config(config)
    except GSALError as e:
        _fail(str(e))


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
    window: str | None = typer.Option(None, "--window", help="Intensity window of the slices: auto (robust "
                                      "percentiles of the data), bits:12 (12-bit counts in 16-bit files), or "
                                      "LO,HI; default: the dtype's range. Use the window the scorer will use."),
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
    if window is not None:
        from gsal_edge.data.preprocessing import parse_window

        try:
            d["window"] = parse_window([float(v) for v in window.split(",")] if "," in window else window)
        except ValueError as e:
            _fail(f"--window {window!r}: {e}")
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
