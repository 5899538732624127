"""Deploy a bundle to the registered stations with ``LoadBundle``, and roll back to the previous one.

The store keeps one ``serving`` and one ``previous`` bundle (``PoolStore.promote_bundle``). A deploy:

1. sends ``LoadBundle(path, expected_bundle_id)`` to every registered station with an address (the path
   must be readable by the station: shared storage, or the same machine in the demo);
2. promotes the bundle in the store (current bundle -> records of other bundles become stale) when at
   least one station switched, or when no station is registered (store-only);
3. writes a ``deploy`` audit entry with every station's result.

A station that refuses (bad signature, failed warm-up) keeps serving its old bundle (station contract);
the report names it and the command exits non-zero so the operator can retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gsal_edge.errors import GSALError
from trainer.audit_log import AuditLog
from trainer.store.pool_store import PoolStore
from trainer.store.types import StoreError

log = logging.getLogger(__name__)


class DeployError(GSALError, RuntimeError):
    """No station accepted the bundle (or there is nothing to roll back to)."""


@dataclass(frozen=True)
class StationAccess:
    """How the trainer reaches the stations' Scorer services (admin token for LoadBundle)."""

    insecure: bool = False
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    admin_token: str | None = None
    server_name: str | None = None
    timeout_s: float = 600.0


@dataclass
class DeployReport:
    bundle_id: str
    path: str
    promoted: bool
    replaced: str | None
    stations: dict[str, dict[str, Any]] = field(default_factory=dict)  # station -> {"ok", ...}

    @property
    def failed(self) -> list[str]:
        return [s for s, r in self.stations.items() if not r.get("ok")]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "path": self.path, "promoted": self.promoted,
                "replaced": self.replaced, "stations": self.stations}


def bundle_identity(path: str | Path) -> tuple[str, str]:
    """(bundle id, resolved folder) of a bundle folder (or a bundles folder with LATEST); hashes checked."""
    from gsal_edge.scoring.bundle import BundleError, read_manifest, verify_hashes

    try:
        m = read_manifest(path)
        verify_hashes(m)
    except BundleError as e:
        raise DeployError(str(e)) from None
    return m.bundle_id, str(m.root.resolve())


def push_to_stations(store: PoolStore, path: str, bundle_id: str, access: StationAccess) -> dict[str, dict[str, Any]]:
    """``LoadBundle`` on every registered station with an address; never raises per station."""
    import grpc

    from gsal_wire.scorer_client import ScorerClient

    out: dict[str, dict[str, Any]] = {}
    for st in store.stations():
        if not st.get("address"):
            continue
        sid = st["station_id"]
        try:
            with ScorerClient(st["address"], insecure=access.insecure, ca=access.ca, client_cert=access.client_cert,
                              client_key=access.client_key, admin_token=access.admin_token,
                              server_name=access.server_name) as cli:
                resp = cli.load_bundle(path, expected_bundle_id=bundle_id, timeout=access.timeout_s)
            out[sid] = {"ok": True, "address": st["address"], "bundle_id": resp.bundle_id,
                        "previous": resp.previous_bundle_id, "load_s": round(resp.load_seconds, 3),
                        "warmup_s": round(resp.warmup_seconds, 3)}
        except grpc.RpcError as e:
            out[sid] = {"ok": False, "address": st["address"], "code": e.code().name, "error": e.details()}
        log.info("deploy %s -> %s: %s", bundle_id, sid, out[sid])
    return out


