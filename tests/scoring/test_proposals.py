"""Which detections become proposals: score floor, class-agnostic NMS, top-M (spec §4)."""

from __future__ import annotations

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
