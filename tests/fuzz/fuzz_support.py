"""What every fuzz test shares: bounded, reproducible Hypothesis settings and the count of inputs tried.

- ``fuzz_settings(n)``: ``max_examples=n`` (``GSAL_FUZZ_EXAMPLES`` overrides it for a long run, e.g.
  ``GSAL_FUZZ_EXAMPLES=5000``), ``derandomize=True`` (the same inputs on every run and machine: CI is
  reproducible; a long run with ``GSAL_FUZZ_SEED=N`` draws other inputs), no example database (nothing
  written into the repository), no deadline (servers and disks have jitter).
- ``Tally``: counts the inputs a test really ran and writes ``fuzz-<target>.json`` under
  ``GSAL_FUZZ_REPORT_DIR`` (default: the test's tmp dir); ``-s`` prints the line.

Holds no tests.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

EXAMPLES_ENV = "GSAL_FUZZ_EXAMPLES"
SEED_ENV = "GSAL_FUZZ_SEED"
REPORT_ENV = "GSAL_FUZZ_REPORT_DIR"


def examples(default: int) -> int:
    """``default``, or ``GSAL_FUZZ_EXAMPLES`` when set (a long run)."""
    raw = os.environ.get(EXAMPLES_ENV, "").strip()
    return int(raw) if raw else default


def fuzz_settings(default_examples: int) -> settings:
    """Bounded and reproducible settings (see the module docstring)."""
    seeded = bool(os.environ.get(SEED_ENV, "").strip())
    return settings(
        max_examples=examples(default_examples),
        derandomize=not seeded,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        print_blob=True,
    )


def seed_decorator() -> Any:
    """``hypothesis.seed(GSAL_FUZZ_SEED)`` for a long, differently drawn run; identity otherwise."""
    from hypothesis import seed

    raw = os.environ.get(SEED_ENV, "").strip()
    return seed(int(raw)) if raw else (lambda f: f)


class Tally:
    """How many inputs a fuzz target ran, and how each ended (``outcome`` names, e.g. the error type)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.count = 0
        self.outcomes: Counter[str] = Counter()
        self._t0 = time.monotonic()

    def tick(self, outcome: str = "ran") -> None:
        self.count += 1
        self.outcomes[outcome] += 1

    def report(self, default_dir: Path, minimum: int = 1) -> Path:
        """Write ``fuzz-<target>.json``, print one line; assert at least ``minimum`` inputs ran."""
        out_dir = Path(os.environ.get(REPORT_ENV) or default_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        doc = {"target": self.target, "inputs": self.count, "outcomes": dict(sorted(self.outcomes.items())),
               "seconds": round(time.monotonic() - self._t0, 2), "derandomize": not os.environ.get(SEED_ENV),
               "seed": os.environ.get(SEED_ENV) or None,
               "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0] or None}  # BENCHMARKS.md
        path = out_dir / f"fuzz-{self.target}.json"
        path.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"\nfuzz {self.target}: {self.count} inputs in {doc['seconds']} s {doc['outcomes']}")
        assert self.count >= minimum, f"fuzz {self.target}: only {self.count} inputs ran"
        return path


# ---- strategies shared by several targets -------------------------------------------------------------
def json_values(max_leaves: int = 12) -> Any:
    """Any JSON value, with the numbers that break parsers: huge ints, NaN/Inf, -0.0, bools."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.integers(min_value=10**308, max_value=10**400),
        st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
        max_leaves=max_leaves,
    )


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key/index path into a JSON value (the places a mutation may hit)."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def mutated(base: Any, max_mutations: int = 3) -> Any:
    """Values of ``base`` (JSON documents) with 1..max_mutations places replaced by any JSON value or deleted."""
    from hypothesis import strategies as st

    @st.composite
    def build(draw: st.DrawFn) -> Any:
        doc = copy.deepcopy(draw(base))  # never mutate a shared value (st.just)
        for _ in range(draw(st.integers(1, max_mutations))):
            paths = [p for p in _paths(doc) if p]
            if not paths:
                return draw(json_values())
            path = draw(st.sampled_from(paths))
            parent = doc
            for k in path[:-1]:
                parent = parent[k]
            if isinstance(parent, dict) and draw(st.booleans()):
                del parent[path[-1]]
            else:
                parent[path[-1]] = draw(json_values(6))
        return doc

    return build()
