"""Parity of exported engines against their reference, on real inputs, with stated tolerances.

Real inputs: the reference scorer (PyTorch) scores real slices while :class:`RecordingEngine` taps
every feed each engine receives (whole slices, latents at timestep t, proposal crops); those exact
feeds are replayed on the engine under test. End-to-end: both scorers score the same pool and the
score records, and the top-b selection made from them, are compared.

Closeness is Polygraphy-style ("elemwise"): an element passes when |a-b| <= atol or |a-b| <= rtol*|b|
(b = reference). Reported numbers are the max absolute and max relative error over all elements.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from export.config import ParityConfig, Tolerance
from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, Engine


@dataclass
class Compare:
    """Error statistics of one output: max |a-b|, max |a-b|/|b|, elements, pass/fail."""

    max_abs: float
    max_rel: float
    n: int
    ok: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: (float(f"{v:.3g}") if isinstance(v, float) else v) for k, v in asdict(self).items()}


def compare(test: np.ndarray, ref: np.ndarray, tol: Tolerance) -> Compare:
    """Polygraphy-style elementwise closeness of ``test`` to ``ref``."""
    a = np.asarray(test, dtype=np.float64)
    b = np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return Compare(math.inf, math.inf, int(b.size), False, f"shape {a.shape} vs reference {b.shape}")
    if b.size == 0:
        return Compare(0.0, 0.0, 0, True)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        same = bool(np.array_equal(a, b, equal_nan=True))
        return Compare(0.0 if same else math.inf, 0.0 if same else math.inf, int(b.size), same, "non-finite values")
    err = np.abs(a - b)
    rel = err / np.maximum(np.abs(b), np.finfo(np.float64).tiny)
    ok = bool(np.all((err <= tol.atol) | (rel <= tol.rtol)))
    return Compare(float(err.max()), float(rel.max()), int(b.size), ok)


def compare_exact(test: np.ndarray, ref: np.ndarray) -> Compare:
    """Integer outputs (detector labels) must be identical."""
    a, b = np.asarray(test), np.asarray(ref)
    if a.shape != b.shape:
        return Compare(math.inf, math.inf, int(b.size), False, f"shape {a.shape} vs reference {b.shape}")
    diff = int(np.count_nonzero(a != b))
    return Compare(float(diff), float(diff) / max(1, b.size), int(b.size), diff == 0, f"{diff} differ" if diff else "")


def merge(stats: Sequence[Compare]) -> Compare:
    """Worst case over several comparisons of the same output."""
    if not stats:
        return Compare(0.0, 0.0, 0, True)
    notes = sorted({s.note for s in stats if s.note})
    return Compare(
        max(s.max_abs for s in stats),
        max(s.max_rel for s in stats),
        sum(s.n for s in stats),
        all(s.ok for s in stats),
        "; ".join(notes),
    )


class RecordingEngine:
    """Pass-through :class:`Engine` that keeps a copy of each feed (up to ``limit``) for replay."""

    def __init__(self, inner: Engine, limit: int = 16) -> None:
        self.inner = inner
        self.name = inner.name
        self.backend = inner.backend
        self.limit = limit
        self.feeds: list[dict[str, np.ndarray]] = []

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if len(self.feeds) < self.limit:
            self.feeds.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return self.inner.run(feeds)


@dataclass
class EngineParity:
    """Per-output worst-case errors of one engine over all replayed feeds."""

    engine: str
    feeds: int
    outputs: dict[str, Compare]
    shapes: list[dict[str, list[int]]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "feeds": self.feeds,
            "ok": self.ok,
            "input_shapes": self.shapes,
            "outputs": {k: v.to_dict() for k, v in self.outputs.items()},
        }


def engine_parity(
    ref: Engine, test: Engine, feeds_list: Sequence[dict[str, np.ndarray]], tolerances: dict[str, Tolerance]
) -> EngineParity:
    """Run ``test`` and ``ref`` on every feed; compare every output (int outputs exactly)."""
    name = ref.name
    _, outs = ENGINE_SIGNATURES[name]
    per: dict[str, list[Compare]] = {s.name: [] for s in outs}
    shapes = []
    for feeds in feeds_list:
        r = ref.run(feeds)
        t = test.run(feeds)
        shapes.append({k: list(v.shape) for k, v in feeds.items()})
        for spec in outs:
            if spec.dtype.startswith("int"):
                per[spec.name].append(compare_exact(t[spec.name], r[spec.name]))
            else:
                tol = tolerances.get(spec.name)
                if tol is None:
                    raise KeyError(f"parity config has no tolerance for {name}.{spec.name}")
                per[spec.name].append(compare(t[spec.name], r[spec.name], tol))
    return EngineParity(name, len(feeds_list), {k: merge(v) for k, v in per.items()}, shapes)


# ----------------------------------------------------------------------------- score records
@dataclass
class RecordsParity:
    """End-to-end comparison of two scorers' records for one pool, and of their top-b selections."""

    images: int
    fields: dict[str, Compare]
    structure_ok: bool
    structure_notes: list[str]
    selection_method: str
    top_b_ref: list[str]
    top_b_test: list[str]

    @property
    def selection_ok(self) -> bool:
        return self.top_b_ref == self.top_b_test

    @property
    def ok(self) -> bool:
        return self.structure_ok and self.selection_ok and all(c.ok for c in self.fields.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "ok": self.ok,
            "structure_ok": self.structure_ok,
            "structure_notes": self.structure_notes[:10],
            "fields": {k: v.to_dict() for k, v in self.fields.items()},
            "selection": {
                "method": self.selection_method,
                "same": self.selection_ok,
                "reference": self.top_b_ref,
                "test": self.top_b_test,
            },
        }


