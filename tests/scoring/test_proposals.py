"""Which detections become proposals: score floor, class-agnostic NMS, top-M (spec §4)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.scoring.proposals import box_iou, select_proposals
from gsal_edge.scoring.scorer import spec_settings

# one region found twice under two labels (boxes 0 and 1), a second region (2), a faint one (3)
BOXES = np.array([[10, 10, 30, 30], [11, 10, 31, 30], [60, 60, 70, 90], [100, 100, 110, 110]], float)
SCORES = np.array([0.9, 0.8, 0.7, 0.05])


def test_per_class_reading_keeps_the_duplicate() -> None:
    assert select_proposals(BOXES, SCORES, M=2).tolist() == [0, 1]


def test_class_agnostic_nms_frees_the_slot_for_another_region() -> None:
    assert select_proposals(BOXES, SCORES, M=2, nms_iou=0.5).tolist() == [0, 2]
    assert select_proposals(BOXES, SCORES, M=8, nms_iou=0.5).tolist() == [0, 2, 3]
    assert select_proposals(BOXES, SCORES, M=8, min_score=0.1, nms_iou=0.5).tolist() == [0, 2]
    assert select_proposals(np.zeros((0, 4)), np.zeros(0), M=4, nms_iou=0.5).tolist() == []


def test_iou_by_hand() -> None:
    assert box_iou(BOXES[0], BOXES[:1]) == pytest.approx([1.0])
    assert box_iou(BOXES[0], BOXES[1:2])[0] == pytest.approx(19 * 20 / (400 + 400 - 380))
    assert box_iou(BOXES[0], BOXES[2:3])[0] == 0.0


def test_config_reaches_the_scorer_spec() -> None:
    s = spec_settings(GSALConfig().with_overrides(["min_score=0.2", "proposal_nms_iou=0.5", "noise=common"]))
    assert s["min_score"] == 0.2 and s["proposal_nms_iou"] == 0.5 and s["noise"] == "common"
    with pytest.raises(Exception, match="proposal_nms_iou"):
        GSALConfig().with_overrides(["proposal_nms_iou=1.5"])


def test_issue16_crop_and_K_image_fields_reach_the_scorer_spec() -> None:
    s = spec_settings(GSALConfig().with_overrides(["K_image=16", "crop_shape=masked", "crop_border=reflect"]))
    assert (s["K_image"], s["crop_shape"], s["crop_border"]) == (16, "masked", "reflect")
    for bad in ("crop_shape=round", "crop_border=zero", "K_image=0"):
        with pytest.raises(Exception, match=bad.split("=")[0]):
            GSALConfig().with_overrides([bad])


@functools.lru_cache(maxsize=1)
def _scorer() -> object:
    from gsal_edge.scoring.torch_scorer import untrained_scorer

    return untrained_scorer(seed=3, image_size=32)


def _records(**over: object) -> list:
    sc = _scorer()
    spec = sc.spec
    sc.spec = dataclasses.replace(spec, **over)
    try:
        return _score(sc)
    finally:
        sc.spec = spec


def _score(sc: object) -> list:
    rng = np.random.default_rng(0)
    slices = [rng.integers(0, 65535, (32, 32), dtype=np.uint16) for _ in range(3)]
    return sc.score(slices, ["a", "b", "c"])


def test_K_image_changes_only_the_whole_slice_term() -> None:
    base, more = _records(noise="common", K_image=None), _records(noise="common", K_image=6)
    for r0, r1 in zip(base, more):
        assert r0.e_rec != r1.e_rec  # 6 trajectories instead of K = 2
        assert [p.e_rec for p in r0.proposals] == [p.e_rec for p in r1.proposals]
        assert [p.box for p in r0.proposals] == [p.box for p in r1.proposals]
    assert _records(noise="common", K_image=2)[0].e_rec == base[0].e_rec  # K_image = K is the default


def test_crop_modes_change_only_the_proposal_terms() -> None:
    plain = {"crop_shape": "square", "crop_border": "shift"}
    base = _records(**plain)
    assert any(p.proposals for p in base)
    for over in ({"crop_shape": "masked"}, {"crop_shape": "stretch"}, {"crop_border": "reflect"}):
        other = _records(**(plain | over))
        assert [r.e_rec for r in other] == [r.e_rec for r in base]
        assert [p.similarity for r in other for p in r.proposals] == [p.similarity for r in base for p in r.proposals]
        if over != {"crop_border": "reflect"}:  # reflect only matters where a crop crosses the edge
            assert [p.e_rec for r in other for p in r.proposals] != [p.e_rec for r in base for p in r.proposals]
