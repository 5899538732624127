"""`gsal-edge graph ...`: validate, list and draw concept graphs (spec §1)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.tree import Tree

from gsal_edge.acquisition.concept_graph import (
    BACKGROUND,
    ConceptGraph,
    available_graphs,
    load_graph,
)
from gsal_edge.errors import GSALError

app = typer.Typer(help="Concept graphs: validate and draw.", no_args_is_help=True, add_completion=False)


def text_tree(graph: ConceptGraph) -> Tree:
    """Rich tree: graph -> coarse -> fine (abstract attributes, prompt count)."""
    root = Tree(f"[bold]{graph.name}[/bold]  ({len(graph.defects)} fine + background, "
                f"{int(graph.coarse_mask.sum())} coarse + none, {len(graph.abstract)} abstract)")
    for c in graph.coarse:
        branch = root.add(f"[cyan]{c}[/cyan] (coarse)")
        for f in graph.fine_of_coarse(c):
            attrs = ", ".join(graph.abstract_of(f)) or ("never a bonus" if f == BACKGROUND else "-")
            branch.add(f"[green]{f}[/green] -> [magenta]{attrs}[/magenta]  ({len(graph.prompts(f))} prompts)")
    return root


def draw_png(graph: ConceptGraph, out: Path) -> Path:
    """Layered drawing: fine (top) -> coarse (middle); fine -> abstract (bottom, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [("fine", list(graph.fine), 2.0, "#8fd18f"), ("coarse", list(graph.coarse), 1.0, "#8fc7e8"),
              ("abstract", list(graph.abstract), 0.0, "#e3a5e0")]
    width = max(len(v) for _, v, _, _ in levels)
    pos: dict[str, tuple[float, float]] = {}
    for _, names, y, _ in levels:
        for k, n in enumerate(names):
            pos[n] = ((k + 0.5) * width / max(len(names), 1), y)
    fig, ax = plt.subplots(figsize=(min(60.0, max(6.0, (0.45 if width > 14 else 1.2) * width + 2)), 4.5))
    for u, v, data in graph.graph.edges(data=True):
        (x0, y0), (x1, y1) = pos[u], pos[v]
        dashed = data.get("kind") == "abstract"
        ax.plot([x0, x1], [y0, y1], color="#999999" if dashed else "#333333", lw=0.6 if dashed else 1.0,
                ls="--" if dashed else "-", zorder=1)
    for level, names, y, color in levels:
        for n in names:
            x, _ = pos[n]
            ax.text(x, y, n, ha="center", va="center", fontsize=7, rotation=60 if width > 14 else 0,
                    bbox={"boxstyle": "round,pad=0.25", "fc": color, "ec": "#555555", "lw": 0.5}, zorder=2)
        ax.text(-0.5, y, level, ha="right", va="center", fontsize=9, fontweight="bold")
    ax.set_xlim(-2.5, width + 0.5)
    ax.set_ylim(-0.6, 2.6)
    ax.axis("off")
    ax.set_title(f"concept graph: {graph.name}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out


def _load(source: str) -> ConceptGraph:
    try:
        return load_graph(source)
    except GSALError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None


@app.command("show")
def show(
    file: Annotated[str, typer.Argument(help="Graph file (YAML/JSON) or packaged name (thin_film_ct, voc, coco).")],
    png: Annotated[Path | None, typer.Option("--png", help="Also draw the graph to this PNG file.")] = None,
) -> None:
    """Print the graph as a text tree (coarse -> fine -> abstract) and optionally draw a PNG."""
    graph = _load(file)
    Console().print(text_tree(graph))
    if png is not None:
        typer.echo(f"wrote {draw_png(graph, png)}")


@app.command("validate")
def validate(file: Annotated[str, typer.Argument(help="Graph file (YAML/JSON) or packaged name.")]) -> None:
    """Validate a graph file; exit 2 with the file, line and field on error."""
    graph = _load(file)
    typer.echo(f"ok: {graph.name}: {len(graph.defects)} fine (+background), {len(graph.coarse)} coarse, "
               f"{len(graph.abstract)} abstract")


@app.command("list")
def list_graphs() -> None:
    """List the packaged default graphs."""
    for name in available_graphs():
        typer.echo(name)
