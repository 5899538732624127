"""Strategy interface: every baseline/ablation by name, same inputs and outputs, hand-checkable picks."""

from __future__ import annotations

import numpy as np
import pytest

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.score_pool import FusionError, ScorePool
from gsal_edge.acquisition.selection import gsal_select
from gsal_edge.acquisition.strategies import available_strategies, get_strategy, k_center_greedy

G = load_graph("thin_film_ct")
EXPECTED = {"random", "entropy", "margin", "mc_dropout", "coreset", "uniform_by_label", "diffusion_only",
            "symbolic_only", "fine_only", "coarse_only", "abstract_only", "fine_coarse", "full", "gsal",
            "gsal_no_rarity"}


def make_pool(n: int = 30, seed: int = 0) -> ScorePool:
    rng = np.random.default_rng(seed)
    recs = []
    for i in range(n):
        props = [ProposalScore((0, 0, 5, 5), float(rng.random()), float(rng.random()), float(rng.random()),
                               str(rng.choice(G.fine)), label=str(rng.choice(["void", "crack"])))
                 for _ in range(i % 4)]
        recs.append(ScoreRecord(f"img{i:02d}", float(rng.random()), float(rng.random()), props,
                                {"entropy": float(rng.random()), "margin": float(rng.random()),
                                 "mc_dropout": float(rng.random())}, embedding=rng.normal(size=3).tolist()))
    return ScorePool.from_records(recs)


def test_registry_has_every_strategy() -> None:
    assert EXPECTED <= set(available_strategies())
    assert {"badge", "ppal"} <= set(available_strategies())
    assert not {"mi_aod", "noris"} & set(available_strategies())  # not implemented (module doc, docs/baselines.md)
    with pytest.raises(KeyError, match="unknown strategy 'nope'; available: .*random"):
        get_strategy("nope")


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_same_interface_and_reproducible(name: str) -> None:
    pool, cfg = make_pool(), GSALConfig(seed=7)
    a = get_strategy(name).select(pool, {"void": 2}, G, cfg, 6, np.random.default_rng(cfg.seed))
    b = get_strategy(name).select(pool, {"void": 2}, G, cfg, 6, np.random.default_rng(cfg.seed))
    assert a.strategy == name and [p.rank for p in a.picks] == [1, 2, 3, 4, 5, 6]
    assert len(set(a.image_ids)) == 6 and all(isinstance(p.rationale, dict) and p.sentence for p in a.picks)
    assert a.to_json() == b.to_json()  # same inputs and seed -> byte-identical
    empty = get_strategy(name).select(ScorePool.from_records([]), {}, G, cfg, 3, np.random.default_rng(0))
    assert empty.picks == []


def test_random_is_top_b_of_seeded_draws() -> None:
    pool = make_pool()
    draws = np.random.default_rng(11).random(pool.n_images)
    expected = [pool.image_ids[i] for i in np.argsort(-draws)[:5]]
    assert get_strategy("random").select(pool, {}, G, GSALConfig(), 5, np.random.default_rng(11)).image_ids == expected


def test_uncertainty_baselines_rank_the_record_values() -> None:
    pool = make_pool()
    ent, mar, mcd = (pool.uncertainty[k] for k in ("entropy", "margin", "mc_dropout"))
    pick = lambda name: get_strategy(name).select(pool, {}, G, GSALConfig(), 3, np.random.default_rng(0)).image_ids
    assert pick("entropy") == [pool.image_ids[i] for i in np.argsort(-ent)[:3]]   # most uncertain first
    assert pick("margin") == [pool.image_ids[i] for i in np.argsort(-mar)[:3]]    # stored as 1 - margin
    assert pick("mc_dropout") == [pool.image_ids[i] for i in np.argsort(-mcd)[:3]]
    bare = ScorePool.from_records([ScoreRecord("x", 1.0, 1.0)])
    with pytest.raises(FusionError, match=r"needs uncertainty\['entropy'\]"):
        get_strategy("entropy").select(bare, {}, G, GSALConfig(), 1, np.random.default_rng(0))


