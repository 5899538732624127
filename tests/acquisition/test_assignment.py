"""Eq. 3 assigners (text, prototype, hybrid), novelty and soft probabilities, on 2-D embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.acquisition.assignment import (
    assign,
    cosine_similarity,
    fit_calibration,
    hybrid_concept_embeddings,
    l2_normalize,
    leave_one_out_similarity,
    make_assigner,
    prototype_embeddings,
    round_assigner,
    soft_probabilities,
    text_concept_embeddings,
)

R = 1 / math.sqrt(2)


def test_text_embedding_is_mean_of_normalized_prompts() -> None:
    names, emb = text_concept_embeddings({"void": np.array([[2.0, 0.0], [0.0, 1.0]]), "crack": np.array([[0.0, -3.0]])})
    assert names == ["void", "crack"]
    assert emb.tolist() == [[0.5, 0.5], [0.0, -1.0]]  # ([1,0] + [0,1]) / 2 ; [0,-1]


def test_cosine_similarity() -> None:
    sim = cosine_similarity(np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.5, 0.5], [0.0, 3.0]]))
    assert sim[0].tolist() == pytest.approx([1.0, R, 0.0])


def test_assign_argmax_novelty_and_exclude() -> None:
    names = ["void", "crack", "background"]
    concepts = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    img = np.array([[2.0, 1.0], [1.0, 1.0], [-1.0, 0.1]])
    a = assign(img, names, concepts)
    # row 0: cos = (2/sqrt5, 1/sqrt5, -2/sqrt5) -> void; row 1: tie (R, R) -> first = void; row 2 -> background
    assert a.concepts == ["void", "void", "background"]
    assert a.best[0] == pytest.approx(2 / math.sqrt(5))
    assert a.similarity_dicts()[1]["crack"] == pytest.approx(R)
    nov = assign(img, names, concepts, novelty_threshold=0.8)
    assert nov.concepts == ["void", "unknown", "background"]  # 2/sqrt5 = 0.894 >= 0.8 ; R = 0.707 < 0.8
    ex = assign(img, names, concepts, exclude=("background",))
    assert ex.concepts[2] == "crack"  # (-1, .1): cos void -0.995, crack 0.0995 -> crack


def test_soft_probabilities() -> None:
    p = soft_probabilities(np.array([[0.3, 0.2], [0.1, np.nan]]), temperature=0.1)
    e = math.e
    assert p[0].tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)])  # softmax([3, 2])
    assert p[1].tolist() == [1.0, 0.0]  # NaN -> probability 0
    assert np.isfinite(soft_probabilities(np.array([[1000.0, 0.0]]), 1e-3)).all()  # stable
    with pytest.raises(ValueError):
        soft_probabilities(np.zeros((1, 2)), 0.0)


def test_prototype_assigner() -> None:
    protos = prototype_embeddings({"void": np.array([[3.0, 0.0], [0.0, 4.0]]), "crack": np.array([[0.0, -1.0]])})
    assert protos["void"].tolist() == [0.5, 0.5]
    asg = make_assigner("prototype", ["void", "crack"], exemplars={"void": np.array([[3.0, 0.0], [0.0, 4.0]]),
                                                                   "crack": np.array([[0.0, -1.0]])})
    out = asg(np.array([[1.0, 1.0], [0.2, -1.0]]))
    assert out.concepts == ["void", "crack"]
    assert out.similarity[0].tolist() == pytest.approx([1.0, -R])
    with pytest.raises(ValueError, match="'crack' has no exemplar"):
        make_assigner("prototype", ["void", "crack"], exemplars={"void": np.ones((1, 2))})


def test_hybrid_uses_prototypes_only_with_k_exemplars() -> None:
    names = ["void", "crack"]
    text = np.array([[1.0, 0.0], [0.0, 1.0]])
    ex = {"void": np.array([[0.0, 1.0], [0.0, 2.0]]), "crack": np.array([[1.0, 0.0]])}
    emb, src = hybrid_concept_embeddings(names, text, ex, k=2)
    assert src == ["prototype", "text"]          # void has 2 >= k exemplars, crack only 1
    assert emb.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    asg = make_assigner("hybrid", names, text, ex, k=2)
    assert asg.sources == src
    assert make_assigner("hybrid", names, text, ex, k=3).sources == ["text", "text"]


def test_l2_normalize_zero_vector_safe() -> None:
    assert l2_normalize(np.array([[0.0, 0.0], [3.0, 4.0]])).tolist() == [[0.0, 0.0], [0.6, 0.8]]


# ---------------------------------------------------------------------- issue 16: calibration on labeled crops
def _draw(sim: np.ndarray, T: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    p = soft_probabilities(sim, T)
    return (p.cumsum(axis=1) > rng.random((sim.shape[0], 1))).argmax(axis=1)


def test_fit_calibration_recovers_temperature_and_text_offset() -> None:
    rng = np.random.default_rng(0)
    sim = rng.uniform(0.0, 0.5, (6000, 4))
    T, b, ll = fit_calibration(sim, _draw(sim, 0.05, 1))
    assert T == pytest.approx(0.05, rel=0.08) and b == 0.0 and ll < 0
    mask = np.array([0.0, 0.0, 1.0, 1.0])  # columns 2, 3 are text: their cosines run 0.1 low
    T2, b2, _ = fit_calibration(sim, _draw(sim + 0.1 * mask, 0.05, 2), offset_columns=mask)
    assert T2 == pytest.approx(0.05, rel=0.1) and b2 == pytest.approx(0.1, abs=0.015)
    # a crop set whose argmax is always right wants the sharpest T the bounds allow
    y = sim.argmax(axis=1)
    assert fit_calibration(sim, y, bounds=(0.01, 0.5))[0] == pytest.approx(0.01, rel=1e-3)
    with pytest.raises(ValueError, match="bounds"):
        fit_calibration(sim, y, bounds=(0.5, 0.1))
    with pytest.raises(ValueError, match="calibration needs"):
        fit_calibration(sim[:0], y[:0])


def test_leave_one_out_similarity_excludes_each_crop_from_its_prototype() -> None:
    names = ["void", "crack", "background"]
    text = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    void = np.array([[1.0, 0.2, 0.0], [1.0, -0.2, 0.0], [1.0, 0.0, 0.3]])
    crack = np.array([[0.1, 1.0, 0.0]])  # one exemplar: below k, crack stays text
    asg = make_assigner("hybrid", names, text, {"void": void, "crack": crack}, k=2)
    assert asg.sources == ["prototype", "text", "text"]
    sim, y = leave_one_out_similarity(asg, {"void": void, "crack": crack}, text, k=2)
    assert y.tolist() == [0, 0, 0, 1]
    v = l2_normalize(void)
    for i in range(3):
        rest = l2_normalize(v[[j for j in range(3) if j != i]].sum(axis=0))
        assert sim[i, 0] == pytest.approx(float(v[i] @ rest))
        assert sim[i, 0] < float(cosine_similarity(void[i:i + 1], asg.embeddings[:1])[0, 0])  # never inflated
    assert sim[3].tolist() == pytest.approx(cosine_similarity(crack, asg.embeddings)[0].tolist())
    # two exemplars with k = 2: without itself a crop's concept has 1 < k, so that column is text
    sim2, _ = leave_one_out_similarity(make_assigner("hybrid", names, text, {"void": void[:2]}, k=2),
                                       {"void": void[:2]}, text, k=2)
    assert sim2[:, 0] == pytest.approx(l2_normalize(void[:2]) @ text[0])


def test_round_assigner_cold_start_refresh_and_fit() -> None:
    rng = np.random.default_rng(3)
    names = ["void", "crack", "background"]
    text = np.array([[1.0, 0.8, 0.0], [0.9, 1.0, 0.3], [0.0, 0.3, 1.0]])  # prompts that blur void and crack
    # no labels: text prompts, nothing fitted (the configured T applies)
    cold = round_assigner("hybrid", names, text, {}, k=3, calibration="temperature")
    assert cold.sources == ["text"] * 3 and cold.temperature is None and cold.offsets is None
    centers = {"void": np.array([1.0, 0.3, 0.0]), "crack": np.array([0.2, 1.0, 0.1]),
               "background": np.array([0.2, 0.2, 1.0])}
    ex = {c: m + 0.25 * rng.standard_normal((12, 3)) for c, m in centers.items()}
    few = round_assigner("hybrid", names, text, {"void": ex["void"][:4]}, k=3, calibration="temperature",
                         min_crops=10)
    assert few.sources[0] == "prototype" and few.temperature is None and few.fit == {"crops": 4.0, "fitted": 0.0}
    hot = round_assigner("hybrid", names, text, ex, k=3, calibration="temperature_offset", bounds=(0.005, 0.5))
    assert hot.sources == ["prototype"] * 3 and 0.005 <= hot.temperature <= 0.5
    assert hot.offsets is None  # no text column left to offset
    assert hot.fit["crops"] == 36 and hot.fit["accuracy"] > 0.8
    # the refreshed assigner names held-out crops better than the text prompts
    test = {c: m + 0.25 * rng.standard_normal((50, 3)) for c, m in centers.items()}
    acc = {a.kind: np.mean([a(e).concepts.count(c) / len(e) for c, e in test.items()])
           for a in (make_assigner("text", names, text), hot)}
    assert acc["hybrid"] > acc["text"]
    with pytest.raises(ValueError, match="calibration"):
        round_assigner("text", names, text, ex, calibration="isotonic")


def test_text_offset_is_added_before_the_argmax() -> None:
    names = ["void", "background"]
    a = assign(np.array([[1.0, 0.9]]), names, np.eye(2))
    assert a.concepts == ["void"]
    b = assign(np.array([[1.0, 0.9]]), names, np.eye(2), offsets=np.array([0.0, 0.2]))
    assert b.concepts == ["background"] and b.similarity[0, 1] == pytest.approx(0.9 / math.hypot(1, 0.9) + 0.2)
