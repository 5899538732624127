"""Reading config files: the read, the parse and the top-level check in one place, so that every
config error names the file and what was wrong (and never a traceback from deep inside a loader).

- :func:`read_yaml_mapping` — the top-level mapping of a YAML (or JSON) file, for configs whose errors
  name the file and field;
- :func:`read_yaml_with_lines` / :func:`parse_yaml_with_lines` — data plus the 1-based line of every
  key, for configs whose errors name the line too (GSAL config, concept graphs, counts); duplicate keys
  are an error;
- :class:`StrictModel` / :class:`FrozenModel` — the pydantic base of every config model.

Each reader raises the caller's error type, so a config error is that config's error class.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "CONFIGS_DIR",
    "FrozenModel",
    "StrictModel",
    "parse_yaml_with_lines",
    "read_yaml_mapping",
    "read_yaml_with_lines",
    "validation_message",
]

CONFIGS_DIR = Path(__file__).parent / "configs"  # the shipped default configs and presets (package data)

Lines = dict[tuple[str, ...], int]  # key path -> 1-based line: lines[("fine", "void", "coarse")]


def read_yaml_mapping(path: str | Path, error: type[Exception], what: str = "YAML") -> dict[str, Any]:
    """The top-level mapping of the YAML (or JSON) file at ``path``; an empty file gives ``{}``.

    Raises ``error`` naming the file and ``what`` it should hold when the file cannot be read, is not
    YAML, or its top level is not a mapping."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise error(f"{p}: cannot read {what} ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{p}: {what}: top level must be a mapping, got {type(data).__name__}")
    return data


def read_yaml_with_lines(path: str | Path, error: type[Exception]) -> tuple[Any, Lines]:
    """Parse the YAML/JSON file at ``path``: (data, lines), ``lines[key path]`` = the key's 1-based line.

    Duplicate keys are an error naming both lines (PyYAML would keep the last silently). Every failure
    raises ``error`` naming the file (and the line where known)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 text (byte {e.start})") from None
    return parse_yaml_with_lines(text, str(path), error)


def parse_yaml_with_lines(text: str, where: str, error: type[Exception]) -> tuple[Any, Lines]:
    """As :func:`read_yaml_with_lines`, from text (``where`` names the source in errors; a name ending
    in ``.json`` is parsed as JSON)."""
    if where.lower().endswith(".json"):
        return _parse_json_with_lines(text, where, error)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise error(f"{where}{line}: not valid YAML/JSON ({e.problem})") from None
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML/JSON ({e})") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply") from None
    lines: Lines = {}
    if node is not None:
        _walk(node, (), lines, where, error, set())
    return data, lines


def _walk(node: yaml.Node, prefix: tuple[str, ...], lines: Lines, where: str, error: type[Exception],
          seen_nodes: set[int]) -> None:
    # an alias reuses its anchor's node: walk each node once, so a self-referencing anchor cannot recurse
    # forever and a "billion laughs" document of nested aliases costs its size, not its expansion
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            key = str(knode.value)
            line = knode.start_mark.line + 1
            if key in seen:
                raise error(
                    f"{where}:{line}: duplicate key {'.'.join(prefix + (key,))!r} (first at line {seen[key]})"
                )
            seen[key] = line
            lines[prefix + (key,)] = line
            _walk(vnode, prefix + (key,), lines, where, error, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[prefix + (str(i),)] = item.start_mark.line + 1
            _walk(item, prefix + (str(i),), lines, where, error, seen_nodes)


def _parse_json_with_lines(text: str, where: str, error: type[Exception]) -> tuple[Any, Lines]:
    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in items:
            if k in out:
                raise error(f"{where}: duplicate key {k!r}")
            out[k] = v
        return out

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise error(f"{where}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise error(f"{where}: nested too deeply") from None
    lines: Lines = {}
    try:  # JSON is (almost always) YAML: reuse the YAML composer for line numbers, best effort
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _walk(node, (), lines, where, error, set())
    except (yaml.YAMLError, RecursionError, error):
        lines = {}
    return data, lines


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message; ...`` (``<root>`` for model-level errors)."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


class StrictModel(BaseModel):
    """Base of every config model: an unknown (misspelt) key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class FrozenModel(StrictModel):
    """A :class:`StrictModel` whose instances cannot change once validated (hashable specs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
