"""The wire contract: code generation, record <-> message round trips, and the layering rule."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import UTC, datetime

import numpy as np
import pytest

from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.data.slices import SliceError
from gsal_wire.proto_loader import REPO_ROOT, _build_module, ensure_generated


def test_build_is_idempotent_and_complete() -> None:
    ensure_generated()
    build = _build_module()
    assert build.build() is False  # up to date: nothing written
    assert not build.is_stale()
    for out in build.expected_outputs():
        assert out.exists(), out
    from gsal_proto import common_pb2, scorer_pb2, trainer_pb2  # noqa: F401

    assert scorer_pb2.DESCRIPTOR.package == "gsal.v1"
    assert set(scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].methods_by_name) == {
        "Score", "ScoreOne", "GetModelInfo", "LoadBundle"}
    score = scorer_pb2.DESCRIPTOR.services_by_name["Scorer"].methods_by_name["Score"]
    assert score.client_streaming and score.server_streaming
    ingest = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].methods_by_name["Ingest"]
    assert ingest.client_streaming and not ingest.server_streaming


def test_messages_mirror_the_record_dataclasses() -> None:
    from gsal_wire.pb import common_pb2

    rec_fields = {f.name for f in dataclasses.fields(ScoreRecord)}
    assert rec_fields == set(common_pb2.ScoreRecord.DESCRIPTOR.fields_by_name)
    prop_fields = {f.name for f in dataclasses.fields(ProposalScore)}
    assert prop_fields == set(common_pb2.ProposalScore.DESCRIPTOR.fields_by_name)


def _record(embedding: list[float] | None, label: str | None) -> ScoreRecord:
    return ScoreRecord(
        image_id="slice-000123",
        e_rec=0.012345678901234567,
        v_den=4.0e-4,
        proposals=[
            ProposalScore((1.5, 2.25, 30.0, 40.125), 0.8123456789, 0.031, 0.0011, "void",
                          {"void": 0.31, "inclusion": 0.22}, label),
            ProposalScore((0.0, 0.0, 1.0, 1.0), 0.1, 0.0, 0.0, "unknown", {}),
        ],
        uncertainty={"entropy": 0.42, "margin": 0.1},
        model={"bundle": "sha256:abc", "station": "st-01"},
        meta={"line": "L2", "part": "film-A"},
        embedding=embedding,
    )


@pytest.mark.parametrize("embedding,label", [(None, None), ([0.1, -0.2, 1e-9], "crack"), ([], None)])
def test_record_round_trip_is_exact(embedding: list[float] | None, label: str | None) -> None:
    from gsal_wire.convert import record_from_pb, record_to_pb
    from gsal_wire.pb import common_pb2

    rec = _record(embedding, label)
    wire = record_to_pb(rec).SerializeToString()
    back = record_from_pb(common_pb2.ScoreRecord.FromString(wire))
    assert back == rec
    assert back.to_json() == rec.to_json()


@pytest.mark.parametrize("emb", [None, [0.6, -0.8, 0.0], []])
def test_proposal_embedding_round_trips_and_absent_stays_absent(emb: list[float] | None) -> None:
    """proposals[i].embedding (field 8) is exact on the wire; a station that never sets it (absent) reads back
    as None, not as an empty list."""
    from gsal_wire.convert import record_from_pb, record_to_pb
    from gsal_wire.pb import common_pb2

    rec = _record(None, "crack")
    rec.proposals[0].embedding = emb
    msg = common_pb2.ScoreRecord.FromString(record_to_pb(rec).SerializeToString())
    assert msg.proposals[0].HasField("embedding") is (emb is not None)
    assert not msg.proposals[1].HasField("embedding")
    back = record_from_pb(msg)
    assert back.proposals[0].embedding == emb and back.proposals[1].embedding is None
    assert back.to_json() == rec.to_json()
    assert ("embedding" in back.proposals[0].to_dict()) is (emb is not None)


def test_record_from_pb_validates() -> None:
    from gsal_edge.acquisition.records import RecordError
    from gsal_wire.convert import record_from_pb, record_to_pb

    msg = record_to_pb(_record(None, None))
    msg.e_rec = float("nan")
    with pytest.raises(RecordError, match="e_rec"):
        record_from_pb(msg)
    msg = record_to_pb(_record(None, None))
    msg.proposals[0].embedding.values.extend([0.1, float("inf")])
    with pytest.raises(RecordError, match=r"proposals\[0\].*'embedding' has a NaN or Inf"):
        record_from_pb(msg)


def test_slice_message_round_trip(rng: np.random.Generator) -> None:
    from gsal_wire.convert import decode_pb_slice, make_pb_slice, slice_meta
    from gsal_wire.pb import common_pb2

    a = rng.integers(0, 65535, (12, 9), dtype=np.uint16)
    for enc in ("raw", "png", "tiff"):
        msg = make_pb_slice("s1", a, encoding=enc, meta={"line": "L1", "part": "P", "shift": "night"})
        msg = common_pb2.Slice.FromString(msg.SerializeToString())
        np.testing.assert_array_equal(decode_pb_slice(msg), a)
    msg.meta.timestamp.FromDatetime(datetime(2026, 11, 27, 1, 2, 3, tzinfo=UTC))
    assert slice_meta(msg) == {"line": "L1", "part": "P", "shift": "night", "ts": "2026-11-27T01:02:03Z"}


def test_slice_message_enums_are_checked() -> None:
    from gsal_wire.convert import decode_pb_slice
    from gsal_wire.pb import common_pb2

    msg = common_pb2.Slice(id="x", shape=[1, 1], dtype=common_pb2.DTYPE_UINT8, data=b"\0")
    with pytest.raises(SliceError) as ei:  # encoding left unspecified
        decode_pb_slice(msg)
    assert ei.value.field == "encoding"
    msg.encoding = common_pb2.ENCODING_RAW
    msg.dtype = common_pb2.DTYPE_UNSPECIFIED
    with pytest.raises(SliceError) as ei:
        decode_pb_slice(msg)
    assert ei.value.field == "dtype"


def test_library_never_imports_grpc() -> None:
    code = (
        "import sys, pkgutil, importlib, gsal_edge\n"
        "for m in ('gsal_edge.acquisition.records', 'gsal_edge.data.slices'):\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('grpc', 'gsal_proto', 'server'))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    # and no module of the library mentions them at all
    offenders = [p.name for p in (REPO_ROOT / "gsal_edge").rglob("*.py")
                 if any(s in p.read_text() for s in ("import grpc", "gsal_proto", "from server"))]
    assert offenders == []


def test_record_from_pb_refuses_duplicate_keys() -> None:
    from gsal_edge.acquisition.records import RecordError
    from gsal_wire.convert import record_from_pb, record_to_pb

    msg = record_to_pb(_record(None, None))
    msg.proposals[0].similarity.add(name="void", value=0.5)
    with pytest.raises(RecordError, match="duplicate key 'void'"):
        record_from_pb(msg)
