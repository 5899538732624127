"""Translate between the wire messages (``gsal.v1``) and the library types (``gsal_edge``).

Score records are lossless in both directions (doubles on the wire). The trainer uses the same
functions for its ``Ingest`` messages.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC
from typing import Any

import grpc
import numpy as np

from gsal_edge.acquisition.records import ProposalScore, RecordError, ScoreRecord
from gsal_edge.data.slices import DEFAULT_LIMITS, SliceLimits, decode_slice, encode_slice
from gsal_wire.pb import common_pb2

DTYPE_TO_PB = {
    "uint8": common_pb2.DTYPE_UINT8,
    "uint16": common_pb2.DTYPE_UINT16,
    "float32": common_pb2.DTYPE_FLOAT32,
}
PB_TO_DTYPE = {v: k for k, v in DTYPE_TO_PB.items()}
ENCODING_TO_PB = {"raw": common_pb2.ENCODING_RAW, "png": common_pb2.ENCODING_PNG, "tiff": common_pb2.ENCODING_TIFF}
PB_TO_ENCODING = {v: k for k, v in ENCODING_TO_PB.items()}


def record_to_pb(rec: ScoreRecord) -> common_pb2.ScoreRecord:
    """A library record as a ``gsal.v1.ScoreRecord``."""
    msg = common_pb2.ScoreRecord(
        image_id=rec.image_id,
        e_rec=rec.e_rec,
        v_den=rec.v_den,
        uncertainty=_named(rec.uncertainty),
        model=_kv(rec.model),
        meta=_kv(rec.meta),
    )
    for p in rec.proposals:
        pm = msg.proposals.add(
            score=p.score, e_rec=p.e_rec, v_den=p.v_den, concept=p.concept, similarity=_named(p.similarity)
        )
        x1, y1, x2, y2 = p.box
        pm.box.x1, pm.box.y1, pm.box.x2, pm.box.y2 = x1, y1, x2, y2
        if p.label is not None:
            pm.label = p.label
        if p.embedding is not None:
            pm.embedding.values.extend(float(v) for v in p.embedding)
    if rec.embedding is not None:
        msg.embedding.values.extend(float(v) for v in rec.embedding)
    return msg


def _named(d: Mapping[str, float]) -> list[common_pb2.NamedValue]:
    return [common_pb2.NamedValue(name=str(k), value=float(v)) for k, v in d.items()]


def _kv(d: Mapping[str, str]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=str(k), value=str(v)) for k, v in d.items()]


def _dict(pairs: Iterable[Any], key: str, value: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for p in pairs:
        k = getattr(p, key)
        if k in out:
            raise RecordError(f"{where}: duplicate key {k!r}")
        out[k] = getattr(p, value)
    return out


def record_from_pb(msg: common_pb2.ScoreRecord) -> ScoreRecord:
    """A ``gsal.v1.ScoreRecord`` as a library record (validated like a JSONL record)."""
    where = f"ScoreRecord {msg.image_id!r}"
    props = [
        ProposalScore(
            box=(p.box.x1, p.box.y1, p.box.x2, p.box.y2),
            score=p.score,
            e_rec=p.e_rec,
            v_den=p.v_den,
            concept=p.concept,
            similarity=_dict(p.similarity, "name", "value", f"{where} proposals[{i}].similarity"),
            label=p.label if p.HasField("label") else None,
            embedding=list(p.embedding.values) if p.HasField("embedding") else None,
        )
        for i, p in enumerate(msg.proposals)
    ]
    rec = ScoreRecord(
        image_id=msg.image_id,
        e_rec=msg.e_rec,
        v_den=msg.v_den,
        proposals=props,
        uncertainty=_dict(msg.uncertainty, "name", "value", f"{where} uncertainty"),
        model=_dict(msg.model, "key", "value", f"{where} model"),
        meta=_dict(msg.meta, "key", "value", f"{where} meta"),
        embedding=list(msg.embedding.values) if msg.HasField("embedding") else None,
    )
    return ScoreRecord.from_dict(rec.to_dict(), where=where)


def item_error(code: grpc.StatusCode, field: str, message: str) -> common_pb2.ItemError:
    """A per-item ``ItemError`` (the status code by number and name, the offending field, the message)."""
    return common_pb2.ItemError(code=code.value[0], code_name=code.name, field=field, message=message)


def slice_meta(msg: common_pb2.Slice) -> dict[str, str]:
    """``Slice.meta`` as the record's ``meta`` dict: ``line``, ``part``, ``ts`` (RFC 3339 UTC) and extras."""
    meta: dict[str, str] = dict(msg.meta.extra)
    if msg.meta.line:
        meta["line"] = msg.meta.line
    if msg.meta.part:
        meta["part"] = msg.meta.part
    if msg.meta.HasField("timestamp"):
        ts = msg.meta.timestamp.ToDatetime(tzinfo=UTC)
        meta["ts"] = ts.isoformat().replace("+00:00", "Z")
    return meta


def decode_pb_slice(msg: common_pb2.Slice, limits: SliceLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode a ``gsal.v1.Slice``'s pixels; raises :class:`gsal_edge.data.slices.SliceError` naming the field."""
    from gsal_edge.data.slices import SliceError

    if msg.encoding not in PB_TO_ENCODING:
        name = common_pb2.Encoding.Name(msg.encoding) if msg.encoding in common_pb2.Encoding.values() else msg.encoding
        valid = [common_pb2.Encoding.Name(v) for v in ENCODING_TO_PB.values()]
        raise SliceError("encoding", f"encoding {name} is not one of {valid}")
    if msg.dtype not in PB_TO_DTYPE and msg.dtype != common_pb2.DTYPE_UNSPECIFIED:
        valid = [common_pb2.DType.Name(v) for v in DTYPE_TO_PB.values()]
        raise SliceError("dtype", f"unknown dtype enum value {msg.dtype}; expected one of {valid} (or unset for "
                         "PNG/TIFF)")
    return decode_slice(
        msg.data,
        list(msg.shape) or None,
        PB_TO_DTYPE.get(msg.dtype),
        PB_TO_ENCODING[msg.encoding],
        limits,
    )


def make_pb_slice(
    slice_id: str,
    arr: np.ndarray | None = None,
    *,
    encoding: str = "raw",
    data: bytes | None = None,
    shape: tuple[int, ...] | None = None,
    dtype: str | None = None,
    meta: Mapping[str, str] | None = None,
) -> common_pb2.Slice:
    """Build a ``gsal.v1.Slice`` from an array (encoded as ``encoding``) or from already-encoded ``data``.

    ``meta`` keys ``line`` and ``part`` go to their fields; every other key goes to ``meta.extra``.
    """
    if arr is not None:
        data = encode_slice(arr, encoding)
        shape, dtype = tuple(int(v) for v in arr.shape), arr.dtype.name
    if data is None:
        raise ValueError("make_pb_slice: give either arr or data")
    msg = common_pb2.Slice(id=slice_id, data=data, encoding=ENCODING_TO_PB[encoding])
    if shape:
        msg.shape.extend(int(v) for v in shape)
    if dtype:
        msg.dtype = DTYPE_TO_PB[dtype]
    for k, v in (meta or {}).items():
        if k == "line":
            msg.meta.line = v
        elif k == "part":
            msg.meta.part = v
        else:
            msg.meta.extra[k] = v
    return msg
