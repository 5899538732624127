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


# ---------------------------------------------------------------------------------------------- induce


def read_proposal_embeddings(path: Path, min_score: float = 0.0) -> tuple[list[list[float]], int, set[str]]:
    """Proposal embeddings (``proposals[i].embedding``, as `score --bundle --with-embeddings` writes them) of
    the records in a JSONL file, for proposals with detector score >= ``min_score``; also the record count and
    the bundles that made them. Every record is validated as a score record."""
    import json

    from gsal_edge.acquisition.graph_induction import InductionError
    from gsal_edge.acquisition.records import ScoreRecord

    rows: list[list[float]] = []
    n_rec, bundles, missing = 0, set(), 0
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise InductionError(f"{where}: not valid JSON ({e.msg})") from None
            rec = ScoreRecord.from_dict(d, where=where)
            n_rec += 1
            bundles.add(rec.model.get("bundle", ""))
            for j, (p, raw) in enumerate(zip(rec.proposals, d.get("proposals", []))):
                emb = raw.get("embedding")
                if emb is None:
                    missing += 1
                    continue
                if not isinstance(emb, list) or not all(isinstance(v, (int, float)) for v in emb):
                    raise InductionError(f"{where}: proposals[{j}].embedding must be a list of numbers")
                if p.score >= min_score:
                    rows.append([float(v) for v in emb])
    if not rows:
        why = (f"{missing} proposal(s) have no 'embedding'; score with `gsal-edge score --bundle ... "
               "--with-embeddings`" if missing else "no proposal passes --min-score")
        raise InductionError(f"{path}: no proposal embeddings to cluster ({n_rec} records; {why})")
    if len({len(r) for r in rows}) != 1:
        raise InductionError(f"{path}: proposal embeddings have different lengths {sorted({len(r) for r in rows})}")
    return rows, n_rec, bundles


def _clip_folder(clip: Path | None, bundle: Path | None, trusted_key: list[Path], allow_unsigned: bool) -> Path:
    """The CLIP whose text tower names the clusters: --clip, or the bundle's own (verified) torch/clip."""
    if (clip is None) == (bundle is None):
        raise GSALError("give exactly one of --clip DIR (a CLIP folder with gsal_clip.json) and --bundle DIR "
                        "(the bundle that scored the records: its torch/clip)")
    if clip is not None:
        return clip
    from gsal_edge.scoring.bundle import BundleError, trusted_keys_from, verify_bundle

    if not trusted_key and not allow_unsigned:
        raise GSALError("--bundle needs --trusted-key KEY (or --allow-unsigned)")
    manifest = verify_bundle(bundle, trusted_keys_from(trusted_key) if trusted_key else None,
                             allow_unsigned=allow_unsigned)
    if "torch/clip/gsal_clip.json" not in manifest.files:
        raise BundleError(f"{manifest.root}: the bundle ships no torch/clip (its CLIP text tower); pass --clip DIR")
    return manifest.path("torch/clip")


