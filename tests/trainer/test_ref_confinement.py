"""Image references (SliceRef) against a real Trainer on 127.0.0.1: confined to each station's own roots,
hash-checked, re-checked when read (issue 18: the trainer used to copy any file a station named into the
annotators' export)."""

from __future__ import annotations

import json
import os

import grpc
import numpy as np
import pytest
from test_trainer_helpers import make_pixels, make_record
from typer.testing import CliRunner

from gsal_wire.convert import record_to_pb
from gsal_wire.pb import common_pb2, trainer_pb2, trainer_pb2_grpc
from gsal_wire.trainer_client import PushItem, TrainerPushClient
from trainer.cli import app
from trainer.images import encode_pixels, sha256_bytes
from trainer.ingest_service import IngestConfig, start_server
from trainer.quarantine import quarantine_summary
from trainer.ref_policy import RefFetcher, RefPolicy, RefRefused
from trainer.store.pool_store import PoolStore
from trainer.store.types import Pick


@pytest.fixture
def site(tmp_path):
    """A trainer whose store lets st-01 reference <tmp>/st-01 and st-02 <tmp>/st-02; a secret outside both."""
    roots = {st: tmp_path / st for st in ("st-01", "st-02")}
    for r in roots.values():
        r.mkdir()
    secret = tmp_path / "secret.png"
    secret.write_bytes(encode_pixels(np.full((8, 8), 200, dtype=np.uint8))[0])
    store = PoolStore(tmp_path / "store")
    RefPolicy().with_root("st-01", str(roots["st-01"])).with_root("st-02", str(roots["st-02"])).save(store.root)
    srv = start_server(store, IngestConfig(port=0))
    yield srv, roots, secret
    srv.stop(1.0)
    store.close()


def _png(path, i):
    data = encode_pixels(make_pixels(i))[0]
    path.write_bytes(data)
    return data


def _push(srv, station, items):
    with TrainerPushClient(srv.address, station, insecure=True) as cli:
        return cli.push(items)


def _ref_item(i, station, uri, sha):
    return PushItem(make_record(i, station), ref=uri, ref_sha256=sha, shape=(64, 64), dtype="uint8", encoding="png")


def test_a_reference_to_any_trainer_file_is_refused_and_never_exported(site, tmp_path):
    srv, roots, secret = site
    own = roots["st-01"] / "slice-000001.png"
    own_data = _png(own, 1)
    res = _push(srv, "st-01", [_ref_item(0, "st-01", f"file://{secret}", sha256_bytes(secret.read_bytes())),
                               _ref_item(1, "st-01", f"file://{own}", sha256_bytes(own_data))])
    assert res.committed == 1
    assert [(r[0], r[1]) for r in res.rejected] == [("slice-000000", "INVALID_ARGUMENT")]
    assert "outside station 'st-01'" in res.rejected[0][2]
    store = srv.store
    assert store.status()["slices"] == 1
    q = quarantine_summary(store.root)
    assert q["count"] == 1 and q["by_kind"] == {"ref": 1} and q["latest"][0]["field"] == "ref.uri"
    # the slice it kept is exported from the station's own root, verified
    rid = store.record_round([Pick("st-01/slice-000001", 1, 1.0, {"sentence": "s"})], budget=1, strategy="gsal",
                             pool_size=1, params={})
    out = tmp_path / "export"
    r = CliRunner().invoke(app, ["export-tasks", "--out", str(out), "--store", str(store.root),
                                 "--round", str(rid)])
    assert r.exit_code == 0, r.output
    files = [p for p in (out / "images").iterdir()]
    assert len(files) == 1 and files[0].read_bytes() == own_data
    assert all(secret.read_bytes() != p.read_bytes() for p in out.rglob("*") if p.is_file())


def test_a_station_may_reference_only_its_own_root(site):
    srv, roots, _ = site
    theirs = roots["st-02"] / "slice-000005.png"
    data = _png(theirs, 5)
    res = _push(srv, "st-01", [_ref_item(5, "st-01", f"file://{theirs}", sha256_bytes(data))])
    assert res.committed == 0 and "may only reference its own storage" in res.rejected[0][2]
    assert _push(srv, "st-02", [_ref_item(5, "st-02", f"file://{theirs}", sha256_bytes(data))]).committed == 1


def test_no_root_configured_means_no_reference_and_the_hash_is_required(tmp_path):
    store = PoolStore(tmp_path / "store")
    srv = start_server(store, IngestConfig(port=0))
    try:
        f = tmp_path / "a.png"
        data = _png(f, 1)
        res = _push(srv, "st-01", [_ref_item(1, "st-01", f"file://{f}", sha256_bytes(data))])
        assert res.committed == 0 and "no reference root configured" in res.rejected[0][2]
        RefPolicy().with_root("st-01", str(tmp_path)).save(store.root)  # applies without a restart
        stub = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(srv.address))
        bad = [trainer_pb2.IngestItem(station_id="st-01", record=record_to_pb(make_record(i)),
                                      ref=common_pb2.SliceRef(uri=f"file://{f}", sha256=sha))
               for i, sha in ((2, ""), (3, "abc"), (4, sha256_bytes(data).upper()))]
        ack = stub.Ingest(iter(bad), timeout=30)
        assert ack.committed == 0 and {r.error.field for r in ack.rejected} == {"ref.sha256"}
        assert _push(srv, "st-01", [_ref_item(1, "st-01", f"file://{f}", sha256_bytes(data))]).committed == 1
    finally:
        srv.stop(1.0)
        store.close()


