"""The `gsal-edge` console script.

The library (`gsal_edge`) must not import `server`, `trainer` or `export`; this small package is the
one place where all of them meet, so each part keeps its own typer app and stays importable alone.
"""

from __future__ import annotations

import logging
import os

import typer

from export import cli as export_cli
from gsal_cli.commands import data, detector, graph, models
from gsal_cli.commands.bench import bench
from gsal_cli.commands.select import select
from server import cli as station_cli
from trainer import cli as trainer_cli

app = typer.Typer(
    name="gsal-edge",
    help="GSAL Edge: pick the CT slices worth an expert's label (generative + symbolic active learning).",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(data.app, name="data", help="Synthetic thin-film CT data, previews, data set conversion.")
app.add_typer(detector.app, name="detector", help="Train and evaluate the Faster R-CNN detector.")
app.add_typer(models.app, name="models", help="Diffusion prior and CLIP: embedded defaults and real weights.")
app.add_typer(graph.app, name="graph", help="Concept graphs: validate and draw.")
app.command("select", help="Re-fuse stored score records and select a batch with rationale.")(select)
app.command("bench", help="Active-learning benchmark (paper protocol): tables, plots, selection gallery.")(bench)
app.add_typer(export_cli.app, name="export", help="Export checkpoints into a signed ONNX (+TensorRT) bundle; keygen; verify.")
app.command("serve", help="Run the station: the gRPC scorer over a bundle.")(station_cli.serve)
app.command("score", help="Score a folder of slices: in-process over a bundle (--bundle) or through a station (--server); write score records.")(station_cli.score)
app.add_typer(station_cli.app, name="station", help="Station client and server commands (info, load-bundle ...).")
app.add_typer(trainer_cli.app, name="trainer", help="Trainer node: pool, rounds, annotation, retrain, deploy.")
app.command("backfill", help="Score an archive with a bundle on Ray workers into the trainer's pool (resumable).")(trainer_cli.backfill_cmd)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, os.environ.get("GSAL_LOG", "INFO").upper(), 20),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":  # pragma: no cover
    app()
