"""Labeled crops for the round assigner (gsal_edge.acquisition.exemplars): the IoU rule, the exemplar set
from records + labels, and re-assigning records with a hybrid assigner."""

from __future__ import annotations

import numpy as np
import pytest

from gsal_edge.acquisition.assignment import AssignmentError, l2_normalize, make_assigner, round_assigner
from gsal_edge.acquisition.exemplars import (
    LabeledSlice,
    box_iou,
    collect_exemplars,
    label_proposals,
    reassign,
)
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord

NAMES = ["void", "crack", "background"]


def _unit(*v: float) -> list[float]:
    return list(l2_normalize(np.array(v, dtype=np.float64)))


def _prop(box, emb=None, concept="crack", sim=None) -> ProposalScore:  # type: ignore[no-untyped-def]
    return ProposalScore(tuple(map(float, box)), 0.9, 0.1, 0.01, concept,  # type: ignore[arg-type]
                         sim if sim is not None else {"void": 0.1, "crack": 0.2, "background": 0.0}, None, emb)


def test_box_iou_matches_hand_values() -> None:
    got = box_iou(np.array([[0, 0, 10, 10], [5, 5, 15, 15]]), np.array([[0, 0, 10, 10], [20, 20, 21, 21]]))
    np.testing.assert_allclose(got, [[1.0, 0.0], [25 / 175, 0.0]])
    assert box_iou(np.zeros((0, 4)), np.zeros((2, 4))).shape == (0, 2)


def test_label_proposals_best_box_above_threshold_else_background() -> None:
    gt = np.array([[0, 0, 10, 10], [20, 0, 30, 10]])
    props = np.array([[0, 0, 10, 10],       # IoU 1 with box 0
                      [21, 0, 31, 10],      # IoU 0.82 with box 1
                      [8, 0, 22, 10],       # IoU 20/220 with both: below 0.2
                      [100, 100, 110, 110]])  # nothing
    assert label_proposals(props, gt, ["void", "crack"], 0.2) == ["void", "crack", "background", "background"]
    assert label_proposals(props, gt, ["void", "crack"], 0.05)[2] == "void"  # a tie goes to the first box
    assert label_proposals(props, np.zeros((0, 4)), [], 0.5) == ["background"] * 4
    with pytest.raises(AssignmentError, match="2 labeled boxes but 1 concepts"):
        label_proposals(props, gt, ["void"], 0.5)
    with pytest.raises(AssignmentError, match="IoU threshold"):
        label_proposals(props, gt, ["void", "crack"], 0.0)


def _labeled() -> list[LabeledSlice]:
    rec = ScoreRecord("st/a", 0.1, 0.01, [
        _prop([0, 0, 10, 10], _unit(1, 0, 0)),      # on the void box
        _prop([50, 50, 60, 60], _unit(0, 0, 1)),    # background
        _prop([1, 1, 10, 10], None),                 # an old station: no f_I
    ])
    return [LabeledSlice(rec, np.array([[0, 0, 10, 10]]), ["void"], np.array([_unit(1, 0.1, 0)])),
            LabeledSlice(None, np.array([[0, 0, 5, 5], [9, 9, 12, 12]]), ["crack", "petal"],
                         np.array([_unit(0, 1, 0), _unit(0, 1, 1)]))]


def test_collect_exemplars_boxes_and_proposals() -> None:
    ex = collect_exemplars(_labeled(), NAMES, "boxes+proposals", 0.5)
    assert {c: e.shape for c, e in ex.exemplars.items()} == {"void": (2, 3), "crack": (1, 3), "background": (1, 3)}
    assert list(ex.exemplars) == NAMES  # in the assigner's order
    assert ex.from_boxes == {"void": 1, "crack": 1} and ex.from_proposals == {"void": 1, "background": 1}
    assert ex.proposals_without_embedding == 1 and ex.slices_without_record == 1
    assert ex.dropped_concepts == {"petal": 1}
    np.testing.assert_allclose(ex.exemplars["void"][1], _unit(1, 0, 0))
    only = collect_exemplars(_labeled(), NAMES, "boxes", 0.5)
    assert {c: len(e) for c, e in only.exemplars.items()} == {"void": 1, "crack": 1}
    assert only.summary()["from_proposals"] == {}


