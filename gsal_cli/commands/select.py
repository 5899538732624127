"""`gsal-edge select`: re-fuse stored score records offline and pick a batch with rationale.

    gsal-edge select --scores FILE.jsonl --graph GRAPH --counts COUNTS.json --budget N --out PICKS.json
                     [--config FILE] [--set name=value ...] [--labeled COCO.json] [--strategy NAME]

COUNTS.json maps fine concept -> labeled instance count (missing = 0). ``--labeled COCO.json`` may
replace it: typed label mode counts the annotations per category name; binary label mode counts each
annotation's ``concept`` field (the CLIP-assigned fine concept of that ground-truth box). A concept
absent from the graph, in the counts or in a record, is an error naming the file and line (a record's
concept may instead be mapped with ``--set missing_concept=background|unknown``).

PICKS.json = {"picks": [{"image_id", "rank", "acquisition", "rationale", "sentence"}, ...], "config": ...}
ordered by rank; the same inputs give a byte-identical file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from gsal_edge.acquisition.concept_graph import UNKNOWN, ConceptGraph, load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.acquisition.score_pool import ScorePool
from gsal_edge.acquisition.strategies import available_strategies, get_strategy
from gsal_edge.config_files import parse_yaml_with_lines
from gsal_edge.errors import GSALError


class SelectError(GSALError, ValueError):
    """A select input is invalid; the message names the file and line."""


def read_records(path: Path, graph: ConceptGraph, missing_concept: str = "error") -> list[ScoreRecord]:
    """Read a JSONL of spec §11 records; duplicate ids and (by default) concepts absent from the graph
    are errors naming ``file:line``."""
    records: list[ScoreRecord] = []
    first_line: dict[str, int] = {}
    try:
        fh = path.open("r", encoding="utf-8")
    except OSError as e:
        raise SelectError(f"{path}: cannot read scores ({e.strerror})") from None
    known = set(graph.fine) | {UNKNOWN}
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise SelectError(f"{where}: not valid JSON ({e.msg})") from None
            rec = ScoreRecord.from_dict(obj, where=where)
            if rec.image_id in first_line:
                raise SelectError(f"{where}: duplicate image_id {rec.image_id!r} (first at line "
                                  f"{first_line[rec.image_id]})")
            first_line[rec.image_id] = lineno
            if missing_concept == "error":
                for k, p in enumerate(rec.proposals):
                    bad = [p.concept] if p.concept not in known else []
                    bad += [c for c in p.similarity if c not in known]
                    if bad:
                        raise SelectError(
                            f"{where} (image_id={rec.image_id!r}) proposals[{k}]: concept {bad[0]!r} is not a "
                            f"fine node of graph {graph.name!r} (fine nodes: {', '.join(graph.fine)}); "
                            "use --set missing_concept=background or unknown to map it")
            records.append(rec)
    return records


def _resolve(name: str, graph: ConceptGraph) -> str | None:
    if name in graph.fine_index:
        return name
    alt = name.strip().replace(" ", "_").replace("-", "_")
    if alt in graph.fine_index:
        return alt
    for f in graph.fine:
        if graph.node(f).display == name:
            return f
    return None


def read_counts(path: Path, graph: ConceptGraph) -> dict[str, float]:
    """COUNTS.json: {fine concept: labeled count}; errors name file, line and concept."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SelectError(f"{path}: cannot read counts ({e.strerror})") from None
    data, lines = parse_yaml_with_lines(text, str(path), SelectError)
    if not isinstance(data, dict):
        raise SelectError(f"{path}: expected an object mapping fine concept -> labeled count")
    out: dict[str, float] = {}
    for k, v in data.items():
        at = f"{path}:{lines[(str(k),)]}" if (str(k),) in lines else str(path)
        if str(k) == UNKNOWN:
            continue
        name = _resolve(str(k), graph)
        if name is None:
            raise SelectError(f"{at}: concept {k!r} is not a fine node of graph {graph.name!r} "
                              f"(fine nodes: {', '.join(graph.fine)})")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
            raise SelectError(f"{at}: count of {k!r} must be a number >= 0, got {v!r}")
        out[name] = out.get(name, 0.0) + float(v)
    return out


