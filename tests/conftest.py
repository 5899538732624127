"""Shared test set-up: bounded threads (the machine has 2 cores) and seeded randomness."""

from __future__ import annotations

import os

import numpy as np
import pytest

try:  # torch is a hard dependency, but keep collection of pure-numpy tests cheap and robust
    import torch

    torch.set_num_threads(int(os.environ.get("GSAL_TEST_THREADS", "2")))
except ImportError:  # pragma: no cover
    torch = None


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