def _top_b(records: Sequence[Any], b: int, graph: Any | None) -> tuple[str, list[str]]:
    """Top-b image ids by GSAL A(x) (``gsal_edge.acquisition.selection.gsal_select``, default config, no labels yet);
    without a concept graph, by raw image E_rec (said in the returned method)."""
    if graph is not None:
        from gsal_edge.acquisition.config import GSALConfig
        from gsal_edge.acquisition.score_pool import ScorePool
        from gsal_edge.acquisition.selection import gsal_select

        sel = gsal_select(ScorePool.from_records(list(records)), graph, {}, GSALConfig(), b)
        return "gsal_select (A(x), default GSALConfig, empty coverage)", sel.image_ids
    order = sorted(records, key=lambda r: (-r.e_rec, r.image_id))
    return "raw image e_rec ranking (no concept graph given)", [r.image_id for r in order[:b]]


def records_parity(
    ref: Sequence[Any], test: Sequence[Any], cfg: ParityConfig, graph: Any | None = None
) -> RecordsParity:
    """Compare score records field by field (tolerances of ``cfg.records``) and their top-b selections."""
    tol = cfg.records
    acc: dict[str, list[Compare]] = {k: [] for k in ("e_rec", "v_den", "p_e_rec", "p_v_den", "box", "score",
                                                       "similarity", "uncertainty", "embedding")}
    notes: list[str] = []
    if [r.image_id for r in ref] != [r.image_id for r in test]:
        notes.append("image ids differ")
    for r, t in zip(ref, test):
        acc["e_rec"].append(compare(np.array([t.e_rec]), np.array([r.e_rec]), tol["e_rec"]))
        acc["v_den"].append(compare(np.array([t.v_den]), np.array([r.v_den]), tol["v_den"]))
        keys = sorted(r.uncertainty)
        if sorted(t.uncertainty) != keys:
            notes.append(f"{r.image_id}: uncertainty keys {sorted(t.uncertainty)} vs {keys}")
        else:
            acc["uncertainty"].append(
                compare(np.array([t.uncertainty[k] for k in keys]), np.array([r.uncertainty[k] for k in keys]),
                        tol["uncertainty"])
            )
        if r.embedding is not None:
            acc["embedding"].append(compare(np.array(t.embedding or []), np.array(r.embedding), tol["similarity"]))
        if len(r.proposals) != len(t.proposals):
            notes.append(f"{r.image_id}: {len(t.proposals)} proposals vs reference {len(r.proposals)}")
            continue
        for j, (pr, pt) in enumerate(zip(r.proposals, t.proposals)):
            acc["box"].append(compare(np.array(pt.box), np.array(pr.box), tol["box"]))
            acc["score"].append(compare(np.array([pt.score]), np.array([pr.score]), tol["score"]))
            acc["p_e_rec"].append(compare(np.array([pt.e_rec]), np.array([pr.e_rec]), tol["e_rec"]))
            acc["p_v_den"].append(compare(np.array([pt.v_den]), np.array([pr.v_den]), tol["v_den"]))
            ks = sorted(pr.similarity)
            acc["similarity"].append(
                compare(np.array([pt.similarity.get(k, np.nan) for k in ks]), np.array([pr.similarity[k] for k in ks]),
                        tol["similarity"])
            )
            if pr.concept != pt.concept or pr.label != pt.label:
                notes.append(f"{r.image_id} p{j}: concept/label {pt.concept}/{pt.label} vs {pr.concept}/{pr.label}")
    method, top_ref = _top_b(ref, cfg.top_b, graph)
    _, top_test = _top_b(test, cfg.top_b, graph)
    return RecordsParity(
        images=len(ref),
        fields={k: merge(v) for k, v in acc.items()},
        structure_ok=not notes,
        structure_notes=notes,
        selection_method=method,
        top_b_ref=top_ref,
        top_b_test=top_test,
    )