def read_labeled_coco(path: Path, graph: ConceptGraph, label_mode: str) -> dict[str, float]:
    """Counts from a COCO file: typed = annotations per category name; binary = per annotation
    ``concept`` (background/unknown not counted)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SelectError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise SelectError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise SelectError(f"{path}: not a COCO file (needs 'annotations' and 'categories')")
    cats = {c.get("id"): str(c.get("name")) for c in data.get("categories", []) if isinstance(c, dict)}
    counts: dict[str, float] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise SelectError(f"{path}: annotations[{i}] is not an object")
        if label_mode == "binary":
            name = ann.get("concept")
            if not isinstance(name, str):
                raise SelectError(f"{path}: annotations[{i}]: binary label mode needs a 'concept' field "
                                  "(the CLIP-assigned fine concept of the box)")
            if name in ("background", UNKNOWN):
                continue
        else:
            if ann.get("category_id") not in cats:
                raise SelectError(f"{path}: annotations[{i}]: category_id {ann.get('category_id')!r} is not in "
                                  "'categories'")
            name = cats[ann["category_id"]]
        fine = _resolve(name, graph)
        if fine is None:
            raise SelectError(f"{path}: annotations[{i}]: concept {name!r} is not a fine node of graph "
                              f"{graph.name!r} (fine nodes: {', '.join(graph.fine)})")
        counts[fine] = counts.get(fine, 0.0) + 1.0
    return counts


def run_select(scores: Path, graph_src: str, budget: int, out: Path, counts_path: Path | None = None,
               labeled: Path | None = None, config_path: Path | None = None, overrides: list[str] | None = None,
               strategy: str = "gsal") -> dict[str, Any]:
    """The select pipeline behind the CLI; returns the PICKS.json object it wrote."""
    if budget < 0:
        raise SelectError(f"--budget must be >= 0, got {budget}")
    if (counts_path is None) == (labeled is None):
        raise SelectError("give exactly one of --counts COUNTS.json or --labeled COCO.json")
    cfg = GSALConfig.from_yaml(config_path) if config_path is not None else GSALConfig()
    cfg = cfg.with_overrides(overrides or [])
    graph = load_graph(graph_src)
    counts = read_counts(counts_path, graph) if counts_path is not None else \
        read_labeled_coco(labeled, graph, cfg.label_mode)  # type: ignore[arg-type]
    records = read_records(scores, graph, cfg.missing_concept)
    pool = ScorePool.from_records(records)
    strat = get_strategy(strategy)
    sel = strat.select(pool, counts, graph, cfg, budget, np.random.default_rng(cfg.seed))
    doc: dict[str, Any] = {
        "picks": [p.to_dict() for p in sel.picks],
        "config": cfg.to_dict(),
        "strategy": sel.strategy,
        "budget": budget,
        "graph": graph.name,
        "counts": {k: counts[k] for k in sorted(counts)},
        "info": sel.info,
    }
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return doc


def select(
    scores: Annotated[Path, typer.Option("--scores", help="Score records, JSON Lines (spec §11).")],
    graph: Annotated[str, typer.Option("--graph", help="Concept graph file or packaged name (thin_film_ct, voc, coco).")],
    budget: Annotated[int, typer.Option("--budget", help="Batch size b: how many images to pick.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write PICKS.json.")],
    counts: Annotated[Path | None, typer.Option("--counts", help="COUNTS.json: fine concept -> labeled count (missing = 0).")] = None,
    labeled: Annotated[Path | None, typer.Option("--labeled", help="COCO.json of the labeled set (replaces --counts).")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="GSAL config YAML.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a parameter: name=value (repeatable).")] = None,
    strategy: Annotated[str, typer.Option("--strategy", help=f"Strategy: {', '.join(available_strategies())}.")] = "gsal",
) -> None:
    """Re-fuse stored score records and select a batch with rationale (writes PICKS.json)."""
    try:
        doc = run_select(scores, graph, budget, out, counts, labeled, config, list(set_ or []), strategy)
    except (GSALError, KeyError) as e:  # KeyError: an unknown strategy or graph node name
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg}", err=True)
        raise typer.Exit(code=2) from None
    typer.echo(f"wrote {out}: {len(doc['picks'])} picks ({doc['strategy']}, graph {doc['graph']})")
    for p in doc["picks"][:10]:
        typer.echo(f"  {p['rank']:>3}. {p['image_id']}  A = {p['acquisition']:.4f}  {p['sentence']}")
