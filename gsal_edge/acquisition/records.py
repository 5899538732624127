"""The score record of spec section 11: what a station emits per image, raw and pool-independent.

One JSON object per image (JSON Lines on disk). Nothing in a record depends on the pool, so records
from different stations and rounds can be mixed and re-fused whenever the pool or coverage changes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gsal_edge.errors import GSALError


class RecordError(GSALError, ValueError):
    """A score record is malformed; the message names the record and the field."""


@dataclass
class ProposalScore:
    """One detector proposal p with its raw diffusion difficulty and assigned concept (Eq. 3)."""

    box: tuple[float, float, float, float]
    score: float
    e_rec: float
    v_den: float
    concept: str
    similarity: dict[str, float] = field(default_factory=dict)
    label: str | None = None
    embedding: list[float] | None = None  # f_I(p), the L2-normalized CLIP region embedding Eq. 3 assigned

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["box"] = list(self.box)
        if self.label is None:
            d.pop("label")
        if self.embedding is None:
            d.pop("embedding")
        else:
            d["embedding"] = list(self.embedding)
        return d


@dataclass
class ScoreRecord:
    """Raw GSAL scores for one image x: image-level E_rec/V_den plus its top-M proposals."""

    image_id: str
    e_rec: float
    v_den: float
    proposals: list[ProposalScore] = field(default_factory=list)
    uncertainty: dict[str, float] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    embedding: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "image_id": self.image_id,
            "e_rec": self.e_rec,
            "v_den": self.v_den,
            "proposals": [p.to_dict() for p in self.proposals],
            "uncertainty": dict(self.uncertainty),
            "model": dict(self.model),
            "meta": dict(self.meta),
        }
        if self.embedding is not None:
            d["embedding"] = list(self.embedding)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "record") -> ScoreRecord:
        """Parse and validate one record; errors name ``where`` (e.g. ``scores.jsonl:17``) and the field."""
        if not isinstance(d, dict):
            raise RecordError(f"{where}: expected a JSON object, got {type(d).__name__}")
        image_id = d.get("image_id")
        if not isinstance(image_id, str) or not image_id:
            raise RecordError(f"{where}: field 'image_id' must be a non-empty string")
        where = f"{where} (image_id={_short(image_id)})"
        e_rec = _finite(d, "e_rec", where)
        v_den = _finite(d, "v_den", where)
        props_raw = d.get("proposals", [])
        if not isinstance(props_raw, list):
            raise RecordError(f"{where}: field 'proposals' must be a list")
        proposals = [_proposal(p, f"{where} proposals[{i}]") for i, p in enumerate(props_raw)]
        dims = {len(p.embedding) for p in proposals if p.embedding is not None}
        if len(dims) > 1:
            raise RecordError(f"{where}: proposal embeddings have different lengths {sorted(dims)} "
                              "(one CLIP embeds every proposal of a record)")
        unc = d.get("uncertainty") or {}
        if not isinstance(unc, dict):
            raise RecordError(f"{where}: field 'uncertainty' must be an object")
        uncertainty = {str(k): _finite(unc, k, f"{where} uncertainty") for k in unc}
        emb = _embedding(d, where)
        return cls(
            image_id=image_id,
            e_rec=e_rec,
            v_den=v_den,
            proposals=proposals,
            uncertainty=uncertainty,
            model=_strings(d, "model", where),
            meta=_strings(d, "meta", where),
            embedding=emb,
        )


def _embedding(d: dict[str, Any], where: str) -> list[float] | None:
    """The optional ``embedding`` list of ``d``: finite numbers (absent/null: None)."""
    emb = d.get("embedding")
    if emb is None:
        return None
    if not isinstance(emb, list):
        raise RecordError(f"{where}: field 'embedding' must be a list of numbers")
    out = [_number(v, f"{where}: field 'embedding'") for v in emb]
    if not all(math.isfinite(v) for v in out):
        raise RecordError(f"{where}: field 'embedding' has a NaN or Inf")
    return out


def _finite(d: dict[str, Any], key: str, where: str) -> float:
    if key not in d:
        raise RecordError(f"{where}: missing field '{key}'")
    v = _number(d[key], f"{where}: field '{key}'")
    if not math.isfinite(v):
        raise RecordError(f"{where}: field '{key}' is {v} (NaN/Inf not allowed)")
    return v


def _number(v: Any, what: str) -> float:
    """``v`` (a JSON int or float, not a bool) as a float; RecordError naming ``what`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise RecordError(f"{what} must be a number, got {_short(v)}")
    try:
        return float(v)
    except OverflowError:  # a JSON integer beyond the double range
        raise RecordError(f"{what} is out of the floating-point range") from None


def _strings(d: dict[str, Any], key: str, where: str) -> dict[str, str]:
    """The string-to-string object ``d[key]`` (absent/null: empty); numbers are kept as their text."""
    raw = d.get(key)
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecordError(f"{where}: field '{key}' must be an object of strings, got {type(raw).__name__}")
    out = {}
    for k, v in raw.items():
        if isinstance(v, (dict, list)):
            raise RecordError(f"{where}: field '{key}.{k}' must be a string, got {type(v).__name__}")
        out[str(k)] = str(v)
    return out


def _short(v: Any, limit: int = 80) -> str:
    """``repr(v)`` cut to ``limit`` characters: error messages stay one readable line."""
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _proposal(p: Any, where: str) -> ProposalScore:
    if not isinstance(p, dict):
        raise RecordError(f"{where}: expected an object")
    box = p.get("box")
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise RecordError(f"{where}: field 'box' must be [x1, y1, x2, y2]")
    bx = tuple(_number(v, f"{where}: field 'box'") for v in box)
    if not all(math.isfinite(v) for v in bx) or bx[2] < bx[0] or bx[3] < bx[1]:
        raise RecordError(f"{where}: field 'box' {list(bx)} is not a finite x1<=x2, y1<=y2 box")
    concept = p.get("concept")
    if not isinstance(concept, str) or not concept:
        raise RecordError(f"{where}: field 'concept' must be a non-empty string")
    sim = p.get("similarity") or {}
    if not isinstance(sim, dict):
        raise RecordError(f"{where}: field 'similarity' must be an object")
    label = p.get("label")
    if label is not None and not isinstance(label, str):
        raise RecordError(f"{where}: field 'label' must be a string or null, got {type(label).__name__}")
    return ProposalScore(
        box=bx,  # type: ignore[arg-type]
        score=_finite(p, "score", where),
        e_rec=_finite(p, "e_rec", where),
        v_den=_finite(p, "v_den", where),
        concept=concept,
        similarity={str(k): _finite(sim, k, f"{where} similarity") for k in sim},
        label=label,
        embedding=_embedding(p, where),
    )


def read_jsonl(path: str | Path) -> Iterator[ScoreRecord]:
    """Yield validated records from a JSON Lines file; blank lines are skipped."""
    path = Path(path)
    try:
        fh = path.open("rb")
    except OSError as e:
        raise RecordError(f"{path}: cannot read ({e.strerror})") from None
    with fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not UTF-8 text (byte {e.start})") from None
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            except RecursionError:
                raise RecordError(f"{path}:{lineno}: JSON nested too deeply") from None
            yield ScoreRecord.from_dict(obj, where=f"{path}:{lineno}")


def write_jsonl(path: str | Path, records: Iterable[ScoreRecord]) -> int:
    """Write records atomically (temp file + rename); returns how many were written."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for r in records:
            fh.write(r.to_json())
            fh.write("\n")
            n += 1
    tmp.replace(path)
    return n
