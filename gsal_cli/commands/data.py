"""`gsal-edge data ...` commands: synth, preview, stats, convert (thin IO over the library)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import NoReturn

import typer

app = typer.Typer(help="Synthetic thin-film CT data, previews, statistics, format conversion.",
                  no_args_is_help=True)


def _fail(msg: str) -> NoReturn:
    typer.secho(f"error: {msg}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=2)


@app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (gets images/ and annotations.json)."),
    n: int = typer.Option(2000, "--n", min=0, help="Number of slices."),
    seed: int | None = typer.Option(None, "--seed", help="Data-set seed (default: the config's seed)."),
    config: Path | None = typer.Option(None, "--config", help="SynthConfig YAML (default: the packaged one)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Processes; the output does not depend on it."),
) -> None:
    """Generate a synthetic thin-film CT data set (16-bit PNG slices + COCO annotations.json)."""
    from gsal_edge.data.dataset import dataset_stats
    from gsal_edge.data.synthetic.config import SynthConfigError, load_config
    from gsal_edge.data.synthetic.generator import generate_dataset

    try:
        cfg = load_config(config)
    except SynthConfigError as exc:
        _fail(str(exc))
    s = cfg.seed if seed is None else seed
    t0 = time.perf_counter()
    ds = generate_dataset(out, n, s, cfg, workers=workers, progress=True)
    dt = time.perf_counter() - t0
    st = dataset_stats(ds)
    typer.echo(f"wrote {n} slices to {out} in {dt:.1f} s (seed {s}); defect-free share "
               f"{st['defect_free_share']:.3f}; images per class: "
               + ", ".join(f"{c} {v['images']}" for c, v in st["classes"].items()))


@app.command("preview")
def preview(
    data: Path = typer.Option(..., "--data", help="Data set folder (COCO, VOC or YOLO) or COCO json."),
    out: Path = typer.Option(..., "--out", help="Contact sheet PNG to write."),
    n: int = typer.Option(16, "--n", min=1, help="Number of slices on the sheet."),
    seed: int = typer.Option(0, "--seed", help="Seed of the image pick."),
    cols: int | None = typer.Option(None, "--cols", min=1, help="Columns (default: about sqrt(n))."),
    stratify: bool = typer.Option(True, "--stratify/--random", help="Show one image per class first."),
    lookalikes: bool = typer.Option(True, "--lookalikes/--no-lookalikes", help="Draw benign look-alikes."),
) -> None:
    """Draw a contact sheet of slices with boxes colored by class (look-alikes dashed gray)."""
    from gsal_edge.data.dataset import DatasetError
    from gsal_edge.data.formats import load_dataset
    from gsal_edge.data.preview import contact_sheet

    try:
        ds = load_dataset(data)
        ids = contact_sheet(ds, out, n=n, seed=seed, cols=cols, stratify=stratify, show_lookalikes=lookalikes)
    except DatasetError as exc:
        _fail(str(exc))
    typer.echo(f"wrote {out} ({len(ids)} slices)")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.3f}%"


@app.command("stats")
def stats(
    data: Path = typer.Option(..., "--data", help="Data set folder (COCO, VOC or YOLO) or COCO json."),
    as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
) -> None:
    """Images and instances per class, defect-free share, box area fractions, products, look-alikes."""
    from rich.console import Console
    from rich.table import Table

    from gsal_edge.data.dataset import DatasetError, dataset_stats
    from gsal_edge.data.formats import load_dataset

    try:
        ds = load_dataset(data)
    except DatasetError as exc:
        _fail(str(exc))
    st = dataset_stats(ds)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    con = Console()
    t = Table(title=f"{data}: {st['images']} images, {st['instances']} instances")
    for col in ("class", "images", "image share", "instances", "area median", "area p95"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c, v in st["classes"].items():
        t.add_row(c, str(v["images"]), f"{100 * v['image_share']:.2f}%", str(v["instances"]),
                  _pct(v["area_fraction_median"]), _pct(v["area_fraction_p95"]))
    t.add_row("all", "", "", str(st["instances"]), _pct(st["area_fraction_median"]), _pct(st["area_fraction_p95"]))
    con.print(t)
    con.print(f"defect-free images: {st['defect_free']} ({100 * st['defect_free_share']:.1f}%)")
    if st["products"]:
        con.print("products: " + ", ".join(f"{k} {v}" for k, v in sorted(st["products"].items())))
    if st["lookalikes"]:
        con.print("look-alikes (not labeled): " + ", ".join(f"{k} {v}" for k, v in sorted(st["lookalikes"].items())))
    for name, items in (("skipped", ds.skipped), ("clipped", ds.clipped)):
        if items:
            con.print(f"{name} on load: {len(items)}", *[f"  {s}" for s in items[:5]], sep="\n")


@app.command("convert")
def convert(
    src: Path = typer.Option(..., "--src", help="Source data set (format detected)."),
    dst: Path = typer.Option(..., "--dst", help="Destination folder."),
    to: str = typer.Option(..., "--to", help="coco | voc | yolo"),
) -> None:
    """Convert a data set between COCO, Pascal VOC and YOLO (images copied as they are)."""
    from gsal_edge.data.dataset import DatasetError
    from gsal_edge.data.formats import FORMATS, load_dataset, save_dataset

    if to not in FORMATS:
        _fail(f"--to must be one of {', '.join(FORMATS)}, got {to!r}")
    try:
        ds = load_dataset(src)
        save_dataset(ds, dst, to, progress=True)
    except DatasetError as exc:
        _fail(str(exc))
    extra = f"; skipped {len(ds.skipped)}, clipped {len(ds.clipped)} on load" if ds.skipped or ds.clipped else ""
    typer.echo(f"wrote {len(ds)} images as {to} to {dst}{extra}")
