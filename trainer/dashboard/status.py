"""Every number the dashboard shows, computed once from the store: the page and ``/api/status`` use this dict.

Pool and labels come from :meth:`PoolStore.status`, coverage n(v) from the stored label boxes propagated over
the concept graph by the library (:func:`gsal_edge.acquisition.rarity.coverage`, spec sections 3 and 10),
rounds and picks from the ``rounds`` / ``selections`` tables, the retrain gate from the audit log's
``retrain`` entries, and the audit chain from :func:`trainer.audit_log.verify`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from gsal_edge.acquisition.concept_graph import (
    BACKGROUND,
    UNKNOWN,
    ConceptGraph,
    available_graphs,
    load_graph,
)
from gsal_edge.acquisition.rarity import coverage
from gsal_edge.jsonio import to_jsonable
from trainer.audit_log import read_entries, verify
from trainer.rounds import audit_entry_hashes
from trainer.store.pool_store import PoolStore

DEFAULT_GRAPH = "thin_film_ct"
UNKNOWN_HEALTH = "unknown"

# The selectable pool U, counted the way PoolStore.unlabeled_records(exclude_pending=True) selects it.
_SELECTABLE_SQL = (
    "SELECT count(*) FROM score_records r JOIN slices s ON s.id = r.slice_pk "
    "WHERE r.stale = 0 AND NOT EXISTS (SELECT 1 FROM labels l WHERE l.slice_pk = s.id) "
    "AND NOT EXISTS (SELECT 1 FROM selections se JOIN rounds ro ON ro.id = se.round_id "
    "WHERE se.slice_pk = s.id AND ro.status = 'selected')"
)
# Per round: picks labeled, boxes found on them, picks with at least one box.
_ROUND_LABELS_SQL = (
    "SELECT se.round_id, count(DISTINCT l.slice_pk), count(b.id), count(DISTINCT b.slice_pk) "
    "FROM selections se LEFT JOIN labels l ON l.slice_pk = se.slice_pk "
    "LEFT JOIN label_boxes b ON b.slice_pk = l.slice_pk GROUP BY se.round_id"
)


def iso(ts: float | None) -> str | None:
    """Unix time -> ISO 8601 UTC to the second (None stays None)."""
    return None if ts is None else datetime.fromtimestamp(float(ts), UTC).isoformat(timespec="seconds")


def age(ts: float | None, now: float) -> str:
    """How long ago, for people: '42 s ago', '3 min ago', '5 h ago', '2 d ago'."""
    if ts is None:
        return "never"
    s = max(0.0, now - float(ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{int(s // size)} {unit} ago"
    return f"{int(s)} s ago"


def thumbnail_url(key: str) -> str:
    return "/thumbnail?key=" + quote(key, safe="")


def _rows(store: PoolStore, sql: str) -> list[Any]:
    return store._q(sql)  # read-only aggregate queries PoolStore has no method for


def packaged_graph(name: str) -> ConceptGraph | None:
    """The packaged graph whose file name or ``name:`` field is ``name`` (rounds record the latter)."""
    for file_name in available_graphs():
        g = load_graph(file_name)
        if name in (file_name, g.name):
            return g
    return None


def choose_graph(store: PoolStore, graph: str | ConceptGraph | None) -> tuple[ConceptGraph, str]:
    """The graph to draw: the one given, else the latest round's, else the default; and a note if it fell back."""
    if isinstance(graph, ConceptGraph):
        return graph, ""
    if graph is not None:
        return load_graph(graph), ""
    rounds = store.rounds()
    name = rounds[-1]["params"].get("graph") if rounds else None
    if not name:
        return load_graph(DEFAULT_GRAPH), ""
    found = packaged_graph(str(name))
    if found is not None:
        return found, ""
    return load_graph(DEFAULT_GRAPH), (f"the latest round used graph {name!r}, which is not a packaged graph "
                                       f"(pass --graph FILE); showing {DEFAULT_GRAPH}")