@pytest.mark.parametrize("uri", [
    "http://127.0.0.1/slices/a.png", "http://169.254.169.254/latest/meta-data/", "http://[::1]/a.png",
    "http://localhost:8080/a.png", "http://127.1/a.png", "http://2130706433/a.png", "https://[fe80::1%25eth0]/a",
    "http://[::ffff:127.0.0.1]/a.png", "http://0.0.0.0/a.png", "file:///etc/../etc/passwd",
    "https://user:pw@st01.plant.example/slices/a.png", "gopher://st01.plant.example/a",
])
def test_internal_and_malformed_urls_are_refused(site, uri):
    srv, _, _ = site
    res = _push(srv, "st-01", [_ref_item(1, "st-01", uri, "0" * 64)])
    assert res.committed == 0 and res.rejected[0][1] == "INVALID_ARGUMENT"


def test_an_http_reference_under_the_stations_url_root_is_stored_but_not_fetched(site, tmp_path):
    srv, _, _ = site
    RefPolicy.load(srv.store.root).with_root("st-01", "https://st01.plant.example/slices/").save(srv.store.root)
    ok = _push(srv, "st-01", [_ref_item(1, "st-01", "https://st01.plant.example/slices/a.png", "1" * 64),
                              _ref_item(2, "st-01", "https://st01.plant.example/other/a.png", "1" * 64),
                              _ref_item(3, "st-01", "https://st01.plant.example.evil.io/slices/a.png", "1" * 64)])
    assert ok.committed == 1 and len(ok.rejected) == 2
    info = srv.store.slice_info("st-01/slice-000001")
    with pytest.raises(RefRefused, match="not a local file"):
        RefFetcher.for_store(srv.store).local_image(info)


def _export(store, keys, out):
    rid = store.record_round([Pick(k, n, 1.0 - n / 10, {"sentence": "s"}) for n, k in enumerate(keys, 1)],
                             budget=len(keys), strategy="gsal", pool_size=len(keys), params={})
    r = CliRunner().invoke(app, ["export-tasks", "--out", str(out), "--store", str(store.root), "--round", str(rid)])
    assert r.exit_code == 0, r.output
    return json.loads((out / "manifest.json").read_text())


def test_a_changed_file_or_a_symlink_planted_after_ingest_is_refused_when_read(site, tmp_path):
    srv, roots, secret = site
    paths = [roots["st-01"] / f"slice-{i:06d}.png" for i in range(3)]
    datas = [_png(p, i) for i, p in enumerate(paths)]
    assert _push(srv, "st-01", [_ref_item(i, "st-01", f"file://{p}", sha256_bytes(d))
                                for i, (p, d) in enumerate(zip(paths, datas))]).committed == 3
    _png(paths[1], 99)  # changed content
    paths[2].unlink()
    os.symlink(secret, paths[2])  # now points outside the root
    man = _export(srv.store, ["st-01/slice-000000", "st-01/slice-000001", "st-01/slice-000002"], tmp_path / "ex")
    assert list(man["images"].values()) == ["st-01/slice-000000"]
    why = {s["key"]: s["reason"] for s in man["skipped"]}
    assert "file changed" in why["st-01/slice-000001"] and "outside" in why["st-01/slice-000002"]
    assert all(p.read_bytes() != secret.read_bytes() for p in (tmp_path / "ex").rglob("*.png"))


def test_a_symlink_out_of_the_root_is_refused_at_ingest(site):
    srv, roots, secret = site
    link = roots["st-01"] / "innocent.png"
    os.symlink(secret, link)
    res = _push(srv, "st-01", [_ref_item(1, "st-01", f"file://{link}", sha256_bytes(secret.read_bytes()))])
    assert res.committed == 0 and "symlink" in res.rejected[0][2]


def test_ref_roots_cli_adds_lists_and_removes(tmp_path):
    store = str(tmp_path / "store")
    r = CliRunner().invoke(app, ["ref-roots", "--store", store, "--add", f"st-01={tmp_path}/a",
                                 "--add", "st-02=https://st02.example/s/"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["ref-roots", "--store", store, "--json"])
    assert json.loads(r.stdout) == {"st-01": [f"{tmp_path}/a"], "st-02": ["https://st02.example/s/"]}
    for bad in ("st-01=relative/dir", "st-01=http://127.0.0.1/x/", "nostation"):
        r = CliRunner().invoke(app, ["ref-roots", "--store", store, "--add", bad])
        assert r.exit_code == 2, (bad, r.output)
    CliRunner().invoke(app, ["ref-roots", "--store", store, "--remove", f"st-01={tmp_path}/a"])
    assert RefPolicy.load(tmp_path / "store").roots == {"st-02": ("https://st02.example/s/",)}
