"""Every exception class the project defines derives from GSALError (one root for CLIs and servicers)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from gsal_edge.errors import GSALError

PACKAGES = ("gsal_edge", "server", "trainer", "export", "gsal_wire", "gsal_cli")
# modules that need an optional package (TensorRT) still import: their imports are lazy
SKIP: set[str] = set()


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        mod = importlib.import_module(pkg)
        names.append(pkg)
        for info in pkgutil.walk_packages(mod.__path__, prefix=pkg + "."):
            if info.name not in SKIP:
                names.append(info.name)
    return names


def test_every_project_exception_derives_from_gsal_error() -> None:
    orphans = []
    seen = 0
    for name in _modules():
        mod = importlib.import_module(name)
        for _, obj in inspect.getmembers(mod, inspect.isclass):
            if obj.__module__ != name or not issubclass(obj, BaseException):
                continue
            seen += 1
            if not issubclass(obj, GSALError):
                orphans.append(f"{name}.{obj.__qualname__}")
    assert seen >= 20, seen  # the walk really found the project's exception classes
    assert not orphans, f"exception classes outside GSALError: {orphans}"


def test_gsal_error_keeps_builtin_bases() -> None:
    from gsal_edge.acquisition.config import ConfigError
    from gsal_edge.data.dataset import DatasetError

    with pytest.raises(ValueError):
        raise DatasetError("x")
    assert issubclass(ConfigError, GSALError)
