"""Concept-graph induction (gsal_edge.acquisition.graph_induction): planted clusters in, a loadable graph out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.graph_induction import (
    DEFAULT_VOCABULARY,
    LEVELS,
    InductionConfig,
    InductionError,
    Vocabulary,
    average_linkage,
    graph_yaml,
    induce_graph,
    load_vocabulary,
    spherical_kmeans,
)

D = 24


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _vocab() -> tuple[Vocabulary, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A vocabulary with random (near-orthogonal) text embeddings; returns (vocab, per-level matrices, word -> vec)."""
    words = {
        "fine": {w: [f"a {w}"] for w in ("void", "pore", "crack", "petal", "inclusion", "background")},
        "coarse": {w: [f"a {w} family"] for w in ("roundish", "lineish")},
        "abstract": {w: [f"{w} look"] for w in ("dark", "bright", "round", "linear")},
    }
    rng = np.random.default_rng(42)
    vec = {w: _unit(rng.standard_normal(D)) for lv in LEVELS for w in words[lv]}
    # planted structure: void, pore and petal are alike (round family), crack is linear
    vec["pore"] = _unit(vec["void"] + 0.6 * vec["pore"])
    vec["petal"] = _unit(0.5 * vec["void"] + vec["petal"])
    vec["roundish"] = _unit(vec["void"] + vec["pore"] + vec["petal"])
    vec["lineish"] = _unit(vec["crack"] + 0.3 * vec["lineish"])
    vec["dark"] = _unit(vec["void"] + vec["crack"] + 0.5 * vec["dark"])
    vec["round"] = _unit(vec["void"] + 0.4 * vec["round"])
    vec["linear"] = _unit(vec["crack"] + 0.4 * vec["linear"])
    mats = {lv: np.stack([vec[w] for w in words[lv]]) for lv in LEVELS}
    return Vocabulary("test", words), mats, vec


def _planted(vec: dict[str, np.ndarray], spec: dict[str, int], noise: float, seed: int = 0
             ) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    xs, truth = [], []
    for w, n in spec.items():
        xs.append(_unit(vec[w] + noise * rng.standard_normal((n, D))))
        truth += [w] * n
    order = rng.permutation(len(truth))
    return np.concatenate(xs)[order], [truth[i] for i in order]


def test_planted_clusters_are_recovered_and_named_by_similarity(tmp_path: Path) -> None:
    vocab, mats, vec = _vocab()
    spec = {"void": 40, "crack": 30, "petal": 25, "background": 80}
    x, truth = _planted(vec, spec, noise=0.08)
    res = induce_graph(x, vocab, mats, InductionConfig(k_fine=6, k_coarse=2, n_attributes=2, seed=3), name="t")
    assert res.labels == truth  # every proposal lands in the node of the word it was planted around
    assert set(res.graph["fine"]) == {"void", "crack", "petal", "background"}
    assert {n: res.report[n]["proposals"] for n in spec} == spec
    # coarse: void and petal (planted together in `roundish`) vs crack (`lineish`)
    coarse = {f: node["coarse"] for f, node in res.graph["fine"].items()}
    assert coarse == {"void": "roundish", "petal": "roundish", "crack": "lineish", "background": "none"}
    assert "round" in res.graph["fine"]["void"]["abstract"] and "linear" in res.graph["fine"]["crack"]["abstract"]
    assert res.graph["fine"]["background"]["abstract"] == []
    for f in ("void", "crack", "petal"):  # a node's name is its own most similar word
        assert res.report[f]["similarity"] > res.report[f]["runner_up_similarity"]
    # the file a person reviews goes through the ordinary loader
    out = tmp_path / "proposed.yaml"
    out.write_text(graph_yaml(res, ["header line"]))
    g = load_graph(out)
    assert g.name == "t" and set(g.defects) == {"void", "crack", "petal"}
    assert g.coarse_of("petal") == "roundish" and set(g.abstract_of("crack")) == set(res.graph["fine"]["crack"]["abstract"])
    assert "# header line" in out.read_text() and "40 proposals" in out.read_text()


def test_same_seed_same_graph_and_clusters_sharing_a_word_merge() -> None:
    vocab, mats, vec = _vocab()
    x, _ = _planted(vec, {"void": 60, "crack": 40, "background": 50}, noise=0.15, seed=1)
    cfg = InductionConfig(k_fine=9, seed=7)
    a, b = induce_graph(x, vocab, mats, cfg), induce_graph(x, vocab, mats, cfg)
    assert a.graph == b.graph and a.labels == b.labels and a.report == b.report
    assert set(a.graph["fine"]) == {"void", "crack", "background"}  # 9 clusters, 3 words: merged by name
    assert sum(a.report[n]["clusters"] for n in a.graph["fine"]) <= 9
    assert a.report["void"]["clusters"] + a.report["crack"]["clusters"] + a.report["background"]["clusters"] > 3


def test_spherical_kmeans_and_average_linkage_on_known_points() -> None:
    rng = np.random.default_rng(0)
    centers = _unit(np.eye(4)[:3] * 5 + 0.1)
    x = _unit(np.repeat(centers, 20, axis=0) + 0.05 * rng.standard_normal((60, 4)))
    labels, cent = spherical_kmeans(x, 3, np.random.default_rng(1))
    assert len(cent) == 3 and all(len(set(labels[i * 20:(i + 1) * 20])) == 1 for i in range(3))
    assert np.allclose(np.linalg.norm(cent, axis=1), 1)
    c = _unit(np.array([[1.0, 0, 0], [0.95, 0.1, 0], [0, 1, 0], [0, 0.9, 0.2], [0, 0, 1]]))
    assert average_linkage(c, 3).tolist() == [0, 0, 1, 1, 2]
    assert average_linkage(c, 1).tolist() == [0] * 5 and average_linkage(c, 9).tolist() == [0, 1, 2, 3, 4]


def test_bad_inputs_are_clear_errors(tmp_path: Path) -> None:
    vocab, mats, vec = _vocab()
    x, _ = _planted(vec, {"background": 30}, noise=0.05)
    with pytest.raises(InductionError, match="closest to 'background'"):
        induce_graph(x, vocab, mats)
    with pytest.raises(InductionError, match=r"shape \[6, 24\], expected \[6, 8\]"):
        induce_graph(np.ones((4, 8)), vocab, mats)
    with pytest.raises(InductionError, match="NaN"):
        induce_graph(np.full((3, D), np.nan), vocab, mats)
    with pytest.raises(InductionError, match="k_fine must be >= 1"):
        InductionConfig(k_fine=0)
    bad = tmp_path / "v.yaml"
    bad.write_text("fine: {void: [a void]}\ncoarse: {void: [x]}\nabstract: {dark: [y]}\n")
    with pytest.raises(InductionError, match="'void' is in both 'fine' and 'coarse'"):
        load_vocabulary(bad)
    bad.write_text("fine: {void: []}\ncoarse: {c: [x]}\nabstract: {dark: [y]}\n")
    with pytest.raises(InductionError, match="fine.void"):
        load_vocabulary(bad)


def test_default_vocabulary_loads() -> None:
    v = load_vocabulary(DEFAULT_VOCABULARY)
    assert "background" in v.names("fine") and v.names("coarse") and v.names("abstract")
