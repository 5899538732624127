"""JSON as this project writes it: one sanitizer, one canonical encoding, one atomic writer.

- :func:`to_jsonable` — a strict-JSON copy: NaN/Inf -> ``None``, numpy scalars and arrays -> Python,
  tuples -> lists, paths -> strings, mapping keys -> strings;
- :func:`canonical_json` — the encoding every digest is taken over (sorted keys, no spaces, no NaN);
- :func:`write_text_atomic` / :func:`write_json_atomic` — temp file in the same folder, fsync, rename: a
  reader never sees half a file.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path, PurePath
from typing import Any

import numpy as np

__all__ = ["canonical_json", "read_json", "to_jsonable", "write_json_atomic", "write_text_atomic"]


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def canonical_json(obj: Any) -> str:
    """Sorted keys, compact separators, UTF-8 kept, NaN refused: equal objects give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def fsync_dir(path: str | Path) -> None:
    """fsync a folder, so a rename or a new file in it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder, fsync and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 1) -> None:
    """Write ``to_jsonable(obj)`` to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=indent, allow_nan=False))


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """The JSON at ``path``; ``error`` names the file when it cannot be read or parsed."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: cannot read JSON ({e})") from None
