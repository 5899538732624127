"""Eqs. 7-10 and A(x) on a hand-computable pool; ScorePool construction and edge cases."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import graph_from_dict, load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.fusion import (
    concept_indices,
    fuse,
    generalized_mean,
    softplus,
)
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.score_pool import FusionError, ScorePool

TINY = graph_from_dict({"fine": {
    "A": {"coarse": "X", "abstract": ["p"], "prompts": ["a"]},
    "B": {"coarse": "Y", "abstract": ["q"], "prompts": ["b"]},
}})


def prop(e: float, v: float, concept: str, score: float = 0.5, sim: dict | None = None) -> ProposalScore:
    return ProposalScore((0.0, 0.0, 4.0, 4.0), score, e, v, concept, sim or {})


def rec(i: str, e: float, v: float, props: list[ProposalScore] = (), **kw) -> ScoreRecord:  # type: ignore[assignment]
    return ScoreRecord(i, e, v, list(props), **kw)


def pz(xs: list[float]) -> list[float]:
    """Eq. 11 written out: (x - mean) / (population std + 1e-8)."""
    m, s = statistics.fmean(xs), statistics.pstdev(xs)
    return [(x - m) / (s + 1e-8) for x in xs]


def hand_pool() -> ScorePool:
    return ScorePool.from_records([
        rec("a", 1, 1, [prop(0, 0, "background"), prop(2, 2, "A"), prop(0, 0, "background")]),
        rec("b", 2, 2, [prop(2, 2, "A")]),
        rec("c", 3, 3),  # no proposals
    ])


def test_equations_9_10_and_A_by_hand() -> None:
    cfg = GSALConfig(levels=("fine", "coarse"))  # counts all zero -> S(p) = r_f + r_c = 2 for A, 0 for background
    res = fuse(hand_pool(), TINY, {}, cfg)
    # proposals: E = V = [0, 2, 0, 2] -> z = [-1, 1, -1, 1]; D(p) = .5 z + .5 z; z(D(p)) = [-1, 1, -1, 1]
    assert res.zD_p == pytest.approx([-1, 1, -1, 1], abs=1e-6)
    assert res.S_p.tolist() == [0, 2, 0, 2]
    # u_p = z(D) + 0.5 z(S) = [-1.5, 1.5, -1.5, 1.5]
    assert res.u == pytest.approx([-1.5, 1.5, -1.5, 1.5], abs=1e-6)
    sp_hi, sp_lo = math.log(1 + math.exp(1.5)), math.log(1 + math.exp(-1.5))
    P = [((2 * sp_lo**3 + sp_hi**3) / 3) ** (1 / 3), sp_hi, 0.0]  # Eq. 9, rho = 3; c has no proposals
    assert res.P == pytest.approx(P, abs=1e-6)
    D_img = [0.5 * z + 0.5 * z for z in pz([1, 2, 3])]
    G = [0.5 * zp + 0.5 * zd for zp, zd in zip(pz(P), pz(D_img))]  # Eq. 10
    S_x = [2, 2, 0]
    A = [zg + 0.5 * zs for zg, zs in zip(pz(G), pz(S_x))]
    assert res.S_x.tolist() == S_x
    assert res.G == pytest.approx(G, abs=1e-6)
    assert res.A == pytest.approx(A, abs=1e-6)


def test_rho_one_is_mean_pooling() -> None:
    res = fuse(hand_pool(), TINY, {}, GSALConfig(levels=("fine", "coarse"), rho=1.0))
    sp_hi, sp_lo = math.log(1 + math.exp(1.5)), math.log(1 + math.exp(-1.5))
    assert res.P == pytest.approx([(2 * sp_lo + sp_hi) / 3, sp_hi, 0.0], abs=1e-6)


def test_pool_norm_M_counts_hard_proposals() -> None:
    """Eq. 9 with 1/M_x measures the share of hard proposals; the [ours] 1/M reading also their number."""
    x = np.array([2.0, 2.0, 2.0, 2.0])  # image 0: one hard proposal; image 1: three equally hard ones
    img, starts, counts = np.array([0, 1, 1, 1]), np.array([0, 1, 4]), np.array([1, 3])
    share = generalized_mean(x, img, starts, counts, rho=1.0)
    assert share.tolist() == pytest.approx([2.0, 2.0])  # the same under 1/M_x
    slots = generalized_mean(x, img, starts, counts, rho=1.0, slots=4)
    assert slots.tolist() == pytest.approx([0.5, 1.5])  # (2 + 0 + 0 + 0) / 4 vs (2 + 2 + 2 + 0) / 4
    res = fuse(hand_pool(), TINY, {}, GSALConfig(levels=("fine", "coarse"), rho=1.0, pool_norm="M", M=4))
    sp_hi, sp_lo = math.log(1 + math.exp(1.5)), math.log(1 + math.exp(-1.5))
    assert res.P == pytest.approx([(2 * sp_lo + sp_hi) / 4, sp_hi / 4, 0.0], abs=1e-6)


def test_softplus_and_generalized_mean_are_stable() -> None:
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is the right answer
        assert softplus(np.array([1000.0, -1000.0, 0.0])).tolist() == pytest.approx([1000.0, 0.0, math.log(2)])
        x = np.array([1.0, 2.0, 1e3, 2e3])
        img = np.array([0, 0, 1, 1])
        starts, counts = np.array([0, 2, 4, 4]), np.array([2, 2, 0])
        gm = generalized_mean(x, img, starts, counts, rho=2.0)
        assert gm[0] == pytest.approx(math.sqrt((1 + 4) / 2)) and gm[2] == 0.0
        big = generalized_mean(x, img, starts, counts, rho=400.0)  # 2000^400 would overflow unscaled
        assert big[1] == pytest.approx(2e3 * ((1 + 0.5**400) / 2) ** (1 / 400))


def test_empty_pool() -> None:
    pool = ScorePool.from_records([])
    res = fuse(pool, TINY, {}, GSALConfig())
    assert pool.n_images == 0 and res.A.shape == (0,) and res.S_p.shape == (0,)


def test_pool_without_any_proposal_and_constant_scores() -> None:
    pool = ScorePool.from_records([rec("x", 0.2, 0.1), rec("y", 0.2, 0.1)])
    res = fuse(pool, TINY, {}, GSALConfig())
    assert res.P.tolist() == [0, 0] and res.S_x.tolist() == [0, 0]
    assert np.abs(res.A).max() < 1e-6  # every population constant -> z = 0


def test_concept_missing_from_graph() -> None:
    pool = ScorePool.from_records([rec("x", 1, 1, [prop(1, 1, "rust")]), rec("y", 2, 2, [prop(1, 1, "A")])])
    with pytest.raises(FusionError, match=r"concept 'rust' \(image_id='x'\) is not a fine node of graph"):
        fuse(pool, TINY, {}, GSALConfig())
    res = fuse(pool, TINY, {}, GSALConfig(missing_concept="background"))
    assert res.S_p[0] == 0.0
    res = fuse(pool, TINY, {}, GSALConfig(missing_concept="unknown"))
    assert res.concept_index[0] == len(TINY.fine) and res.S_p[0] == 2.5  # unknown: 1 + 1 + 0.5


def test_novelty_and_soft_assignment_from_similarity() -> None:
    sims = [{"A": 0.1, "B": 0.05, "background": 0.0}, {"A": 0.3, "B": 0.1, "background": 0.2}]
    pool = ScorePool.from_records([rec("x", 1, 1, [prop(1, 1, "A", sim=sims[0])]),
                                   rec("y", 2, 2, [prop(2, 2, "A", sim=sims[1])])])
    idx = concept_indices(pool, TINY, novelty_threshold=0.2)
    assert idx.tolist() == [len(TINY.fine), TINY.fine_index["A"]]  # best 0.1 < 0.2 -> unknown
    # soft: counts {A: 4} -> tau_f = max(pct([4, 0]), 1) = 3.2, tau_c = 3.2, tau_a = 3.2 -> S_A = 0, S_B = 2.5
    res = fuse(pool, TINY, {"A": 4}, GSALConfig(assignment="soft", temperature=0.1))
    e = [math.exp(s / 0.1) for s in (0.3, 0.1, 0.2)]  # row y, columns A, B, background
    assert res.S_p[1] == pytest.approx(e[1] / sum(e) * 2.5)


def test_group_by_normalizes_within_groups() -> None:
    pool = ScorePool.from_records([
        rec("a", 1, 1, meta={"product": "P"}), rec("b", 3, 3, meta={"product": "P"}),
        rec("c", 10, 10, meta={"product": "Q"}), rec("d", 20, 20, meta={"product": "Q"}),
    ])
    res = fuse(pool, TINY, {}, GSALConfig(group_by="product"))
    assert res.D_img == pytest.approx([-1, 1, -1, 1], abs=1e-6)  # each group: mean +- std
    with pytest.raises(FusionError, match="no record has meta key 'line'"):
        fuse(pool, TINY, {}, GSALConfig(group_by="line"))


def test_difficulty_within_concept_removes_a_concept_wide_offset() -> None:
    """[ours] difficulty_within=concept: z(D(p)) per assigned concept, so a concept whose regions are all
    harder to reconstruct (here A, +10 on every proposal's E_rec) stops outranking the others."""
    def pool(offset: float) -> ScorePool:
        rng = np.random.default_rng(1)
        recs = []
        for i in range(30):
            c = ("A", "B", "background")[i % 3]
            e, v = float(rng.random()), float(rng.random())
            recs.append(rec(f"x{i:02d}", 1.0, 1.0, [prop(e + (offset if c == "A" else 0), v, c)]))
        return ScorePool.from_records(recs)

    flat, shifted = pool(0.0), pool(10.0)
    is_a = np.array([flat.concepts[j] == "A" for j in flat.prop_concept])
    by_pool = fuse(shifted, TINY, {}, GSALConfig())
    assert by_pool.zD_p[is_a].mean() > by_pool.zD_p[~is_a].mean() + 1  # the offset crowds out B and background
    cfg = GSALConfig(difficulty_within="concept")
    by_concept, by_concept_flat = fuse(shifted, TINY, {}, cfg), fuse(flat, TINY, {}, cfg)
    assert by_concept.zD_p == pytest.approx(by_concept_flat.zD_p, abs=1e-6)  # the offset is gone
    for c in ("A", "B", "background"):
        m = np.array([shifted.concepts[j] == c for j in shifted.prop_concept])
        assert by_concept.zD_p[m].mean() == pytest.approx(0, abs=1e-9)
        assert by_concept.zD_p[m].std() == pytest.approx(1, abs=1e-6)
    assert by_concept.zD_img == pytest.approx(by_pool.zD_img)  # image terms keep the pool population


def test_difficulty_within_concept_combines_with_group_by() -> None:
    recs = [rec(f"{g}{i}", 1.0, 1.0, [prop(float(i) * (10 if g == "Q" else 1), 0.0, c)], meta={"product": g})
            for g in ("P", "Q") for i, c in enumerate(("A", "A", "B", "B"))]
    pool = ScorePool.from_records(recs)
    res = fuse(pool, TINY, {}, GSALConfig(group_by="product", difficulty_within="concept"))
    # every (product, concept) pair holds two proposals: each pair is normalized to -1, +1 on its own
    assert res.zD_p == pytest.approx([-1, 1] * 4, abs=1e-6)


def test_from_records_columns_and_validation() -> None:
    pool = ScorePool.from_records([
        rec("a", 1, 2, [prop(3, 4, "A", score=0.9, sim={"A": 0.5})], uncertainty={"entropy": 0.3}, embedding=[1.0, 0.0]),
        rec("b", 5, 6, [], meta={"line": "L2"}),
    ])
    assert pool.image_ids.tolist() == ["a", "b"] and pool.n_props.tolist() == [1, 0]
    assert pool.prop_score.tolist() == [0.9] and pool.concepts == ("A",)
    assert pool.similarity.tolist() == [[0.5]]
    assert pool.uncertainty["entropy"].tolist() == [0.3] + [pytest.approx(float("nan"), nan_ok=True)]
    assert np.isnan(pool.embeddings[1]).all() and pool.meta["line"].tolist() == ["", "L2"]
    with pytest.raises(FusionError, match="duplicate image_id 'a'"):
        ScorePool.from_records([rec("a", 1, 1), rec("a", 2, 2)])
    with pytest.raises(FusionError, match="non-decreasing"):
        ScorePool(np.array(["a", "b"]), [1, 2], [1, 2], [1, 0], np.zeros((2, 4)), [1, 1], [1, 1], [1, 1], [0, 0], ("A",))
    with pytest.raises(FusionError, match="NaN/Inf"):
        ScorePool(np.array(["a"]), [np.nan], [1], [], np.zeros((0, 4)), [], [], [], [], ("A",))


def test_from_records_similarity_with_mixed_key_layouts() -> None:
    """Records from different scorers may list similarities in other orders or for other concepts; each
    value must land in its concept's column, NaN where a record gave none."""
    pool = ScorePool.from_records([
        rec("a", 1, 1, [prop(1, 1, "A", sim={"A": 0.1, "B": 0.2}), prop(1, 1, "B", sim={"B": 0.3, "A": 0.4})]),
        rec("b", 1, 1, [prop(1, 1, "A", sim={"A": 0.5, "B": 0.6}), prop(1, 1, "C", sim={"C": 0.7})]),
        rec("c", 1, 1, [prop(1, 1, "B")]),
    ])
    assert pool.concepts == ("A", "B", "C")
    nan = float("nan")
    expected = np.array([[0.1, 0.2, nan], [0.4, 0.3, nan], [0.5, 0.6, nan], [nan, nan, 0.7], [nan, nan, nan]])
    np.testing.assert_array_equal(pool.similarity, expected)


def test_prefilter_keeps_top_M_by_score_and_subset() -> None:
    pool = ScorePool.from_records([
        rec("a", 1, 1, [prop(1, 1, "A", 0.2), prop(2, 2, "B", 0.9), prop(3, 3, "A", 0.5)]),
        rec("b", 1, 1, [prop(4, 4, "B", 0.1)]),
    ])
    f = pool.prefilter(2)
    assert f.prop_score.tolist() == [0.9, 0.5, 0.1] and f.prop_e_rec.tolist() == [2, 3, 4]  # record order kept
    assert pool.prefilter(3) is pool
    s = pool.subset(np.array([False, True]))
    assert s.image_ids.tolist() == ["b"] and s.prop_image.tolist() == [0] and s.prop_e_rec.tolist() == [4]


def test_thin_film_graph_end_to_end_finite() -> None:
    g = load_graph("thin_film_ct")
    rng = np.random.default_rng(0)
    recs = [rec(f"s{i}", float(rng.random()), float(rng.random()),
                [prop(float(rng.random()), float(rng.random()), str(rng.choice(g.fine))) for _ in range(i % 4)])
            for i in range(50)]
    counts = {"void": 3, "crack": 1}
    cfg = GSALConfig()
    res = fuse(ScorePool.from_records(recs), g, counts, cfg)
    assert np.isfinite(res.A).all() and res.A.shape == (50,)
    assert res.A == pytest.approx(reference_A(recs, literal_bonus(g, counts, cfg.mu), cfg, None), abs=1e-6)


def literal_bonus(g, counts: dict[str, int], mu: float) -> dict[str, float]:
    """Eq. 4 with spec §10's conventions, written with plain loops over the real graph's nodes."""
    defects = [f for f in g.fine if f != "background"]
    n_f = {f: counts.get(f, 0) for f in defects}
    coarse = sorted({g.coarse_of(f) for f in defects} - {"none"})
    abstract = sorted({a for f in defects for a in g.abstract_of(f)})
    n_c = {c: sum(n_f[f] for f in defects if g.coarse_of(f) == c) for c in coarse}
    n_a = {a: sum(n_f[f] for f in defects if a in g.abstract_of(f)) for a in abstract}
    tau = {lvl: max(float(np.percentile(list(n.values()), 80)), 1.0)
           for lvl, n in (("f", n_f), ("c", n_c), ("a", n_a))}
    S = {"background": 0.0}
    for f in defects:
        r_f = float(n_f[f] < tau["f"])
        c = g.coarse_of(f)
        r_c = float(n_c[c] < tau["c"]) if c in n_c else 0.0
        ab = g.abstract_of(f)
        r_a = sum(float(n_a[a] < tau["a"]) for a in ab) / len(ab) if ab else 0.0
        S[f] = r_f + r_c + mu * r_a
    return S


def reference_A(recs: list[ScoreRecord], S_of: dict[str, float], cfg: GSALConfig, key: str | None) -> list[float]:
    """Spec §§5-6, 10 written literally with Python loops over images (no numpy tricks)."""
    groups = [r.meta.get(key, "") if key else "" for r in recs]

    def z_by(values: list[float], gs: list[str]) -> list[float]:
        out = [0.0] * len(values)
        for g in set(gs):
            idx = [i for i, x in enumerate(gs) if x == g]
            for i, zi in zip(idx, pz([values[i] for i in idx])):
                out[i] = zi
        return out

    props = [(i, p) for i, r in enumerate(recs) for p in r.proposals]
    pg = [groups[i] for i, _ in props]
    D_p = [cfg.alpha * a + cfg.beta * b for a, b in zip(z_by([p.e_rec for _, p in props], pg),
                                                        z_by([p.v_den for _, p in props], pg))]
    S_p = [S_of[p.concept] for _, p in props]
    u = [d + cfg.gamma * s for d, s in zip(z_by(D_p, pg), z_by(S_p, pg))]
    P, S_x = [0.0] * len(recs), [0.0] * len(recs)
    for i in range(len(recs)):
        mine = [k for k, (j, _) in enumerate(props) if j == i]
        if mine:
            P[i] = (sum(math.log(1 + math.exp(u[k])) ** cfg.rho for k in mine) / len(mine)) ** (1 / cfg.rho)
            S_x[i] = max(S_p[k] for k in mine)
    D_img = [cfg.alpha * a + cfg.beta * b for a, b in zip(z_by([r.e_rec for r in recs], groups),
                                                          z_by([r.v_den for r in recs], groups))]
    G = [cfg.eta * a + (1 - cfg.eta) * b for a, b in zip(z_by(P, groups), z_by(D_img, groups))]
    return [a + cfg.lambda_ * b for a, b in zip(z_by(G, groups), z_by(S_x, groups))]


@pytest.mark.parametrize("seed, group_by", [(0, None), (1, "product"), (2, "product")])
def test_vectorized_fusion_equals_literal_loops(seed: int, group_by: str | None) -> None:
    rng = np.random.default_rng(seed)
    recs = [rec(f"i{i}", float(rng.random()), float(rng.random()),
                [prop(float(rng.random()), float(rng.random()), str(rng.choice(["A", "B", "background"])))
                 for _ in range(int(rng.integers(0, 5)))], meta={"product": str(rng.choice(["P", "Q"]))})
            for i in range(25)]
    cfg = GSALConfig(group_by=group_by, rho=float(rng.choice([1.0, 2.0, 3.0])), gamma=0.7, eta=0.3, lambda_=0.9)
    # counts {A: 2}: tau = max(pct([2, 0], 80) = 1.6, 1) = 1.6 at every level -> A covered (S = 0), B rare (2.5)
    S_of = {"A": 0.0, "B": 2.5, "background": 0.0}
    res = fuse(ScorePool.from_records(recs), TINY, {"A": 2}, cfg)
    assert res.A == pytest.approx(reference_A(recs, S_of, cfg, group_by), abs=1e-6)


# ---------------------------------------------------------------------- issue 16 switches
def test_count_aware_pooling_prefers_more_confident_hard_proposals() -> None:
    """Eq. 9 averages over M_x, so an image with three equally hard proposals ties one with a single such
    proposal; the count term (count_weight > 0) ranks the one with more confident proposals higher."""
    same = [prop(2, 2, "A", score=0.9)]
    pool = ScorePool.from_records([
        rec("one", 1, 1, same), rec("three", 1, 1, same * 3), rec("low", 1, 1, [prop(2, 2, "A", score=0.2)] * 3),
        rec("easy", 1, 1, [prop(0, 0, "A", score=0.9)]),
    ])
    cfg = GSALConfig()
    base = fuse(pool, TINY, {}, cfg)
    assert base.P[0] == pytest.approx(base.P[1]) and base.P[1] == pytest.approx(base.P[2])
    res = fuse(pool, TINY, {}, cfg.replace(count_weight=0.5, count_min_score=0.5))
    assert res.P[1] - res.P[0] == pytest.approx(0.5 * (math.log(4) - math.log(2)))
    assert res.P[2] == pytest.approx(base.P[2])  # scores below count_min_score are not counted
    assert res.A[1] > res.A[0] > res.A[2]


def test_nu_adds_the_detector_uncertainty_z_score() -> None:
    pool = ScorePool.from_records([rec(i, 1, 1, [prop(1, 1, "A")], uncertainty={"entropy": u})
                                   for i, u in (("a", 0.1), ("b", 0.9), ("c", 0.5))]
                                  + [rec("d", 1, 1, [prop(1, 1, "A")])])  # d carries no entropy: z = 0
    base = fuse(pool, TINY, {}, GSALConfig())
    res = fuse(pool, TINY, {}, GSALConfig(nu=2.0))
    u = [0.1, 0.9, 0.5, 0.5]
    assert (res.A - base.A).tolist() == pytest.approx([2.0 * z for z in pz(u)], abs=1e-6)
    assert res.zU[3] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(FusionError, match="uncertainty_key='margin'"):
        fuse(pool, TINY, {}, GSALConfig(nu=1.0, uncertainty_key="margin"))


def test_confidence_assignment_takes_the_bonus_from_unsure_regions() -> None:
    """At 0 labels every defect concept is rare: with the hard bonus a region that is barely closer to A
    than to background earns A's full S; the confidence-gated bonus gives it S_A * p(A)."""
    sure = {"A": 0.9, "B": 0.1, "background": 0.1}
    unsure = {"A": 0.31, "B": 0.1, "background": 0.30}
    pool = ScorePool.from_records([rec("sure", 1, 1, [prop(1, 1, "A", sim=sure)]),
                                   rec("unsure", 1, 1, [prop(1, 1, "A", sim=unsure)])])
    hard = fuse(pool, TINY, {}, GSALConfig())
    assert hard.S_p[0] == hard.S_p[1] == 2.5
    conf = fuse(pool, TINY, {}, GSALConfig(assignment="confidence", temperature=0.05))
    p = [math.exp(s / 0.05) for s in (0.31, 0.1, 0.30)]  # graph order A, B, background
    assert conf.S_p[1] == pytest.approx(2.5 * p[0] / sum(p))
    assert conf.S_p[0] > 2.4 and conf.S_x[0] > conf.S_x[1]