def test_collect_exemplars_refuses_mixed_dimensions_and_bad_mode() -> None:
    bad = _labeled()
    bad[0].record.proposals[1].embedding = [1.0, 0.0]  # type: ignore[union-attr]
    with pytest.raises(AssignmentError, match=r"'st/a' proposals\[1\]: embedding has 2 values, the other"):
        collect_exemplars(bad, NAMES, "boxes+proposals", 0.5)
    with pytest.raises(AssignmentError, match="exemplars must be one of"):
        collect_exemplars(_labeled(), NAMES, "proposals", 0.5)


def test_reassign_uses_the_prototype_and_keeps_proposals_without_embedding() -> None:
    text = l2_normalize(np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))  # void text looks "background"
    ex = {"void": np.array([_unit(1, 0.05, 0), _unit(1, -0.05, 0)])}
    asg = make_assigner("hybrid", NAMES, text, ex, k=2)
    assert asg.sources == ["prototype", "text", "text"]
    station_sim = {"void": 0.0, "crack": 0.1, "background": 0.9}
    recs = [ScoreRecord("st/p", 0.1, 0.01, [_prop([0, 0, 4, 4], _unit(1, 0.01, 0), "background", station_sim),
                                           _prop([0, 0, 4, 4], None, "background", station_sim),
                                           _prop([0, 0, 4, 4], [1.0, 0.0], "background", station_sim)])]
    out, st = reassign(recs, asg)
    assert st.to_dict() == {"reassigned": 1, "without_embedding": 1, "wrong_dimension": 1, "changed": 1}
    p0 = out[0].proposals[0]
    assert p0.concept == "void" and list(p0.similarity) == NAMES
    assert p0.similarity["void"] == pytest.approx(float(np.dot(_unit(1, 0.01, 0), asg.embeddings[0])), abs=1e-6)
    assert out[0].proposals[1].concept == "background" and out[0].proposals[1].similarity == station_sim
    assert recs[0].proposals[0].concept == "background"  # the input is not modified
    # the plain text assigner gives back the station's own assignment
    out_t, st_t = reassign(recs, make_assigner("text", NAMES, text))
    assert out_t[0].proposals[0].concept == "background" and st_t.changed == 0


def test_round_assigner_from_collected_exemplars_fits_a_temperature() -> None:
    rng = np.random.default_rng(0)
    centers = {"void": np.array([1.0, 0, 0, 0]), "crack": np.array([0, 1.0, 0, 0]), "background": np.array([0, 0, 1.0, 0])}
    slices = []
    for i in range(12):
        c = ["void", "crack"][i % 2]
        e = l2_normalize(centers[c] + 0.2 * rng.standard_normal(4))
        bg = l2_normalize(centers["background"] + 0.2 * rng.standard_normal(4))
        rec = ScoreRecord(f"st/{i}", 0.0, 0.0, [_prop([0, 0, 8, 8], list(e)), _prop([30, 30, 40, 40], list(bg))])
        slices.append(LabeledSlice(rec, np.array([[0, 0, 8, 8]]), [c], None))
    ex = collect_exemplars(slices, NAMES, "boxes+proposals", 0.5)
    assert ex.boxes_without_embedding == 12 and ex.summary()["exemplars"] == {"void": 6, "crack": 6, "background": 12}
    text = l2_normalize(rng.standard_normal((3, 4)))
    asg = round_assigner("hybrid", NAMES, text, ex.exemplars, k=3, calibration="temperature", min_crops=10)
    assert asg.sources == ["prototype"] * 3
    assert asg.fit is not None and asg.fit["fitted"] == 1.0 and asg.fit["crops"] == 24.0
    assert asg.temperature is not None and 0.002 <= asg.temperature <= 0.5
