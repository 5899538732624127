"""Builders shared by the trainer tests (real records, real PNG bytes; no mocks). Holds no tests."""

from __future__ import annotations

import numpy as np

from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from trainer.images import encode_pixels
from trainer.store.types import IngestItem

CONCEPTS = ("void", "inclusion", "petal", "drill_hole")


def make_record(i: int, station: str = "st-01", bundle: str = "sha256:b1", n_props: int = 2,
                seed: int = 0) -> ScoreRecord:
    rng = np.random.default_rng(seed * 100_003 + i)
    props = []
    for j in range(n_props):
        x, y = float(rng.uniform(0, 40)), float(rng.uniform(0, 40))
        concept = CONCEPTS[(i + j) % len(CONCEPTS)]
        props.append(ProposalScore(
            box=(x, y, x + 8.0, y + 6.0), score=float(rng.uniform(0.1, 1)), e_rec=float(rng.uniform(0, 0.1)),
            v_den=float(rng.uniform(0, 0.01)), concept=concept,
            similarity={c: float(rng.uniform(-1, 1)) for c in CONCEPTS}, label=concept))
    return ScoreRecord(
        image_id=f"slice-{i:06d}", e_rec=float(rng.uniform(0, 0.05)), v_den=float(rng.uniform(0, 0.005)),
        proposals=props, uncertainty={"entropy": float(rng.uniform(0, 1))},
        model={"bundle": bundle, "station": station}, meta={"line": "L1"})


def make_pixels(i: int, size: int = 64) -> np.ndarray:
    rng = np.random.default_rng(i)
    return rng.integers(0, 255, size=(size, size), dtype=np.uint8)


def make_item(i: int, station: str = "st-01", bundle: str = "sha256:b1", with_image: bool = True,
              seed: int = 0) -> IngestItem:
    rec = make_record(i, station, bundle, seed=seed)
    if with_image:
        data, fmt = encode_pixels(make_pixels(i))
        return IngestItem(station, rec, image=data, image_format=fmt, width=64, height=64)
    return IngestItem(station, rec, image_ref=f"/data/{station}/{rec.image_id}.png", width=64, height=64)
