"""Eq. 4 and spec §10 thresholds against hand-computed values on a tiny graph."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import graph_from_dict, load_graph
from gsal_edge.acquisition.rarity import (
    RarityError,
    bonus_table,
    confidence_bonus,
    count_instances,
    coverage,
    dynamic_threshold,
    expected_bonus,
    indicator,
    symbolic_bonus,
    threshold_rule,
)

# fine A -> X, {p, q};  B -> X, {q};  C -> Y, {r};  background -> none
TINY = {"fine": {
    "A": {"coarse": "X", "abstract": ["p", "q"], "prompts": ["a"]},
    "B": {"coarse": "X", "abstract": ["q"], "prompts": ["b"]},
    "C": {"coarse": "Y", "abstract": ["r"], "prompts": ["c"]},
}}


@pytest.fixture
def tiny():
    return graph_from_dict(TINY)


def test_counts_propagate_and_thresholds(tiny) -> None:
    cov = coverage(tiny, {"A": 4, "C": 1})  # B missing = 0
    assert cov.n_fine.tolist() == [4, 0, 1, 0]            # A, B, C, background
    assert dict(zip(cov.coarse, cov.n_coarse)) == {"X": 4 + 0, "Y": 1, "none": 0}
    assert dict(zip(cov.abstract, cov.n_abstract)) == {"p": 4, "q": 4 + 0, "r": 1}
    # tau_f: percentile([4, 0, 1], 80): sorted [0, 1, 4], position 0.8 * 2 = 1.6 -> 1 + 0.6 * (4 - 1) = 2.8
    assert cov.tau_f == pytest.approx(2.8)
    # tau_c: over X, Y only (none excluded): sorted [1, 4], position 0.8 -> 1 + 0.8 * 3 = 3.4
    assert cov.tau_c == pytest.approx(3.4)
    # tau_a: sorted [1, 4, 4], position 1.6 -> 4 + 0.6 * 0 = 4
    assert cov.tau_a == pytest.approx(4.0)


def test_background_count_excluded_from_threshold(tiny) -> None:
    assert coverage(tiny, {"A": 4, "C": 1, "background": 100}).tau_f == pytest.approx(2.8)


def test_hard_bonus_eq4(tiny) -> None:
    t = bonus_table(tiny, coverage(tiny, {"A": 4, "C": 1}), mu=0.5)
    # A: 4 < 2.8 no; X = 4 < 3.4 no; p, q = 4 < 4 no          -> 0
    # B: 0 < 2.8 yes; X no; q no                              -> 1
    # C: 1 < 2.8 yes; Y = 1 < 3.4 yes; r = 1 < 4 yes          -> 1 + 1 + 0.5 * 1 = 2.5
    # background 0; unknown (never covered at every level)    -> 2.5
    assert t.names == ("A", "B", "C", "background", "unknown")
    assert t.S.tolist() == [0.0, 1.0, 2.5, 0.0, 2.5]
    assert symbolic_bonus(np.array([2, 0, 4, 3]), t).tolist() == [2.5, 0.0, 2.5, 0.0]


def test_abstract_mean_over_attributes() -> None:
    g = graph_from_dict(TINY)
    # counts A=0, B=5, C=5: p=0, q=5, r=5 -> tau_a: sorted [0, 5, 5], pos 1.6 -> 5; p rare, q not
    t = bonus_table(g, coverage(g, {"B": 5, "C": 5}), mu=1.0)
    assert t.r_a[0] == pytest.approx((1 + 0) / 2)  # A has {p, q}: r_a = (1/|A(p)|) * sum = 1/2


def test_soft_indicators(tiny) -> None:
    t = bonus_table(tiny, coverage(tiny, {"A": 4, "C": 1}), mu=0.5, thresholds="soft")
    # C: (1 - 1/2.8) + (1 - 1/3.4) + 0.5 * (1 - 1/4)
    assert t.S[2] == pytest.approx((1 - 1 / 2.8) + (1 - 1 / 3.4) + 0.5 * 0.75)
    assert t.S[0] == 0.0 and t.S[1] == pytest.approx(1.0)  # A all max(0, negative) = 0; B: 1 - 0/2.8
    assert indicator(np.array([0.0, 1.0, 5.0]), 2.0, "soft").tolist() == [1.0, 0.5, 0.0]


def test_all_counts_zero_everything_rare(tiny) -> None:
    cov = coverage(tiny, {})
    assert (cov.tau_f, cov.tau_c, cov.tau_a) == (1.0, 1.0, 1.0)  # max(percentile(zeros), 1)
    assert bonus_table(tiny, cov).S.tolist() == [2.5, 2.5, 2.5, 0.0, 2.5]


def test_levels_and_no_rarity_ablations(tiny) -> None:
    cov = coverage(tiny, {"A": 4, "C": 1})
    assert bonus_table(tiny, cov, levels=("fine",)).S.tolist() == [0, 1, 1, 0, 1]
    assert bonus_table(tiny, cov, levels=("coarse",)).S.tolist() == [0, 0, 1, 0, 1]
    assert bonus_table(tiny, cov, levels=("abstract",)).S.tolist() == [0, 0, 0.5, 0, 0.5]
    assert bonus_table(tiny, cov, levels=("fine", "coarse")).S.tolist() == [0, 1, 2, 0, 2]
    assert bonus_table(tiny, cov, rarity=False).S.tolist() == [2.5, 2.5, 2.5, 0, 2.5]


def test_expected_bonus_soft_assignment(tiny) -> None:
    t = bonus_table(tiny, coverage(tiny, {"A": 4, "C": 1}))
    probs = np.array([[0.5, 0.25, 0.25, 0.0], [0.0, 0.0, 0.0, 1.0]])
    # 0.5 * 0 + 0.25 * 1 + 0.25 * 2.5 = 0.875; all mass on background -> 0
    assert expected_bonus(probs, t).tolist() == pytest.approx([0.875, 0.0])


def test_dynamic_threshold_edges() -> None:
    assert dynamic_threshold(np.array([])) == 1.0
    assert dynamic_threshold(np.array([0, 0, 0])) == 1.0
    assert dynamic_threshold(np.array([0, 10])) == pytest.approx(8.0)   # 0 + 0.8 * 10
    assert dynamic_threshold(np.array([0, 1, 4]), 50) == 1.0              # median 1, floor 1


def test_unknown_concept_in_counts_is_an_error(tiny) -> None:
    with pytest.raises(RarityError, match=r"counts.json: concept 'D' is not a fine node"):
        coverage(tiny, {"D": 1}, where="counts.json")
    with pytest.raises(RarityError, match="must be a finite number >= 0"):
        coverage(tiny, {"A": -1})
    assert coverage(tiny, {"unknown": 3}).n_fine.tolist() == [0, 0, 0, 0]  # documented: ignored


def test_count_instances_both_label_modes() -> None:
    g = load_graph("thin_film_ct")
    counts = count_instances(["void", "void", "crack", "background", "unknown"], g)
    assert counts["void"] == 2 and counts["crack"] == 1 and counts["petal"] == 0 and "background" not in counts
    with pytest.raises(RarityError, match="'rust'"):
        count_instances(["rust"], g)


# ---------------------------------------------------------------------- issue 16: small graphs, confidence
# coverage of the packaged graph at ~10% labeled (inclusion most covered, petal / drill hole rare)
TEN_PERCENT = {"void": 40, "inclusion": 60, "crack": 15, "petal": 3, "drill_hole": 2}


def test_percentile_rule_saturates_on_the_packaged_graph() -> None:
    """The failure the relative rule fixes: with 5 fine and 2 coarse nodes the 80th percentile leaves only
    the most covered fine node non-rare and makes `surface` rare whatever its count."""
    g = load_graph("thin_film_ct")
    cov = coverage(g, TEN_PERCENT)
    t = bonus_table(g, cov, mu=0.5)
    r_f = {f: t.r_f[g.fine_index[f]] for f in TEN_PERCENT}
    assert [f for f, r in r_f.items() if r == 0] == ["inclusion"]  # void (40 labeled) is as "rare" as petal (3)
    surf = dict(TEN_PERCENT, crack=80)  # surface now holds 85 labels vs subsurface 100: still rare
    t2 = bonus_table(g, coverage(g, surf), mu=0.5)
    assert all(t2.r_c[g.fine_index[f]] == 1 for f in ("petal", "drill_hole", "crack"))
    S = {f: float(t.S[g.fine_index[f]]) for f in TEN_PERCENT}
    assert S["crack"] == S["drill_hole"] == 2.5  # 15 labels earn what 2 (or 0) do: the "crack earns petal's"
    assert len({round(v, 9) for v in S.values()}) == 4


def test_relative_rule_keeps_every_coverage_difference_on_the_packaged_graph() -> None:
    g = load_graph("thin_film_ct")
    cov = coverage(g, TEN_PERCENT, rule=threshold_rule("relative"))
    assert cov.tau_f == pytest.approx(np.mean(list(TEN_PERCENT.values())))  # the level's mean count
    assert cov.tau_c == pytest.approx((100 + 20) / 2)
    t = bonus_table(g, cov, mu=0.5, thresholds="relative")
    by_count = sorted(TEN_PERCENT, key=TEN_PERCENT.get)  # least covered first
    r_f = [t.r_f[g.fine_index[f]] for f in by_count]
    assert all(a > b for a, b in itertools.pairwise(r_f))  # strictly decreasing in n(v)
    assert 0 < t.r_c[g.fine_index["petal"]] < 1  # surface is no longer always rare ...
    assert t.r_c[g.fine_index["petal"]] > t.r_c[g.fine_index["void"]]  # ... but still rarer than subsurface
    S = {f: float(t.S[g.fine_index[f]]) for f in TEN_PERCENT}
    assert len({round(v, 9) for v in S.values()}) == 5
    assert S["drill_hole"] > S["petal"] > S["crack"] > S["void"] > S["inclusion"]
    # a covered surface level lowers surface bonuses, as the hard rule never did
    t2 = bonus_table(g, coverage(g, dict(TEN_PERCENT, crack=80), rule="mean"), mu=0.5, thresholds="relative")
    assert t2.S[g.fine_index["petal"]] < t.S[g.fine_index["petal"]]
    # no labels: every defect is fully rare, as with the percentile rule; background never earns
    t0 = bonus_table(g, coverage(g, {}, rule="mean"), mu=0.5, thresholds="relative")
    assert set(t0.S[:-1][g.defect_mask].tolist()) == {2.5} and t0.S[g.fine_index["background"]] == 0
    with pytest.raises(RarityError, match="rule"):
        dynamic_threshold(np.array([1.0]), rule="median")


def test_confidence_bonus_gates_by_assignment_probability() -> None:
    """At 0 labels every defect is rare: a region only 30% sure to be a petal earns 30% of the bonus, and a
    region that is 90% background earns at most 10% of it (the soft bonus), never the full rare bonus."""
    g = load_graph("thin_film_ct")
    t = bonus_table(g, coverage(g, {}), mu=0.5)
    F = len(g.fine)
    probs = np.zeros((3, F))
    petal, bg = g.fine_index["petal"], g.fine_index["background"]
    probs[0, petal], probs[0, bg] = 0.3, 0.7
    probs[1, petal], probs[1, bg] = 0.1, 0.9
    probs[2, petal] = 1.0
    idx = np.array([petal, petal, F])  # the third row is unknown (novelty): keeps S_unknown
    S = confidence_bonus(idx, probs, t)
    assert S.tolist() == pytest.approx([0.3 * 2.5, 0.1 * 2.5, 2.5])
    assert expected_bonus(probs[:2], t).tolist() == pytest.approx([0.3 * 2.5, 0.1 * 2.5])
    assert symbolic_bonus(idx[:2], t).tolist() == [2.5, 2.5]  # the hard bonus the issue found amplifying noise
