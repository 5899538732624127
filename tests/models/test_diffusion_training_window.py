"""The prior's training slices go through the same intensity window the scorer uses (12-bit in 16-bit files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gsal_edge.data.synthetic.generator import write_png16
from gsal_edge.models.diffusion_training import DiffusionTrainConfig, load_unlabeled


def test_twelve_bit_slices_reach_the_prior_windowed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(4):
        write_png16(tmp_path / f"s{i}.png", ((rng.random((64, 64)) * 0.9 + 0.05) * 4095).astype(np.uint16))
    raw, _ = load_unlabeled(tmp_path, 32, 10, 0)
    bits, _ = load_unlabeled(tmp_path, 32, 10, 0, window="bits:12")
    auto, _ = load_unlabeled(tmp_path, 32, 10, 0, window="auto")
    assert raw.mean() < 0.05  # the dtype's range: near-black
    assert 0.4 < bits.mean() < 0.6 and 0.4 < auto.mean() < 0.6


def test_window_enters_the_weights_digest_only_when_set() -> None:
    assert DiffusionTrainConfig().digest() == DiffusionTrainConfig(window=None).digest()
    assert DiffusionTrainConfig(window="bits:12").digest() != DiffusionTrainConfig().digest()