def deploy(
    store: PoolStore, bundle_id: str, path: str, access: StationAccess, *, push: bool = True,
    metrics: dict[str, Any] | None = None, note: str | None = None,
) -> DeployReport:
    """Load ``path`` (bundle ``bundle_id``) on the stations and make it serving; audit-logged."""
    known = {b["bundle_id"]: b for b in store.bundles()}
    if bundle_id not in known:
        store.add_bundle(bundle_id, path, "candidate", metrics, note)
    elif metrics:
        store.add_bundle(bundle_id, path, known[bundle_id]["role"], metrics, note)
    results = push_to_stations(store, path, bundle_id, access) if push else {}
    ok = [s for s, r in results.items() if r["ok"]]
    report = DeployReport(bundle_id, path, False, None, results)
    if results and not ok:
        AuditLog(store.audit_path).append("deploy", report.to_dict() | {"error": "no station accepted"})
        raise DeployError(f"no station accepted bundle {bundle_id}: " +
                          "; ".join(f"{s}: {r.get('code')} {r.get('error')}" for s, r in results.items()))
    report.replaced = store.promote_bundle(bundle_id)
    report.promoted = True
    AuditLog(store.audit_path).append("deploy", report.to_dict())
    return report


def rescore_stale(
    store: PoolStore, address: str, access: StationAccess, *, token: str | None = None, limit: int | None = None,
    chunk: int = 16,
) -> dict[str, int]:
    """Send stale slices (stored pixels) through a station's ``Score`` RPC and ingest the fresh records.

    The station must serve the current bundle. Each record keeps the slice's original station id in
    ``model["station"]``; a different re-scoring station goes to ``model["rescored_by"]``. When the
    slice's own station re-scores it and also forwards to this trainer, both copies are identical and
    the second one is a duplicate (counted as re-scored, stored once).
    """
    from gsal_wire.scorer_client import ItemFailed, ScorerClient
    from trainer.images import decode_image
    from trainer.store.types import IngestItem

    todo = [s for s in store.stale_slices() if s.image_path is not None]
    if limit is not None:
        todo = todo[:limit]
    done = failed = 0
    with ScorerClient(address, insecure=access.insecure, ca=access.ca, client_cert=access.client_cert,
                      client_key=access.client_key, token=token, server_name=access.server_name) as cli:
        serving = cli.model_info().bundle_id
        if serving != store.current_bundle:
            raise DeployError(f"station {address} serves {serving!r}, not the current bundle {store.current_bundle!r}")
        for k in range(0, len(todo), chunk):
            part = todo[k:k + chunk]
            items = [(s.slice_id, decode_image(s.image_path), {kk: str(v) for kk, v in s.meta.items()}) for s in part]
            batch = []
            for s, res in zip(part, cli.score(items, timeout=access.timeout_s)):
                if isinstance(res, ItemFailed):
                    failed += 1
                    log.warning("rescore %s: %s", s.key, res)
                    continue
                if res.model.get("station", "") != s.station:  # another station re-scored it
                    res.model["rescored_by"] = res.model.get("station", "")
                    res.model["station"] = s.station
                batch.append(IngestItem(s.station, res, image=s.image_path.read_bytes(), width=s.width,
                                        height=s.height))
            # a station that forwards to this trainer may have delivered the same record first
            ingested = store.ingest(batch)
            done += ingested.inserted + ingested.duplicates
    AuditLog(store.audit_path).append("rescore", {"station": address, "bundle": store.current_bundle,
                                                  "rescored": done, "failed": failed})
    return {"rescored": done, "failed": failed, "remaining_stale": len(store.stale_slices())}


def rollback(store: PoolStore, access: StationAccess, *, push: bool = True) -> DeployReport:
    """Re-deploy the ``previous`` bundle; the one serving now is retired (audit-logged)."""
    prev = store.bundle_with_role("previous")
    cur = store.bundle_with_role("serving")
    if prev is None:
        raise DeployError(f"{store.db_path}: no previous bundle to roll back to")
    results = push_to_stations(store, prev["path"], prev["bundle_id"], access) if push else {}
    ok = [s for s, r in results.items() if r["ok"]]
    report = DeployReport(prev["bundle_id"], prev["path"], False, cur["bundle_id"] if cur else None, results)
    if results and not ok:
        AuditLog(store.audit_path).append("rollback", report.to_dict() | {"error": "no station accepted"})
        raise DeployError(f"no station accepted the previous bundle {prev['bundle_id']}")
    try:
        store.rollback_bundle()
    except StoreError as e:
        raise DeployError(str(e)) from None
    report.promoted = True
    AuditLog(store.audit_path).append("rollback", report.to_dict())
    return report
