"""Score records (gsal_edge.acquisition.records): the optional per-proposal embedding f_I(p)."""

from __future__ import annotations

import json

import pytest

from gsal_edge.acquisition.records import ProposalScore, RecordError, ScoreRecord, read_jsonl, write_jsonl


def _rec(*embs: list[float] | None) -> ScoreRecord:
    return ScoreRecord("s1", 0.1, 0.01, [ProposalScore((0.0, 0.0, 2.0, 2.0), 0.5, 0.1, 0.01, "void", {"void": 0.3},
                                                       None, e) for e in embs])


def test_proposal_embedding_round_trips_and_absent_is_omitted(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rec = _rec([0.6, -0.8], None)
    d = rec.to_dict()
    assert d["proposals"][0]["embedding"] == [0.6, -0.8] and "embedding" not in d["proposals"][1]
    assert ScoreRecord.from_dict(json.loads(rec.to_json())) == rec
    write_jsonl(tmp_path / "r.jsonl", [rec])
    assert list(read_jsonl(tmp_path / "r.jsonl")) == [rec]
    assert "embedding" not in _rec(None).to_json()  # an old station's record is unchanged byte for byte


@pytest.mark.parametrize("bad,match", [
    ("x", r"proposals\[0\]: field 'embedding' must be a list of numbers"),
    ([0.1, "a"], r"proposals\[0\]: field 'embedding' must be a number"),
    ([0.1, float("nan")], r"proposals\[0\]: field 'embedding' has a NaN or Inf"),
    ([True], r"field 'embedding' must be a number"),
])
def test_bad_proposal_embedding_is_a_clear_error(bad, match) -> None:  # type: ignore[no-untyped-def]
    d = _rec([0.0]).to_dict()
    d["proposals"][0]["embedding"] = bad
    with pytest.raises(RecordError, match=match):
        ScoreRecord.from_dict(d, where="scores.jsonl:3")


def test_proposal_embeddings_of_one_record_have_one_length() -> None:
    d = _rec([0.6, 0.8], [1.0, 0.0, 0.0]).to_dict()
    with pytest.raises(RecordError, match=r"scores.jsonl:3 \(image_id='s1'\): proposal embeddings have "
                                          r"different lengths \[2, 3\]"):
        ScoreRecord.from_dict(d, where="scores.jsonl:3")
