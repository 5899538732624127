"""The figure each fault test hands to BENCHMARKS.md.

With ``GSAL_BENCH_RESULTS`` naming a folder (``make bench`` sets it), :func:`record_fault` writes
``faults/<test id>.json`` there: the fault, the pytest node id of the test and its figure (e.g.
"acknowledged records lost: 0"). Without it nothing is written. The figure is recorded before the test's
final assertions, so a failing run records the exact failure; whether the test passed comes from pytest's
JUnit XML next to it (bench/benchmarks_md_robustness.py joins the two). Holds no tests.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

RESULTS_ENV = "GSAL_BENCH_RESULTS"


def current_test() -> str:
    """The running test's node id (``tests/x/test_y.py::test_z[param]``), from pytest's environment."""
    return os.environ.get("PYTEST_CURRENT_TEST", "unknown").rsplit(" (", 1)[0]


def record_fault(fault: str, figure: str, **details: Any) -> Path | None:
    """Write one fault's figure under ``$GSAL_BENCH_RESULTS/faults/``; the file, or None when unset."""
    root = os.environ.get(RESULTS_ENV, "").strip()
    if not root:
        return None
    out = Path(root) / "faults"
    out.mkdir(parents=True, exist_ok=True)
    test = current_test()
    path = out / (re.sub(r"[^A-Za-z0-9_.-]+", "_", test.split("/")[-1]) + ".json")
    doc = {"fault": fault, "test": test, "figure": figure, "details": details,
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n", encoding="utf-8")
    return path
