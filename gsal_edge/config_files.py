"""Reading YAML config files: the read, the parse and the top-level check in one place, so that every
config error names the file and what was wrong (and never a traceback from deep inside a loader)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["CONFIGS_DIR", "FrozenModel", "StrictModel", "read_yaml_mapping", "validation_message"]

CONFIGS_DIR = Path(__file__).parent / "configs"  # the shipped default configs and presets (package data)


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


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message; ...`` (``<root>`` for model-level errors)."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


class StrictModel(BaseModel):
    """Base of every config model: an unknown (misspelt) key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid")


class FrozenModel(StrictModel):
    """A :class:`StrictModel` whose instances cannot change once validated (hashable specs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
