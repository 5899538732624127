"""Records that do not fit the trainer's concept graph: the check, and where such records are put aside.

One station's record naming a concept (or a similarity key) that is not a fine node of the graph used to
make ``trainer select`` fail for the whole pool (issue 18). Now:

* at ingest (``trainer serve --graph``), :func:`graph_problem` runs on every record; a record that fails
  is not stored in the pool but appended to ``<store>/quarantine.jsonl`` (station, image id, field,
  reason, the record itself) and the station gets a per-item INVALID_ARGUMENT rejection naming the field;
  ingest items refused by the reference policy are put aside there too (kind ``ref``, without pixels);
* at selection, :func:`usable_records` skips (and counts, with reasons) records already in the pool that
  do not fit the graph the round uses, so one bad record never aborts a round;
* ``trainer status`` (and ``--json``) reports the quarantine's size per kind and station
  (:func:`quarantine_summary`).

The file is append-only JSON lines, one ``fsync`` per appended batch, under an exclusive ``flock`` (several
trainer processes may share a store directory). A torn last line (crash) is skipped when read. Past
:data:`MAX_QUARANTINE_BYTES` new entries keep their reason but not the record (a flood cannot fill the disk).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsal_edge.acquisition.concept_graph import UNKNOWN, ConceptGraph
from gsal_edge.acquisition.records import ScoreRecord

QUARANTINE_FILE = "quarantine.jsonl"
MAX_EXAMPLES = 10  # skipped records named in a round's info / a status report
MAX_QUARANTINE_BYTES = 256 * 1024 * 1024  # past this size entries keep their reason but not the record


def graph_problem(rec: ScoreRecord, graph: ConceptGraph, missing_concept: str = "error") -> tuple[str, str] | None:
    """(field, reason) when ``rec`` cannot be fused with ``graph``, else None.

    Every proposal concept must be a fine node (or ``unknown``; with ``missing_concept`` ``background`` or
    ``unknown`` any concept is mapped, as the fusion does), and every similarity key a fine node.
    """
    fine = graph.fine_index
    for i, p in enumerate(rec.proposals):
        if missing_concept == "error" and p.concept not in fine and p.concept != UNKNOWN:
            return (f"record.proposals[{i}].concept",
                    f"concept {p.concept[:80]!r} is not a fine node of graph {graph.name!r}")
        if missing_concept == "error":
            extra = next((k for k in p.similarity if k not in fine), None)
            if extra is not None:
                return (f"record.proposals[{i}].similarity",
                        f"similarity key {extra[:80]!r} is not a fine node of graph {graph.name!r}")
    return None


@dataclass
class Skipped:
    """Records left out of a round, counted, with the first few named."""

    count: int = 0
    examples: list[dict[str, str]] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.examples or [])}


def usable_records(records: Sequence[ScoreRecord], graph: ConceptGraph,
                   missing_concept: str = "error") -> tuple[list[ScoreRecord], Skipped]:
    """The records a round can fuse with ``graph``, and the skipped rest.

    Also skips records whose embedding length differs from the pool's most common one (another station's
    model): fusion needs one embedding width.
    """
    dims = Counter(len(r.embedding) for r in records if r.embedding is not None)
    dim = dims.most_common(1)[0][0] if dims else None
    keep: list[ScoreRecord] = []
    skipped = Skipped(0, [])
    for r in records:
        problem = graph_problem(r, graph, missing_concept)
        if problem is None and r.embedding is not None and len(r.embedding) != dim:
            problem = ("record.embedding", f"embedding has {len(r.embedding)} values, the pool's have {dim}")
        if problem is None:
            keep.append(r)
            continue
        skipped.count += 1
        if len(skipped.examples or []) < MAX_EXAMPLES:
            assert skipped.examples is not None
            skipped.examples.append({"image_id": r.image_id, "field": problem[0], "reason": problem[1]})
    return keep, skipped


class Quarantine:
    """``<store>/quarantine.jsonl``: ingest items put aside, with why."""

    def __init__(self, store_root: str | Path, max_bytes: int = MAX_QUARANTINE_BYTES) -> None:
        self.path = Path(store_root) / QUARANTINE_FILE
        self.max_bytes = max_bytes

    def add(self, entries: Iterable[dict[str, Any]]) -> int:
        """Append entries (each: kind, station, image_id, field, reason, optional record); durable on return."""
        entries = list(entries)
        if not entries:
            return 0
        now = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            full = size >= self.max_bytes  # beyond: still counted, the bodies are dropped
            torn = size > 0 and os.pread(fd, 1, size - 1) != b"\n"  # a crash mid-append: end that line
            text = ("\n" if torn else "") + "".join(_line(e, now, full) for e in entries)
            view = memoryview(text.encode("ascii"))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock
        return len(entries)

    def entries(self) -> list[dict[str, Any]]:
        """Every intact entry (a torn last line is skipped)."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_bytes().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out


def _line(entry: dict[str, Any], now: float, drop_record: bool) -> str:
    if drop_record and "record" in entry:
        entry = {k: v for k, v in entry.items() if k != "record"} | {"record_dropped": True}
    return json.dumps({"time": now} | entry, ensure_ascii=True, default=str) + "\n"


def quarantine_summary(store_root: str | Path) -> dict[str, Any]:
    """What `trainer status` reports: total, per kind, per station, the latest few reasons."""
    q = Quarantine(store_root)
    entries = q.entries()
    return {
        "file": str(q.path),
        "count": len(entries),
        "by_kind": dict(Counter(str(e.get("kind")) for e in entries)),
        "by_station": dict(Counter(str(e.get("station")) for e in entries)),
        "latest": [{k: e.get(k) for k in ("kind", "station", "image_id", "field", "reason")}
                   for e in entries[-MAX_EXAMPLES:]],
    }
