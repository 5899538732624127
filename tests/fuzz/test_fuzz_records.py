"""Fuzzing the spec section 11 score-record parser: ``ScoreRecord.from_dict`` and ``read_jsonl``.

Contract: any input either parses into a record that survives its own JSON round trip unchanged, or
raises ``RecordError`` naming the record; never another exception.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fuzz_support import Tally, fuzz_settings, json_values, mutated, seed_decorator
from hypothesis import given
from hypothesis import strategies as st

from gsal_edge.acquisition.records import RecordError, ScoreRecord, read_jsonl

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@st.composite
def valid_records(draw: st.DrawFn) -> dict[str, Any]:
    concepts = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=3, unique=True))
    props = []
    for _ in range(draw(st.integers(0, 3))):
        x1, y1 = draw(finite), draw(finite)
        props.append({
            "box": [x1, y1, x1 + abs(draw(finite)), y1 + abs(draw(finite))],
            "score": draw(finite), "e_rec": draw(finite), "v_den": draw(finite),
            "concept": draw(st.sampled_from(concepts)),
            "similarity": {c: draw(finite) for c in concepts},
            **({"label": draw(st.text(max_size=5))} if draw(st.booleans()) else {}),
        })
    rec: dict[str, Any] = {
        "image_id": draw(st.text(min_size=1, max_size=12)), "e_rec": draw(finite), "v_den": draw(finite),
        "proposals": props, "uncertainty": draw(st.dictionaries(st.text(max_size=6), finite, max_size=3)),
        "model": draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2)),
        "meta": draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=2)),
    }
    if draw(st.booleans()):
        rec["embedding"] = draw(st.lists(finite, max_size=4))
    return rec


def mutated_records() -> st.SearchStrategy[Any]:
    """A valid record with 1-3 places replaced by any JSON value, or deleted."""
    return mutated(valid_records())


def _check(obj: Any, tally: Tally) -> None:
    try:
        rec = ScoreRecord.from_dict(obj, where="fuzz")
    except RecordError as e:
        assert str(e).startswith("fuzz"), f"the error does not name the record: {e}"
        tally.tick("RecordError")
        return
    again = ScoreRecord.from_dict(json.loads(rec.to_json()))
    assert again == rec  # a record that parses survives its own JSON round trip
    assert all(math.isfinite(v) for v in (rec.e_rec, rec.v_den, *rec.uncertainty.values()))
    tally.tick("parsed")


def test_fuzz_from_dict(tmp_path: Path) -> None:
    tally = Tally("records-from-dict")

    @fuzz_settings(300)
    @seed_decorator()
    @given(st.one_of(mutated_records(), mutated_records(), valid_records(), json_values()))
    def run(obj: Any) -> None:
        _check(obj, tally)

    run()
    tally.report(tmp_path)
    assert tally.outcomes["parsed"] and tally.outcomes["RecordError"]  # both sides of the contract were hit


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    """Lines of valid records, mutated records, arbitrary JSON, raw bytes (bad UTF-8), deep nesting."""
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 5))
        if kind == 0:
            lines.append(json.dumps(draw(valid_records())).encode())
        elif kind == 1:
            lines.append(json.dumps(draw(mutated_records())).encode())
        elif kind == 2:
            lines.append(json.dumps(draw(json_values())).encode())
        elif kind == 3:
            lines.append(draw(st.binary(max_size=40)).replace(b"\n", b" "))
        elif kind == 4:
            depth = draw(st.integers(100, 5000))
            lines.append(b"[" * depth + b"]" * depth)
        else:
            lines.append(draw(st.sampled_from([b"", b"   ", b"NaN", b"{\"image_id\": \"a\", \"e_rec\": Infinity}",
                                               b"\xef\xbb\xbf{}", b"1e999999"])))
    return b"\n".join(lines)


def test_fuzz_read_jsonl(tmp_path: Path) -> None:
    tally = Tally("records-read-jsonl")
    path = tmp_path / "scores.jsonl"

    @fuzz_settings(200)
    @seed_decorator()
    @given(jsonl_files())
    def run(data: bytes) -> None:
        path.write_bytes(data)
        try:
            recs = list(read_jsonl(path))
        except RecordError as e:
            assert str(path) in str(e), f"the error does not name the file: {e}"
            tally.tick("RecordError")
            return
        assert all(isinstance(r, ScoreRecord) for r in recs)
        tally.tick("parsed")

    run()
    tally.report(tmp_path)
    assert tally.outcomes["parsed"] and tally.outcomes["RecordError"]
