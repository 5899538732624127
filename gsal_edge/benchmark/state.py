"""A run folder's state: where each file lives, the per-(strategy, seed) round state, and the resume rules
(a folder resumes only with the config, split and prior it was started with)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gsal_edge.benchmark.config import BenchConfig, BenchError, StrategySpec
from gsal_edge.benchmark.fingerprints import folder_fingerprint
from gsal_edge.jsonio import read_json

__all__ = ["BENCH_PACKAGES", "STATE_FORMAT", "check_resumable", "config_diff", "load_state", "model_path",
           "picks_path", "shared_dir", "state_path", "stored_config"]

STATE_FORMAT = "gsal-bench-state/1"
# the packages whose behaviour the numbers depend on (run.json "versions"; a missing one is "not installed")
BENCH_PACKAGES = ("gsal-edge", "torch", "torchvision", "numpy", "diffusers", "open_clip_torch", "faster-coco-eval",
                  "pydantic", "matplotlib")


def state_path(run_dir: Path, spec: StrategySpec, seed: int) -> Path:
    """``results/<strategy>/seed-<s>.json``: the finished rounds of one (strategy, seed)."""
    return run_dir / "results" / spec.slug / f"seed-{seed}.json"


def model_path(run_dir: Path, spec: StrategySpec, seed: int, r: int) -> Path:
    """The round's detector, kept until the next round's state is written (retrain=finetune resumes from it)."""
    return run_dir / "results" / spec.slug / f"seed-{seed}-detector-r{r:02d}.pt"


def picks_path(run_dir: Path, spec: StrategySpec, seed: int, r: int) -> Path:
    """``picks/<strategy>/seed-<s>/round-<r>.json``: the round's selection with full rationale."""
    return run_dir / "picks" / spec.slug / f"seed-{seed}" / f"round-{r:02d}.json"


def shared_dir(run_dir: Path, seed: int) -> Path:
    """``shared/seed-<s>/``: round-0 detectors, metrics and score records shared by a seed's strategies."""
    return run_dir / "shared" / f"seed-{seed}"


def load_state(path: Path, spec: StrategySpec, seed: int, label_mode: str, init: list[str]) -> dict[str, Any]:
    """The stored state of (``spec``, ``seed``) at ``path``, or a fresh one starting from ``init``."""
    if path.is_file():
        st = read_json(path, BenchError)
        if st.get("format") != STATE_FORMAT or st.get("strategy") != spec.key or st.get("seed") != seed:
            raise BenchError(f"{path}: not the state of strategy {spec.key!r} seed {seed}")
        return st
    return {"format": STATE_FORMAT, "strategy": spec.key, "seed": seed, "label_mode": label_mode,
            "labeled": list(init), "rounds": [], "finished": False}


def config_diff(old: Any, new: Any, prefix: str = "", ignore: set[str] = frozenset()) -> list[str]:
    """``field.path: old -> new`` for every leaf that differs (top-level keys in ``ignore`` skipped)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            if k in ignore and not prefix:
                continue
            out += config_diff(old.get(k), new.get(k), f"{prefix}{k}.", ignore)
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def check_resumable(run_dir: Path, cfg: dict[str, Any], split: dict[str, Any], prior_fp: str,
                    prior_dir: Path) -> None:
    """Refuse to resume ``run_dir`` (it has a ``run.json``) with another config, split or diffusion prior."""
    path = run_dir / "run.json"
    old = read_json(path, BenchError)
    # where and how fast it runs (threads, device) may change on resume; nothing else may
    # a field added after the run started counts as its default (older run folders stay resumable)
    old_cfg = {**BenchConfig().to_dict(), **old.get("config", {})}
    diff = config_diff(old_cfg, cfg, ignore={"threads", "device"})
    if diff:
        raise BenchError(f"{path}: this run folder was started with another config ({'; '.join(diff[:6])}); "
                         "resume it with the same options (or only --out), or use a new --out")
    old_split = read_json(run_dir / "split.json", BenchError) if (run_dir / "split.json").is_file() else None
    if old_split is not None and old_split != split:
        raise BenchError(f"{run_dir}/split.json: the data or split differ from the stored run")
    if old.get("models", {}).get("prior_fingerprint") not in (
            None, prior_fp, folder_fingerprint(prior_dir, provenance=True)):
        raise BenchError(f"{path}: the diffusion prior changed since the run started ({prior_dir}): "
                         "its weights or configs differ; resume with the same --models/--prior, or use a "
                         "new --out")


def stored_config(run_dir: str | Path) -> BenchConfig:
    """The config a run folder was started with (for resuming with only ``--out``)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise BenchError(f"{path} does not exist: not a benchmark run folder")
    try:
        return BenchConfig.model_validate(read_json(path, BenchError)["config"])
    except (KeyError, ValidationError) as e:
        raise BenchError(f"{path}: bad stored config ({e})") from None
