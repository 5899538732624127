"""Pool store: WAL + schema version, idempotent ingest, mark-stale policy, labels, coverage, backup.

The backend-neutral tests run against SQLite and against a real PostgreSQL server (``store`` fixture;
the PostgreSQL case is marked slow and starts one server per session, see tests/support/postgres_server.py).
"""

from __future__ import annotations

import sqlite3

import postgres_server
import pytest
from test_trainer_helpers import make_item, make_pixels, make_record

from gsal_edge.acquisition.records import ScoreRecord
from trainer.images import decode_image, sha256_bytes
from trainer.store import open_store
from trainer.store.pool_store import PoolStore
from trainer.store.schema import SCHEMA_VERSION
from trainer.store.types import ImageLabels, IngestItem, LabelBox, Pick, StoreError, pool_key

pg_server = postgres_server.pg_server  # fixtures: one PostgreSQL server per session
pg_url = postgres_server.pg_url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def store(request, tmp_path):
    """The same store interface on each backend (files in tmp_path/store either way)."""
    if request.param == "sqlite":
        s = PoolStore(tmp_path / "store")
    else:
        s = open_store(request.getfixturevalue("pg_url"), files=tmp_path / "store")
    assert s.backend == request.param
    yield s
    s.close()


@pytest.fixture
def sqlite_store(tmp_path):
    s = PoolStore(tmp_path / "store")
    yield s
    s.close()


def test_open_sets_wal_fk_full_sync_and_schema_version(sqlite_store):
    store = sqlite_store
    assert store.pragma("journal_mode") == "wal"
    assert store.pragma("foreign_keys") == 1
    assert store.pragma("synchronous") == 2  # FULL
    assert store.schema_version == SCHEMA_VERSION
    # re-open: migrations are not re-applied
    store.close()
    again = PoolStore(store.root)
    assert again.schema_version == SCHEMA_VERSION
    again.close()


def test_newer_schema_is_refused(tmp_path):
    PoolStore(tmp_path).close()
    con = sqlite3.connect(tmp_path / "pool.sqlite")
    con.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    con.close()
    with pytest.raises(StoreError, match="newer"):
        PoolStore(tmp_path)


def test_ingest_is_idempotent_and_images_content_addressed(store):
    items = [make_item(i) for i in range(5)]
    r1 = store.ingest(items)
    assert r1.inserted == 5
    r2 = store.ingest(items)  # a station retrying the whole batch
    assert (r2.inserted, r2.duplicates, r2.conflicts) == (0, 5, 0)
    st = store.status()
    assert (st["slices"], st["records"]) == (5, 5)
    info = store.slice_info(pool_key("st-01", "slice-000002"))
    assert info.image_path is not None and info.image_path.exists()
    assert info.image_path.stem == sha256_bytes(items[2].image)
    assert decode_image(info.image_path).shape == (64, 64)
    # the proposals table holds every proposal
    n = store._q("SELECT count(*) FROM proposals")[0][0]
    assert n == sum(len(it.record.proposals) for it in items)


def test_same_key_different_content_keeps_first(store):
    store.ingest([make_item(1)])
    changed = make_item(1)
    changed.record.e_rec += 1.0
    res = store.ingest([changed])
    assert res.outcomes == ["conflict"]
    (rec,) = store.unlabeled_records()
    assert rec.e_rec == pytest.approx(make_record(1).e_rec)


def test_repeats_inside_one_batch_follow_the_same_rules(store):
    changed = make_item(1)
    changed.record.e_rec += 1.0
    later_pixels = make_item(2)
    res = store.ingest([make_item(1), make_item(1), changed, make_item(2, with_image=False), later_pixels,
                        make_item(1, bundle="sha256:b2")])
    assert res.outcomes == ["inserted", "duplicate", "conflict", "inserted", "duplicate", "inserted"]
    assert store.slice_info("st-01/slice-000002").image_path is not None  # pixels filled in mid-batch
    st = store.status()
    assert (st["slices"], st["records"], st["stale_records"]) == (2, 3, 1)
    assert store.stations()[0]["bundle_id"] == "sha256:b2"  # the station's latest record


