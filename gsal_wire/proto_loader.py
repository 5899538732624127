"""Make sure the generated ``gsal_proto`` package exists, is current and importable.

``gsal_proto/`` is a git-ignored build output of ``proto/build.py``; a fresh clone (or a test run
before ``make proto``) has none, so every importer of generated code goes through
:func:`ensure_generated` first (``gsal_wire.pb`` does it once at import).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

REPO_ROOT = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO_ROOT / "proto" / "build.py"


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_gsal_proto_build", BUILD_SCRIPT)
    if spec is None or spec.loader is None:  # pragma: no cover - broken checkout
        raise ImportError(f"cannot load {BUILD_SCRIPT}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ensure_generated(force: bool = False) -> bool:
    """Run ``proto/build.py`` when ``gsal_proto/`` is missing or stale; make it importable.

    Returns True when code was (re)generated. Without a source checkout (an installed wheel that
    already ships ``gsal_proto``) it only checks that the package imports.
    """
    built = False
    if BUILD_SCRIPT.exists():
        built = bool(_build_module().build(force=force, quiet=True))
        if importlib.util.find_spec("gsal_proto") is None and str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))  # editable installs made before the first build
    if importlib.util.find_spec("gsal_proto") is None:
        raise ImportError("gsal_proto is not generated; run `python proto/build.py` (or `make proto`)")
    return built
