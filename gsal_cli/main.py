"""The `gsal-edge` console script.

The library (`gsal_edge`) must not import `server`, `trainer` or `export`; this small package is the
one place where all of them meet, so each part keeps its own typer app and stays importable alone.
"""

from __future__ import annotations

import logging
import os

import typer

from gsal_edge.commands import data, detector, graph, models
from gsal_edge.commands.select import select

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


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else getattr(logging, os.environ.get("GSAL_LOG", "INFO").upper(), 20),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


if __name__ == "__main__":  # pragma: no cover
    app()
