"""`gsal-edge bench`: the active-learning benchmark (paper protocol) with tables, plots and a gallery.

    gsal-edge bench --out RUN_DIR [--preset quick|paper|tiny] [--data DATASET]
                    [--strategies gsal,entropy,random,gsal[proposal_mode=crop]] [--seeds 3]
                    [--init 0.01 --step 0.01 --budget 0.10] [--detector cpu] [--models DIR]
                    [--set name=value ...] [--sweep gamma=0.25,0.5,1.0 ...] [--config FIELDS.yaml]
                    [--prior-source files|pool]
    gsal-edge bench --out RUN_DIR            # resume a killed run with its stored config
    gsal-edge bench --report-only RUN_DIR    # rewrite RUN_DIR/report.md and the PNGs

Register with ``app.command("bench", help=...)(bench)``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any

import typer

from gsal_edge.benchmark.config import BenchError, load_preset, split_top
from gsal_edge.benchmark.run import run_benchmark
from gsal_edge.benchmark.state import stored_config
from gsal_edge.config_files import read_yaml_mapping
from gsal_edge.errors import GSALError


def _sweep(items: list[str]) -> dict[str, list[Any]]:
    import yaml

    out: dict[str, list[Any]] = {}
    for item in items:
        if "=" not in item:
            raise BenchError(f"--sweep {item!r}: expected name=v1,v2,...")
        name, vals = item.split("=", 1)
        out[name.strip()] = [yaml.safe_load(v) for v in split_top(vals)]
    return out


def _read_config(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, BenchError, "--config (a mapping of benchmark fields)")


def bench(
    out: Annotated[Path | None, typer.Option("--out", help="run folder (created, or resumed)")] = None,
    preset: Annotated[str, typer.Option(help="quick | dev-a | dev-b | paper | tiny (configs/bench_presets.yaml; choose on dev-*, report on quick)")] = "quick",
    config: Annotated[Path | None, typer.Option(help="YAML of benchmark fields merged over the preset "
                                                    "(e.g. detector_overrides, data.test_fraction)")] = None,
    data: Annotated[Path | None, typer.Option(help="COCO json/folder, VOC folder or YOLO folder; "
                                                      "default: the preset's synthetic data")] = None,
    strategies: Annotated[str | None, typer.Option(help="comma list; NAME or NAME[param=value,...]")] = None,
    seeds: Annotated[int | None, typer.Option(help="number of seeds (0..N-1)")] = None,
    init: Annotated[float | None, typer.Option(help="initial labeled share of the pool")] = None,
    step: Annotated[float | None, typer.Option(help="labeled share added per round")] = None,
    budget: Annotated[float | None, typer.Option(help="final labeled share")] = None,
    detector: Annotated[str | None, typer.Option(help="detector preset (paper|edge|cpu|tiny) or YAML")] = None,
    train_iters: Annotated[int | None, typer.Option(help="detector iterations of a from-scratch training")] = None,
    retrain: Annotated[str | None, typer.Option(help="scratch (every round) | finetune (round 0 from scratch, "
                                                     "then the previous round's detector)")] = None,
    finetune_iters: Annotated[int | None, typer.Option(help="detector iterations of a fine-tuning round")] = None,
    candidates: Annotated[int | None, typer.Option(help="score a seeded random subset of this many unlabeled "
                                                         "images per round (default: the preset's)")] = None,
    models: Annotated[Path | None, typer.Option(help="folder with prior/ (or diffusion/) and clip/ "
                                                         "[default: artifacts/models, from `models train-defaults`]")] = None,
    prior: Annotated[Path | None, typer.Option(help="diffusion prior folder")] = None,
    clip: Annotated[Path | None, typer.Option(help="CLIP folder (gsal_clip.json)")] = None,
    prior_source: Annotated[str | None, typer.Option(help="files (the prior folder: --models/--prior) | pool "
                                                          "(train the prior on this run's unlabeled pool only, "
                                                          "cached by content hash)")] = None,
    graph: Annotated[str | None, typer.Option(help="concept graph name or file")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="GSAL parameter name=value (repeatable)")] = None,
    sweep: Annotated[list[str] | None, typer.Option(help="one-at-a-time sweep name=v1,v2,... (repeatable); "
                                                            "alpha_beta=v sets alpha=v, beta=1-v")] = None,
    threads: Annotated[int | None, typer.Option(help="torch threads")] = None,
    device: Annotated[str | None, typer.Option(help="device of detector training, evaluation and scoring: "
                                                     "cpu | cuda[:N] | auto")] = None,
    n_images: Annotated[int | None, typer.Option(help="synthetic data: images generated (pool + test)")] = None,
    report_only: Annotated[Path | None, typer.Option("--report-only", help="only rewrite RUN_DIR's report")] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run (or resume) the active-learning benchmark and write RUN_DIR/report.md."""
    from gsal_edge.benchmark.report import write_report

    try:
        if report_only is not None:
            path = write_report(report_only)
            typer.echo(f"wrote {path}")
            return
        if out is None:
            raise BenchError("--out RUN_DIR is required (or --report-only RUN_DIR)")
        ov: dict[str, Any] = _read_config(config) if config is not None else {}
        if data is not None:
            ov.setdefault("data", {})["path"] = str(data)
        if n_images is not None:
            ov.setdefault("data", {}).setdefault("synthetic", {})["n"] = n_images
        if strategies is not None:
            ov["strategies"] = split_top(strategies)
        if seeds is not None:
            if seeds < 1:
                raise BenchError(f"--seeds must be >= 1, got {seeds}")
            ov["seeds"] = list(range(seeds))
        for k, v in (("init", init), ("step", step), ("budget", budget), ("detector", detector),
                     ("train_iters", train_iters), ("retrain", retrain), ("finetune_iters", finetune_iters),
                     ("candidates", candidates), ("graph", graph), ("threads", threads), ("device", device)):
            if v is not None:
                ov[k] = v
        if models is not None:
            ov.setdefault("models", {})["dir"] = str(models)
        if prior is not None:
            ov.setdefault("models", {})["prior"] = str(prior)
        if clip is not None:
            ov.setdefault("models", {})["clip"] = str(clip)
        if prior_source is not None:
            ov.setdefault("models", {})["prior_source"] = prior_source
        if prior is not None and prior_source is None:  # an explicit --prior folder beats a preset's `pool`
            ov["models"]["prior_source"] = "files"
        if set_:  # appended to the preset's (or --config's) GSAL overrides; later ones win
            ov["gsal"] = list(ov.get("gsal", load_preset(preset).gsal)) + list(set_)
        if sweep:
            ov["sweep"] = _sweep(sweep)
        only_placement = set(ov) <= {"threads", "device"}
        if (out / "run.json").is_file() and only_placement:
            cfg = stored_config(out)
            cfg = cfg.model_copy(update={k: ov[k] for k in ("threads", "device") if k in ov})
            typer.echo(f"resuming {out} (preset {cfg.preset})")
        else:
            cfg = load_preset(preset, ov)
        logging.getLogger("gsal_edge.models.detector_training").setLevel(logging.WARNING)
        run_benchmark(cfg, out, progress=not quiet, say=typer.echo)
        typer.echo(f"wrote {out / 'report.md'}")
    except (GSALError, FileNotFoundError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
