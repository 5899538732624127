"""Deploy a bundle to the fleet of registered stations with ``LoadBundle``, and roll the fleet back.

The store keeps one ``serving`` and one ``previous`` bundle (``PoolStore.promote_bundle``). A deploy:

1. sends ``LoadBundle(path, expected_bundle_id)`` to every registered station with an address, or to the
   named subset, concurrently (the path must be readable by each station: shared storage, or the same
   machine in the demo); each station's result is ``ok``, ``failed`` (with the gRPC code and reason) or
   ``skipped`` (with the reason);
2. with a canary (:class:`trainer.canary.CanaryOptions`), first only the canary station: it must come back
   SERVING the new bundle and its scores on a fixed probe set must not drift beyond the gate, else it is
   put back on its old bundle and nobody else is touched (``trainer.canary``);
3. promotes the bundle in the store (current bundle -> records of other bundles become stale) when at
   least one station switched, or when no station is targeted (store-only);
4. writes a ``deploy`` audit entry with every station's result.

A station that refuses (bad signature, failed warm-up) keeps serving its old bundle (station contract);
the report names it and the command exits non-zero so the operator can retry. ``rollback`` puts every
station that serves the bundle being retired (checked live first) back on the ``previous`` bundle.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsal_edge.errors import GSALError
from trainer.audit_log import AuditLog
from trainer.fleet import UNREACHABLE, check_fleet, select_stations
from trainer.store.pool_store import PoolStore
from trainer.store.types import StoreError

if TYPE_CHECKING:
    from trainer.canary import CanaryOptions

log = logging.getLogger(__name__)

OK, FAILED, SKIPPED = "ok", "failed", "skipped"


class DeployError(GSALError, RuntimeError):
    """No station accepted the bundle, the canary failed, or there is nothing to roll back to.

    ``report`` (when set) holds every station's status, for the operator."""

    def __init__(self, message: str, report: DeployReport | None = None) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class StationAccess:
    """How the trainer reaches the stations' Scorer services (admin token for LoadBundle, scoring token
    for the canary's probe scoring and GetModelInfo when the stations require one)."""

    insecure: bool = False
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    admin_token: str | None = None
    server_name: str | None = None
    timeout_s: float = 600.0
    token: str | None = None
    max_parallel: int = 16  # stations loading a bundle at the same time


@dataclass
class DeployReport:
    bundle_id: str
    path: str
    promoted: bool
    replaced: str | None
    stations: dict[str, dict[str, Any]] = field(default_factory=dict)  # station -> {"status", "ok", ...}
    canary: dict[str, Any] | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [s for s, r in self.stations.items() if r.get("status", OK if r.get("ok") else FAILED) == FAILED]

    def to_dict(self) -> dict[str, Any]:
        return {"bundle_id": self.bundle_id, "path": self.path, "promoted": self.promoted,
                "replaced": self.replaced, "stations": self.stations, "canary": self.canary,
                "seconds": round(self.seconds, 3)}


def bundle_identity(path: str | Path) -> tuple[str, str]:
    """(bundle id, resolved folder) of a bundle folder (or a bundles folder with LATEST); hashes checked."""
    from gsal_edge.scoring.bundle import BundleError, read_manifest, verify_hashes

    try:
        m = read_manifest(path)
        verify_hashes(m)
    except BundleError as e:
        raise DeployError(str(e)) from None
    return m.bundle_id, str(m.root.resolve())


def skipped(address: str | None, reason: str) -> dict[str, Any]:
    """A station's status when it was deliberately not sent the bundle."""
    return {"status": SKIPPED, "ok": False, "address": address, "reason": reason}


def load_on_station(store: PoolStore, station: dict[str, Any], path: str, bundle_id: str,
                    access: StationAccess) -> dict[str, Any]:
    """``LoadBundle`` on one station; its status dict (never raises). The registry records the outcome."""
    import grpc

    from gsal_wire.scorer_client import ScorerClient

    sid, addr = station["station_id"], station["address"]
    t0 = time.perf_counter()
    try:
        with ScorerClient(addr, insecure=access.insecure, ca=access.ca, client_cert=access.client_cert,
                          client_key=access.client_key, admin_token=access.admin_token,
                          server_name=access.server_name) as cli:
            resp = cli.load_bundle(path, expected_bundle_id=bundle_id, timeout=access.timeout_s)
        out = {"status": OK, "ok": True, "address": addr, "bundle_id": resp.bundle_id,
               "previous": resp.previous_bundle_id, "load_s": round(resp.load_seconds, 3),
               "warmup_s": round(resp.warmup_seconds, 3), "deploy_s": round(time.perf_counter() - t0, 3)}
        store.record_station_health(sid, "serving", f"loaded {resp.bundle_id}", time.time(),
                                    bundle_id=resp.bundle_id)
    except grpc.RpcError as e:
        out = {"status": FAILED, "ok": False, "address": addr, "code": e.code().name, "error": e.details(),
               "deploy_s": round(time.perf_counter() - t0, 3)}
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            store.record_station_health(sid, UNREACHABLE, f"LoadBundle: {e.code().name} {e.details()}", time.time())
    except (GSALError, OSError, ValueError) as e:  # bad TLS files, bad address
        out = {"status": FAILED, "ok": False, "address": addr, "code": type(e).__name__, "error": str(e),
               "deploy_s": round(time.perf_counter() - t0, 3)}
    log.info("deploy %s -> %s: %s", bundle_id, sid, out)
    return out