def test_newer_bundle_kept_alongside_and_stale_excluded(store):
    store.ingest([make_item(i, bundle="sha256:old") for i in range(4)])
    assert store.current_bundle == "sha256:old"  # adopted from the first record
    assert len(store.unlabeled_records()) == 4
    # a new bundle is deployed; the station re-scores two slices with it
    store.set_current_bundle("sha256:new")
    assert store.unlabeled_records() == []
    assert len(store.stale_slices()) == 4
    res = store.ingest([make_item(i, bundle="sha256:new", seed=7) for i in range(2)])
    assert res.inserted == 2
    pool = store.unlabeled_records()
    assert [r.image_id for r in pool] == ["st-01/slice-000000", "st-01/slice-000001"]
    assert all(r.model["bundle"] == "sha256:new" for r in pool)
    assert store.status()["records"] == 6 and store.status()["stale_records"] == 4
    assert [s.key for s in store.stale_slices()] == ["st-01/slice-000002", "st-01/slice-000003"]
    # records of a non-current bundle arriving later are stored, but stale
    store.ingest([make_item(9, bundle="sha256:old")])
    assert "st-01/slice-000009" not in {r.image_id for r in store.unlabeled_records()}


def test_two_stations_same_slice_id_are_two_pool_images(store):
    store.ingest([make_item(1, station="st-01"), make_item(1, station="st-02")])
    keys = [r.image_id for r in store.unlabeled_records()]
    assert keys == ["st-01/slice-000001", "st-02/slice-000001"]


def test_invalid_item_writes_nothing(store, tmp_path):
    good = make_item(1)
    bad = make_item(2)
    bad.record.model["station"] = "st-99"
    with pytest.raises(StoreError, match="ingest item 1 .*st-99"):
        store.ingest([good, bad])
    assert store.status()["slices"] == 0
    no_pixels = IngestItem("st-01", make_record(3))
    with pytest.raises(StoreError, match="neither image bytes nor an image reference"):
        store.ingest([no_pixels])
    with pytest.raises(StoreError, match="station id"):
        store.ingest([IngestItem("bad/station", make_record(4), image_ref="x")])


def test_reference_only_slice_and_later_pixels(store):
    store.ingest([make_item(1, with_image=False)])
    info = store.slice_info("st-01/slice-000001")
    assert info.image_path is None and info.image_ref.endswith("slice-000001.png")
    store.ingest([make_item(1)])  # a retry that now carries pixels fills them in
    assert store.slice_info("st-01/slice-000001").image_path is not None


def test_rounds_labels_coverage_and_labeled_set(store):
    store.ingest([make_item(i) for i in range(6)])
    pool = store.unlabeled_records()
    picks = [Pick(pool[i].image_id, i + 1, 10.0 - i, {"sentence": f"pick {i}"}) for i in range(3)]
    rid = store.record_round(picks, budget=3, strategy="gsal", pool_size=len(pool), params={"b": 3})
    assert [p.key for p in store.selection(rid)] == [p.key for p in picks]
    assert store.selection(rid)[0].rationale == {"sentence": "pick 0"}
    # pending picks are not offered again
    assert len(store.unlabeled_records()) == 3
    assert len(store.unlabeled_records(exclude_pending=False)) == 6
    labels = [
        ImageLabels(picks[0].key, 64, 64, [LabelBox((1, 1, 5, 5), "void"), LabelBox((2, 2, 9, 9), "petal")]),
        ImageLabels(picks[1].key, 64, 64, [LabelBox((1, 1, 5, 5), "defect", concept="void")]),
    ]
    store.write_labels(labels, source="test", round_id=rid)
    assert store.rounds()[0]["status"] == "selected"  # one pick still unlabeled
    store.write_labels([ImageLabels(picks[2].key, 64, 64, [])], source="test", round_id=rid)
    assert store.rounds()[0]["status"] == "labeled"
    assert store.coverage_counts("typed") == {"defect": 1, "petal": 1, "void": 1}
    assert store.coverage_counts("binary") == {"petal": 1, "void": 2}
    ds = store.labeled_dataset()
    assert [e.image_id for e in ds.images] == sorted(p.key for p in picks)
    assert all(ds.image_path(e).exists() for e in ds.images)
    assert len(store.unlabeled_records()) == 3
    # re-importing replaces, never duplicates
    store.write_labels(labels[:1], source="test again", round_id=rid)
    assert store.status()["label_boxes"] == 3


