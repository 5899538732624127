"""The trainer's durable pool store: one SQLite file in WAL mode plus content-addressed images on disk.

Layout of a store directory::

    <root>/pool.sqlite     stations, slices, score_records, proposals, labels, label_boxes,
                           rounds, selections, bundles, kv (schema version in PRAGMA user_version)
    <root>/images/         slice images named by sha256 (see ``trainer.images``)
    <root>/audit.jsonl     the hash-chained audit log (``trainer.audit_log``)

Modules: ``types`` (items, labels, picks, pool keys, StoreError), ``schema`` (migrations, connection,
transactions), ``ingest`` (validation and the idempotent, mark-stale insert), ``pool_store`` (PoolStore).
"""
