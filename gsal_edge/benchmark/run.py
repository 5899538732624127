"""Entry point of the active-learning benchmark: run (or resume) a run folder and write its report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gsal_edge.benchmark.config import BenchConfig
from gsal_edge.benchmark.rounds import Benchmark, RoundHook

__all__ = ["run_benchmark"]


def run_benchmark(cfg: BenchConfig, run_dir: str | Path, progress: bool = True,
                  on_round_end: RoundHook | None = None, say: Callable[[str], None] | None = None) -> Path:
    """Run (or resume) a benchmark into ``run_dir`` and write its report; returns ``run_dir``."""
    bench = Benchmark(cfg, run_dir, progress=progress, on_round_end=on_round_end, say=say)
    bench.run()
    return Path(run_dir)
