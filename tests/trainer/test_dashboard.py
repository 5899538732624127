"""The trainer dashboard's numbers against a real store, its HTTP routes, read-only access and escaping."""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from test_trainer_helpers import make_item
from typer.testing import CliRunner

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from trainer.audit_log import verify
from trainer.cli import app as cli_app
from trainer.dashboard import DashboardError, open_read_only
from trainer.dashboard.concept_svg import layout
from trainer.dashboard.server import DashboardApp, start_dashboard
from trainer.dashboard.status import dashboard_status
from trainer.dashboard.thumbnails import thumbnail_png, windowed_uint8
from trainer.images import encode_pixels
from trainer.rounds import import_labels, select_round
from trainer.store.pool_store import PoolStore

XSS = '<script>alert("x")</script>'


def _gt(tmp_path, ids):
    """Ground truth: one box per image, void for even and crack for odd numbers (coverage by hand)."""
    images = [{"id": n, "file_name": f"slice-{i:06d}.png", "width": 64, "height": 64} for n, i in enumerate(ids)]
    anns = [{"id": n + 1, "image_id": n, "category_id": 1 + i % 2, "bbox": [4, 4, 10, 8]} for n, i in enumerate(ids)]
    f = tmp_path / "gt.json"
    f.write_text(json.dumps({"images": images, "annotations": anns,
                             "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "crack"}]}))
    return f


@pytest.fixture
def store_dir(tmp_path):
    """30 slices from st-01 and 10 from st-02, one labeled round of 6, an open round of 5."""
    root = tmp_path / "store"
    s = PoolStore(root)
    s.ingest([make_item(i) for i in range(30)] + [make_item(i, station="st-02") for i in range(100, 110)])
    s.register_station("st-01", "127.0.0.1:50051")
    graph = load_graph("thin_film_ct")
    r1 = select_round(s, graph, GSALConfig(), 6)
    ids = [int(p["image_id"].split("-")[-1]) for p in r1.picks]
    import_labels(s, graph, _gt(tmp_path, ids), simulate=True)
    select_round(s, graph, GSALConfig(), 5)
    s.close()
    return root, ids


def test_status_numbers_match_the_store(store_dir):
    root, labeled_ids = store_dir
    ro = open_read_only(root)
    st = dashboard_status(ro)
    ro.close()
    with PoolStore(root) as s:
        assert st["pool"]["size"] == 40 == s.status()["slices"]
        assert st["pool"]["selectable"] == len(s.unlabeled_records()) == 40 - 6 - 5
        assert st["pool"]["labeled"] == 6 and st["pool"]["label_boxes"] == 6
        assert st["pool"]["waiting_for_labels"] == 5
        assert [(x["station_id"], x["slices"], x["address"]) for x in st["stations"]] == [
            ("st-01", 30, "127.0.0.1:50051"), ("st-02", 10, None)]
        assert all(x["health"] == "unknown" and x["bundle_id"] == "sha256:b1" for x in st["stations"])
        # coverage: voids for the even picks, cracks for the odd ones; coarse and abstract summed up the graph
        n_void = sum(1 for i in labeled_ids if i % 2 == 0)
        cov = st["coverage"]
        assert cov["graph"] == "thin-film-ct" and cov["note"] == ""
        assert cov["fine"] == {"void": n_void, "inclusion": 0, "petal": 0, "drill_hole": 0, "crack": 6 - n_void,
                               "background": 0}
        assert cov["coarse"]["subsurface"] == n_void and cov["coarse"]["surface"] == 6 - n_void
        assert cov["abstract"]["dark"] == 6 and cov["abstract"]["linear"] == 6 - n_void
        assert [(r["id"], r["n_picks"], r["n_labeled"], r["status"]) for r in st["rounds"]] == [
            (1, 6, 6, "labeled"), (2, 5, 0, "selected")]
        assert st["rounds"][0]["boxes_found"] == 6 and st["rounds"][0]["hit_rate"] == 1.0
        assert all(r["audit_logged"] for r in st["rounds"])
        picks = s.selection(2)
        assert st["latest_round"]["id"] == 2 and st["latest_round"]["n_picks"] == 5
        assert [p["key"] for p in st["latest_round"]["picks"]] == [p.key for p in picks]
        assert [p["sentence"] for p in st["latest_round"]["picks"]] == [p.rationale["sentence"] for p in picks]
        assert st["audit"]["ok"] and st["audit"]["entries"] == verify(s.audit_path).entries == 3
    assert st["retrains"] == [] and st["bundles"] == []
    json.dumps(st, allow_nan=False)  # the /api/status body


def test_broken_audit_chain_is_shown(store_dir):
    root, _ = store_dir
    lines = (root / "audit.jsonl").read_bytes().splitlines(keepends=True)
    (root / "audit.jsonl").write_bytes(lines[0] + lines[2])  # drop the labels entry
    app = DashboardApp(root, refresh_s=0)
    st = app.status()
    assert not st["audit"]["ok"] and st["audit"]["broken_line"] == 2 and st["audit"]["entries"] == 1
    assert st["audit"]["rounds_not_in_audit"] == []
    assert 'data-ok="false"' in app.page() and "Audit chain BROKEN" in app.page()
    app.close()


def _db_digest(root):
    con = sqlite3.connect(root / "pool.sqlite")
    try:
        return hashlib.sha256("\n".join(con.iterdump()).encode()).hexdigest()
    finally:
        con.close()


def test_dashboard_never_writes_to_the_store(store_dir, tmp_path):
    root, _ = store_dir
    before = (_db_digest(root), (root / "audit.jsonl").read_bytes(), sorted(p.name for p in (root / "images").rglob("*")))
    ro = open_read_only(root)
    with pytest.raises(sqlite3.OperationalError, match="readonly|read-only|query_only"):
        ro.register_station("st-09", "x:1")
    ro.close()
    app = DashboardApp(root, refresh_s=0)
    app.page()
    app.thumbnail(app.status()["latest_round"]["picks"][0]["key"])
    app.close()
    after = (_db_digest(root), (root / "audit.jsonl").read_bytes(), sorted(p.name for p in (root / "images").rglob("*")))
    assert after == before
    with pytest.raises(DashboardError, match="no trainer store"):
        open_read_only(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()


def test_store_derived_text_is_escaped(tmp_path):
    root = tmp_path / "store"
    with PoolStore(root) as s:
        items = [make_item(i) for i in range(6)]
        items[0].record.image_id = f"slice-{XSS}"
        items[0].record.meta = {"line": XSS, "<b>k</b>": "v"}
        s.ingest(items)
        select_round(s, load_graph("thin_film_ct"), GSALConfig(), 6)
    app = DashboardApp(root, refresh_s=0)
    html = app.page()
    key = f"st-01/slice-{XSS}"
    assert key in [p["key"] for p in app.status()["latest_round"]["picks"]]
    assert "<script" not in html and "<b>k</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html and "&lt;b&gt;k&lt;/b&gt;" in html
    assert "/thumbnail?key=st-01%2Fslice-%3Cscript%3Ealert%28%22x%22%29%3C%2Fscript%3E" in html
    assert app.thumbnail(key)[:8] == b"\x89PNG\r\n\x1a\n"
    app.close()


def _get(url, method="GET"):
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_http_routes(store_dir):
    root, _ = store_dir
    dash = start_dashboard(root, refresh_s=0)
    try:
        assert dash.server.server_address[0] == "127.0.0.1"
        code, headers, body = _get(dash.url)
        assert code == 200 and headers["Content-Type"].startswith("text/html")
        assert "script-src" not in headers["Content-Security-Policy"]
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert 'data-stat="pool-size">40<' in body.decode()
        code, headers, body = _get(dash.url + "api/status")
        st = json.loads(body)
        assert code == 200 and st["pool"]["size"] == 40 and len(st["stations"]) == 2 and len(st["rounds"]) == 2
        pick = st["latest_round"]["picks"][0]
        code, headers, body = _get(dash.url + pick["thumbnail"].lstrip("/"))
        assert code == 200 and headers["Content-Type"] == "image/png"
        im = Image.open(io.BytesIO(body))
        assert im.mode == "L" and im.size == (64, 64)
        assert _get(dash.url + "thumbnail?key=st-01%2Fnope")[0] == 404
        assert _get(dash.url + "thumbnail")[0] == 404
        assert _get(dash.url + "static/dashboard.css")[0] == 200
        assert _get(dash.url + "etc/passwd")[0] == 404
        assert _get(dash.url + "api/status", "POST")[0] == 405
    finally:
        dash.stop()


def test_missing_store_is_a_clear_page_and_json_error(tmp_path):
    dash = start_dashboard(tmp_path / "none", refresh_s=0)
    try:
        code, _, body = _get(dash.url)
        assert code == 503 and b"no trainer store here" in body
        code, _, body = _get(dash.url + "api/status")
        assert code == 503 and "no trainer store" in json.loads(body)["error"]
    finally:
        dash.stop()
    assert not (tmp_path / "none").exists()


def test_thumbnail_is_a_windowed_8bit_rendition(tmp_path):
    # a uint16 slice using 1000..1511 of 0..65535: min-max over the dtype would be flat gray
    ramp = (1000 + np.arange(512, dtype=np.uint16)[None, :].repeat(300, 0) // 1).astype(np.uint16)
    out = windowed_uint8(ramp)
    assert out.dtype == np.uint8 and out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out[0].astype(int)) >= 0)  # monotone: the window keeps the order
    data, fmt = encode_pixels(ramp)
    f = tmp_path / f"x.{fmt}"
    f.write_bytes(data)
    im = Image.open(io.BytesIO(thumbnail_png(f, size=128)))
    assert im.mode == "L" and im.size == (128, 75)  # longer side 128, aspect kept


def test_concept_layout_counts_and_states():
    graph = load_graph("thin_film_ct")
    zero = {f: 0 for f in graph.fine}
    cov = {"fine": zero | {"void": 5, "crack": 1}, "coarse": {"subsurface": 5, "surface": 1, "none": 0},
           "abstract": {a: 0 for a in graph.abstract} | {"dark": 6},
           "thresholds": {"tau_f": 2.0, "tau_c": 3.0, "tau_a": 1.0}}
    d = layout(graph, cov)
    nodes = {n.name: n for n in d.nodes}
    assert len(nodes) == len(graph.fine) + len(graph.coarse) + len(graph.abstract)
    assert len(d.edges) == sum(1 + len(graph.abstract_of(f)) for f in graph.fine)
    assert (nodes["void"].state, nodes["crack"].state, nodes["petal"].state) == ("covered", "rare", "none")
    assert nodes["background"].state == "excluded" and nodes["none"].state == "excluded"
    assert nodes["surface"].state == "rare" and nodes["dark"].state == "covered"
    # fine nodes are grouped under their coarse parent, rows left to right
    fine_order = [n.name for n in sorted((n for n in d.nodes if n.level == "fine"), key=lambda n: n.x)]
    assert fine_order == [f for c in graph.coarse for f in graph.fine_of_coarse(c)]
    assert all(0 <= n.x and n.x + d.node_w <= d.width for n in d.nodes)


def test_dashboard_command_refuses_a_missing_store_and_bad_options(tmp_path):
    res = CliRunner().invoke(cli_app, ["dashboard", "--store", str(tmp_path / "s"), "--port", "0",
                                       "--label-mode", "weird"])
    assert res.exit_code == 2 and "--label-mode must be typed or binary" in res.output
    res = CliRunner().invoke(cli_app, ["dashboard", "--store", str(tmp_path / "s"), "--graph", str(tmp_path / "g.yaml")])
    assert res.exit_code == 2 and "g.yaml" in res.output


def test_retrain_gate_and_bundles_are_shown(store_dir):
    """The gate as trainer.retrain logs it (same keys), and the bundles' roles and metrics."""
    from trainer.audit_log import AuditLog

    root, _ = store_dir
    with PoolStore(root) as s:
        s.add_bundle("sha256:b1", None, "serving", {"f1": 0.5, "map50": 0.4})
        s.add_bundle("sha256:b2", None, "candidate", {"f1": 0.45, "map50": 0.41}, "retrain run-1")
    AuditLog(root / "audit.jsonl").append("retrain", {
        "labeled_images": 6, "boxes": 6, "deployed": False, "new": {}, "serving": {},
        "gate": {"metric": "f1", "new": 0.45, "serving": 0.5, "tolerance": 0.01, "passed": False}})
    app = DashboardApp(root, refresh_s=0)
    st = app.status()
    (g,) = st["retrains"]
    assert (g["metric"], g["new"], g["serving"], g["tolerance"], g["passed"], g["deployed"]) == (
        "f1", 0.45, 0.5, 0.01, False, False)
    assert [(b["bundle_id"], b["role"], b["metrics"]["f1"]) for b in st["bundles"]] == [
        ("sha256:b1", "serving", 0.5), ("sha256:b2", "candidate", 0.45)]
    assert st["audit"]["ok"] and st["audit"]["entries"] == 4
    html = app.page()
    assert '<span class="cross">failed</span>' in html and "retrain run-1" in html
    app.close()


def test_station_health_is_shown_when_the_store_records_it(store_dir):
    root, _ = store_dir
    with PoolStore(root) as s:
        if not hasattr(s, "record_station_health"):
            pytest.skip("this store records no station health yet (the fleet part adds it)")
        s.record_station_health("st-01", "not_serving", "LoadBundle failed: <bad sig>", 1_800_000_000.0)
    app = DashboardApp(root, refresh_s=0)
    st1, st2 = app.status()["stations"]
    assert (st1["health"], st1["health_detail"], st1["health_checked_at"]) == (
        "not_serving", "LoadBundle failed: <bad sig>", "2027-01-15T08:00:00+00:00")
    assert st2["health"] == "unknown"
    html = app.page()
    assert "h-not_serving" in html and "LoadBundle failed: &lt;bad sig&gt;" in html
    app.close()
