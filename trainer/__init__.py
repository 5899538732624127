"""The GSAL Edge trainer node: the durable pool, selection rounds, the annotation round trip, retrain/deploy.

Modules: ``store/`` (the pool: SQLite + content-addressed images), ``images`` (image files and pixels),
``audit_log`` (hash-chained decisions), ``ingest_service`` (the gsal.v1.Trainer ``Ingest`` server),
``rounds`` (selection rounds over the pool), ``annotation`` (COCO / Label Studio out and back in),
``deploy`` (LoadBundle to the stations, rollback, re-scoring), ``retrain`` (train, gate, export, deploy),
``cli`` (``gsal-edge trainer ...``).

Imports ``gsal_edge``, ``gsal_wire`` (messages, TLS, the Scorer client) and, for ``retrain``, ``export``;
never ``server`` (the station): the two talk only through ``proto/`` messages.
"""
