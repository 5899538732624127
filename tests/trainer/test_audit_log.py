"""Audit log: hash chain, fsync'd appends, verify finds the first broken link."""

from __future__ import annotations

import json
import multiprocessing as mp

import pytest

from trainer.audit_log import (
    GENESIS,
    AuditError,
    AuditLog,
    canonical,
    entries_with_hash,
    entry_hash,
    line_hashes,
    read_entries,
    verify,
)


def _fill(path, n=5):
    log = AuditLog(path)
    return [log.append("selection", {"round": i, "picks": [{"image_id": f"s/{i}", "rank": 1}]}) for i in range(n)]


def test_chain_links_and_verify_ok(tmp_path):
    path = tmp_path / "audit.jsonl"
    hashes = _fill(path)
    lines = path.read_bytes().splitlines()
    entries = [json.loads(x) for x in lines]
    assert entries[0]["prev"] == GENESIS
    for i in range(1, 5):
        assert entries[i]["prev"] == entry_hash(lines[i - 1]) == hashes[i - 1]
    res = verify(path)
    assert res.ok and res.entries == 5 and res.head == hashes[-1]
    assert [e["data"]["round"] for e in read_entries(path, "selection")] == list(range(5))


@pytest.mark.parametrize("line", [0, 2, 3])
def test_edit_is_found_at_the_next_link(tmp_path, line):
    path = tmp_path / "audit.jsonl"
    _fill(path)
    lines = path.read_bytes().splitlines()
    e = json.loads(lines[line])
    e["data"]["picks"][0]["image_id"] = "s/forged"
    lines[line] = canonical(e)
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = verify(path)
    assert not res.ok and res.broken_line == line + 2 and "prev" in res.reason
    assert res.entries == line + 1


def test_last_entry_edit_changes_head(tmp_path):
    path = tmp_path / "audit.jsonl"
    head = _fill(path)[-1]
    lines = path.read_bytes().splitlines()
    e = json.loads(lines[-1])
    e["data"]["round"] = 99
    lines[-1] = canonical(e)
    path.write_bytes(b"\n".join(lines) + b"\n")
    res = verify(path)
    assert res.ok and res.head != head  # detectable against a head recorded elsewhere (the store)


def test_deletion_reorder_and_noncanonical_are_found(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join(lines[:1] + lines[2:]) + b"\n")
    assert verify(path).broken_line == 2
    path.write_bytes(b"\n".join([lines[1], lines[0]] + lines[2:]) + b"\n")
    assert verify(path).broken_line == 1
    pretty = json.dumps(json.loads(lines[0]), indent=1).replace("\n", " ").encode()
    path.write_bytes(b"\n".join([pretty] + lines[1:]) + b"\n")
    assert "canonical" in verify(path).reason


def test_torn_tail_blocks_append_until_truncated(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    with path.open("ab") as fh:
        fh.write(b'{"seq":3,"kind":"sel')  # crash mid-append
    res = verify(path)
    assert not res.ok and res.broken_line == 4 and "torn" in res.reason
    log = AuditLog(path)
    with pytest.raises(AuditError, match="torn"):
        log.append("selection", {})
    log.truncate_to_intact()
    assert verify(path).ok and verify(path).entries == 3
    log.append("selection", {"round": 3})
    assert verify(path).entries == 4


def test_truncate_refuses_to_hide_tampering(tmp_path):
    path = tmp_path / "audit.jsonl"
    _fill(path, 3)
    lines = path.read_bytes().splitlines()
    path.write_bytes(b"\n".join([lines[0], lines[2]]) + b"\n")
    with pytest.raises(AuditError, match="refusing"):
        AuditLog(path).truncate_to_intact()


def _appender(path: str, who: int, n: int) -> None:
    log = AuditLog(path)
    for i in range(n):
        log.append("note", {"who": who, "i": i})


def test_concurrent_appenders_from_processes_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(path), w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    res = verify(path)
    assert res.ok and res.entries == 30


def test_entries_with_hash_match_the_chain_and_skip_a_torn_tail(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    hashes = [log.append("selection" if i % 2 == 0 else "labels", {"round": i}) for i in range(4)]
    got = list(entries_with_hash(log.path))
    assert [h.hash for h in got] == hashes  # what append returned: the next entry's prev
    assert [h.entry["data"]["round"] for h in got] == [0, 1, 2, 3] and [h.line for h in got] == [1, 2, 3, 4]
    assert [h.entry["data"]["round"] for h in entries_with_hash(log.path, "selection")] == [0, 2]
    with log.path.open("ab") as fh:  # a crash mid-append: a torn, unterminated last line
        fh.write(b'{"data":{"round":9},"kind":"selection"')
    assert [h.hash for h in entries_with_hash(log.path)] == hashes
    assert line_hashes(log.path)[:4] == hashes and len(line_hashes(log.path)) == 5  # every line, torn included
    assert list(entries_with_hash(tmp_path / "missing.jsonl")) == [] and line_hashes(tmp_path / "missing") == []