def test_uncertainty_baselines_pick_the_coin_toss_over_the_sure_detection() -> None:
    """Across both modules: the scorer's aggregate (uncertainty.py) ranked by the strategy (strategies.py)."""
    from gsal_edge.acquisition.uncertainty import RANK_SIGN, image_uncertainty

    sure = image_uncertainty(np.array([[0.02, 0.96, 0.02]]), np.array([0.96]))
    toss = image_uncertainty(np.array([[0.02, 0.49, 0.49]]), np.array([0.49]))
    recs = [ScoreRecord("sure", 0.5, 0.5, [], {**sure, "mc_dropout": 0.1}),
            ScoreRecord("toss", 0.5, 0.5, [], {**toss, "mc_dropout": 0.9})]
    pool = ScorePool.from_records(recs)
    for name in ("entropy", "margin", "mc_dropout"):
        picks = get_strategy(name).select(pool, {}, G, GSALConfig(), 1, np.random.default_rng(0)).image_ids
        assert picks == ["toss"], name
    assert set(RANK_SIGN) >= {"entropy", "margin", "mc_dropout", "max_score", "least_confidence"}


def test_k_center_greedy_by_hand() -> None:
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    ids = np.array(["a", "b", "c", "d"])
    idx, dist = k_center_greedy(x, np.array([[0.0]]), 2, ids, np.random.default_rng(0))
    # from center 0: farthest is d (11); then min distances a 0, b 1, c min(10, 1) = 1 -> tie b/c -> id "b"
    assert ids[idx].tolist() == ["d", "b"] and dist.tolist() == [11.0, 1.0]
    idx, dist = k_center_greedy(x, None, 2, ids, np.random.default_rng(0))
    assert np.isnan(dist[0]) and not np.isnan(dist[1])  # first center is a seeded random point


def test_coreset_strategy_uses_labeled_embeddings() -> None:
    recs = [ScoreRecord(k, 1.0, 1.0, embedding=[v, 0.0]) for k, v in (("a", 0.0), ("b", 1.0), ("c", 10.0), ("d", 11.0))]
    pool = ScorePool.from_records(recs)
    sel = get_strategy("coreset").select(pool, {}, G, GSALConfig(), 2, np.random.default_rng(0),
                                         labeled_embeddings=np.array([[11.0, 0.0]]))
    # from center 11: farthest a (11); then b min(1, 10) = 1, c min(10, 1) = 1 -> tie -> "b"
    assert sel.image_ids == ["a", "b"] and sel.picks[0].acquisition == 11.0


def test_uniform_by_label_quotas() -> None:
    def r(i: str, labels: list[str]) -> ScoreRecord:
        return ScoreRecord(i, 1.0, 1.0, [ProposalScore((0, 0, 1, 1), 0.5, 1.0, 1.0, "void", label=lb) for lb in labels])

    pool = ScorePool.from_records([r("a", ["X"]), r("b", ["X"]), r("c", ["X"]), r("d", ["X"]), r("e", ["Y"]), r("f", [])])
    sel = get_strategy("uniform_by_label").select(pool, {}, G, GSALConfig(), 4, np.random.default_rng(0))
    classes = [p.rationale["class"] for p in sel.picks]
    # round-robin in class-name order: X, Y, X, (Y exhausted) X
    assert classes == ["X", "Y", "X", "X"] and sel.picks[1].image_id == "e" and "f" not in sel.image_ids
    sel = get_strategy("uniform_by_label").select(pool, {}, G, GSALConfig(), 6, np.random.default_rng(0))
    assert sel.picks[-1].image_id == "f" and sel.picks[-1].rationale["class"] == "(no predicted class)"


