"""The station registry: which stations exist, where they are reached, what they serve, whether they are up.

Stations enter the registry by themselves: every ``Ingest`` call adds or refreshes the sending station
(bundle of its latest record, last seen) and, when the station tells it (``IngestItem.station_address``,
sent by ``gsal-edge serve --trainer``), the host:port of its Scorer. ``trainer register-station`` sets an
address by hand. Health checks (:func:`check_fleet`) probe every station with an address concurrently, with
a timeout each, through the standard ``grpc.health.v1`` service (a station without it falls back to
``GetModelInfo``), and record health, detail and the bundle it reports serving. ``trainer serve
--health-interval S`` runs them periodically (:class:`HealthMonitor`); ``trainer stations --check`` once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gsal_edge.errors import GSALError
from trainer.store.pool_store import PoolStore

if TYPE_CHECKING:
    from trainer.deploy import StationAccess

log = logging.getLogger(__name__)

SERVING, NOT_SERVING, UNREACHABLE = "serving", "not_serving", "unreachable"


class FleetError(GSALError, ValueError):
    """A station selection names stations the registry does not have (or that have no address)."""


@dataclass(frozen=True)
class StationHealth:
    """One probe of one station."""

    station_id: str
    address: str
    health: str  # serving | not_serving | unreachable | <the health service's status, lower case>
    bundle_id: str | None  # what it reports serving (None: unknown)
    detail: str  # the error, or "ok"
    latency_ms: float

    @property
    def ok(self) -> bool:
        return self.health == SERVING

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def select_stations(store: PoolStore, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Registered stations with an address, in id order; ``names`` restricts to those (each must exist)."""
    known = {s["station_id"]: s for s in store.stations()}
    if names is None:
        return [s for s in known.values() if s.get("address")]
    wanted = list(dict.fromkeys(n.strip() for n in names if n.strip()))
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise FleetError(f"{store.db_path}: unknown station(s) {', '.join(unknown)}; registered: "
                         f"{', '.join(known) or 'none'} (stations register by forwarding records, "
                         "or with `trainer register-station`)")
    no_addr = [n for n in wanted if not known[n].get("address")]
    if no_addr:
        raise FleetError(f"{store.db_path}: station(s) {', '.join(no_addr)} have no address; start them with "
                         "`serve --trainer ...` (they tell it) or run `trainer register-station ID --address H:P`")
    return [known[n] for n in sorted(wanted)]


def parse_station_list(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; None/empty -> None (all stations)."""
    if not text:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    return names or None


def probe_station(station_id: str, address: str, access: StationAccess, timeout_s: float = 5.0) -> StationHealth:
    """Health of one station: ``grpc.health.v1`` Check, then ``GetModelInfo`` for the bundle; never raises."""
    import grpc

    from gsal_wire.scorer_client import ScorerClient

    t0 = time.perf_counter()

    def done(health: str, bundle: str | None, detail: str) -> StationHealth:
        return StationHealth(station_id, address, health, bundle, detail, round((time.perf_counter() - t0) * 1e3, 1))

    try:
        with ScorerClient(address, insecure=access.insecure, ca=access.ca, client_cert=access.client_cert,
                          client_key=access.client_key, token=access.token,
                          server_name=access.server_name) as cli:
            try:
                status = cli.health(timeout=timeout_s).lower()
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                status = None  # no health service: serving means a bundle is loaded
            try:
                bundle = cli.model_info(timeout=timeout_s).bundle_id or None
            except grpc.RpcError as e:
                if status is None:
                    raise
                return done(status, None, f"GetModelInfo: {e.code().name} {e.details()}")
            if status is None:
                status = SERVING if bundle else NOT_SERVING
            return done(status, bundle, "ok" if status == SERVING else "no bundle loaded" if not bundle else status)
    except grpc.RpcError as e:
        return done(UNREACHABLE, None, f"{e.code().name}: {e.details()}")
    except (GSALError, OSError, ValueError) as e:  # bad TLS files, bad address
        return done(UNREACHABLE, None, f"{type(e).__name__}: {e}")


def check_fleet(
    store: PoolStore, access: StationAccess, *, stations: Sequence[str] | None = None, timeout_s: float = 5.0,
    max_workers: int = 16,
) -> list[StationHealth]:
    """Probe the registered stations (or ``stations``) concurrently and record each result in the store."""
    targets = select_stations(store, stations)
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(targets)), thread_name_prefix="health") as ex:
        results = list(ex.map(lambda s: probe_station(s["station_id"], s["address"], access, timeout_s), targets))
    now = time.time()
    for h in results:
        store.record_station_health(h.station_id, h.health, h.detail, now, bundle_id=h.bundle_id)
    return results


def wait_serving(
    station_id: str, address: str, access: StationAccess, bundle_id: str, *, timeout_s: float = 30.0,
    interval_s: float = 0.2,
) -> StationHealth:
    """Probe until the station is SERVING ``bundle_id`` or ``timeout_s`` passes; the last probe."""
    deadline = time.monotonic() + timeout_s
    while True:
        h = probe_station(station_id, address, access, timeout_s=min(5.0, timeout_s))
        if (h.ok and h.bundle_id == bundle_id) or time.monotonic() >= deadline:
            return h
        time.sleep(interval_s)


class HealthMonitor:
    """A background thread running :func:`check_fleet` every ``interval_s`` on its own store handle."""

    def __init__(self, store_dir: str | Path, access: StationAccess, interval_s: float,
                 timeout_s: float = 5.0) -> None:
        if interval_s <= 0:
            raise FleetError(f"health interval must be > 0 seconds, got {interval_s}")
        self.store_dir, self.access, self.interval_s, self.timeout_s = store_dir, access, interval_s, timeout_s
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fleet-health", daemon=True)

    def start(self) -> HealthMonitor:
        # opened here, not in the thread: a new store is migrated before the caller opens its own handle
        from trainer.store import open_store

        self._store = open_store(self.store_dir)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        store = self._store
        try:
            while not self._stop.is_set():
                try:
                    res = check_fleet(store, self.access, timeout_s=self.timeout_s)
                    bad = [h for h in res if not h.ok]
                    (log.warning if bad else log.debug)(
                        "health: %d station(s), %d not serving%s", len(res), len(bad),
                        "".join(f"; {h.station_id}: {h.health} {h.detail}" for h in bad))
                except Exception:  # keep checking; the next round may succeed
                    log.exception("health check round failed")
                self.rounds += 1
                self._stop.wait(self.interval_s)
        finally:
            store.close()
