"""The three-level concept graph of spec §1 (paper §4.1): fine -> coarse -> abstract.

A `ConceptGraph` wraps a networkx DiGraph whose edges run from each fine node to its one coarse
parent and to each of its (non-exclusive) abstract attributes. It is loaded from the spec §1 file
format (YAML, or its JSON form) and validated on load; every error names the file, the line and
the field. Default graphs ship as package data (``gsal_edge/acquisition/graphs/*.yaml``) and load by short
name: ``load_graph("thin_film_ct")``, ``"voc"``, ``"coco"``.

File format::

    name: thin-film-ct
    templates: ["a CT slice with a {c}"]        # optional; {c} = display name of the fine node
    coarse: [subsurface, surface]               # optional declaration: uses must be declared
    abstract: [dark, round, linear]             # optional declaration: uses must be declared
    fine:
      void:       {coarse: subsurface, abstract: [dark, round], prompts: ["a dark round void"]}
      background: {coarse: none, prompts: ["defect-free material"]}

**[ours]** the fine node ``background`` (coarse ``none``, no attributes) absorbs non-defect
proposals and never earns a rarity bonus; when a file omits it, it is added with generic prompts.
``unknown`` is reserved for the novelty option (spec §2) and cannot name a node.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from gsal_edge.config_files import parse_yaml_with_lines, read_yaml_with_lines
from gsal_edge.errors import GSALError

__all__ = [
    "BACKGROUND",
    "NONE_COARSE",
    "UNKNOWN",
    "ConceptGraph",
    "FineNode",
    "GraphError",
    "available_graphs",
    "graph_from_dict",
    "load_graph",
]

BACKGROUND = "background"
NONE_COARSE = "none"
UNKNOWN = "unknown"
DEFAULT_BACKGROUND_PROMPTS = ("background", "an empty region with no object")

_TOP_KEYS = {"name", "description", "templates", "coarse", "abstract", "fine"}
_FINE_KEYS = {"coarse", "abstract", "prompts", "display"}


class GraphError(GSALError, ValueError):
    """A concept-graph file is invalid; the message names the file, line and field."""


@dataclass(frozen=True)
class FineNode:
    """One fine node (a dataset label): its coarse parent, abstract attributes and text prompts."""

    name: str
    coarse: str
    abstract: tuple[str, ...]
    prompts: tuple[str, ...]
    display: str


class ConceptGraph:
    """Validated three-level DAG. ``fine`` keeps file order (``background`` last)."""

    def __init__(self, name: str, nodes: list[FineNode], coarse_order: list[str] | None = None,
                 abstract_order: list[str] | None = None):
        self.name = name
        self._nodes = {n.name: n for n in nodes}
        self.fine: tuple[str, ...] = tuple(n.name for n in nodes)
        coarse: list[str] = []
        abstract: list[str] = []
        for n in nodes:
            if n.coarse not in coarse:
                coarse.append(n.coarse)
            for a in n.abstract:
                if a not in abstract:
                    abstract.append(a)
        # declared order first (as written in the file), then order of first use
        if coarse_order:
            coarse.sort(key=lambda c: (coarse_order.index(c) if c in coarse_order else len(coarse_order)))
        if abstract_order:
            abstract.sort(key=lambda a: (abstract_order.index(a) if a in abstract_order else len(abstract_order)))
        self.coarse: tuple[str, ...] = tuple(coarse)
        self.abstract: tuple[str, ...] = tuple(abstract)
        g = nx.DiGraph(name=name)
        for n in nodes:
            g.add_node(n.name, level="fine", prompts=list(n.prompts), display=n.display)
        for c in coarse:
            g.add_node(c, level="coarse")
        for a in abstract:
            g.add_node(a, level="abstract")
        for n in nodes:
            g.add_edge(n.name, n.coarse, kind="coarse")
            for a in n.abstract:
                g.add_edge(n.name, a, kind="abstract")
        self.graph = g
        self.fine_index: dict[str, int] = {f: i for i, f in enumerate(self.fine)}
        self.coarse_index_of: dict[str, int] = {c: i for i, c in enumerate(self.coarse)}
        self.abstract_index_of: dict[str, int] = {a: i for i, a in enumerate(self.abstract)}
        # columnar views used by the vectorized rarity code
        self.fine_to_coarse = np.array([self.coarse_index_of[n.coarse] for n in nodes], dtype=np.int64)
        self.fine_to_abstract = np.zeros((len(nodes), len(abstract)), dtype=bool)
        for i, n in enumerate(nodes):
            for a in n.abstract:
                self.fine_to_abstract[i, self.abstract_index_of[a]] = True
        self.defect_mask = np.array([f != BACKGROUND for f in self.fine], dtype=bool)
        self.coarse_mask = np.array([c != NONE_COARSE for c in self.coarse], dtype=bool)

    # ------------------------------------------------------------------ queries
    def node(self, fine: str) -> FineNode:
        """The fine node ``fine``; a `KeyError` names the valid fine nodes."""
        try:
            return self._nodes[fine]
        except KeyError:
            raise KeyError(f"concept {fine!r} is not a fine node of graph {self.name!r}; "
                           f"fine nodes: {', '.join(self.fine)}") from None

    def level(self, name: str) -> str:
        """'fine', 'coarse' or 'abstract'."""
        if name not in self.graph:
            raise KeyError(f"{name!r} is not a node of graph {self.name!r}")
        return str(self.graph.nodes[name]["level"])

    def coarse_of(self, fine: str) -> str:
        return self.node(fine).coarse

    def abstract_of(self, fine: str) -> tuple[str, ...]:
        return self.node(fine).abstract

    def prompts(self, fine: str) -> tuple[str, ...]:
        """Text prompts of ``fine`` (templates expanded), for f_T(c) of Eq. 3."""
        return self.node(fine).prompts

    def path(self, fine: str) -> tuple[str, str, tuple[str, ...]]:
        """Semantic path fine -> coarse -> abstract attributes."""
        n = self.node(fine)
        return n.name, n.coarse, n.abstract

    def fine_of_coarse(self, coarse: str) -> tuple[str, ...]:
        return tuple(f for f in self.fine if self._nodes[f].coarse == coarse)

    @property
    def defects(self) -> tuple[str, ...]:
        """Fine nodes other than ``background``."""
        return tuple(f for f in self.fine if f != BACKGROUND)

    def to_dict(self) -> dict[str, Any]:
        """The spec §1 file form (round-trips through `graph_from_dict`)."""
        return {
            "name": self.name,
            "fine": {
                n.name: {"coarse": n.coarse, "abstract": list(n.abstract), "prompts": list(n.prompts),
                         "display": n.display}
                for n in self._nodes.values()
            },
        }

    def __repr__(self) -> str:
        return (f"ConceptGraph({self.name!r}, fine={len(self.fine)}, coarse={len(self.coarse)}, "
                f"abstract={len(self.abstract)})")


# ---------------------------------------------------------------------- loading and validation
def available_graphs() -> list[str]:
    """Short names of the packaged default graphs."""
    root = resources.files("gsal_edge.acquisition") / "graphs"
    return sorted(p.name[: -len(".yaml")] for p in root.iterdir() if p.name.endswith(".yaml"))


def load_graph(source: str | Path | ConceptGraph) -> ConceptGraph:
    """Load a graph from a YAML/JSON file or a packaged short name (``"thin_film_ct"``)."""
    if isinstance(source, ConceptGraph):
        return source
    path = Path(source)
    if path.is_file():
        data, lines = read_yaml_with_lines(path, GraphError)
        return graph_from_dict(data, where=str(path), lines=lines, default_name=path.stem)
    name = str(source)
    short = name.removesuffix(".yaml")
    if "/" not in name and short in available_graphs():
        res = resources.files("gsal_edge.acquisition") / "graphs" / f"{short}.yaml"
        where = f"gsal_edge/acquisition/graphs/{short}.yaml"
        data, lines = parse_yaml_with_lines(res.read_text(encoding="utf-8"), where, GraphError)
        return graph_from_dict(data, where=where, lines=lines, default_name=short)
    raise GraphError(f"{name}: no such file, nor a packaged graph (available: {', '.join(available_graphs())})")


def graph_from_dict(data: Any, where: str = "graph", lines: Mapping[tuple[str, ...], int] | None = None,
                    default_name: str = "graph") -> ConceptGraph:
    """Validate the spec §1 mapping and build a `ConceptGraph`.

    Checks: known keys; every fine node has exactly one coarse parent (a string), >= 1 abstract
    attribute (none for ``background``), >= 1 prompt (own or via ``templates``); names unique across
    levels; declared coarse/abstract vocabularies (if given) match their uses; the result is acyclic.
    """
    lines = dict(lines or {})

    def at(*key: str) -> str:
        for k in range(len(key), 0, -1):
            if key[:k] in lines:
                return f"{where}:{lines[key[:k]]}"
        return where

    if not isinstance(data, dict):
        raise GraphError(f"{where}: expected a mapping with a 'fine' section, got {type(data).__name__}")
    extra = sorted(set(map(str, data)) - _TOP_KEYS)
    if extra:
        raise GraphError(f"{at(extra[0])}: unknown top-level key {extra[0]!r}; valid keys: {', '.join(sorted(_TOP_KEYS))}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name.strip():
        raise GraphError(f"{at('name')}: field 'name' must be a non-empty string")
    templates = data.get("templates") or []
    if not isinstance(templates, list) or not all(isinstance(t, str) and "{c}" in t for t in templates):
        raise GraphError(f"{at('templates')}: field 'templates' must be a list of strings containing '{{c}}'")
    for i, t in enumerate(templates):
        _expand(t, "x", at("templates", str(i)))
    declared: dict[str, list[str] | None] = {}
    for level in ("coarse", "abstract"):
        decl = data.get(level)
        if decl is not None:
            if not isinstance(decl, list) or not all(isinstance(x, str) and x.strip() for x in decl):
                raise GraphError(f"{at(level)}: field {level!r} must be a list of non-empty names")
            if len(set(decl)) != len(decl):
                dup = next(x for x in decl if decl.count(x) > 1)
                raise GraphError(f"{at(level)}: duplicate name {dup!r} in {level!r}")
        declared[level] = decl
    fine_raw = data.get("fine")
    if not isinstance(fine_raw, dict) or not fine_raw:
        raise GraphError(f"{at('fine')}: field 'fine' must be a non-empty mapping of fine nodes")

    nodes: list[FineNode] = []
    background: FineNode | None = None
    seen_fine: set[str] = set()
    for fname, spec in fine_raw.items():
        fname = str(fname)
        loc = ("fine", fname)
        if not fname.strip():
            raise GraphError(f"{at(*loc)}: empty fine node name")
        if fname in seen_fine:  # e.g. the keys 1 and "1": both name the node "1"
            raise GraphError(f"{at(*loc)}: fine node {fname!r} is named twice")
        seen_fine.add(fname)
        if fname == UNKNOWN:
            raise GraphError(f"{at(*loc)}: fine node name 'unknown' is reserved for the novelty option")
        if spec is None:
            spec = {}
        if not isinstance(spec, dict):
            raise GraphError(f"{at(*loc)}: fine node {fname!r} must be a mapping with 'coarse', 'abstract', 'prompts'")
        bad = sorted(set(map(str, spec)) - _FINE_KEYS)
        if bad:
            raise GraphError(f"{at(*loc, bad[0])}: fine node {fname!r}: unknown field {bad[0]!r}; "
                             f"valid fields: {', '.join(sorted(_FINE_KEYS))}")
        coarse = spec.get("coarse")
        is_bg = fname == BACKGROUND
        if is_bg and coarse is None:
            coarse = NONE_COARSE
        if not isinstance(coarse, str) or not coarse.strip():
            raise GraphError(f"{at(*loc, 'coarse')}: fine node {fname!r}: missing coarse parent "
                             "(field 'coarse' must name exactly one coarse node)")
        if is_bg and coarse != NONE_COARSE:
            raise GraphError(f"{at(*loc, 'coarse')}: fine node 'background' must have coarse 'none', got {coarse!r}")
        if not is_bg and coarse == NONE_COARSE:
            raise GraphError(f"{at(*loc, 'coarse')}: fine node {fname!r}: coarse 'none' is reserved for 'background'")
        if declared["coarse"] is not None and not is_bg and coarse not in declared["coarse"]:
            raise GraphError(f"{at(*loc, 'coarse')}: fine node {fname!r}: unknown coarse node {coarse!r}; "
                             f"declared: {', '.join(declared['coarse'])}")
        attrs = spec.get("abstract", [])
        if isinstance(attrs, str):
            attrs = [attrs]
        if not isinstance(attrs, list):
            raise GraphError(f"{at(*loc, 'abstract')}: fine node {fname!r}: field 'abstract' must be a list")
        for i, a in enumerate(attrs):
            if not isinstance(a, str) or not a.strip():
                raise GraphError(f"{at(*loc, 'abstract', str(i))}: fine node {fname!r}: empty abstract attribute "
                                 f"at position {i}")
            if declared["abstract"] is not None and a not in declared["abstract"]:
                raise GraphError(f"{at(*loc, 'abstract', str(i))}: fine node {fname!r}: unknown abstract "
                                 f"attribute {a!r}; declared: {', '.join(declared['abstract'])}")
        if len(set(attrs)) != len(attrs):
            raise GraphError(f"{at(*loc, 'abstract')}: fine node {fname!r}: repeated abstract attribute")
        if is_bg and attrs:
            raise GraphError(f"{at(*loc, 'abstract')}: fine node 'background' takes no abstract attributes")
        if not is_bg and not attrs:
            raise GraphError(f"{at(*loc)}: fine node {fname!r}: needs >= 1 abstract attribute (field 'abstract')")
        display = spec.get("display", fname.replace("_", " "))
        if not isinstance(display, str) or not display.strip():
            raise GraphError(f"{at(*loc, 'display')}: fine node {fname!r}: field 'display' must be a non-empty string")
        own = spec.get("prompts", [])
        if isinstance(own, str):
            own = [own]
        if not isinstance(own, list) or not all(isinstance(p, str) and p.strip() for p in own):
            raise GraphError(f"{at(*loc, 'prompts')}: fine node {fname!r}: field 'prompts' must be a list of "
                             "non-empty strings")
        prompts = list(own) if is_bg else [_expand(t, display, at(*loc)) for t in templates] + list(own)
        if is_bg and not prompts:
            prompts = list(DEFAULT_BACKGROUND_PROMPTS)
        if not prompts:
            raise GraphError(f"{at(*loc)}: fine node {fname!r}: no prompt (give 'prompts' or top-level 'templates')")
        node = FineNode(fname, coarse, tuple(attrs), tuple(dict.fromkeys(prompts)), display)
        if is_bg:
            background = node
        else:
            nodes.append(node)
    if not nodes:
        raise GraphError(f"{at('fine')}: the graph needs >= 1 fine node besides 'background'")
    nodes.append(background or FineNode(BACKGROUND, NONE_COARSE, (), DEFAULT_BACKGROUND_PROMPTS, BACKGROUND))

    # acyclic: with names shared across levels, fine -> coarse/abstract edges can close a cycle
    raw = nx.DiGraph()
    for n in nodes:
        raw.add_edge(n.name, n.coarse)
        raw.add_edges_from((n.name, a) for a in n.abstract)
    try:
        cycle = nx.find_cycle(raw)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise GraphError(f"{at('fine', cycle[0][0])}: the concept graph has a cycle: {path}")
    # names unique across levels (a shared name would merge two nodes of different levels)
    used_coarse = {n.coarse for n in nodes}
    used_abstract = {a for n in nodes for a in n.abstract}
    fine_names = {n.name for n in nodes}
    for a_set, b_set, la, lb in ((fine_names, used_coarse, "fine", "coarse"),
                                 (fine_names, used_abstract, "fine", "abstract"),
                                 (used_coarse, used_abstract, "coarse", "abstract")):
        clash = sorted(a_set & b_set)
        if clash:
            raise GraphError(f"{where}: duplicate name {clash[0]!r} used at two levels ({la} and {lb})")
    for level, used in (("coarse", used_coarse - {NONE_COARSE}), ("abstract", used_abstract)):
        decl = declared[level]
        if decl is not None:
            unused = [x for x in decl if x not in used]
            if unused:
                raise GraphError(f"{at(level)}: declared {level} node {unused[0]!r} is used by no fine node "
                                 "(it would distort the dynamic thresholds)")
    cg = ConceptGraph(name, nodes, declared["coarse"], declared["abstract"])
    assert nx.is_directed_acyclic_graph(cg.graph)
    return cg


def _expand(template: str, display: str, where: str) -> str:
    """``template`` with ``{c}`` replaced by ``display``; GraphError for any other replacement field."""
    try:
        return template.format(c=display)
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
        raise GraphError(f"{where}: template {template!r} cannot be expanded ({type(e).__name__}: {e}); "
                         "use '{c}' for the concept and '{{' / '}}' for literal braces") from None
