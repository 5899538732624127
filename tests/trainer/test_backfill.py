"""Backfill (trainer/backfill.py): a real toy ONNX bundle, real slice files, a real SQLite store.

The in-process path is fast; the Ray path starts a real local Ray instance (2 CPUs, 2 actors) and the
kill test SIGKILLs a real ``trainer backfill`` process half-way; both are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from external_tools import require
from PIL import Image
from test_bundle import write_toy_bundle

from export.signing import generate_keypair
from gsal_edge.data.slices import decode_slice, read_slice_file
from gsal_edge.scoring.bundle import load_bundle, read_manifest
from trainer.backfill import BackfillConfig, BackfillError, list_archive, run_backfill
from trainer.images import decode_image
from trainer.store.pool_store import PoolStore

REPO = Path(__file__).resolve().parents[2]
GOOD = 9  # slices in the archive that score; plus two that must fail (corrupt bytes, an id with a space)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    good, good_pub = generate_keypair(d / "good.pem")
    _, other_pub = generate_keypair(d / "other.pem")
    return {"good": good, "pub": good_pub, "other_pub": other_pub}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundles"), keys["good"])


def _png16(path: Path, rng: np.random.Generator, size: tuple[int, int] = (40, 48)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 65535, size, dtype=np.uint16)).save(path)


def _archive(root: Path, n_png: int = 6, seed: int = 0) -> Path:
    """PNG16 (some in a sub-folder), float32 .npy, a uint8 TIFF, one corrupt PNG, one bad id, one .txt."""
    rng = np.random.default_rng(seed)
    for i in range(n_png):
        _png16(root / ("line-b" if i % 2 else "") / f"s{i:03d}.png", rng)
    for i in range(2):
        np.save(root / f"f{i}.npy", rng.random((32, 36), dtype=np.float32))
    tifffile.imwrite(root / "t0.tif", rng.integers(0, 255, (30, 30), dtype=np.uint8))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _png16(root / "has space.png", rng)
    (root / "notes.txt").write_text("not a slice")
    return root


def _cfg(archive: Path, bundle: Path, keys: dict[str, Path], **kw) -> BackfillConfig:
    base = {"images": str(archive), "bundle": str(bundle.parent), "trusted_keys": (str(keys["pub"]),),
            "ray_address": "none", "batch_size": 3, "ingest_batch": 4}
    return BackfillConfig(**{**base, **kw})


def _stored(store_dir: Path) -> list[tuple[str, str, str]]:
    """(station, slice id, bundle) of every stored record, read straight from the database file."""
    con = sqlite3.connect(store_dir / "pool.sqlite")
    try:
        return sorted(con.execute("SELECT s.station_id, s.slice_id, r.bundle_id FROM score_records r "
                                  "JOIN slices s ON s.id = r.slice_pk").fetchall())
    finally:
        con.close()


def _committed_so_far(store_dir: Path) -> int:
    """Records committed by a running backfill (0 while its store is still being created)."""
    try:
        return len(_stored(store_dir)) if (store_dir / "pool.sqlite").exists() else 0
    except sqlite3.OperationalError:  # the schema is not there yet, or the writer holds a lock
        return 0


def test_in_process_backfill_stores_what_the_station_would_score(tmp_path, bundle, keys) -> None:
    archive = _archive(tmp_path / "archive")
    with PoolStore(tmp_path / "store") as store:
        rep = run_backfill(_cfg(archive, bundle, keys), store, progress=False)
        bundle_id = read_manifest(bundle).bundle_id
        assert (rep.listed, rep.skipped, rep.scored, rep.inserted, rep.duplicates) == (GOOD + 2, 0, GOOD, GOOD, 0)
        assert sorted(sid for sid, _ in rep.failures) == ["broken.png", "has space.png"]
        assert "not a decodable PNG" in dict(rep.failures)["broken.png"]
        assert "printable ASCII without spaces" in dict(rep.failures)["has space.png"]
        good = [s for s in list_archive(str(archive)) if s.slice_id not in ("broken.png", "has space.png")]
        assert _stored(tmp_path / "store") == sorted(("backfill", s.slice_id, bundle_id) for s in good)
        assert "line-b/s001.png" in {s.slice_id for s in good}  # ids are paths relative to the archive

        # each record equals a plain GSALScorer's, one slice at a time, on the station's decoding of the file
        ref = load_bundle(bundle, trusted_keys=[keys["pub"]], station="backfill")
        for s in good:
            f = read_slice_file(s.path)
            arr = decode_slice(f.data, f.shape, f.dtype, f.encoding)
            want = ref.score([arr], [s.slice_id], [{}])[0].to_dict()
            got = store.record(f"backfill/{s.slice_id}")
            assert got is not None
            assert {**got.to_dict(), "image_id": s.slice_id} == want
            info = store.slice_info(f"backfill/{s.slice_id}")
            assert (info.width, info.height) == (arr.shape[1], arr.shape[0])
            if f.encoding == "png":  # stored as read, byte for byte
                assert info.image_path.read_bytes() == Path(s.path).read_bytes()
            np.testing.assert_array_equal(decode_image(info.image_path), arr)


def test_resume_scores_only_what_is_missing_and_duplicates_nothing(tmp_path, bundle, keys) -> None:
    archive = _archive(tmp_path / "archive", seed=1)
    with PoolStore(tmp_path / "store") as store:
        first = run_backfill(_cfg(archive, bundle, keys, limit=6), store, progress=False)  # 2 of the 6 fail
        assert (first.scored, first.inserted, first.failed) == (4, 4, 2)
        second = run_backfill(_cfg(archive, bundle, keys), store, progress=False)
        assert (second.skipped, second.scored, second.inserted, second.duplicates) == (4, GOOD - 4, GOOD - 4, 0)
        third = run_backfill(_cfg(archive, bundle, keys), store, progress=False)
        assert (third.skipped, third.scored, third.inserted) == (GOOD, 0, 0)
        # another station id is another pool: nothing skipped there
        other = run_backfill(_cfg(archive, bundle, keys, station="archive-2", limit=3), store, progress=False)
        assert (other.skipped, other.scored, other.failed) == (0, 2, 1)
    rows = _stored(tmp_path / "store")
    assert len(rows) == len(set(rows)) == GOOD + 2
    assert sum(r[0] == "backfill" for r in rows) == GOOD


def test_refused_bundle_or_station_leaves_the_store_untouched(tmp_path, bundle, keys) -> None:
    archive = _archive(tmp_path / "archive")
    with PoolStore(tmp_path / "store") as store:
        with pytest.raises(BackfillError, match="not among the trusted keys"):
            run_backfill(_cfg(archive, bundle, keys, trusted_keys=(str(keys["other_pub"]),)), store, progress=False)
        with pytest.raises(BackfillError, match="no trusted keys given"):
            run_backfill(_cfg(archive, bundle, keys, trusted_keys=()), store, progress=False)
        with pytest.raises(BackfillError, match="--station: station id 'no spaces'"):
            run_backfill(_cfg(archive, bundle, keys, station="no spaces"), store, progress=False)
        with pytest.raises(BackfillError, match="is not a folder"):
            run_backfill(_cfg(tmp_path / "missing", bundle, keys), store, progress=False)
        with pytest.raises(BackfillError, match="scheme 's3' is not supported"):
            run_backfill(_cfg(archive, bundle, keys, images="s3://bucket/archive"), store, progress=False)
    assert _stored(tmp_path / "store") == []


def test_file_uri_is_the_same_archive(tmp_path, bundle, keys) -> None:
    archive = _archive(tmp_path / "archive")
    assert list_archive(archive.as_uri()) == list_archive(str(archive))
    assert [s.slice_id for s in list_archive(str(archive), recursive=False)] == [
        s.slice_id for s in list_archive(str(archive)) if "/" not in s.slice_id]


def test_without_ray_the_error_says_how_to_install_it(tmp_path, bundle, keys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as where it is absent
    archive = _archive(tmp_path / "archive")
    with PoolStore(tmp_path / "store") as store, pytest.raises(
            BackfillError, match=r"pip install 'gsal-edge\[fleet\]'.*--ray-address none"):
        run_backfill(_cfg(archive, bundle, keys, ray_address="local"), store, progress=False)
    assert _stored(tmp_path / "store") == []


def test_cli_backfill_in_process(tmp_path, bundle, keys) -> None:
    from typer.testing import CliRunner

    from gsal_cli.main import app

    archive = tmp_path / "archive"
    rng = np.random.default_rng(3)
    for i in range(5):
        _png16(archive / f"c{i}.png", rng)
    args = ["backfill", "--images", str(archive), "--bundle", str(bundle), "--store", str(tmp_path / "store"),
            "--trusted-key", str(keys["pub"]), "--ray-address", "none", "--station", "arch-01", "--line", "L7",
            "--json", "--no-progress"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert (out["scored"], out["inserted"], out["failed"], out["station"]) == (5, 5, 0, "arch-01")
    with PoolStore(tmp_path / "store") as store:
        assert store.record("arch-01/c0.png").meta == {"line": "L7"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and json.loads(again.stdout)["skipped"] == 5


@pytest.mark.slow
def test_ray_backfill_matches_in_process_and_resumes(tmp_path, bundle, keys) -> None:
    require("Ray", Path(sys.executable).parent / "ray", install="make services (.ci/install/50-ray.sh)")
    archive = tmp_path / "archive"
    rng = np.random.default_rng(4)
    for i in range(40):
        _png16(archive / f"r{i:03d}.png", rng)
    with PoolStore(tmp_path / "ref") as ref:
        run_backfill(_cfg(archive, bundle, keys), ref, progress=False)
        want = {r.image_id: r.to_dict() for r in ref.unlabeled_records()}
    with PoolStore(tmp_path / "store") as store:
        half = run_backfill(_cfg(archive, bundle, keys, limit=15), store, progress=False)  # pre-ingest part
        rep = run_backfill(_cfg(archive, bundle, keys, ray_address="local", workers=2, num_cpus=2,
                                object_store_mb=200), store, progress=False)
        assert (half.scored, rep.executor, rep.workers) == (15, "ray", 2)
        assert (rep.skipped, rep.scored, rep.inserted, rep.duplicates, rep.failed) == (15, 25, 25, 0, 0)
        got = {r.image_id: r.to_dict() for r in store.unlabeled_records()}
    assert got == want  # same records whichever executor scored them, batch order notwithstanding
    rows = _stored(tmp_path / "store")
    assert len(rows) == len(set(rows)) == 40
    import ray

    assert not ray.is_initialized()  # the backfill shut down the local instance it started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_backfill_on_a_running_ray_cluster_by_address(tmp_path, bundle, keys) -> None:
    """A separately started head node (``ray start --head``), the CLI connecting by address, as on a cluster."""
    ray_cli = require("Ray", Path(sys.executable).parent / "ray", install="make services (.ci/install/50-ray.sh)")
    archive = tmp_path / "archive"
    rng = np.random.default_rng(6)
    for i in range(20):
        _png16(archive / f"c{i:03d}.png", rng)
    port = _free_port()
    # workers import this checkout (on a real cluster: gsal-edge[fleet] installed on every node); no auth
    # token on a loopback test cluster
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled"}
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))  # short: Ray's unix socket paths have a limit
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", "--block", "--port", str(port), "--node-ip-address", "127.0.0.1",
         "--num-cpus", "2", "--include-dashboard", "false", "--object-store-memory", str(200 * 1024 * 1024),
         "--temp-dir", str(ray_tmp), "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        cmd = [sys.executable, "-m", "trainer.cli", "backfill", "--images", str(archive), "--bundle", str(bundle),
               "--store", str(tmp_path / "store"), "--trusted-key", str(keys["pub"]), "--ray-address",
               f"127.0.0.1:{port}", "--workers", "2", "--no-progress", "--json"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and head.poll() is None:  # the head takes seconds to come up
            status = subprocess.run([str(ray_cli), "status", "--address", f"127.0.0.1:{port}"], check=False,
                                    env=env, capture_output=True, text=True, timeout=60)
            if status.returncode == 0:
                break
            time.sleep(1)
        res = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        out = json.loads(res.stdout)
        assert (out["executor"], out["workers"], out["scored"], out["inserted"], out["failed"]) == (
            "ray", 2, 20, 20, 0)
        assert head.poll() is None  # the backfill left the cluster it did not start running
    finally:
        os.killpg(head.pid, signal.SIGTERM)  # the head stops the Ray processes it started
        try:
            head.wait(timeout=45)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    rows = _stored(tmp_path / "store")
    assert len(rows) == len(set(rows)) == 20


@pytest.mark.slow
def test_sigkill_half_way_then_rerun_scores_only_the_rest(tmp_path, bundle, keys) -> None:
    archive = tmp_path / "archive"
    rng = np.random.default_rng(5)
    n = 400
    for i in range(n):
        _png16(archive / f"k{i:04d}.png", rng, (128, 128))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "trainer.cli", "backfill", "--images", str(archive), "--bundle", str(bundle),
           "--store", str(store), "--trusted-key", str(keys["pub"]), "--ray-address", "none",
           "--batch-size", "4", "--ingest-batch", "4", "--no-progress", "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if _committed_so_far(store) >= 40:
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.01)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"not killed half-way: {proc.stderr.read().decode()[-2000:]}"
    committed = len(_stored(store))
    assert 40 <= committed < n
    res = subprocess.run(cmd, check=False, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout)
    assert (out["skipped"], out["scored"], out["inserted"], out["duplicates"]) == (
        committed, n - committed, n - committed, 0)
    rows = _stored(store)
    assert len(rows) == len(set(rows)) == n
