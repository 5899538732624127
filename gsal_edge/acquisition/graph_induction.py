"""Concept-graph induction (the paper's future work): a draft fine -> coarse -> abstract graph from proposals.

Pure numpy. In: proposal CLIP region embeddings [n, d] and CLIP text embeddings of an attribute vocabulary
(``gsal_edge/configs/graph_vocabulary.yaml``: candidate names per level, each with prompts). Out: a graph
mapping in the spec §1 file format, validated by the same loader as a hand-written one, plus a per-node
report for the person who reviews it.

1. fine: spherical k-means (k-means++ seeding, ``n_init`` restarts, seeded) of the L2-normalized embeddings;
   clusters smaller than ``min_cluster`` are dissolved into the nearest remaining centroid;
2. names: each cluster takes the fine vocabulary word most similar (cosine) to its centroid; clusters that
   take the same word are one node (those nearest ``background`` form the background node), so a node's
   name is always its own best word and ``k_fine`` is an upper bound;
3. coarse: average-linkage agglomerative clustering (cosine distance) of the defect nodes' centroids,
   cut at ``k_coarse`` groups, each named from the coarse vocabulary by its mean centroid (groups that
   take the same word are one coarse node);
4. abstract: each defect node gets up to ``n_attributes`` abstract words, those within
   ``attribute_margin`` of its best one (non-exclusive, as in hand-written graphs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition.concept_graph import BACKGROUND, NONE_COARSE, graph_from_dict
from gsal_edge.config_files import CONFIGS_DIR, read_yaml_mapping
from gsal_edge.errors import GSALError

LEVELS = ("fine", "coarse", "abstract")
DEFAULT_VOCABULARY = CONFIGS_DIR / "graph_vocabulary.yaml"


class InductionError(GSALError, ValueError):
    """Graph induction cannot run on these inputs (the message says which and why)."""


@dataclass(frozen=True)
class Vocabulary:
    """Candidate names per level, each with its prompts (``level -> name -> prompts``)."""

    name: str
    words: dict[str, dict[str, list[str]]]

    def names(self, level: str) -> list[str]:
        return list(self.words[level])


def load_vocabulary(path: str | Path = DEFAULT_VOCABULARY) -> Vocabulary:
    """Read and check a vocabulary file: sections ``fine``, ``coarse``, ``abstract`` of ``name: [prompts]``."""
    data = read_yaml_mapping(path, InductionError, "a graph vocabulary")
    extra = sorted(set(data) - {"name", *LEVELS})
    if extra:
        raise InductionError(f"{path}: unknown key(s) {extra}; expected name, fine, coarse, abstract")
    words: dict[str, dict[str, list[str]]] = {}
    seen: dict[str, str] = {}
    for level in LEVELS:
        sec = data.get(level)
        if not isinstance(sec, dict) or not sec:
            raise InductionError(f"{path}: section {level!r} must be a non-empty mapping of name: [prompts]")
        words[level] = {}
        for w, prompts in sec.items():
            if isinstance(prompts, str):
                prompts = [prompts]
            if not isinstance(w, str) or not w.strip() or not isinstance(prompts, list) or not prompts \
                    or not all(isinstance(p, str) and p.strip() for p in prompts):
                raise InductionError(f"{path}: {level}.{w}: expected a name with a non-empty list of prompts")
            if w in seen:
                raise InductionError(f"{path}: name {w!r} is in both {seen[w]!r} and {level!r}")
            seen[w] = level
            words[level][w] = list(prompts)
    if BACKGROUND in words["coarse"] or BACKGROUND in words["abstract"]:
        raise InductionError(f"{path}: {BACKGROUND!r} may only be a fine word")
    return Vocabulary(str(data.get("name", Path(path).stem)), words)


@dataclass(frozen=True)
class InductionConfig:
    k_fine: int = 8  # fine clusters before dissolving small ones and merging background
    k_coarse: int = 3
    n_attributes: int = 2
    attribute_margin: float = 0.05
    min_cluster: int = 3
    n_init: int = 8
    max_iter: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("k_fine", "k_coarse", "n_attributes", "min_cluster", "n_init", "max_iter"):
            if getattr(self, name) < 1:
                raise InductionError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.attribute_margin < 0:
            raise InductionError(f"attribute_margin must be >= 0, got {self.attribute_margin}")


@dataclass
class InducedGraph:
    """The graph mapping (spec §1 file form), the proposal -> fine node assignment, and the review report."""

    graph: dict[str, Any]
    labels: list[str]  # fine node name per input embedding
    report: dict[str, dict[str, Any]] = field(default_factory=dict)  # node -> size, similarity, runner-up
    config: InductionConfig = field(default_factory=lambda: InductionConfig())


def _normalize(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InductionError(f"{what}: expected a non-empty [n, d] array, got shape {list(x.shape)}")
    if not np.isfinite(x).all():
        raise InductionError(f"{what}: has NaN or Inf")
    n = np.linalg.norm(x, axis=1, keepdims=True)
    if (n < 1e-12).any():
        raise InductionError(f"{what}: has an all-zero row")
    return x / n


def spherical_kmeans(x: np.ndarray, k: int, rng: np.random.Generator, n_init: int = 8,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Cluster unit rows of ``x`` by cosine: (labels [n], unit centroids [k', d]); k' <= k (no empty cluster).

    k-means++ seeding on cosine distance; the restart with the highest total similarity wins."""
    n = x.shape[0]
    k = min(k, n)
    best: tuple[float, np.ndarray, np.ndarray] | None = None
    for _ in range(n_init):
        cent = [x[int(rng.integers(n))]]
        for _ in range(1, k):
            dist = np.clip(1.0 - np.max(x @ np.stack(cent).T, axis=1), 0.0, None)
            if dist.sum() <= 0:
                break
            cent.append(x[int(rng.choice(n, p=dist / dist.sum()))])
        c = np.stack(cent)
        labels = np.full(n, -1)
        for _ in range(max_iter):
            new = np.argmax(x @ c.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            c = np.stack([_unit(x[labels == j].sum(0)) if (labels == j).any() else c[j] for j in range(len(c))])
        score = float(np.sum(np.max(x @ c.T, axis=1)))
        if best is None or score > best[0] + 1e-12:
            best = (score, labels, c)
    assert best is not None
    _, labels, c = best
    used = np.unique(labels)
    remap = {int(j): i for i, j in enumerate(used)}
    return np.array([remap[int(j)] for j in labels]), c[used]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / max(float(np.linalg.norm(v)), 1e-12)


def average_linkage(c: np.ndarray, n_groups: int) -> np.ndarray:
    """Agglomerative clustering of unit rows ``c`` (average linkage, cosine distance) cut at ``n_groups``
    groups; returns the group per row, groups numbered by their first row. Ties: the lowest pair of indices."""
    d = 1.0 - c @ c.T
    groups: list[list[int]] = [[i] for i in range(len(c))]
    while len(groups) > max(1, n_groups):
        best = (np.inf, 0, 0)
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                v = float(d[np.ix_(groups[a], groups[b])].mean())
                if v < best[0] - 1e-12:
                    best = (v, a, b)
        _, a, b = best
        groups[a] = sorted(groups[a] + groups[b])
        del groups[b]
    out = np.empty(len(c), dtype=np.int64)
    for g, members in enumerate(sorted(groups, key=min)):
        out[members] = g
    return out


def _runner_up(sim_row: np.ndarray, words: Sequence[str], chosen: str) -> dict[str, Any]:
    order = np.argsort(-sim_row, kind="stable")
    other = next((int(j) for j in order if words[int(j)] != chosen), None)
    return {} if other is None else {"runner_up": words[other], "runner_up_similarity": round(float(sim_row[other]), 4)}


def induce_graph(
    embeddings: np.ndarray,
    vocabulary: Vocabulary,
    vocab_embeddings: dict[str, np.ndarray],
    config: InductionConfig = InductionConfig(),
    name: str = "induced",
) -> InducedGraph:
    """A draft concept graph from proposal embeddings (see the module docstring); validated before it returns.

    ``vocab_embeddings[level]`` holds one text embedding per ``vocabulary.names(level)`` word, in order.
    """
    x = _normalize(embeddings, "proposal embeddings")
    V = {}
    for level in LEVELS:
        if level not in vocab_embeddings:
            raise InductionError(f"vocab_embeddings has no {level!r} level")
        V[level] = _normalize(vocab_embeddings[level], f"{level} vocabulary embeddings")
        if V[level].shape != (len(vocabulary.names(level)), x.shape[1]):
            raise InductionError(f"{level} vocabulary embeddings have shape {list(V[level].shape)}, expected "
                                 f"[{len(vocabulary.names(level))}, {x.shape[1]}] (the proposals' d)")
    rng = np.random.default_rng(config.seed)
    labels, cent = spherical_kmeans(x, config.k_fine, rng, config.n_init, config.max_iter)
    sizes = np.bincount(labels, minlength=len(cent))
    keep = np.flatnonzero(sizes >= config.min_cluster)
    if keep.size == 0:
        keep = np.array([int(np.argmax(sizes))])
    if keep.size < len(cent):  # dissolve small clusters into the nearest kept centroid
        labels = np.argmax(x @ cent[keep].T, axis=1)
        cent = np.stack([_unit(x[labels == j].sum(0)) for j in range(keep.size)])
    # name every cluster by its most similar fine word; clusters that share a word are one node
    fine_words = vocabulary.names("fine")
    word_of_cluster = [fine_words[int(j)] for j in np.argmax(cent @ V["fine"].T, axis=1)]
    nodes = list(dict.fromkeys(w for w in word_of_cluster if w != BACKGROUND))
    if not nodes:
        raise InductionError(f"every one of the {len(cent)} clusters is closest to {BACKGROUND!r}: no defect "
                             "concept to propose (try a larger --k or a vocabulary closer to your CLIP)")
    node_labels = [word_of_cluster[int(j)] for j in labels]
    node_arr = np.array(node_labels)
    ncent = np.stack([_unit(x[node_arr == w].sum(0)) for w in nodes])
    sim_f = ncent @ V["fine"].T
    others = [w for w in fine_words if w != BACKGROUND]
    cols = [fine_words.index(w) for w in others]

    # coarse: agglomerate the defect nodes, name each group by its mean centroid; same name, same group
    coarse_words = vocabulary.names("coarse")
    groups = average_linkage(ncent, min(config.k_coarse, len(nodes)))
    gcent = np.stack([_unit(ncent[groups == g].sum(0)) for g in range(int(groups.max()) + 1)])
    sim_c = gcent @ V["coarse"].T
    coarse_of_group = [coarse_words[int(j)] for j in np.argmax(sim_c, axis=1)]
    coarse_names = list(dict.fromkeys(coarse_of_group))
    report: dict[str, dict[str, Any]] = {}
    for cname in coarse_names:
        members = [g for g, c in enumerate(coarse_of_group) if c == cname]
        mc = _unit(gcent[members].sum(0)) @ V["coarse"].T
        report[cname] = {"level": "coarse", "fine": [nodes[i] for i in np.flatnonzero(np.isin(groups, members))],
                         "similarity": round(float(mc[coarse_words.index(cname)]), 4)}
        report[cname] |= _runner_up(mc, coarse_words, cname)

    abstract_words = vocabulary.names("abstract")
    fine: dict[str, dict[str, Any]] = {}
    for i, fname in enumerate(nodes):
        sa = ncent[i] @ V["abstract"].T
        order = np.argsort(-sa, kind="stable")
        attrs = [abstract_words[int(j)] for j in order[: config.n_attributes]
                 if sa[int(j)] >= sa[int(order[0])] - config.attribute_margin]
        fine[fname] = {"coarse": coarse_of_group[int(groups[i])], "abstract": attrs,
                       "prompts": list(vocabulary.words["fine"][fname])}
        report[fname] = {"level": "fine", "proposals": int((node_arr == fname).sum()),
                         "clusters": word_of_cluster.count(fname),
                         "similarity": round(float(sim_f[i, fine_words.index(fname)]), 4),
                         "attributes": {a: round(float(sa[abstract_words.index(a)]), 4) for a in attrs}}
        report[fname] |= _runner_up(sim_f[i, cols], others, fname)
    fine[BACKGROUND] = {"coarse": NONE_COARSE, "abstract": [],
                        "prompts": list(vocabulary.words["fine"].get(BACKGROUND, ["plain material with no defect"]))}
    report[BACKGROUND] = {"level": "fine", "proposals": int((node_arr == BACKGROUND).sum()),
                          "clusters": word_of_cluster.count(BACKGROUND)}
    used_abstract = [a for a in vocabulary.names("abstract") if any(a in f["abstract"] for f in fine.values())]
    graph = {"name": name,
             "description": f"induced by `gsal-edge graph induce` from {x.shape[0]} proposals "
                            f"(vocabulary {vocabulary.name}); review before use",
             "coarse": coarse_names, "abstract": used_abstract, "fine": fine}
    graph_from_dict(json.loads(json.dumps(graph)), where="induced graph")  # the loader's own validation
    return InducedGraph(graph, node_labels, report, config)


def graph_yaml(induced: InducedGraph, header: Sequence[str] = ()) -> str:
    """The induced graph as a reviewable YAML file: the spec §1 form, each node on one line with its
    cluster size, name similarity and runner-up as a comment. Flow mappings are JSON, which YAML reads."""
    g, rep = induced.graph, induced.report
    lines = [f"# {h}" for h in header]
    lines += [f"name: {json.dumps(g['name'])}", f"description: {json.dumps(g['description'])}",
              f"coarse: {json.dumps(g['coarse'])}"]
    for c in g["coarse"]:
        r = rep.get(c, {})
        lines.append(f"#   {c}: groups {', '.join(r.get('fine', []))}"
                     + (f"; similarity {r['similarity']}" if r.get("similarity") is not None else "")
                     + (f" (runner-up {r['runner_up']} {r['runner_up_similarity']})" if "runner_up" in r else ""))
    lines += [f"abstract: {json.dumps(g['abstract'])}", "fine:"]
    for fname, node in g["fine"].items():
        r = rep.get(fname, {})
        note = [f"{r.get('proposals', 0)} proposals"]
        if r.get("similarity") is not None:
            note.append(f"similarity {r['similarity']}")
        if "runner_up" in r:
            note.append(f"runner-up {r['runner_up']} {r['runner_up_similarity']}")
        if r.get("attributes"):
            note.append("attributes " + ", ".join(f"{a} {v}" for a, v in r["attributes"].items()))
        body = {k: v for k, v in node.items() if not (k == "abstract" and not v)}
        lines.append(f"  {fname}: {json.dumps(body)}  # {'; '.join(note)}")
    return "\n".join(lines) + "\n"


def report_dict(induced: InducedGraph) -> dict[str, Any]:
    """JSON-ready summary (graph + report) for ``--report``."""
    return {"graph": induced.graph, "report": induced.report,
            "assigned": {n: induced.labels.count(n) for n in dict.fromkeys(induced.labels)},
            "config": asdict(induced.config)}
