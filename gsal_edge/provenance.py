"""Where a result came from: package versions, the git commit, the time — written next to every run.

One implementation for the benchmark's ``run.json``, detector checkpoints, train-defaults and bundle
manifests, so they all say the same thing the same way.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import platform
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_PACKAGES", "git_commit", "git_state", "package_versions", "provenance"]

DEFAULT_PACKAGES = (
    "gsal-edge", "torch", "torchvision", "numpy", "diffusers", "open_clip_torch", "onnx", "onnxruntime",
    "onnxruntime-gpu", "onnxslim", "tensorrt", "faster-coco-eval", "pydantic", "cryptography", "matplotlib",
)
_SOURCE_ROOT = Path(__file__).resolve().parents[1]


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES, *, missing: str | None = None) -> dict[str, str]:
    """``python``, ``platform`` and the installed version of each package in ``names``.

    A package that is not installed is left out, or given the text ``missing`` when that is set."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n)
        except importlib.metadata.PackageNotFoundError:
            if missing is not None:
                out[n] = missing
    return out


def git_state(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit": HEAD or None, "dirty": bool or None}`` of the checkout this package runs from."""
    cwd = str(repo or _SOURCE_ROOT)
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10,
                              check=False)
        if head.returncode != 0:
            return {"commit": None, "dirty": None}
        # diff-index takes no index lock (unlike `git status`), so it never races a concurrent commit
        dirty = subprocess.run(["git", "diff-index", "--quiet", "HEAD", "--"], cwd=cwd, capture_output=True,
                               timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip() or None,
            "dirty": {0: False, 1: True}.get(dirty.returncode)}


def git_commit(repo: str | Path | None = None) -> str:
    """``HEAD`` (with ``+dirty`` when the tree has changes), or ``unknown`` outside a checkout."""
    g = git_state(repo)
    if not g["commit"]:
        return "unknown"
    return g["commit"] + ("+dirty" if g["dirty"] else "")


def provenance(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, Any]:
    """The block written beside results: UTC time, package versions, git commit and dirtiness."""
    return {"time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "versions": package_versions(packages), "git": git_state()}
