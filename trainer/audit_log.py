"""Append-only, hash-chained audit log (JSON Lines), so it is provable afterwards why an image was labeled.

Each line is one entry, written as canonical JSON (sorted keys, no spaces, UTF-8)::

    {"data": {...}, "kind": "selection", "prev": "<sha256 of the previous line>", "seq": 7, "ts": "..."}

``prev`` of entry 0 is 64 zeros; ``prev`` of entry i is the sha256 of entry i-1's line (its canonical JSON
bytes, without the newline). Changing, removing or reordering any entry breaks the link of the entry
after it, which :func:`verify` reports. Appends take an exclusive ``flock`` (several processes may append)
and are fsynced before :func:`AuditLog.append` returns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gsal_edge.errors import GSALError
from gsal_edge.jsonio import canonical_json

GENESIS = "0" * 64


class AuditError(GSALError, RuntimeError):
    """The audit log cannot be appended to (e.g. a torn last line); the message names the file."""


def canonical(entry: dict[str, Any]) -> bytes:
    """The bytes of one audit line (canonical JSON, UTF-8, no newline)."""
    return canonical_json(entry).encode("utf-8")


def entry_hash(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


@dataclass
class VerifyResult:
    ok: bool
    entries: int  # entries whose links all hold (the intact prefix)
    broken_line: int | None = None  # 1-based line number of the first broken entry
    reason: str = ""
    head: str = GENESIS  # hash of the last intact entry

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.entries} entries, head {self.head[:16]}"
        return f"broken at line {self.broken_line}: {self.reason} ({self.entries} intact entries before it)"


def verify(path: str | Path) -> VerifyResult:
    """Walk the chain from the start; report the first line whose link, sequence or JSON is wrong."""
    path = Path(path)
    if not path.exists():
        return VerifyResult(True, 0)
    prev = GENESIS
    n = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                return VerifyResult(False, n, lineno, "torn last line (no newline)", prev)
            line = raw[:-1]
            try:
                entry = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return VerifyResult(False, n, lineno, f"not valid JSON ({e})", prev)
            if not isinstance(entry, dict):
                return VerifyResult(False, n, lineno, "entry is not a JSON object", prev)
            if canonical(entry) != line:
                return VerifyResult(False, n, lineno, "entry is not in canonical form (edited?)", prev)
            if entry.get("prev") != prev:
                return VerifyResult(
                    False, n, lineno, f"prev={str(entry.get('prev'))[:16]}... expected {prev[:16]}...", prev
                )
            if entry.get("seq") != n:
                return VerifyResult(False, n, lineno, f"seq={entry.get('seq')!r}, expected {n}", prev)
            prev = entry_hash(line)
            n += 1
    return VerifyResult(True, n, None, "", prev)


def read_entries(path: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """All entries (optionally of one kind), in order; does not verify (call :func:`verify`)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    with path.open("rb") as fh:
        for raw in fh:
            if raw.strip():
                e = json.loads(raw)
                if kind is None or e.get("kind") == kind:
                    out.append(e)
    return out


@dataclass(frozen=True)
class HashedEntry:
    """One complete audit entry with its hash (the ``prev`` of the entry after it) and 1-based line number."""

    entry: dict[str, Any]
    hash: str
    line: int


def entries_with_hash(path: str | Path, kind: str | None = None) -> Iterator[HashedEntry]:
    """Every complete entry (optionally of one kind) in order, each with its hash. A torn last line (no
    newline: a crash mid-append) and lines that are not JSON objects are no entries and are skipped; the
    chain is not checked (call :func:`verify` for that)."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n") or not raw.strip():
                continue
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if isinstance(e, dict) and (kind is None or e.get("kind") == kind):
                yield HashedEntry(e, entry_hash(raw[:-1]), lineno)


def line_hashes(path: str | Path) -> list[str]:
    """sha256 of every non-blank line, valid or not (what a stored ``audit_hash`` must be one of)."""
    path = Path(path)
    if not path.exists():
        return []
    return [entry_hash(line) for line in path.read_bytes().splitlines() if line.strip()]


def _last_line(fh: Any) -> bytes | None:
    """The last line of an open binary file (with its newline if any), reading backwards."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if end == 0:
        return None
    pos, chunk, buf = end, 8192, b""
    while pos > 0:
        step = min(chunk, pos)
        pos -= step
        fh.seek(pos)
        buf = fh.read(step) + buf
        idx = buf.rfind(b"\n", 0, len(buf) - 1)
        if idx >= 0:
            return buf[idx + 1 :]
    return buf


class AuditLog:
    """Appender for one audit log file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def append(self, kind: str, data: dict[str, Any]) -> str:
        """Append one entry durably; returns its hash (what the next entry's ``prev`` will be)."""
        if not kind:
            raise AuditError(f"{self.path}: empty entry kind")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                last = _last_line(fh)
                if last is None:
                    prev, seq = GENESIS, 0
                else:
                    if not last.endswith(b"\n"):
                        raise AuditError(
                            f"{self.path}: last line is torn (a crash during an append?); "
                            "run `gsal-edge trainer audit --verify` and truncate it to the intact prefix"
                        )
                    try:
                        prev_entry = json.loads(last)
                        seq = int(prev_entry["seq"]) + 1
                    except (ValueError, KeyError, TypeError) as e:
                        raise AuditError(f"{self.path}: last entry unreadable ({e})") from None
                    prev = entry_hash(last[:-1])
                entry = {
                    "seq": seq,
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "kind": kind,
                    "prev": prev,
                    "data": data,
                }
                line = canonical(entry)
                fh.seek(0, os.SEEK_END)
                fh.write(line + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        return entry_hash(line)

    def verify(self) -> VerifyResult:
        return verify(self.path)

    def truncate_to_intact(self) -> VerifyResult:
        """Cut a broken tail off (after a crash mid-append); returns the verification before cutting.

        Only a *torn last line* is cut automatically; any other break is evidence of tampering and
        raises AuditError instead.
        """
        res = verify(self.path)
        if res.ok:
            return res
        with self.path.open("rb") as fh:
            lines = fh.readlines()
        if res.broken_line != len(lines) or lines[-1].endswith(b"\n"):
            raise AuditError(f"{self.path}: {res}; refusing to cut anything but a torn last line")
        keep = b"".join(lines[:-1])
        with self.path.open("r+b") as fh:
            fh.truncate(len(keep))
            fh.flush()
            os.fsync(fh.fileno())
        return res
