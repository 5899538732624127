"""Selection (spec §7): top-b with id tie-break, rationale and sentence, batch_aware, screening, label modes."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import graph_from_dict, load_graph
from gsal_edge.acquisition.config import GSALConfig, ScreeningConfig
from gsal_edge.acquisition.fusion import fuse
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.score_pool import ScorePool
from gsal_edge.acquisition.selection import gsal_select, labeled_counts, screen, selection_overlap, top_b

TINY = graph_from_dict({"fine": {
    "A": {"coarse": "X", "abstract": ["p"], "prompts": ["a"]},
    "B": {"coarse": "Y", "abstract": ["q"], "prompts": ["b"]},
}})


def prop(e: float, concept: str, score: float = 0.5, box=(0.0, 0.0, 4.0, 4.0), sim=None) -> ProposalScore:
    return ProposalScore(tuple(box), score, e, e, concept, sim or {})


def rec(i: str, e: float, props=()) -> ScoreRecord:
    return ScoreRecord(i, e, e, list(props))


def pz(xs):
    m, s = statistics.fmean(xs), statistics.pstdev(xs)
    return [(x - m) / (s + 1e-8) for x in xs]


def test_top_b_ties_by_image_id() -> None:
    ids = np.array(["d", "c", "b", "a", "e"])
    s = np.array([1.0, 2.0, 2.0, 0.0, 2.0])
    assert ids[top_b(s, ids, 2)].tolist() == ["b", "c"]          # three tied at 2.0 -> id order
    assert ids[top_b(s, ids, 4)].tolist() == ["b", "c", "e", "d"]
    assert ids[top_b(s, ids, 10)].tolist() == ["b", "c", "e", "d", "a"]
    assert top_b(s, ids, 0).size == 0
    assert ids[top_b(s, ids, 1, eligible=np.array([1, 1, 0, 1, 1], bool))].tolist() == ["c"]


def test_picks_follow_A_descending() -> None:
    g = load_graph("thin_film_ct")
    rng = np.random.default_rng(3)
    recs = [rec(f"s{i:02d}", float(rng.random()), [prop(float(rng.random()), str(rng.choice(g.fine)))
                                                   for _ in range(i % 3)]) for i in range(40)]
    pool = ScorePool.from_records(recs)
    cfg = GSALConfig()
    sel = gsal_select(pool, g, {"void": 2}, cfg, 7)
    A = fuse(pool, g, {"void": 2}, cfg).A
    expected = sorted(range(40), key=lambda i: (-A[i], pool.image_ids[i]))[:7]
    assert sel.image_ids == [f"s{i:02d}" for i in expected]
    assert [p.rank for p in sel.picks] == list(range(1, 8))
    assert [p.acquisition for p in sel.picks] == [float(A[i]) for i in expected]


def rare_pool() -> ScorePool:
    # nine images with one covered 'void' proposal, one image 'r' with a 'drill_hole' proposal of
    # slightly-above-average difficulty; image-level difficulty of 'r' equals the pool mean
    recs = [rec(f"v{i}", float(i), [prop(float(i), "void")]) for i in range(1, 10)]
    recs.append(rec("r", 5.0, [prop(5.5, "drill_hole", box=(10, 20, 30, 40))]))
    return ScorePool.from_records(recs)


def test_rationale_for_a_rare_concept() -> None:
    g = load_graph("thin_film_ct")
    counts = {"void": 3, "inclusion": 3, "petal": 3, "crack": 3}  # drill_hole 0
    sel = gsal_select(rare_pool(), g, counts, GSALConfig(), 1)
    p = sel.picks[0]
    assert p.image_id == "r"
    r = p.rationale
    # tau_f = percentile([3,3,3,0,3], 80) = 3; surface = petal 3 + drill 0 + crack 3 = 6, subsurface 6 -> tau_c 6
    # abstract: dark 6, round 6, spherical 3, bright 6, foreign 3, u_shaped 3, sharp_boundary 3, linear 3
    #   -> sorted [3,3,3,3,3,6,6,6], position 5.6 -> tau_a = 6
    assert r["path"]["fine"] == {"name": "drill_hole", "count": 0, "tau": 3, "rare": True, "indicator": 1.0}
    assert r["path"]["coarse"]["name"] == "surface" and r["path"]["coarse"]["count"] == 6
    assert r["path"]["coarse"]["rare"] is False
    assert [(a["name"], a["count"], a["rare"]) for a in r["path"]["abstract"]] == [
        ("dark", 6, False), ("linear", 3, True), ("sharp_boundary", 3, True)]
    # S(p) = r_f + r_c + mu * r_a = 1 + 0 + 0.5 * 2/3
    assert r["proposal"]["S"] == pytest.approx(1 + 0.5 * 2 / 3)
    assert r["proposal"]["box"] == [10, 20, 30, 40]
    assert r["dominant"] == "rarity" and r["terms"]["lambda_z_S_x"] > r["terms"]["z_G"]
    # the four contributions add up to A = z(G) + lambda z(S(x))
    parts = r["contributions"]
    total = parts["image_difficulty"] + parts["region_difficulty"] + parts["region_rarity"] + parts["concept_rarity"]
    assert total == pytest.approx(p.acquisition, abs=1e-9)
    assert p.sentence == "picked for a rare concept: drill_hole (0 labeled, tau_f = 3) in a hard region"


def test_rationale_says_when_the_concept_was_a_close_call() -> None:
    g = load_graph("thin_film_ct")
    counts = {"void": 3, "inclusion": 3, "petal": 3, "crack": 3}

    def pool(sim: dict[str, float]) -> ScorePool:
        recs = [rec(f"v{i}", float(i), [prop(float(i), "void", sim={"void": 0.8, "drill_hole": 0.1})])
                for i in range(1, 10)]
        recs.append(rec("r", 5.0, [prop(5.5, "drill_hole", box=(10, 20, 30, 40), sim=sim)]))
        return ScorePool.from_records(recs)

    close = gsal_select(pool({"drill_hole": 0.52, "crack": 0.47, "void": 0.1}), g, counts, GSALConfig(), 1).picks[0]
    assert close.image_id == "r"
    prop_r = close.rationale["proposal"]
    assert prop_r["runner_up"] == {"concept": "crack", "similarity": 0.47}
    assert prop_r["margin"] == pytest.approx(0.05)
    assert close.sentence == ("picked for a rare concept: drill_hole (0 labeled, tau_f = 3) in a hard region; "
                              "concept uncertain: drill_hole 0.52 vs crack 0.47")
    strict = gsal_select(pool({"drill_hole": 0.52, "crack": 0.47}), g, counts, GSALConfig(rationale_margin=0.01),
                         1).picks[0]
    assert "uncertain" not in strict.sentence  # the wording threshold is configurable
    clear = gsal_select(pool({"drill_hole": 0.70, "crack": 0.30}), g, counts, GSALConfig(), 1).picks[0]
    assert clear.sentence == "picked for a rare concept: drill_hole (0 labeled, tau_f = 3) in a hard region"
    assert close.acquisition == pytest.approx(clear.acquisition)  # wording only: the scores do not change


def test_rationale_for_hard_image_without_proposals_and_novel_concept() -> None:
    pool = ScorePool.from_records([rec("a", 1.0), rec("b", 2.0), rec("c", 9.0)])
    p = gsal_select(pool, TINY, {}, GSALConfig(), 1).picks[0]
    assert p.image_id == "c" and p.rationale["proposal"] is None
    assert p.sentence.startswith("picked for a hard image") and p.sentence.endswith("no proposals")
    sim_lo = {"A": 0.1, "B": 0.05, "background": 0.0}
    pool = ScorePool.from_records([rec("n", 1.0, [prop(1.0, "A", sim=sim_lo)])] +
                                  [rec(f"k{i}", 1.0, [prop(1.0, "A", sim={"A": 0.9})]) for i in range(5)])
    cfg = GSALConfig(novelty_threshold=0.2)
    p = gsal_select(pool, TINY, {"A": 5, "B": 5}, cfg, 1).picks[0]
    assert p.image_id == "n" and p.rationale["novel"] is True
    assert p.sentence.startswith("picked for a novel concept: unknown (best similarity 0.10 < threshold 0.20)")


def test_same_inputs_byte_identical_json() -> None:
    g = load_graph("thin_film_ct")
    counts = {"void": 3, "inclusion": 3}
    a = gsal_select(rare_pool(), g, counts, GSALConfig(), 5).to_json(GSALConfig())
    b = gsal_select(rare_pool(), g, counts, GSALConfig(), 5).to_json(GSALConfig())
    assert a == b and '"picks"' in a


def test_batch_aware_updates_provisional_counts() -> None:
    recs = [rec("i1", 10.0, [prop(10.0, "A")]), rec("i2", 9.0, [prop(9.0, "A")]), rec("i3", 1.0, [prop(1.0, "B")])]
    recs += [rec(f"f{k}", 5.0, [prop(5.0, "background")]) for k in range(3)]
    pool = ScorePool.from_records(recs)
    cfg = GSALConfig(lambda_=3.0)
    # counts all 0 -> every tau = 1, A and B both rare: S(x) = 2.5 for i1, i2, i3; difficulty ranks i1 > i2 > i3
    assert gsal_select(pool, TINY, {}, cfg, 2).image_ids == ["i1", "i2"]
    # batch-aware: after i1, n(A) = 1 -> tau_f = max(pct([1, 0]) = 0.8, 1) = 1, so A is no longer rare
    # (1 < 1 false, likewise X and p); B stays rare, S(i2) drops to 0 and i3 wins through lambda * z(S(x))
    sel = gsal_select(pool, TINY, {}, cfg.replace(batch_aware=True), 2)
    assert sel.image_ids == ["i1", "i3"]
    assert sel.info["provisional_counts"]["A"] == 1 and sel.info["provisional_counts"]["B"] == 1
    assert sel.picks[1].rationale["path"]["fine"]["name"] == "B"


def test_screening_reports_drops_and_changes_pool() -> None:
    recs = [rec("a", 1.0, [prop(1.0, "A", score=0.9)]), rec("b", 2.0, [prop(1.0, "A", score=0.1)]),
            rec("c", 3.0, [prop(1.0, "A", score=0.1)]), rec("d", 4.0, [prop(1.0, "A", score=0.1)])]
    pool = ScorePool.from_records(recs)
    rep = screen(pool, budget=2, cfg=ScreeningConfig(keep_factor=1.0))
    # c(x) = z(E_rec_img) + z(max score): E = [1,2,3,4], max score = [.9,.1,.1,.1]
    c = [ze + zs for ze, zs in zip(pz([1, 2, 3, 4]), pz([0.9, 0.1, 0.1, 0.1]))]
    assert rep.cheap_score.tolist() == pytest.approx(c)
    assert rep.n_keep == 2 and rep.dropped_ids == ["b", "c"]          # c = [0.39, -1.02, -0.13, 0.77]
    cfg = GSALConfig().with_overrides(["screening.enabled=true", "screening.keep_factor=1"])
    sel = gsal_select(pool, TINY, {}, cfg, 2)
    assert set(sel.image_ids) <= {"a", "d"} and sel.info["screening"] == {"kept": 2, "dropped": 2}
    full = gsal_select(pool, TINY, {}, GSALConfig(), 4)
    # z() populations are the whole pool (spec §10): a kept image's A(x) is what it is without screening,
    # so the screened picks are the unscreened order restricted to the kept images
    assert sel.image_ids == [i for i in full.image_ids if i in {"a", "d"}]
    by_id = {p.image_id: p.acquisition for p in full.picks}
    assert [p.acquisition for p in sel.picks] == pytest.approx([by_id[i] for i in sel.image_ids])
    aware = gsal_select(pool, TINY, {}, cfg.replace(batch_aware=True), 2)
    assert aware.image_ids == sel.image_ids  # batch_aware also picks among the kept images only
    assert selection_overlap(["a", "b"], ["b", "c"]) == 0.5 and selection_overlap([], ["a"]) == 0.0


def test_empty_pool_budget_zero_and_budget_above_pool() -> None:
    assert gsal_select(ScorePool.from_records([]), TINY, {}, GSALConfig(), 5).picks == []
    pool = ScorePool.from_records([rec("a", 1.0), rec("b", 2.0)])
    assert gsal_select(pool, TINY, {}, GSALConfig(), 0).picks == []
    assert gsal_select(pool, TINY, {}, GSALConfig(), 5).image_ids == ["b", "a"]


def test_label_modes_give_counts() -> None:
    g = load_graph("thin_film_ct")
    typed = labeled_counts(g, "typed", labels=["void", "crack", "void"])
    binary = labeled_counts(g, "binary", assigned_concepts=["void", "background", "petal"])
    assert typed["void"] == 2 and typed["crack"] == 1
    assert binary["void"] == 1 and binary["petal"] == 1 and "background" not in binary
    with pytest.raises(ValueError, match="binary"):
        labeled_counts(g, "binary", labels=["void"])


def test_relative_thresholds_reach_selection_and_batch_aware_counts() -> None:
    """thresholds=relative: coverage taus are the level means (floor 1) in the selection's info, the picks'
    rationale reports them, and batch-aware greedy recomputes them with the same rule."""
    recs = [rec("i1", 10.0, [prop(10.0, "A")]), rec("i2", 9.0, [prop(9.0, "A")]), rec("i3", 1.0, [prop(1.0, "B")])]
    recs += [rec(f"f{k}", 5.0, [prop(5.0, "background")]) for k in range(3)]
    pool = ScorePool.from_records(recs)
    cfg = GSALConfig(lambda_=3.0, thresholds="relative")
    sel = gsal_select(pool, TINY, {"A": 6, "B": 2}, cfg, 2)
    assert sel.info["coverage"]["thresholds"]["tau_f"] == 4.0  # mean(6, 2); the 80th percentile would be 5.2
    assert sel.picks[0].rationale["thresholds"]["tau_f"] == 4
    # S_A = 4/10 + 4/10 + 0.5 * 4/10 = 1.0 < S_B = 4/6 * 2.5: the less covered B wins through lambda z(S(x))
    assert sel.image_ids[0] == "i3"
    greedy = gsal_select(pool, TINY, {}, cfg.replace(batch_aware=True), 3)
    # after i1 (A counted once), tau_f = max(mean(1, 0), 1) = 1: S_A = 1/2 * 2.5 < S_B = 2.5, so i3 beats i2
    assert greedy.image_ids == ["i1", "i3", "i2"]
