"""The ``serve`` / ``score`` / ``info`` / ``load-bundle`` commands against real servers on 127.0.0.1."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from station_process import start_serve_process
from typer.testing import CliRunner

from gsal_edge.acquisition.records import read_jsonl
from gsal_edge.data.slices import encode_slice
from gsal_wire.scorer_client import ScorerClient
from server.app import StationServer
from server.cli import app
from server.config import ServerConfig
from server.station import default_scorer_factory

SPEC = "untrained:seed=0,size=32"
ADMIN = "admin-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server() -> Iterator[StationServer]:
    srv = StationServer(ServerConfig(insecure=True, port=0, admin_token=ADMIN, grace_s=0.5, max_batch_size=1),
                        default_scorer_factory(allow_untrained=True))
    srv.start()
    srv.load_bundle(SPEC)
    yield srv
    srv.stop(0)


def _images(d: Path) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (32, 32), dtype=np.uint8)
    b = rng.integers(0, 65535, (32, 40), dtype=np.uint16)
    c = rng.random((32, 32), dtype=np.float32)
    (d / "a.png").write_bytes(encode_slice(a, "png"))
    (d / "b.tiff").write_bytes(encode_slice(b, "tiff"))
    np.save(d / "c.npy", c)
    (d / "notes.txt").write_text("ignored: not a slice file")
    return [a, b, c]


def test_score_command_writes_records(server: StationServer, tmp_path: Path) -> None:
    from gsal_edge.scoring.torch_scorer import untrained_scorer

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    arrays = _images(imgs)
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(app, ["score", "--server", server.address, "--images", str(imgs), "--out", str(out),
                                 "--insecure", "--line", "L7"])
    assert r.exit_code == 0, r.output
    recs = list(read_jsonl(out))
    assert [x.image_id for x in recs] == ["a.png", "b.tiff", "c.npy"]
    offline = untrained_scorer(seed=0, image_size=32)  # the server scores one slice per call (max_batch_size=1)
    want = [offline.score([a], [i], [{"line": "L7"}])[0] for a, i in zip(arrays, ["a.png", "b.tiff", "c.npy"])]
    assert recs == want
    assert "3 records, 0 errors" in r.output


def test_score_command_reports_bad_files(server: StationServer, tmp_path: Path) -> None:
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    _images(imgs)
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    out = tmp_path / "scores.jsonl"
    r = CliRunner().invoke(app, ["score", "--server", server.address, "--images", str(imgs), "--out", str(out),
                                 "--insecure"])
    assert r.exit_code == 1
    assert "broken.png: INVALID_ARGUMENT (data)" in r.output
    assert [x.image_id for x in read_jsonl(out)] == ["a.png", "b.tiff", "c.npy"]


def test_info_and_load_bundle_commands(server: StationServer, tmp_path: Path) -> None:
    runner = CliRunner()
    r = runner.invoke(app, ["info", "--server", server.address, "--insecure"])
    assert r.exit_code == 0, r.output
    info = json.loads(r.output)
    assert info["health"] == "SERVING" and info["bundle_id"] == server.station.bundle_id
    tok = tmp_path / "admin.token"
    tok.write_text(ADMIN + "\n")
    r = runner.invoke(app, ["load-bundle", str(tmp_path / "nope"), "--server", server.address, "--insecure",
                            "--admin-token-file", str(tok)])
    assert r.exit_code == 1 and ("NOT_FOUND" in r.output or "FAILED_PRECONDITION" in r.output)
    r = runner.invoke(app, ["load-bundle", SPEC, "--server", server.address, "--insecure",
                            "--admin-token-file", str(tok)])
    assert r.exit_code == 0, r.output


def test_serve_refuses_without_tls_or_insecure() -> None:
    r = CliRunner().invoke(app, ["serve", "--port", "0"])
    assert r.exit_code == 2
    assert "insecure" in r.output


@pytest.mark.slow
def test_sigterm_right_after_serving_bundle_still_drains_and_exits_0(tmp_path: Path) -> None:
    # the handlers used to be installed after the "serving bundle" line launchers wait for: a SIGTERM in that
    # gap killed the station (exit -15) without draining its forwarder
    for i in range(3):
        proc, _, lines = start_serve_process(["--insecure", "--host", "127.0.0.1", "--port", "0",
                                              "--allow-untrained", "--bundle", SPEC, "--grace-s", "1",
                                              "--data-dir", str(tmp_path / f"d{i}")])
        try:
            proc.send_signal(signal.SIGTERM)
            rest, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, "".join(lines) + rest
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


@pytest.mark.slow
def test_serve_process_scores_and_drains_on_sigterm(tmp_path: Path) -> None:
    proc, addr, lines = start_serve_process(["--insecure", "--host", "127.0.0.1", "--port", "0",
           "--allow-untrained", "--bundle", SPEC, "--metrics-port", "0", "--grace-s", "5", "--station-id", "st-9"])
    try:
        with ScorerClient(addr, insecure=True) as c:
            assert c.health() == "SERVING"
            rec = c.score_one("p1", np.zeros((32, 32), np.uint8))
            assert rec.model["station"] == "st-9"
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
        assert proc.returncode == 0, "".join(lines)
        text = "".join(lines)
        assert "INSECURE" in text and "stopped" in text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