def choose_label_mode(store: PoolStore, label_mode: str | None) -> str:
    """The coverage mode given, else the latest round's ``label_mode``, else ``typed``."""
    if label_mode is not None:
        return label_mode
    rounds = store.rounds()
    mode = (rounds[-1]["params"].get("config") or {}).get("label_mode") if rounds else None
    return mode if mode in ("typed", "binary") else "typed"


def coverage_view(store: PoolStore, graph: ConceptGraph, label_mode: str) -> dict[str, Any]:
    """n(v) at every level and the thresholds tau, plus labeled names the graph does not know."""
    raw = store.coverage_counts("binary" if label_mode == "binary" else "typed")
    in_graph = {k: float(v) for k, v in raw.items() if k in graph.fine_index}
    outside = {k: int(v) for k, v in raw.items() if k not in graph.fine_index and k != UNKNOWN}
    cov = coverage(graph, in_graph)
    d = cov.to_dict()
    return {
        "graph": graph.name,
        "label_mode": label_mode,
        "fine": {k: int(v) for k, v in d["fine"].items()},
        "coarse": {k: int(v) for k, v in d["coarse"].items()},
        "abstract": {k: int(v) for k, v in d["abstract"].items()},
        "thresholds": d["thresholds"],
        "outside_graph": outside,
        "unknown_boxes": int(raw.get(UNKNOWN, 0)),
        "excluded": [BACKGROUND, "none"],
    }


def stations_view(store: PoolStore, now: float) -> list[dict[str, Any]]:
    """Each station: id, address, the bundle of its latest record, health (when checked), last seen, slices."""
    per_station = {r[0]: int(r[1]) for r in _rows(store, "SELECT station_id, count(*) FROM slices GROUP BY station_id")}
    out = []
    for st in store.stations():
        out.append({
            "station_id": st["station_id"],
            "address": st.get("address"),
            "bundle_id": st.get("bundle_id"),
            "health": st.get("health") or UNKNOWN_HEALTH,
            "health_detail": st.get("health_detail"),
            "health_checked_at": iso(st.get("health_checked_at")),
            "first_seen": iso(st.get("first_seen")),
            "last_seen": iso(st.get("last_seen")),
            "last_seen_age": age(st.get("last_seen"), now),
            "slices": per_station.get(st["station_id"], 0),
        })
    return out


def rounds_view(store: PoolStore, audit_hashes: set[str]) -> list[dict[str, Any]]:
    """Each round with its metrics: pool size, picks, labeled, boxes found, hit rate, status, audit link."""
    found = {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in _rows(store, _ROUND_LABELS_SQL)}
    out = []
    for r in store.rounds():
        labeled, boxes, with_boxes = found.get(r["id"], (0, 0, 0))
        out.append({
            "id": r["id"],
            "created_at": iso(r["created_at"]),
            "strategy": r["strategy"],
            "budget": r["budget"],
            "pool_size": r["pool_size"],
            "bundle_id": r["bundle_id"],
            "status": r["status"],
            "n_picks": r["n_picks"],
            "n_labeled": r["n_labeled"],
            "boxes_found": boxes,
            "picks_with_boxes": with_boxes,
            "hit_rate": (with_boxes / labeled) if labeled else None,
            "graph": r["params"].get("graph"),
            "audit_logged": r["audit_hash"] in audit_hashes,
        })
    return out


def retrains_view(store: PoolStore) -> list[dict[str, Any]]:
    """The retrain gate of each retrain in the audit log: metric, new vs serving, tolerance, passed, deployed."""
    out = []
    for e in read_entries(store.audit_path, "retrain"):
        d = e.get("data") or {}
        g = d.get("gate") or {}
        out.append({
            "seq": e.get("seq"),
            "ts": e.get("ts"),
            "labeled_images": d.get("labeled_images"),
            "boxes": d.get("boxes"),
            "metric": g.get("metric"),
            "new": g.get("new"),
            "serving": g.get("serving"),
            "tolerance": g.get("tolerance"),
            "passed": g.get("passed"),
            "deployed": d.get("deployed"),
            "bundle_id": d.get("bundle_id"),
        })
    return out


