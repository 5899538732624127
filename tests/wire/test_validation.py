"""gsal_wire.validation: the wire-field checks shared by station and trainer, on hand-picked values."""

from __future__ import annotations

import pytest

from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.data.slices import SliceError
from gsal_wire.validation import (
    MAX_KEY_CHARS,
    MAX_MAP_ENTRIES,
    MAX_VALUE_CHARS,
    check_record_fields,
    check_ref_uri,
    check_text_map,
    is_internal_host,
)


@pytest.mark.parametrize(("host", "internal"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("LOCALHOST.", True), ("a.localhost", True),
    ("::1", True), ("[::1]", True), ("169.254.169.254", True), ("fe80::1%eth0", True), ("0.0.0.0", True),
    ("::ffff:127.0.0.1", True), ("::ffff:169.254.1.1", True), ("127.1", True), ("2130706433", True),
    ("0x7f.0.0.1", True), ("224.0.0.1", True), ("", True),
    ("10.0.0.5", False), ("192.168.1.20", False), ("st01.plant.example", False), ("1e100.net", False),
    ("8.8.8.8", False), ("2001:db8::1", False), ("deadbeef.example", False),
])
def test_internal_hosts(host, internal):
    assert is_internal_host(host) is internal


@pytest.mark.parametrize("uri", [
    "file:///data/st-01/a.png", "file://localhost/data/a.tiff", "https://st01.plant.example:8443/s/a.png",
    "http://10.0.0.5/s/a.png", "s3://bucket/key/a.png",
])
def test_good_refs(uri):
    assert check_ref_uri(uri) == uri


@pytest.mark.parametrize(("uri", "why"), [
    ("", "empty"), ("data/a.png", "scheme"), ("ftp://h/a", "scheme"), ("file://otherhost/a.png", "names a host"),
    ("file:///data/%2e%2e/etc/passwd", "'..'"), ("file:///data/../etc/passwd", "'..'"),
    ("http://127.0.0.1:9/a", "loopback"), ("https://u:p@h.example/a", "user name"),
    ("file:///a b.png", "spaces"), ("file:///a\x00.png", "control"), ("http://h.example:99999/a", "valid URI"),
    ("s3:///key", "bucket"), ("file:///" + "a" * 3000, "characters"),
])
def test_bad_refs(uri, why):
    with pytest.raises(SliceError, match=why) as e:
        check_ref_uri(uri)
    assert e.value.field == "ref.uri"


def test_text_map_limits_are_inclusive():
    check_text_map({"k" * MAX_KEY_CHARS: "v" * MAX_VALUE_CHARS, "line": "L 1 ü"}, "meta")
    check_text_map({f"k{i}": "v" for i in range(MAX_MAP_ENTRIES)}, "meta")
    for bad, field in [({"k" * (MAX_KEY_CHARS + 1): "v"}, "meta["), ({"k": "v" * (MAX_VALUE_CHARS + 1)}, "meta['k']"),
                       ({f"k{i}": "v" for i in range(MAX_MAP_ENTRIES + 1)}, "meta"), ({"k": "a\tb"}, "meta['k']"),
                       ({"": "v"}, "meta["), ({"k": "\u202eevil"}, "meta['k']")]:
        with pytest.raises(SliceError) as e:
            check_text_map(bad, "meta")
        assert e.value.field.startswith(field)


def test_record_fields_name_the_offending_part():
    p = ProposalScore(box=(0, 0, 1, 1), score=0.5, e_rec=0.1, v_den=0.1, concept="void", similarity={"void": 0.9})
    rec = ScoreRecord("slice-1", 0.1, 0.1, [p], uncertainty={"entropy": 0.2}, model={"bundle": "b"},
                      meta={"line": "L1"})
    check_record_fields(rec)
    for mutate, field in [
        (lambda r: setattr(r, "image_id", "a\x00b"), "record.image_id"),
        (lambda r: r.model.update({"bundle": "b\n"}), "record.model['bundle']"),
        (lambda r: setattr(r.proposals[0], "concept", "x" * 500), "record.proposals[0].concept"),
        (lambda r: r.proposals[0].similarity.update({"a\x1b": 0.1}), "record.proposals[0].similarity"),
        (lambda r: setattr(r.proposals[0], "label", ""), "record.proposals[0].label"),
        (lambda r: r.uncertainty.update({"e\x7f": 0.1}), "record.uncertainty"),
    ]:
        r = ScoreRecord.from_dict(rec.to_dict())
        mutate(r)
        with pytest.raises(SliceError) as e:
            check_record_fields(r)
        assert e.value.field == field