def test_record_round_with_unknown_key_writes_nothing(store):
    store.ingest([make_item(0)])
    with pytest.raises(StoreError, match="no slice 'st-01/nope'"):
        store.record_round([Pick("st-01/nope", 1, 0.0, {})], budget=1, strategy="x", pool_size=1, params={})
    assert store.rounds() == []


def test_a_slice_is_never_in_two_open_rounds(store):
    store.ingest([make_item(i) for i in range(4)])
    keys = [r.image_id for r in store.unlabeled_records()]
    store.record_round([Pick(keys[0], 1, 1.0, {}), Pick(keys[1], 2, 0.5, {})], budget=2, strategy="x",
                       pool_size=4, params={})
    # a second round that read the pool before the first one was recorded would re-pick keys[1]
    with pytest.raises(StoreError, match=r"1 pick\(s\) already wait for labels .*slice-000001"):
        store.record_round([Pick(keys[1], 1, 1.0, {}), Pick(keys[2], 2, 0.5, {})], budget=2, strategy="x",
                           pool_size=4, params={})
    assert len(store.rounds()) == 1
    # once the first round is cancelled its picks are free again
    store.set_round_status(store.latest_round(), "cancelled")
    rid = store.record_round([Pick(keys[1], 1, 1.0, {})], budget=1, strategy="x", pool_size=4, params={})
    assert [p.key for p in store.selection(rid)] == [keys[1]]


def test_bundle_promotion_keeps_one_previous(store):
    store.ingest([make_item(0, bundle="b1")])
    store.add_bundle("b1", "/bundles/b1", "serving")
    store.add_bundle("b2", "/bundles/b2", "candidate", {"f1": 0.5})
    assert store.promote_bundle("b2") == "b1"
    assert store.current_bundle == "b2"
    assert store.bundle_with_role("previous")["bundle_id"] == "b1"
    store.add_bundle("b3", "/bundles/b3", "candidate")
    store.promote_bundle("b3")
    roles = {b["bundle_id"]: b["role"] for b in store.bundles()}
    assert roles == {"b1": "retired", "b2": "previous", "b3": "serving"}
    assert store.unlabeled_records() == []  # b1 records are stale now


def test_backup_is_consistent_copy(sqlite_store, tmp_path):
    store = sqlite_store
    store.ingest([make_item(i) for i in range(3)])
    out = tmp_path / "bk" / "pool-backup.sqlite"
    info = store.backup(out, images_dir=tmp_path / "bk" / "images")
    assert info["images_copied"] == 3
    copy = PoolStore(tmp_path / "restore")
    copy.close()
    out.replace(tmp_path / "restore" / "pool.sqlite")
    restored = PoolStore(tmp_path / "restore")
    assert [r.image_id for r in restored.unlabeled_records()] == [r.image_id for r in store.unlabeled_records()]
    assert isinstance(restored.unlabeled_records()[0], ScoreRecord)
    restored.close()


def test_rollback_restores_previous_and_its_records(store):
    store.ingest([make_item(i, bundle="b1") for i in range(3)])
    store.add_bundle("b1", "/bundles/b1", "serving")
    store.add_bundle("b2", "/bundles/b2", "candidate")
    store.promote_bundle("b2")
    assert store.unlabeled_records() == []
    assert store.rollback_bundle() == ("b2", "b1")
    assert store.current_bundle == "b1" and len(store.unlabeled_records()) == 3
    roles = {b["bundle_id"]: b["role"] for b in store.bundles()}
    assert roles == {"b1": "serving", "b2": "retired"}
    with pytest.raises(StoreError, match="rollback needs"):
        store.rollback_bundle()


def test_image_batches_dedupe_and_leave_no_temp_files(tmp_path):
    from trainer.images import ImageError, ImageStore, encode_pixels

    imgs = ImageStore(tmp_path / "img")
    a, _ = encode_pixels(make_pixels(1))
    b, _ = encode_pixels(make_pixels(2))
    out = imgs.put_many([(a, None, "a"), (a, None, "a again"), (b, "png", "b")])
    assert out[0] == out[1] != out[2] and out[0][1] == "png"
    files = sorted(p.name for p in (tmp_path / "img").rglob("*") if p.is_file())
    assert files == sorted(f"{sha}.png" for sha, _ in {out[0], out[2]})
    with pytest.raises(ImageError, match="'c': bytes are not PNG"):
        imgs.put_many([(b"GIF89a....", None, "'c'")])
    with pytest.raises(ImageError, match="empty"):
        imgs.put(b"")