def picks_view(store: PoolStore, round_id: int | None) -> list[dict[str, Any]]:
    """The picks of one round by rank: pool key, A(x), the rationale sentence, driver, concept, label state."""
    if round_id is None:
        return []
    labeled = set(store.labeled_keys())
    out = []
    for p in store.selection(round_id):
        info = store.slice_info(p.key)
        rat = p.rationale
        prop = rat.get("proposal") or {}
        box = prop.get("box")
        overlay = None
        if box and info.width and info.height:  # the driving proposal, clipped to the slice (pixels)
            x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
            x2, y2 = min(float(info.width), float(box[2])), min(float(info.height), float(box[3]))
            if x2 > x1 and y2 > y1:
                overlay = {"x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1}
        out.append({
            "rank": p.rank,
            "key": p.key,
            "station": info.station,
            "slice_id": info.slice_id,
            "acquisition": p.score,
            "sentence": rat.get("sentence", ""),
            "dominant": rat.get("dominant"),
            "driver": rat.get("driver"),
            "concept": prop.get("concept"),
            "labeled": p.key in labeled,
            "has_image": info.image_path is not None,
            "thumbnail": thumbnail_url(p.key) if info.image_path is not None else None,
            "meta": {str(k): str(v) for k, v in list(info.meta.items())[:4]},  # station-sent: shown escaped
            "width": info.width,
            "height": info.height,
            "overlay": overlay,
        })
    return out


def audit_view(store: PoolStore, audit_hashes: set[str]) -> dict[str, Any]:
    """The audit chain: verified entries, head, first broken line, and rounds whose entry is missing."""
    res = verify(store.audit_path)
    missing = [r["id"] for r in store.rounds() if r["audit_hash"] not in audit_hashes]
    return {
        "path": str(store.audit_path),
        "ok": bool(res.ok and not missing),
        "chain_ok": bool(res.ok),
        "entries": res.entries,
        "head": res.head,
        "broken_line": res.broken_line,
        "reason": res.reason,
        "summary": str(res),
        "rounds_not_in_audit": missing,
    }


def dashboard_status(
    store: PoolStore, *, graph: str | ConceptGraph | None = None, label_mode: str | None = None,
    now: float | None = None, graph_note: str = "",
) -> dict[str, Any]:
    """The whole dashboard as one JSON-able dict (what ``/api/status`` returns and the page renders).

    ``graph``: the concept graph for coverage (default: the latest round's, see :func:`choose_graph`).
    """
    now = time.time() if now is None else now
    g, note = choose_graph(store, graph)
    graph_note = graph_note or note
    mode = choose_label_mode(store, label_mode)
    hashes = set(audit_entry_hashes(store.audit_path))
    counts = store.status()
    rounds = rounds_view(store, hashes)
    latest = store.latest_round()
    picks = picks_view(store, latest)
    return to_jsonable({
        "generated_at": iso(now),
        "store": str(store.root),
        "schema_version": counts["schema_version"],
        "current_bundle": counts["current_bundle"],
        "pool": {
            "size": counts["slices"],
            "selectable": int(_rows(store, _SELECTABLE_SQL)[0][0]),
            "records": counts["records"],
            "stale_records": counts["stale_records"],
            "labeled": counts["labeled"],
            "label_boxes": counts["label_boxes"],
            "waiting_for_labels": sum(r["n_picks"] - r["n_labeled"] for r in rounds if r["status"] == "selected"),
        },
        "stations": stations_view(store, now),
        "coverage": coverage_view(store, g, mode) | {"note": graph_note},
        "rounds": rounds,
        "retrains": retrains_view(store),
        "bundles": [
            {"bundle_id": b["bundle_id"], "role": b["role"], "created_at": iso(b["created_at"]),
             "metrics": {k: b["metrics"].get(k) for k in ("f1", "map50", "ap") if k in b["metrics"]},
             "note": b.get("note")}
            for b in store.bundles()
        ],
        "latest_round": None if latest is None else {"id": latest, "n_picks": len(picks), "picks": picks},
        "audit": audit_view(store, hashes),
    })