def test_ablations_ignore_what_they_remove() -> None:
    pool, cfg = make_pool(40, seed=1), GSALConfig()
    pick = lambda name, p, counts: get_strategy(name).select(p, counts, G, cfg, 8, np.random.default_rng(0)).image_ids
    # diffusion-only (lambda = gamma = 0) and w/o rarity do not depend on coverage counts
    for name in ("diffusion_only", "gsal_no_rarity"):
        assert pick(name, pool, {}) == pick(name, pool, {"void": 50, "crack": 9, "petal": 3})
    # symbolic-only (alpha = beta = 0) does not depend on the diffusion scores: redraw all of them
    rng = np.random.default_rng(99)
    redrawn = ScorePool(pool.image_ids, rng.random(pool.n_images), rng.random(pool.n_images), pool.prop_image,
                        pool.prop_box, pool.prop_score, rng.random(pool.n_proposals), rng.random(pool.n_proposals),
                        pool.prop_concept, pool.concepts)
    assert pick("symbolic_only", pool, {"void": 4}) == pick("symbolic_only", redrawn, {"void": 4})
    assert pick("gsal", pool, {"void": 4}) != pick("gsal", redrawn, {"void": 4})  # GSAL itself does depend on them
    # full == gsal; fine_only == GSAL with levels = (fine,)
    assert pick("full", pool, {"void": 4}) == pick("gsal", pool, {"void": 4})
    assert pick("fine_only", pool, {"void": 4}) == gsal_select(pool, G, {"void": 4}, cfg.replace(levels=("fine",)), 8).image_ids


REQUIREMENTS = ("needs_scores", "needs_embeddings", "needs_mc_dropout")


def test_every_strategy_declares_what_it_reads() -> None:
    # the base class gives no defaults: a strategy that forgets one fails here, not silently in a runner
    from gsal_edge.acquisition.strategies import Strategy

    assert not any(hasattr(Strategy, a) for a in REQUIREMENTS)
    declared = {}
    for name in available_strategies():
        s = get_strategy(name)
        for a in REQUIREMENTS:
            assert isinstance(getattr(s, a, None), bool), f"strategy {name!r} does not declare {a}"
        declared[name] = tuple(getattr(s, a) for a in REQUIREMENTS)
    # what the benchmark hard-coded by name before the declarations
    assert {n for n, d in declared.items() if not d[0]} == {"random", "coreset", "badge", "ppal"}
    assert {n for n, d in declared.items() if d[1]} == {"coreset"}
    assert {n for n, d in declared.items() if d[2]} == {"mc_dropout"}
    assert {n for n in available_strategies() if get_strategy(n).needs_box_features} == {"badge", "ppal"}


def test_benchmark_rounds_follow_the_declarations() -> None:
    from gsal_edge.acquisition.strategies import RandomStrategy, Strategy
    from gsal_edge.benchmark.config import BenchError
    from gsal_edge.benchmark.pool_scoring import RoundInputs

    for name in available_strategies():
        s = get_strategy(name)
        need = RoundInputs.of(s)
        scored = "detector" if s.reads_detector_only else "records"
        assert need.pool == (scored if s.needs_scores else "embeddings" if s.needs_embeddings else "ids")
        assert (need.labeled_embeddings, need.mc_dropout) == (s.needs_embeddings, s.needs_mc_dropout)

    class ScoredRandom(RandomStrategy):  # same name as random, other declarations: the name does not decide
        needs_scores, needs_embeddings, needs_mc_dropout = True, True, True

    assert RoundInputs.of(ScoredRandom()) == RoundInputs("records", True, True)
    assert RoundInputs.of(get_strategy("random")) == RoundInputs("ids", False, False)
    # the detector-only baselines never pay for the diffusion prior or CLIP; GSAL and its ablations do
    assert {n for n in available_strategies() if RoundInputs.of(get_strategy(n)).pool == "detector"} == {
        "entropy", "margin", "mc_dropout"}
    assert RoundInputs.of(get_strategy("gsal")).pool == "records"
    assert RoundInputs.of(get_strategy("coreset")) == RoundInputs("embeddings", True, False)
    badge, ppal = RoundInputs.of(get_strategy("badge")), RoundInputs.of(get_strategy("ppal"))
    assert badge.pool == ppal.pool == "ids" and badge.box_features is not None and ppal.box_features is not None
    assert badge.box_features.quality_xi is None and ppal.box_features.quality_xi == 0.6  # only PPAL reads q_c

    class Inconsistent(Strategy):
        name = "inconsistent"
        needs_scores, needs_embeddings, needs_mc_dropout = False, False, True

        def select(self, *args: object, **kwargs: object):  # type: ignore[override]
            raise NotImplementedError

    with pytest.raises(BenchError, match="needs_mc_dropout without needs_scores"):
        RoundInputs.of(Inconsistent())


# ----------------------------------------------------------------------------- BADGE and PPAL


