"""The dashboard in a real headless browser: Debian's chromium driven by Playwright, against `trainer serve`.

The test makes a small pool of generated CT slices (two stations, a labeled round, an open round), starts
``gsal-edge trainer serve --dashboard-port 0`` as its own process, loads the page and checks the numbers it
shows against the store, then pushes records from a third station over gRPC and checks the page follows.
It saves a full-page screenshot to ``$GSAL_SCREENSHOT_DIR`` (or the test's tmp dir) for a person to open.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from external_tools import REPO, require
from test_trainer_helpers import make_record

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.data.synthetic.config import SynthConfig
from gsal_edge.data.synthetic.generator import generate_slice, slice_seed
from trainer.images import encode_pixels
from trainer.rounds import import_labels, select_round
from trainer.store.pool_store import PoolStore
from trainer.store.types import IngestItem

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
INSTALL = "make services (.ci/install/20-chromium.sh)"


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"playwright is not installed; {INSTALL}")
        pytest.skip(f"playwright is not installed; install it with `{INSTALL}`")
    return sync_playwright


def synthetic_item(i: int, station: str, cfg: SynthConfig) -> tuple[IngestItem, list]:
    """A generated uint16 CT slice with a record whose proposals sit on its true defects."""
    sl = generate_slice(cfg, seed=slice_seed(7, i), index=i)
    rec = make_record(i, station, n_props=max(2, len(sl.annotations)))
    h, w = sl.image.shape
    for p in rec.proposals[len(sl.annotations):]:  # the helper's other proposals: move them off the air gap
        p.box = (p.box[0], p.box[1] + h / 2, p.box[2], p.box[3] + h / 2)
    for p, ann in zip(rec.proposals, sl.annotations):
        p.box = tuple(float(v) for v in ann.box)
        if ann.category in p.similarity:
            p.concept = p.label = ann.category
    data, fmt = encode_pixels(sl.image)
    return IngestItem(station, rec, image=data, image_format=fmt, width=w, height=h), sl.annotations


def build_pool(root: Path, tmp_path: Path) -> PoolStore:
    """24 + 12 generated slices from two stations; round 1 labeled by the simulated annotator; round 2 open."""
    import json

    cfg = SynthConfig()
    items, truth = [], {}
    for i, station in [(i, "st-01") for i in range(24)] + [(i, "st-02") for i in range(100, 112)]:
        item, anns = synthetic_item(i, station, cfg)
        items.append(item)
        truth[item.record.image_id] = (item, anns)
    s = PoolStore(root)
    s.ingest(items)
    s.register_station("st-01", "127.0.0.1:50051")
    graph = load_graph("thin_film_ct")
    select_round(s, graph, GSALConfig(), 8)
    known = set(graph.defects)
    images, anns = [], []
    for n, (image_id, (item, boxes)) in enumerate(truth.items()):
        images.append({"id": n, "file_name": f"{image_id}.png", "width": item.width, "height": item.height})
        for a in boxes:
            if a.category in known:
                x1, y1, x2, y2 = a.box
                anns.append({"id": len(anns) + 1, "image_id": n, "category_id": 1 + graph.defects.index(a.category),
                             "bbox": [x1, y1, x2 - x1, y2 - y1]})
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1 + k, "name": c} for k, c in enumerate(graph.defects)]}))
    import_labels(s, graph, gt, simulate=True)
    select_round(s, graph, GSALConfig(), 10)
    return s


def _wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 60.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        if proc.poll() is not None:
            raise AssertionError(f"trainer serve exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no {path.name} after {timeout_s:.0f} s")


def _stat(page, name: str) -> int:
    return int(page.inner_text(f'[data-stat="{name}"]'))


def test_dashboard_in_chromium_shows_the_store(tmp_path):
    chromium = require("chromium", "/usr/bin/chromium", "chromium", install=INSTALL)
    sync_playwright = _playwright()
    root = tmp_path / "store"
    s = build_pool(root, tmp_path)
    expected = {
        "size": s.status()["slices"], "selectable": len(s.unlabeled_records()), "labeled": s.status()["labeled"],
        "rounds": len(s.rounds()), "stations": len(s.stations()), "coverage": s.coverage_counts("typed"),
        "picks": [(p.key, p.rationale["sentence"]) for p in s.selection(s.latest_round())],
    }
    s.close()
    shots = Path(os.environ.get("GSAL_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    port_file, dash_file = tmp_path / "port", tmp_path / "dashboard-port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gsal_cli.main", "trainer", "serve", "--store", str(root), "--insecure",
         "--port", "0", "--port-file", str(port_file), "--dashboard-port", "0",
         "--dashboard-port-file", str(dash_file)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        grpc_port, dash_port = _wait_for(port_file, proc), _wait_for(dash_file, proc)
        base = f"http://127.0.0.1:{dash_port}/"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            requested: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            page.on("response", lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"))
            page.goto(base)
            page.wait_for_load_state("networkidle")

            assert _stat(page, "pool-size") == expected["size"] == 36
            assert _stat(page, "selectable") == expected["selectable"] == 36 - 8 - 10
            assert _stat(page, "labeled") == expected["labeled"] == 8
            assert _stat(page, "rounds") == expected["rounds"] == 2
            assert _stat(page, "stations") == expected["stations"] == 2
            assert page.locator("tr[data-station]").count() == 2
            assert page.inner_text('tr[data-station="st-01"]').split("\t")[-2].strip() == "24"
            assert page.locator("tr[data-round]").count() == 2
            # coverage per fine node, as drawn on the graph
            for name in load_graph("thin_film_ct").defects:
                node = page.locator(f'g.node[data-level="fine"][data-node="{name}"]')
                assert int(node.get_attribute("data-count")) == expected["coverage"].get(name, 0), name
                assert node.locator("text.count").text_content() == f"n = {expected['coverage'].get(name, 0)}"
            # the gallery: every pick in rank order with its rationale sentence and a loaded thumbnail
            figs = page.locator("figure.pick")
            assert figs.count() == len(expected["picks"]) == 10
            assert [f.get_attribute("data-key") for f in figs.all()] == [k for k, _ in expected["picks"]]
            assert [f.locator(".sentence").inner_text() for f in figs.all()] == [t for _, t in expected["picks"]]
            thumbs = page.eval_on_selector_all("figure.pick svg image", "els => els.map(e => e.getAttribute('href'))")
            assert len(thumbs) == 10
            for href in thumbs:
                r = page.request.get(base.rstrip("/") + href)
                assert r.status == 200 and r.body()[:8] == b"\x89PNG\r\n\x1a\n"
            assert page.get_attribute("#audit-badge", "data-ok") == "true"
            assert failed == [] and all(u.startswith(base) for u in requested)  # offline: nothing else fetched
            page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

            # a third station sends records through the running trainer: the page follows
            from gsal_wire.trainer_client import PushItem, TrainerPushClient

            new = [synthetic_item(i, "st-03", SynthConfig())[0] for i in range(200, 204)]
            with TrainerPushClient(f"127.0.0.1:{grpc_port}", "st-03", insecure=True) as cli:
                assert cli.push([PushItem(it.record, data=it.image, encoding=it.image_format) for it in new]
                                ).committed == 4
            page.reload()
            page.wait_for_load_state("networkidle")
            assert _stat(page, "pool-size") == 40 and _stat(page, "stations") == 3
            api = page.request.get(base + "api/status").json()
            assert api["pool"]["size"] == 40 and [x["station_id"] for x in api["stations"]] == ["st-01", "st-02", "st-03"]
            browser.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert (shots / "dashboard.png").stat().st_size > 20_000
