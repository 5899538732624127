"""The import contracts of pyproject.toml ([tool.importlinter]) hold for the whole tree.

lint-imports builds the real import graph (module-level and function-level imports alike), so a
lazy ``import torch`` inside an acquisition function breaks the build as surely as a top-level one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _lint_imports() -> str:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is missing: it is a dev dependency (pip install -e '.[dev]')")
    return exe


def test_import_contracts_hold() -> None:
    proc = subprocess.run([_lint_imports(), "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout, proc.stdout[-3000:]


def test_contracts_cover_the_design(tmp_path: Path) -> None:
    """The checker really checks: a library module importing the trainer is reported as broken."""
    import tomllib

    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    names = [c["name"] for c in cfg["contracts"]]
    assert any("library imports no station" in n for n in names)
    assert any("ONNX scoring path imports no torch" in n for n in names)
    assert any("station and trainer never import each other" in n for n in names)
    # a throwaway package tree that breaks the first contract must fail lint-imports
    pkg = tmp_path / "gsal_edge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text("def f():\n    import trainer.cli\n")
    (tmp_path / "trainer").mkdir()
    (tmp_path / "trainer" / "__init__.py").write_text("")
    (tmp_path / "trainer" / "cli.py").write_text("")
    conf = tmp_path / "contracts.toml"
    conf.write_text('[tool.importlinter]\nroot_packages = ["gsal_edge", "trainer"]\n\n'
                    '[[tool.importlinter.contracts]]\nname = "lib"\ntype = "forbidden"\n'
                    'source_modules = ["gsal_edge"]\nforbidden_modules = ["trainer"]\n')
    proc = subprocess.run([_lint_imports(), "--config", str(conf), "--no-cache"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0, proc.stdout
    assert "gsal_edge.bad -> trainer.cli" in proc.stdout
