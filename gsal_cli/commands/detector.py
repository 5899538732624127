"""`gsal-edge detector ...` commands: train, eval, presets (thin IO over gsal_edge.models.detector*)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, NoReturn

import typer

from gsal_edge.errors import GSALError
from gsal_edge.jsonio import to_jsonable

app = typer.Typer(help="Train and evaluate the Faster R-CNN detector.", no_args_is_help=True)


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


def _window(lo: float | None, hi: float | None, spec: str | None = None) -> object:
    """The window declaration: --window-lo/--window-hi (stored units) or --window (auto, dtype, bits:N, LO,HI)."""
    if (lo is None) != (hi is None):
        _fail("--window-lo and --window-hi go together")
    if lo is not None:
        return (float(lo), float(hi))  # type: ignore[arg-type]
    if spec is None:
        return None
    from gsal_edge.data.preprocessing import parse_window

    try:
        return parse_window([float(v) for v in spec.split(",")] if "," in spec else spec)
    except ValueError as exc:
        _fail(f"--window: {exc}")


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    """``--set a.b=v`` pairs (v parsed as YAML) as a nested override dict."""
    import yaml

    out: dict[str, Any] = {}
    for s in sets:
        if "=" not in s:
            _fail(f"--set {s!r}: expected KEY=VALUE")
        key, val = s.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(val)
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def print_metrics(metrics: dict[str, Any], title: str = "detector") -> None:
    """A rich table: per class n_gt, F1@0.5 (best threshold), AP50, AP@[.5:.95]; then overall."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("class", "n_gt", "F1@0.5", "thr", "AP50", "AP"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for name, v in metrics["per_class"].items():
        t.add_row(name, str(v["n_gt"]), _fmt(v["f1"]), _fmt(v["threshold"]), _fmt(v["ap50"]), _fmt(v["ap"]))
    t.add_section()
    t.add_row("all (micro F1 / mean AP)", str(metrics["n_gt"]), _fmt(metrics["f1"]), _fmt(metrics["threshold"]),
              _fmt(metrics["map50"]), _fmt(metrics["ap"]))
    t.add_row("macro F1", "", _fmt(metrics["f1_macro"]), "", "", "")
    Console().print(t)


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Data set folder (COCO, VOC or YOLO)."),
    out: Path = typer.Option(..., "--out", help="Run folder: last.pt, detector.pt, split.json, metrics.json."),
    preset: str = typer.Option("cpu", "--preset", help="Detector preset: paper, edge, cpu, tiny."),
    config: Path | None = typer.Option(None, "--config", help="Detector config YAML (a full config, or "
                                          "'preset: NAME' plus overrides); replaces --preset."),
    sets: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE (e.g. train.lr=0.01)."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="Epochs (default: the config's)."),
    val_split: float = typer.Option(0.2, "--val-split", min=0.0, max=0.95, help="Held-out share (stratified)."),
    seed: int = typer.Option(0, "--seed", help="Seed of split, init, order, flips, sampling."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from OUT/last.pt if present."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="torch device to train on (cpu, cuda)."),
    window_lo: float | None = typer.Option(None, "--window-lo", help="Window low (stored units)."),
    window_hi: float | None = typer.Option(None, "--window-hi", help="Window high (stored units)."),
    window_spec: str = typer.Option("auto", "--window", help="Intensity window when --window-lo/-hi are not "
                                    "given: auto (p0.5-p99.5 of the training slices), dtype (the stored "
                                    "type's range), bits:N (e.g. bits:12 for 12-bit counts in 16-bit files) "
                                    "or LO,HI; the checkpoint records the resolved window."),
) -> None:
    """Train a detector on DATA minus a held-out split, then evaluate it on that split.

    Without --epochs a config with ``train.schedule: scaled`` (the cpu preset) trains a number of
    iterations that grows with the training-set size; ``train.val_fraction`` holds out a share of the
    training images to pick the best weights (reported as ``validation`` in OUT/run.json)."""
    import torch

    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models.detector_config import apply_overrides, get_config, load_config
    from gsal_edge.models.detector_training import evaluate_detector, split_ids, train_detector

    if threads:
        torch.set_num_threads(threads)
    window = _window(window_lo, window_hi, window_spec)
    try:
        cfg = load_config(config) if config else get_config(preset)
        if sets:
            cfg = apply_overrides(cfg, _parse_sets(sets))
        ds = load_dataset(data)
    except (GSALError, ValueError) as exc:
        _fail(str(exc))
    if ds.skipped:
        typer.echo(f"note: {len(ds.skipped)} annotation item(s) skipped on load, e.g. {ds.skipped[0]}")
    out.mkdir(parents=True, exist_ok=True)
    split_file = out / "split.json"
    if resume and split_file.is_file():
        split = json.loads(split_file.read_text())
        train_ids, val_ids = split["train"], split["val"]
        typer.echo(f"resuming with the split of {split_file} (val share {split['val_split']}, seed {split['seed']})")
    else:
        train_ids, val_ids = split_ids(ds, val_split, seed)
        split_file.write_text(json.dumps({"seed": seed, "val_split": val_split, "data": str(data),
                                          "train": train_ids, "val": val_ids}))
    typer.echo(f"{cfg.name}: {len(train_ids)} train / {len(val_ids)} val images, classes {ds.classes}, "
               f"{torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    try:
        model = train_detector(ds, cfg, epochs, out, seed, resume, train_ids, window=window, progress=True,
                               device=device)
    except GSALError as exc:
        _fail(str(exc))
    typer.echo(f"trained in {time.perf_counter() - t0:.1f} s -> {out / 'detector.pt'}")
    summary = getattr(model, "training_summary", {})
    window = tuple(summary["window"]) if summary.get("window") else None  # the resolved one
    typer.echo(f"{summary.get('iterations')} iterations ({summary.get('epochs')} epochs), window {window}, "
               f"anchors {summary.get('anchor_sizes')} / ratios {summary.get('aspect_ratios')}")
    v = summary.get("validation")
    if v:
        typer.echo(f"validation on {v['n_val']} training images: best {v['metric']} {_fmt(v['best_score'])} "
                   f"after {v['best_iter']} iterations{' (stopped early)' if v['stopped_early'] else ''}")
    if val_ids:
        metrics = evaluate_detector(model, ds, val_ids, window=window, progress=True, device=device)
        (out / "metrics.json").write_text(json.dumps(to_jsonable(metrics), indent=2))
        print_metrics(metrics, f"{cfg.name} on {len(val_ids)} held-out images")


@app.command("eval")
def evaluate(
    ckpt: Path = typer.Option(..., "--ckpt", help="Detector checkpoint (detector.pt or last.pt)."),
    data: Path = typer.Option(..., "--data", help="Data set folder (COCO, VOC or YOLO)."),
    split: Path | None = typer.Option(None, "--split", help="split.json of a training run: evaluate its "
                                         "'val' images only (default: every image of DATA)."),
    json_out: Path | None = typer.Option(None, "--json", help="Also write the metrics here."),
    iou: float = typer.Option(0.5, "--iou", min=0.05, max=0.95, help="IoU threshold of the F1 matching."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    device: str = typer.Option("cpu", "--device", help="torch device (cpu, cuda)."),
) -> None:
    """Evaluate a checkpoint: per-class F1 (IoU 0.5, best threshold), AP50 and COCO AP."""
    import torch

    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models.detector import load_checkpoint
    from gsal_edge.models.detector_training import evaluate_detector

    if threads:
        torch.set_num_threads(threads)
    try:
        model, meta = load_checkpoint(ckpt)
        ds = load_dataset(data)
        ids = json.loads(split.read_text())["val"] if split else None
    except (GSALError, OSError, KeyError, ValueError) as exc:
        _fail(f"{exc}")
    window = meta["preprocessing"].get("window")
    try:
        metrics = evaluate_detector(model, ds, ids, classes=meta["classes"], window=tuple(window) if window else None,
                                    iou_thr=iou, progress=True, device=device)
    except (GSALError, ValueError) as exc:
        _fail(str(exc))
    if json_out:
        json_out.write_text(json.dumps(to_jsonable(metrics), indent=2))
    print_metrics(metrics, f"{ckpt} on {metrics['n_images']} images of {data}")


@app.command("bench")
def bench(
    preset: str = typer.Option("cpu", "--preset", help="Detector preset: paper, edge, cpu, tiny."),
    data: Path | None = typer.Option(None, "--data", help="Data set to draw batches from (default: 32 "
                                        "generated synthetic slices in a temporary folder)."),
    threads: list[int] = typer.Option([1, 2], "--threads", help="Thread counts to time (repeatable)."),
    batch: int = typer.Option(8, "--batch", min=1, help="Batch size."),
    steps: int = typer.Option(10, "--steps", min=1, help="Timed steps per thread count (after 2 warm-up steps)."),
    sets: list[str] = typer.Option([], "--set", help="Config override KEY=VALUE."),
    device: str = typer.Option("cpu", "--device", help="torch device to time on (cpu, cuda); on cuda the "
                                                       "thread count only affects host-side work."),
    n_synth: int = typer.Option(32, "--synth-images", min=1, help="Synthetic slices generated when --data is "
                                                                   "not given."),
) -> None:
    """Time training steps (forward + backward + optimizer) per image, at each thread count."""
    import tempfile

    import torch

    from gsal_edge.data.formats import load_dataset
    from gsal_edge.models.detector import build_detector, count_parameters
    from gsal_edge.models.detector_config import apply_overrides, get_config
    from gsal_edge.models.detector_timing import time_train_steps

    cfg = get_config(preset)
    if sets:
        cfg = apply_overrides(cfg, _parse_sets(sets))
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:
            from gsal_edge.data.synthetic.generator import generate_dataset

            ds = generate_dataset(Path(tmp) / "synth", n_synth, seed=0, progress=False)
        else:
            ds = load_dataset(data)
        n_params = count_parameters(build_detector(cfg, len(ds.classes)))
        for t in threads:
            torch.set_num_threads(t)
            r = time_train_steps(ds, cfg, steps=steps, batch_size=batch, device=device)
            typer.echo(f"{cfg.name}: {n_params / 1e6:.3f} M params, batch {batch}, {device}, {t} thread(s): "
                       f"{1000 * r['per_image_median_s']:.1f} ms/image median, "
                       f"{1000 * r['per_image_min_s']:.1f} ms/image min ({steps} steps)")


@app.command("presets")
def presets() -> None:
    """List the presets with their backbone, input size and parameter count."""
    from gsal_edge.models.detector import build_detector, count_parameters
    from gsal_edge.models.detector_config import PRESET_NAMES, get_config

    for name in PRESET_NAMES:
        cfg = get_config(name)
        n = count_parameters(build_detector(cfg, 5))
        typer.echo(f"{name:6s} {cfg.backbone:24s} {cfg.min_size}-{cfg.max_size} px  {n:>11,d} parameters "
                   f"({n / 1e6:.2f} M, 5 classes)")
