"""Finding the external programs that integration tests start (Label Studio, PostgreSQL, Chromium, ...).

`make services` (called by `.ci/run`) installs them; a developer's machine may not have them. A test that
needs one calls :func:`require`: where the program is missing the test is skipped with the install
command, except under CI (``CI`` set), where a missing program is a failure, so CI can never go green
by skipping the very thing it was meant to run.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def find(*candidates: str | Path) -> Path | None:
    """The first candidate that exists: a path (absolute or relative to the repo) or a name on PATH."""
    for c in candidates:
        p = Path(c)
        if not p.is_absolute() and len(p.parts) > 1:
            p = REPO / p
        if p.is_absolute() and p.exists():
            return p
        found = shutil.which(str(c))
        if found:
            return Path(found)
    return None


def require(what: str, *candidates: str | Path, install: str = "make services") -> Path:
    """The path of ``what``; skip (or fail under CI) naming ``install`` when none of ``candidates`` exists."""
    path = find(*candidates)
    if path is not None:
        return path
    msg = f"{what} not found (looked for {', '.join(map(str, candidates))}); install it with `{install}`"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)