# ----------------------------------------------------------------------------- whole scorer
@dataclass
class ParityReport:
    """Per-engine parity on real feeds plus the end-to-end records/selection check."""

    reference: str
    test: str
    engines: dict[str, EngineParity]
    records: RecordsParity | None

    @property
    def ok(self) -> bool:
        return all(e.ok for e in self.engines.values()) and (self.records is None or self.records.ok)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "test": self.test,
            "ok": self.ok,
            "engines": {k: v.to_dict() for k, v in self.engines.items()},
            "records": self.records.to_dict() if self.records else None,
        }


def capture_feeds(scorer: Any, slices: Sequence[np.ndarray], ids: Sequence[str], limit: int = 16) -> tuple[list[Any], dict[str, list[dict[str, np.ndarray]]]]:
    """Score ``slices`` with ``scorer`` while recording every engine's feeds; restores its engines."""
    original = dict(scorer.engines)
    taps = {n: RecordingEngine(e, limit) for n, e in original.items()}
    scorer.engines = dict(taps)
    try:
        records = scorer.score(list(slices), list(ids))
    finally:
        scorer.engines = original
    return records, {n: t.feeds for n, t in taps.items()}


def scorer_parity(
    ref_scorer: Any,
    test_scorer: Any,
    slices: Sequence[np.ndarray],
    ids: Sequence[str],
    cfg: ParityConfig,
    extra_feeds: dict[str, list[dict[str, np.ndarray]]] | None = None,
    tolerances: dict[str, dict[str, Tolerance]] | None = None,
    graph: Any | None = None,
) -> ParityReport:
    """Engine-by-engine parity on the reference scorer's real feeds, then records + selection end-to-end."""
    ref_records, feeds = capture_feeds(ref_scorer, slices, ids)
    for name, more in (extra_feeds or {}).items():
        feeds.setdefault(name, []).extend(more)
    tols = tolerances or cfg.engines
    engines = {
        name: engine_parity(ref_scorer.engines[name], test_scorer.engines[name], feeds[name], tols[name])
        for name in ENGINE_SIGNATURES
        if feeds.get(name)
    }
    test_records = test_scorer.score(list(slices), list(ids))
    return ParityReport(
        reference=str(ref_scorer.backend),
        test=str(test_scorer.backend),
        engines=engines,
        records=records_parity(ref_records, test_records, cfg, graph),
    )


def format_report(report: ParityReport) -> list[str]:
    """Human-readable lines: one per engine output, then the end-to-end result."""
    lines = [f"parity {report.test} vs {report.reference}: {'OK' if report.ok else 'FAILED'}"]
    for name, ep in report.engines.items():
        for out, c in ep.outputs.items():
            lines.append(
                f"  {name:<11} {out:<12} max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e} n={c.n} "
                f"feeds={ep.feeds} {'ok' if c.ok else 'FAIL'} {c.note}".rstrip()
            )
    if report.records:
        rp = report.records
        for k, c in rp.fields.items():
            if c.n:
                lines.append(f"  records     {k:<12} max_abs={c.max_abs:.2e} max_rel={c.max_rel:.2e} n={c.n} "
                             f"{'ok' if c.ok else 'FAIL'}")
        lines.append(f"  top-{len(rp.top_b_ref)} selection ({rp.selection_method}): "
                     f"{'same' if rp.selection_ok else 'DIFFERENT'} {rp.top_b_test}"
                     + ("" if rp.selection_ok else f" (reference {rp.top_b_ref})"))
        for n in rp.structure_notes[:5]:
            lines.append(f"  ! {n}")
    return lines
