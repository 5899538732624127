"""Concept graph (spec §1): packaged graphs, file format, validation errors with file and line."""

from __future__ import annotations

import json
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import (
    BACKGROUND,
    GraphError,
    available_graphs,
    graph_from_dict,
    load_graph,
)

SPEC_ABSTRACT = {"dark", "bright", "round", "linear", "u_shaped", "sharp_boundary", "foreign", "spherical"}


def _write(tmp_path: Path, text: str, name: str = "g.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_thin_film_ct_default_graph() -> None:
    g = load_graph("thin_film_ct")
    assert g.fine == ("void", "inclusion", "petal", "drill_hole", "crack", BACKGROUND)
    assert set(g.coarse) == {"subsurface", "surface", "none"}
    assert set(g.abstract) <= SPEC_ABSTRACT
    assert g.path("void") == ("void", "subsurface", ("dark", "round", "spherical"))
    assert g.coarse_of("drill_hole") == "surface" and "linear" in g.abstract_of("crack")
    assert g.coarse_of(BACKGROUND) == "none" and g.abstract_of(BACKGROUND) == ()
    # several prompts per concept; templates use the display name
    assert "a CT slice with a drill hole" in g.prompts("drill_hole")
    assert all(len(g.prompts(f)) >= 3 for f in g.fine)
    assert nx.is_directed_acyclic_graph(g.graph)
    assert g.level("void") == "fine" and g.level("surface") == "coarse" and g.level("dark") == "abstract"


def test_voc_and_coco_follow_table3_pattern() -> None:
    assert {"thin_film_ct", "voc", "coco"} <= set(available_graphs())
    voc, coco = load_graph("voc"), load_graph("coco")
    assert len(voc.defects) == 20 and len(coco.defects) == 80
    for g in (voc, coco):
        _, coarse, attrs = g.path("dog")
        assert coarse == "animal" and {"furry", "outdoor"} <= set(attrs)
        assert g.coarse_of("sheep") == "animal" and "furry" in g.abstract_of("sheep")
    assert coco.node("traffic_light").display == "traffic light"


def test_arrays_for_vectorized_rarity() -> None:
    g = load_graph("thin_film_ct")
    assert g.fine_to_coarse[g.fine_index["petal"]] == g.coarse_index_of["surface"]
    row = g.fine_to_abstract[g.fine_index["drill_hole"]]
    assert sorted(np.array(g.abstract)[row]) == ["dark", "linear", "sharp_boundary"]
    assert g.defect_mask.tolist() == [True] * 5 + [False]


def test_json_form_loads_the_same(tmp_path: Path) -> None:
    g = load_graph("thin_film_ct")
    p = _write(tmp_path, json.dumps(g.to_dict(), indent=1), "g.json")
    h = load_graph(p)
    assert h.fine == g.fine and set(h.coarse) == set(g.coarse) and set(h.abstract) == set(g.abstract)
    assert h.prompts("crack") == g.prompts("crack")


def test_spec_example_and_background_added(tmp_path: Path) -> None:
    p = _write(tmp_path, """name: thin-film-ct
fine:
  void:      {coarse: subsurface, abstract: [dark, round],  prompts: ["a dark round void"]}
  drill_hole: {coarse: surface,   abstract: [dark, linear, sharp_boundary],
               prompts: ["a straight drilled channel"]}
""")
    g = load_graph(p)
    assert g.fine == ("void", "drill_hole", BACKGROUND)
    assert g.prompts(BACKGROUND)  # background added with generic prompts
    assert g.graph.edges["void", "subsurface"]["kind"] == "coarse"
    assert g.graph.edges["void", "dark"]["kind"] == "abstract"


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("fine:\n  a: {coarse: b, abstract: [x], prompts: [p]}\n  b: {coarse: a, abstract: [x], prompts: [p]}\n",
         r"g.yaml:\d+: the concept graph has a cycle: (a -> b -> a|b -> a -> b)"),
        ("fine:\n  void:\n    abstract: [dark]\n    prompts: [p]\n", r"g.yaml:2: fine node 'void': missing coarse parent"),
        ("fine:\n  void: {coarse: s, abstract: [dark]}\n", r"g.yaml:2: fine node 'void': no prompt"),
        ("abstract: [dark]\nfine:\n  void: {coarse: s, abstract: [dark, roundd], prompts: [p]}\n",
         r"g.yaml:3: fine node 'void': unknown abstract attribute 'roundd'; declared: dark"),
        ("fine:\n  void: {coarse: s, abstract: [dark, ''], prompts: [p]}\n",
         r"g.yaml:2: fine node 'void': empty abstract attribute at position 1"),
        ("fine:\n  void: {coarse: s, abstract: [], prompts: [p]}\n", r"g.yaml:2: fine node 'void': needs >= 1 abstract"),
        ("fine:\n  void: {coarse: s, abstract: [d], prompts: [p]}\n  void: {coarse: s, abstract: [d], prompts: [q]}\n",
         r"g.yaml:3: duplicate key 'fine.void' \(first at line 2\)"),
        ("fine:\n  void: {coarse: dark, abstract: [dark], prompts: [p]}\n",
         r"duplicate name 'dark' used at two levels \(coarse and abstract\)"),
        ("fine:\n  void: {coarse: s, abstract: [d], prompts: [p], colour: red}\n",
         r"g.yaml:2: fine node 'void': unknown field 'colour'"),
        ("coarse: [s, t]\nfine:\n  void: {coarse: s, abstract: [d], prompts: [p]}\n",
         r"g.yaml:1: declared coarse node 't' is used by no fine node"),
        ("fine:\n  void: {coarse: s, abstract: [d], prompts: [p]}\n  background: {coarse: none, abstract: [d]}\n",
         r"g.yaml:3: fine node 'background' takes no abstract attributes"),
        ("fine:\n  void: {coarse: none, abstract: [d], prompts: [p]}\n", r"coarse 'none' is reserved for 'background'"),
        ("fine:\n  unknown: {coarse: s, abstract: [d], prompts: [p]}\n", r"'unknown' is reserved"),
        ("fine: {}\n", r"g.yaml:1: field 'fine' must be a non-empty mapping"),
        ("fine:\n  void: {coarse: s, abstract: [d], prompts: [p]}\nextra: 1\n", r"g.yaml:3: unknown top-level key 'extra'"),
        ("fine:\n  void: {coarse: s\n", r"g.yaml:\d+: not valid YAML/JSON"),
    ],
)
def test_validation_errors_name_file_line_field(tmp_path: Path, text: str, pattern: str) -> None:
    p = _write(tmp_path, text)
    with pytest.raises(GraphError, match=pattern):
        load_graph(p)


def test_templates_give_prompts_and_must_hold_placeholder() -> None:
    g = graph_from_dict({"templates": ["a slice with a {c}"], "fine": {"hair_crack": {"coarse": "s", "abstract": ["d"]}}})
    assert g.prompts("hair_crack") == ("a slice with a hair crack",)
    with pytest.raises(GraphError, match="templates"):
        graph_from_dict({"templates": ["no placeholder"], "fine": {"x": {"coarse": "s", "abstract": ["d"]}}})


def test_unknown_graph_name_lists_available() -> None:
    with pytest.raises(GraphError, match="available: .*thin_film_ct"):
        load_graph("no_such_graph")
    g = load_graph("thin_film_ct")
    with pytest.raises(KeyError, match="'rust' is not a fine node"):
        g.node("rust")
