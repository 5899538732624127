"""Eq. 3 assigners (text, prototype, hybrid), novelty and soft probabilities, on 2-D embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gsal_edge.acquisition.assignment import (
    assign,
    cosine_similarity,
    hybrid_concept_embeddings,
    l2_normalize,
    make_assigner,
    prototype_embeddings,
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