@app.command("induce")
def induce(
    records: Annotated[Path, typer.Option("--records", help="Score records JSONL whose proposals carry "
                                          "'embedding' (gsal-edge score --bundle ... --with-embeddings).")],
    out: Annotated[Path, typer.Option("--out", help="Write the proposed graph (YAML) here, for review.")],
    vocab: Annotated[Path | None, typer.Option("--vocab", help="Attribute vocabulary YAML (default: "
                                               "gsal_edge/configs/graph_vocabulary.yaml).")] = None,
    clip: Annotated[Path | None, typer.Option("--clip", help="CLIP folder (gsal_clip.json) whose text tower "
                                              "embeds the vocabulary: the one whose image tower made the "
                                              "embeddings.")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Or: the bundle that scored the records "
                                                "(verified; its torch/clip is used).")] = None,
    trusted_key: Annotated[list[Path] | None, typer.Option("--trusted-key", help="--bundle: ed25519 public "
                                                           "key(s) it must be signed by.")] = None,
    allow_unsigned: Annotated[bool, typer.Option("--allow-unsigned", help="--bundle: accept it unsigned.")] = False,
    k: Annotated[int, typer.Option("--k", min=1, help="Fine clusters (before small ones are dissolved and "
                                   "background-like ones merged).")] = 8,
    coarse: Annotated[int, typer.Option("--coarse", min=1, help="Coarse groups of the fine clusters.")] = 3,
    attributes: Annotated[int, typer.Option("--attributes", min=1, help="Most abstract attributes per fine "
                                            "node.")] = 2,
    attribute_margin: Annotated[float, typer.Option("--attribute-margin", min=0.0, help="Extra attributes must "
                                                    "be within this cosine of the best one.")] = 0.05,
    min_cluster: Annotated[int, typer.Option("--min-cluster", min=1, help="Smaller clusters are dissolved into "
                                             "the nearest other.")] = 3,
    min_score: Annotated[float, typer.Option("--min-score", help="Only proposals with detector score >= this.")]
    = 0.0,
    seed: Annotated[int, typer.Option("--seed", help="k-means seed (same seed, same graph).")] = 0,
    name: Annotated[str, typer.Option("--name", help="The graph's name.")] = "induced",
    report: Annotated[Path | None, typer.Option("--report", help="Also write the per-node report (JSON).")] = None,
) -> None:
    """Cluster proposal CLIP embeddings into a draft fine -> coarse -> abstract graph, named from a vocabulary by
    text similarity; the file is validated by the graph loader and is meant for a person to review."""
    import json

    import numpy as np

    from gsal_edge.acquisition.graph_induction import (
        DEFAULT_VOCABULARY,
        LEVELS,
        InductionConfig,
        graph_yaml,
        induce_graph,
        load_vocabulary,
        report_dict,
    )
    from gsal_edge.jsonio import write_text_atomic

    try:
        vocabulary = load_vocabulary(vocab or DEFAULT_VOCABULARY)
        cfg = InductionConfig(k_fine=k, k_coarse=coarse, n_attributes=attributes, attribute_margin=attribute_margin,
                              min_cluster=min_cluster, seed=seed)
        folder = _clip_folder(clip, bundle, list(trusted_key or []), allow_unsigned)
        rows, n_rec, bundles = read_proposal_embeddings(records, min_score)
        from gsal_edge.models.clip_model import ClipModel, concept_text_embeddings

        text = ClipModel.from_folder(folder)
        vocab_emb = {lv: np.stack(list(concept_text_embeddings(text, vocabulary.words[lv]).values())) for lv in LEVELS}
        induced = induce_graph(np.asarray(rows), vocabulary, vocab_emb, cfg, name=name)
        header = [f"proposed by `gsal-edge graph induce` from {len(rows)} proposals of {n_rec} records ({records})",
                  f"bundle(s): {', '.join(sorted(b for b in bundles if b)) or '-'}; text tower: {folder}",
                  f"vocabulary: {vocab or DEFAULT_VOCABULARY}; k={k} coarse={coarse} seed={seed}",
                  "REVIEW before use: rename nodes, fix prompts, move fine nodes between coarse families."]
        tmp = out.with_name(out.name + ".tmp.yaml")
        write_text_atomic(tmp, graph_yaml(induced, header))
        try:
            graph = load_graph(tmp)  # the file as written, through the same loader every graph goes through
        except GSALError:
            tmp.unlink()
            raise
        tmp.replace(out)
        if report is not None:
            write_text_atomic(report, json.dumps(report_dict(induced), indent=1))
    except (GSALError, OSError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=2) from None
    Console().print(text_tree(graph))
    typer.echo(f"wrote {out}: {len(graph.defects)} fine (+background), {int(graph.coarse_mask.sum())} coarse (+none), "
               f"{len(graph.abstract)} abstract, from {len(rows)} proposals")
