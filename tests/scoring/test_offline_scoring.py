"""Offline scoring (`gsal-edge score --bundle`, gsal_edge.scoring.offline) against a real station process.

The station runs `server.cli serve` over the signed toy bundle (tests/scoring/test_bundle.py); the same
folder of slices goes through the station (`score --server`) and through the offline command, and the two
JSONL files must be the same bytes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from station_process import start_serve_process
from test_bundle import write_toy_bundle
from typer.testing import CliRunner

from export.signing import generate_keypair
from gsal_edge.acquisition.records import read_jsonl
from gsal_edge.data.slices import encode_slice, read_slice_file
from gsal_edge.scoring.bundle import load_bundle, load_public_key
from gsal_edge.scoring.offline import decode_slice_file, list_slice_files, score_files
from server.cli import app


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("offline")
    key, pub = generate_keypair(d / "signing.pem")
    _, other_pub = generate_keypair(d / "other.pem")
    return {"bundle": write_toy_bundle(d / "bundles", key), "pub": pub, "other_pub": other_pub}


def _slices(d: Path, n: int = 11) -> Path:
    """A folder of mixed slices: uint8 PNG, uint16 TIFF, float32 NPY, a sub-folder, and one broken PNG."""
    rng = np.random.default_rng(5)
    (d / "sub").mkdir(parents=True)
    for i in range(n):
        h, w = int(rng.integers(24, 48)), int(rng.integers(24, 48))
        kind = i % 3
        if kind == 0:
            (d / f"s{i:02d}.png").write_bytes(encode_slice(rng.integers(0, 255, (h, w), dtype=np.uint8), "png"))
        elif kind == 1:
            (d / "sub" / f"s{i:02d}.tiff").write_bytes(
                encode_slice(rng.integers(0, 65535, (h, w), dtype=np.uint16), "tiff"))
        else:
            np.save(d / f"s{i:02d}.npy", rng.random((h, w), dtype=np.float32))
    (d / "zz-broken.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    return d


@pytest.mark.slow
def test_offline_records_are_byte_identical_to_a_station(signed: dict[str, Path], tmp_path: Path) -> None:
    imgs = _slices(tmp_path / "imgs")
    proc, addr, _ = start_serve_process(["--insecure", "--port", "0", "--bundle", str(signed["bundle"]),
                                         "--trusted-key", str(signed["pub"]), "--station-id", "st-7",
                                         "--max-batch", "4", "--grace-s", "1"])
    runner = CliRunner()
    try:
        via_station = tmp_path / "station.jsonl"
        r = runner.invoke(app, ["score", "--server", addr, "--insecure", "--images", str(imgs), "-r",
                                "--line", "L2", "--out", str(via_station)])
        assert r.exit_code == 1, r.output  # the broken PNG is an error on both paths
        assert "zz-broken.png: INVALID_ARGUMENT (data)" in r.output
    finally:
        proc.terminate()
        proc.wait(30)
    offline = tmp_path / "offline.jsonl"
    r = runner.invoke(app, ["score", "--bundle", str(signed["bundle"]), "--trusted-key", str(signed["pub"]),
                            "--station-id", "st-7", "--images", str(imgs), "-r", "--line", "L2", "--batch", "3",
                            "--out", str(offline)])
    assert r.exit_code == 1, r.output
    assert "zz-broken.png: INVALID_ARGUMENT (data)" in r.output
    assert "11 records, 1 errors, 12 files" in r.output
    station_bytes, offline_bytes = via_station.read_bytes(), offline.read_bytes()
    recs = list(read_jsonl(offline))
    assert len(recs) == 11 and sum(len(x.proposals) for x in recs) > 0
    assert {x.model["station"] for x in recs} == {"st-7"} and {x.meta["line"] for x in recs} == {"L2"}
    assert [x.image_id for x in recs] == [p.relative_to(imgs).as_posix() for p in list_slice_files(imgs, True)
                                          if p.name != "zz-broken.png"]
    assert offline_bytes == station_bytes


def test_bundle_is_verified_as_a_station_does(signed: dict[str, Path], tmp_path: Path) -> None:
    imgs = _slices(tmp_path / "imgs", n=2)
    runner = CliRunner()
    base = ["score", "--images", str(imgs), "--out", str(tmp_path / "o.jsonl")]
    r = runner.invoke(app, [*base, "--bundle", str(signed["bundle"])])
    assert r.exit_code == 2 and "--trusted-key" in r.output
    r = runner.invoke(app, [*base, "--bundle", str(signed["bundle"]), "--trusted-key", str(signed["other_pub"])])
    assert r.exit_code == 1 and "rejected" in r.output and "not among the trusted keys" in r.output
    tampered = tmp_path / "tampered"
    shutil.copytree(signed["bundle"], tampered)
    onnx = tampered / "models" / "clip_image.onnx"
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 1
    onnx.write_bytes(bytes(data))
    r = runner.invoke(app, [*base, "--bundle", str(tampered), "--trusted-key", str(signed["pub"])])
    assert r.exit_code == 1 and "sha256" in r.output
    assert not (tmp_path / "o.jsonl").exists()
    r = runner.invoke(app, [*base, "--bundle", str(signed["bundle"]), "--server", "127.0.0.1:1"])
    assert r.exit_code == 2 and "exactly one of --server" in r.output
    r = runner.invoke(app, [*base, "--server", "127.0.0.1:1", "--with-embeddings"])
    assert r.exit_code == 2 and "only with --bundle" in r.output


def test_with_embeddings_adds_the_region_embeddings_and_nothing_else(signed: dict[str, Path], tmp_path: Path) -> None:
    imgs = _slices(tmp_path / "imgs", n=4)
    runner = CliRunner()
    args = ["score", "--bundle", str(signed["bundle"]), "--trusted-key", str(signed["pub"]), "--images", str(imgs),
            "-r"]
    plain, emb = tmp_path / "plain.jsonl", tmp_path / "emb.jsonl"
    assert runner.invoke(app, [*args, "--out", str(plain)]).exit_code == 1  # the broken PNG
    assert runner.invoke(app, [*args, "--out", str(emb), "--with-embeddings"]).exit_code == 1
    with_emb = [json.loads(x) for x in emb.read_text().splitlines()]
    scorer = load_bundle(signed["bundle"], trusted_keys=[load_public_key(signed["pub"])])
    files = [p for p in list_slice_files(imgs, True) if p.name != "zz-broken.png"]
    results = list(score_files(scorer, files, imgs, batch_size=2, with_embeddings=True))
    for d, res in zip(with_emb, results):
        assert res.record is not None and res.proposal_embeddings is not None
        got = np.array([p["embedding"] for p in d["proposals"]]).reshape(-1, res.proposal_embeddings.shape[1])
        np.testing.assert_allclose(got, res.proposal_embeddings, atol=1e-6)
        assert json.dumps(d, separators=(",", ":")) == res.record.to_json()
        # the record's own proposals[i].embedding (ScorerSpec.proposal_embedding) is the region f_I Eq. 3 saw
        fresh = scorer.embed_regions([decode_slice_file(read_slice_file(str(imgs / d["image_id"])))],
                                     [np.asarray([p["box"] for p in d["proposals"]]).reshape(-1, 4)])[0]
        np.testing.assert_allclose(got.reshape(fresh.shape), fresh, atol=2e-6)
    # the bundle's spec attaches them already, so --with-embeddings adds nothing to the plain records
    assert [json.loads(x) for x in plain.read_text().splitlines()] == with_emb
    assert sum(len(d["proposals"]) for d in with_emb) > 0


def test_a_failing_scorer_fails_only_its_slice(tmp_path: Path) -> None:
    from gsal_edge.scoring.torch_scorer import untrained_scorer

    scorer = untrained_scorer(seed=0, image_size=32)
    real = scorer.score

    def flaky(slices, ids, metas=None):  # type: ignore[no-untyped-def]
        if "s01.npy" in ids:
            raise RuntimeError("engine fault")
        return real(slices, ids, metas)

    scorer.score = flaky  # type: ignore[method-assign]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(4):
        np.save(imgs / f"s{i:02d}.npy", np.full((32, 32), i / 4, np.float32))
    out = list(score_files(scorer, list_slice_files(imgs), imgs, batch_size=4))
    assert [r.slice_id for r in out] == ["s00.npy", "s01.npy", "s02.npy", "s03.npy"]
    assert [r.record is None for r in out] == [False, True, False, False]
    assert "engine fault" in str(out[1].error)
    assert out[0].record == real([np.full((32, 32), 0.0, np.float32)], ["s00.npy"], [{}])[0]
