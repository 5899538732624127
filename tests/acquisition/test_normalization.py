"""Eq. 11 z-score: ddof = 0, + 1e-8, groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.acquisition.normalization import group_codes, zscore


def test_zscore_population_std() -> None:
    # mean 2, population std sqrt(((1-2)^2 + 0 + (3-2)^2) / 3) = sqrt(2/3)
    s = math.sqrt(2 / 3)
    assert zscore(np.array([1.0, 2.0, 3.0])).tolist() == pytest.approx([-1 / (s + 1e-8), 0.0, 1 / (s + 1e-8)], abs=1e-12)


def test_constant_and_single_and_empty() -> None:
    assert np.abs(zscore(np.full(5, 0.1))).max() < 1e-6      # std 0 -> z = 0
    assert zscore(np.array([7.0])).tolist() == [0.0]
    assert zscore(np.array([])).shape == (0,)


def test_groups_normalize_separately() -> None:
    x = np.array([1.0, 3.0, 10.0, 20.0])
    g = np.array([0, 0, 1, 1])
    # group 0: mean 2, std 1 -> -1, +1 ; group 1: mean 15, std 5 -> -5/5, +5/5
    assert zscore(x, g).tolist() == pytest.approx([-1 / (1 + 1e-8), 1 / (1 + 1e-8), -5 / (5 + 1e-8), 5 / (5 + 1e-8)])
    # one group == no groups
    assert zscore(x, np.zeros(4, dtype=int)) == pytest.approx(zscore(x), abs=1e-12)


def test_group_codes() -> None:
    codes, names = group_codes(["film-B", "film-A", "film-B"])
    assert codes.tolist() == [1, 0, 1] and names == ["film-A", "film-B"]