def push_to_stations(
    store: PoolStore, path: str, bundle_id: str, access: StationAccess, *,
    stations: Sequence[dict[str, Any]] | None = None, progress: bool = False,
) -> dict[str, dict[str, Any]]:
    """``LoadBundle`` on ``stations`` (default: every registered station with an address), at most
    ``access.max_parallel`` at a time; station id -> status. Never raises per station."""
    targets = list(select_stations(store) if stations is None else stations)
    if not targets:
        return {}
    out: dict[str, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(targets), desc=f"LoadBundle {bundle_id[:19]}", unit="station")
    with ThreadPoolExecutor(max_workers=max(1, min(access.max_parallel, len(targets))),
                            thread_name_prefix="deploy") as ex:
        futs = {ex.submit(load_on_station, store, st, path, bundle_id, access): st["station_id"] for st in targets}
        for f in as_completed(futs):
            out[futs[f]] = f.result()
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return dict(sorted(out.items()))


def deploy(
    store: PoolStore, bundle_id: str, path: str, access: StationAccess, *, push: bool = True,
    metrics: dict[str, Any] | None = None, note: str | None = None, stations: Sequence[str] | None = None,
    canary: CanaryOptions | None = None, progress: bool = False,
) -> DeployReport:
    """Load ``path`` (bundle ``bundle_id``) on the stations (all, or ``stations``), canary first when given,
    and make it serving; audit-logged. Raises :class:`DeployError` (with the report) when nobody took it,
    :class:`trainer.fleet.FleetError` when ``stations`` names unknown stations."""
    t0 = time.perf_counter()
    known = {b["bundle_id"]: b for b in store.bundles()}
    if bundle_id not in known:
        store.add_bundle(bundle_id, path, "candidate", metrics, note)
    elif metrics:
        store.add_bundle(bundle_id, path, known[bundle_id]["role"], metrics, note)
    report = DeployReport(bundle_id, path, False, None, {})
    audit = AuditLog(store.audit_path)
    if push:
        targets = select_stations(store, stations)
        if canary is not None:
            from trainer.canary import run_canary

            cst = next((t for t in targets if t["station_id"] == canary.station), None)
            if cst is None:
                raise DeployError(f"canary {canary.station!r} is not among the target stations "
                                  f"({', '.join(t['station_id'] for t in targets) or 'none'})")
            status, report.canary = run_canary(store, cst, bundle_id, path, access, canary)
            report.stations[cst["station_id"]] = status
            targets = [t for t in targets if t is not cst]
            if not report.canary["passed"]:
                for t in targets:
                    report.stations[t["station_id"]] = skipped(t["address"], f"canary {canary.station} failed")
                report.seconds = time.perf_counter() - t0
                audit.append("deploy", report.to_dict() | {"error": "canary failed"})
                raise DeployError(f"canary {canary.station} failed: {report.canary['reason']}; "
                                  f"no other station was touched", report)
        report.stations.update(push_to_stations(store, path, bundle_id, access, stations=targets,
                                                progress=progress))
    results = report.stations
    if results and not any(r["ok"] for r in results.values()):
        report.seconds = time.perf_counter() - t0
        audit.append("deploy", report.to_dict() | {"error": "no station accepted"})
        raise DeployError(f"no station accepted bundle {bundle_id}: " +
                          "; ".join(f"{s}: {r.get('code')} {r.get('error')}" for s, r in results.items()), report)
    report.replaced = store.promote_bundle(bundle_id)
    report.promoted = True
    report.seconds = time.perf_counter() - t0
    audit.append("deploy", report.to_dict())
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


def rollback(
    store: PoolStore, access: StationAccess, *, push: bool = True, stations: Sequence[str] | None = None,
    progress: bool = False,
) -> DeployReport:
    """Re-deploy the ``previous`` bundle on every station (or ``stations``) serving the current one
    (checked live first); stations on another bundle are skipped. The current one is retired (audit-logged)."""
    t0 = time.perf_counter()
    prev = store.bundle_with_role("previous")
    cur = store.bundle_with_role("serving")
    if prev is None:
        raise DeployError(f"{store.db_path}: no previous bundle to roll back to")
    cur_id = cur["bundle_id"] if cur else None
    report = DeployReport(prev["bundle_id"], prev["path"], False, cur_id, {})
    if push:
        targets = select_stations(store, stations)
        live = {h.station_id: h for h in check_fleet(store, access, stations=[t["station_id"] for t in targets])}
        todo = []
        for t in targets:
            h = live[t["station_id"]]
            if h.bundle_id == prev["bundle_id"]:
                report.stations[t["station_id"]] = skipped(t["address"], "already on the previous bundle")
            elif h.bundle_id is not None and h.bundle_id != cur_id:
                report.stations[t["station_id"]] = skipped(t["address"], f"serves {h.bundle_id}, not {cur_id}")
            else:  # on the bundle being retired, or unknown (unreachable now: try, and report the failure)
                todo.append(t)
        report.stations.update(push_to_stations(store, prev["path"], prev["bundle_id"], access, stations=todo,
                                                progress=progress))
        report.stations = dict(sorted(report.stations.items()))
    tried = [r for r in report.stations.values() if r["status"] != SKIPPED]
    if tried and not any(r["ok"] for r in tried):
        report.seconds = time.perf_counter() - t0
        AuditLog(store.audit_path).append("rollback", report.to_dict() | {"error": "no station accepted"})
        raise DeployError(f"no station accepted the previous bundle {prev['bundle_id']}", report)
    try:
        store.rollback_bundle()
    except StoreError as e:
        raise DeployError(str(e)) from None
    report.promoted = True
    report.seconds = time.perf_counter() - t0
    AuditLog(store.audit_path).append("rollback", report.to_dict())
    return report
