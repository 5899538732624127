"""The detector-only path (`GSALScorer.detector_uncertainty`) that entropy / margin / MC-dropout rounds use:
the same uncertainty values as the full score records, without running the diffusion prior or CLIP."""

from __future__ import annotations

import numpy as np
import pytest
from test_bundle import write_toy_bundle

from gsal_edge.scoring.bundle import load_bundle


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory):
    return load_bundle(write_toy_bundle(tmp_path_factory.mktemp("det"), None), "onnxruntime", allow_unsigned=True)


def test_detector_only_uncertainty_equals_the_records_and_skips_diffusion_and_clip(scorer) -> None:
    rng = np.random.default_rng(3)
    slices = [rng.integers(0, 65535, (48, 40), dtype=np.uint16), rng.random((32, 32), dtype=np.float32),
              rng.integers(0, 255, (24, 64), dtype=np.uint8)]
    full = scorer.score(slices, ["a", "b", "c"])
    before = (scorer.timings.diffusion, scorer.timings.clip, scorer.timings.detector)
    only = scorer.detector_uncertainty(slices)
    assert [sorted(u) for u in only] == [sorted(r.uncertainty) for r in full] and only[0]
    for u, r in zip(only, full):
        for k, v in r.uncertainty.items():
            assert u[k] == pytest.approx(v, rel=1e-6, abs=1e-9), k
    after = (scorer.timings.diffusion, scorer.timings.clip, scorer.timings.detector)
    assert after[:2] == before[:2]  # no diffusion, no CLIP time was spent
    assert after[2] > before[2]