def _box_pool(n: int = 20, seed: int = 0, d: int = 4, n_cls: int = 2):
    from gsal_edge.acquisition.box_outputs import BoxHeadOutputs, PoolBoxFeatures

    rng = np.random.default_rng(seed)
    ids = [f"img{i:02d}" for i in range(n)]
    imgs = []
    for i in range(n):
        k = i % 4
        logits = rng.normal(size=(k, n_cls + 1)) * 2
        p = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        sc = p[:, 1:].max(1)
        o = np.argsort(-sc)
        imgs.append(BoxHeadOutputs(np.abs(rng.normal(size=(k, d))).astype(np.float32)[o], p[o], sc[o],
                                   (p[:, 1:].argmax(1) + 1)[o], rng.uniform(0, 50, size=(k, 4)).astype(np.float32)[o]))
    pool = ScorePool.from_records([ScoreRecord(i, 0.0, 0.0) for i in ids])
    feats = PoolBoxFeatures(tuple(reversed(ids)), tuple(reversed(imgs)), ("void", "crack"), np.array([0.8, 0.1]))
    return pool, feats


@pytest.mark.parametrize("name", ["badge", "ppal"])
def test_box_feature_strategies_same_interface(name: str) -> None:
    pool, feats = _box_pool()
    run = lambda seed: get_strategy(name).select(pool, {}, G, GSALConfig(), 5, np.random.default_rng(seed),
                                                 box_features=feats)
    a, b = run(3), run(3)
    assert a.strategy == name and [p.rank for p in a.picks] == [1, 2, 3, 4, 5] and len(set(a.image_ids)) == 5
    assert a.to_json() == b.to_json()
    assert all(p.sentence.startswith(f"picked by {name}") for p in a.picks)
    assert any("driving_proposal" in p.rationale for p in a.picks)
    with pytest.raises(FusionError, match="box-head outputs"):
        get_strategy(name).select(pool, {}, G, GSALConfig(), 2, np.random.default_rng(0))
    empty = get_strategy(name).select(ScorePool.from_records([]), {}, G, GSALConfig(), 3, np.random.default_rng(0),
                                      box_features=feats)
    assert empty.picks == []


def test_badge_strategy_is_kmeans_pp_on_the_aligned_embeddings() -> None:
    from gsal_edge.acquisition.badge import BadgeConfig, badge_image_embeddings, kmeans_pp_seeds

    pool, feats = _box_pool()
    sel = get_strategy("badge").select(pool, {}, G, GSALConfig(), 6, np.random.default_rng(5), box_features=feats)
    imgs = feats.aligned_to(pool.image_ids)  # features were stored in reverse order: alignment is by id
    emb = badge_image_embeddings(imgs, BadgeConfig(), 2, 4)
    idx, _ = kmeans_pp_seeds(emb, 6, np.random.default_rng(5))
    assert sel.image_ids == [str(pool.image_ids[i]) for i in idx]
    # the first pick is the image whose gradient embedding is largest; images without proposals have none
    assert sel.picks[0].rationale["embedding_norm"] == pytest.approx(float(np.linalg.norm(emb, axis=1).max()))


def test_ppal_strategy_preselects_by_dcus_then_diversifies() -> None:
    from gsal_edge.acquisition.ppal import dcus_uncertainty, difficulty_weights

    pool, feats = _box_pool(40, seed=2)
    b = 3
    sel = get_strategy("ppal").select(pool, {}, G, GSALConfig(), b, np.random.default_rng(0), box_features=feats)
    imgs = feats.aligned_to(pool.image_ids)
    u = dcus_uncertainty(imgs, difficulty_weights(np.array([0.8, 0.1])), 0.05)
    top = {str(pool.image_ids[i]) for i in np.argsort(-u, kind="stable")[: 4 * b]}
    assert set(sel.image_ids) <= top                                 # the candidate pool is the 4b most uncertain
    assert sel.info["n_candidates"] == 4 * b
    assert sel.info["class_weights"]["crack"] > sel.info["class_weights"]["void"]  # lower quality, larger weight
    scores = [p.acquisition for p in sel.picks]
    assert scores == sorted(scores, reverse=True)                    # ordered by DCUS uncertainty
