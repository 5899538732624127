"""Fuzzing the concept-graph loader and the GSAL config (files and ``--set`` overrides).

Contract: a bad graph raises ``GraphError``, a bad config or override ``ConfigError``, naming the file
(or ``--set``); never another exception, never a hang (self-referencing YAML anchors and nested alias
"bombs" included). A graph that loads is a DAG whose every fine node has one coarse parent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from fuzz_support import Tally, fuzz_settings, json_values, mutated, seed_decorator
from hypothesis import given
from hypothesis import strategies as st

from gsal_edge.acquisition.concept_graph import GraphError, load_graph
from gsal_edge.acquisition.config import ConfigError, GSALConfig

names = st.sampled_from(["void", "crack", "surface", "subsurface", "dark", "round", "background", "none",
                         "unknown", "", " ", "1", "a{c}", "x"])
YAML_TRAPS = [
    "a: &a [*a]\n", "fine: &f {void: *f}\n", "[" * 600 + "]" * 600, "fine: !!python/object:os.system x\n",
    "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(  # "billion laughs": 9^7 leaves if expanded
        f"{b}: &{b} [{', '.join(['*' + a] * 9)}]\n" for a, b in zip("abcdef", "bcdefg")),
    "fine: {void: {coarse: a}}\nfine: {}\n", "\t\x00", "%YAML 9.9\n---\na: 1\n",
]


@st.composite
def graph_docs(draw: st.DrawFn) -> dict[str, Any]:
    fine = {}
    for _ in range(draw(st.integers(1, 4))):
        node: dict[str, Any] = {"coarse": draw(names), "abstract": draw(st.lists(names, max_size=3)),
                                "prompts": draw(st.lists(st.text(max_size=6), max_size=2))}
        if draw(st.booleans()):
            node["display"] = draw(st.text(max_size=5))
        fine[draw(names)] = node
    doc: dict[str, Any] = {"name": draw(st.sampled_from(["g", "", 3])), "fine": fine}
    if draw(st.booleans()):
        doc["templates"] = draw(st.lists(st.sampled_from(["a {c}", "{c} {x}", "{c}{", "{c} {0}", "{c[9]}",
                                                          "{c!r}", "{c:>4}", "{{c}}", "x"]), max_size=2))
    for level in ("coarse", "abstract"):
        if draw(st.integers(0, 3)) == 2:
            doc[level] = draw(st.lists(names, max_size=3))
    return doc


VALID_GRAPH = {"name": "g", "templates": ["a {c}"], "fine": {
    "void": {"coarse": "subsurface", "abstract": ["dark", "round"], "prompts": ["a void"]},
    "crack": {"coarse": "surface", "abstract": ["dark"]}}}
graph_texts = st.one_of(
    graph_docs().map(yaml.safe_dump), graph_docs().map(json.dumps), mutated(st.just(VALID_GRAPH)).map(yaml.safe_dump),
    st.just(yaml.safe_dump(VALID_GRAPH)), json_values().map(json.dumps), st.sampled_from(YAML_TRAPS),
    st.text(max_size=60), st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)


def test_fuzz_graph_loader(tmp_path: Path) -> None:
    tally = Tally("concept-graph")

    @fuzz_settings(200)
    @seed_decorator()
    @given(graph_texts, st.sampled_from([".yaml", ".json"]), st.booleans())
    def run(text: str, suffix: str, raw_bytes: bool) -> None:
        path = tmp_path / f"graph{suffix}"
        path.write_bytes(text.encode("latin-1", "replace") if raw_bytes else text.encode())
        try:
            g = load_graph(path)
        except GraphError as e:
            assert str(path) in str(e), f"the error does not name the file: {e}"
            tally.tick("GraphError")
            return
        assert nx.is_directed_acyclic_graph(g.graph)
        assert all(g.level(g.coarse_of(f)) == "coarse" for f in g.fine) and "background" in g.fine
        assert g.to_dict()["fine"].keys() == set(g.fine)
        tally.tick("loaded")

    run()
    tally.report(tmp_path)
    assert tally.outcomes["loaded"] and tally.outcomes["GraphError"]


config_keys = st.sampled_from(GSALConfig.field_names() + ["lambda_", "nope", "screening.nope", "", "screening",
                                                          "gsal", " gamma "])
config_values = st.one_of(json_values(6), st.sampled_from([1e400, -1, 0, "inf", "nan", [], {}, "hard", "soft",
                                                           ["fine"], ["fine", "fine"], 10**30]))


@st.composite
def config_texts(draw: st.DrawFn) -> str:
    doc = {draw(config_keys): draw(config_values) for _ in range(draw(st.integers(0, 4)))}
    if draw(st.integers(0, 4)) == 3:
        doc = {"gsal": doc}
    return json.dumps(doc) if draw(st.booleans()) else yaml.safe_dump(doc)


def test_fuzz_config_file(tmp_path: Path) -> None:
    tally = Tally("gsal-config-file")

    @fuzz_settings(150)
    @seed_decorator()
    @given(st.one_of(config_texts(), config_texts(), st.sampled_from(YAML_TRAPS), st.text(max_size=40)),
           st.sampled_from([".yaml", ".json"]))
    def run(text: str, suffix: str) -> None:
        path = tmp_path / f"gsal{suffix}"
        path.write_text(text, encoding="utf-8")
        try:
            cfg = GSALConfig.from_yaml(path)
        except ConfigError as e:
            assert str(path) in str(e) and len(str(e)) < 20_000, f"bad error: {str(e)[:300]}"
            tally.tick("ConfigError")
            return
        assert GSALConfig.from_dict(cfg.to_dict()) == cfg  # what loads round-trips
        tally.tick("loaded")

    run()
    tally.report(tmp_path)
    assert tally.outcomes["loaded"] and tally.outcomes["ConfigError"]


override_values = st.one_of(
    st.sampled_from(["0.5", "1e400", "-1", "nan", ".inf", "true", "null", "", "[fine, coarse]", "[fine, fine]", "{a: 1}",
                     "soft", "!!python/object:os.system x", "&a [*a]", "[" * 600, "'", "\x00", "10" * 500]),
    st.text(max_size=15))


def test_fuzz_config_overrides(tmp_path: Path) -> None:
    tally = Tally("gsal-config-overrides")
    base = GSALConfig()

    @fuzz_settings(150)
    @seed_decorator()
    @given(st.lists(st.one_of(st.tuples(config_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}"),
                              st.text(max_size=10)), max_size=3))
    def run(items: list[str]) -> None:
        try:
            cfg = base.with_overrides(items)
        except ConfigError as e:
            assert "--set" in str(e) and len(str(e)) < 20_000, f"bad error: {str(e)[:300]}"
            tally.tick("ConfigError")
            return
        assert isinstance(cfg, GSALConfig) and GSALConfig.from_dict(cfg.to_dict()) == cfg
        tally.tick("applied")

    run()
    tally.report(tmp_path)
    assert tally.outcomes["applied"] and tally.outcomes["ConfigError"]
