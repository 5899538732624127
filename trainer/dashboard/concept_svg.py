"""Coverage drawn on the concept graph: a layered layout (fine on top, coarse, abstract below), as for
``gsal-edge graph show --png``, computed here so the page draws it as inline SVG with no script.

Fine nodes are grouped under their coarse parent; abstract attributes are placed at the mean position of
the fine nodes that carry them (fewer crossings). Each node is colored by its coverage n(v) against its
level's threshold tau (spec section 10): 0 = not covered, n < tau = rare, else covered;
``background`` and ``none`` never count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gsal_edge.acquisition.concept_graph import BACKGROUND, NONE_COARSE, ConceptGraph

NODE_W, NODE_H = 118, 40
GAP_X, ROW_GAP, MARGIN_X, LABEL_W, TOP = 14, 92, 12, 78, 14


@dataclass(frozen=True)
class Node:
    name: str
    level: str  # fine | coarse | abstract
    x: float  # left edge
    y: float  # top edge
    count: int
    tau: float
    state: str  # none | rare | covered | excluded

    @property
    def cx(self) -> float:
        return self.x + NODE_W / 2


@dataclass(frozen=True)
class Edge:
    x1: float
    y1: float
    x2: float
    y2: float
    kind: str  # coarse | abstract


@dataclass(frozen=True)
class GraphDrawing:
    width: float
    height: float
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    rows: tuple[tuple[str, float], ...]  # (level label, y of the row's middle)
    node_w: int = NODE_W
    node_h: int = NODE_H


def state_of(name: str, n: float, tau: float) -> str:
    if name in (BACKGROUND, NONE_COARSE):
        return "excluded"
    if n <= 0:
        return "none"
    return "rare" if n < tau else "covered"


def _row_x(k: int, n_row: int, n_max: int) -> float:
    """Left edge of the k-th of n_row nodes, the row centred in the widest row's width."""
    span = n_max * NODE_W + (n_max - 1) * GAP_X
    row = n_row * NODE_W + (n_row - 1) * GAP_X
    return LABEL_W + MARGIN_X + (span - row) / 2 + k * (NODE_W + GAP_X)


def layout(graph: ConceptGraph, cov: dict[str, Any]) -> GraphDrawing:
    """Node boxes and edges of ``graph`` colored by the coverage view ``cov`` (see ``status.coverage_view``)."""
    fine = [f for c in graph.coarse for f in graph.fine_of_coarse(c)]
    coarse = list(graph.coarse)
    # abstract attributes by the mean index of their fine nodes
    mean_pos = {a: sum(i for i, f in enumerate(fine) if a in graph.abstract_of(f)) /
                max(1, sum(1 for f in fine if a in graph.abstract_of(f))) for a in graph.abstract}
    abstract = sorted(graph.abstract, key=lambda a: (mean_pos[a], graph.abstract_index_of[a]))
    levels = [("fine", fine, cov["fine"], cov["thresholds"]["tau_f"]),
              ("coarse", coarse, cov["coarse"], cov["thresholds"]["tau_c"]),
              ("abstract", abstract, cov["abstract"], cov["thresholds"]["tau_a"])]
    n_max = max(len(names) for _, names, _, _ in levels) or 1
    nodes: dict[str, Node] = {}
    rows = []
    for r, (level, names, counts, tau) in enumerate(levels):
        y = TOP + r * (NODE_H + ROW_GAP)
        rows.append((level, y + NODE_H / 2))
        for k, name in enumerate(names):
            n = int(counts.get(name, 0))
            nodes[name] = Node(name, level, _row_x(k, len(names), n_max), y, n, float(tau), state_of(name, n, tau))
    edges = []
    for f in fine:
        a = nodes[f]
        for target, kind in [(graph.coarse_of(f), "coarse")] + [(t, "abstract") for t in graph.abstract_of(f)]:
            b = nodes[target]
            edges.append(Edge(a.cx, a.y + NODE_H, b.cx, b.y, kind))
    width = LABEL_W + 2 * MARGIN_X + n_max * NODE_W + (n_max - 1) * GAP_X
    height = TOP * 2 + 3 * NODE_H + 2 * ROW_GAP
    # abstract edges leave the fine row and pass behind the coarse row: draw them first, dashed
    edges.sort(key=lambda e: e.kind != "abstract")
    return GraphDrawing(width, height, tuple(nodes.values()), tuple(edges), tuple(rows))
