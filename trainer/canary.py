"""The canary step of a fleet deploy: one station first, gated on its health and on score drift.

1. The canary must be SERVING before anything is touched; its bundle then is the *old* one.
2. A fixed probe set (the last ``probe_n`` slices the canary sent, from the store's pixels, or the images
   of ``probe_images``) is scored on the canary with the old bundle, the new bundle is loaded there
   (``LoadBundle``), the canary must come back SERVING the new bundle within ``healthy_timeout_s``, and the
   probe set is scored again.
3. Score drift between the two runs: the image-level diffusion difficulty
   ``D_img = alpha z(E_rec) + beta z(V_den)`` (Eq. 7, z over the probe set) of every probe slice under each
   bundle; ``drift = 1 - Spearman rho(D_old, D_new)`` (0 = same ranking, 1 = unrelated, 2 = reversed), so
   what is gated is whether the new bundle would still rank the slices the same way. The mean
   ``|z(D_new) - z(D_old)|`` is reported alongside.
4. Drift above ``drift_max`` or an unhealthy canary: the canary is put back on its old bundle (its path
   must be known to the trainer's store, as every bundle deployed through it is) and the deploy stops.

Probe slices are scored like any slice, so a forwarding canary also sends them to the trainer: the old
bundle's records of slices it sent are exact duplicates (scoring is seeded per slice id), the new bundle's
are fresh re-scores. ``probe_images`` slices enter the pool under ids ``canary-probe-<file stem>``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.errors import GSALError
from trainer.deploy import FAILED, StationAccess, load_on_station
from trainer.fleet import probe_station, wait_serving
from trainer.store.pool_store import PoolStore

log = logging.getLogger(__name__)

PROBE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
MIN_PROBES = 3


class CanaryError(GSALError, ValueError):
    """The canary's probe set cannot be built (too few slices, unreadable images)."""


@dataclass(frozen=True)
class CanaryOptions:
    """The canary gate of :func:`trainer.deploy.deploy`."""

    station: str
    drift_max: float | None = 0.5  # None: gate on health only
    probe_images: Path | None = None
    probe_n: int = 16
    healthy_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.drift_max is not None and not 0.0 <= self.drift_max <= 2.0:
            raise CanaryError(f"drift_max must be in [0, 2] (drift = 1 - Spearman rho), got {self.drift_max}")
        if self.probe_n < MIN_PROBES:
            raise CanaryError(f"probe_n must be at least {MIN_PROBES}, got {self.probe_n}")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan when either side is constant."""
    ra, rb = _ranks(np.asarray(a, float)), _ranks(np.asarray(b, float))
    sa, sb = ra.std(), rb.std()
    if sa == 0 or sb == 0:
        return float("nan")
    return float(((ra - ra.mean()) * (rb - rb.mean())).mean() / (sa * sb))


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), float)
    ranks[order] = np.arange(len(x), dtype=float)
    for v in np.unique(x):  # ties share their average rank
        m = x == v
        if m.sum() > 1:
            ranks[m] = ranks[m].mean()
    return ranks


def score_drift(old: Sequence[ScoreRecord], new: Sequence[ScoreRecord], alpha: float = 0.5,
                beta: float = 0.5) -> dict[str, float]:
    """Drift of the image-level difficulty D_img between two scorings of the same slices (see module doc)."""
    from gsal_edge.acquisition.fusion import diffusion_terms
    from gsal_edge.acquisition.score_pool import ScorePool

    new_by_id = {r.image_id: r for r in new}
    common = [r for r in old if r.image_id in new_by_id]
    if len(common) < MIN_PROBES:
        raise CanaryError(f"score drift needs at least {MIN_PROBES} slices scored by both bundles, got {len(common)}")
    d_old = diffusion_terms(ScorePool.from_records(common), alpha, beta).D_img
    d_new = diffusion_terms(ScorePool.from_records([new_by_id[r.image_id] for r in common]), alpha, beta).D_img
    rho = spearman(d_old, d_new)
    z = lambda d: (d - d.mean()) / (d.std() + 1e-8)
    drift = 1.0 - rho if np.isfinite(rho) else (0.0 if np.allclose(d_old, d_new) else 1.0)
    return {"n": len(common), "spearman": rho, "drift": float(drift),
            "mean_abs_delta_z": float(np.abs(z(d_new) - z(d_old)).mean())}


def probe_items(store: PoolStore, station_id: str, opts: CanaryOptions) -> list[tuple[str, np.ndarray, dict]]:
    """The probe set: ``(slice id, pixels, meta)`` from ``opts.probe_images`` or the canary's last slices."""
    from gsal_edge.data.image_io import load_image

    items: list[tuple[str, np.ndarray, dict]] = []
    if opts.probe_images is not None:
        files = sorted(p for p in Path(opts.probe_images).iterdir() if p.suffix.lower() in PROBE_SUFFIXES)
        for p in files[:opts.probe_n]:
            try:
                items.append((f"canary-probe-{p.stem}", load_image(p), {}))
            except (GSALError, OSError, ValueError) as e:
                raise CanaryError(f"--probe-images {p}: {e}") from None
        where = f"--probe-images {opts.probe_images}"
    else:
        for key in store.recent_slice_keys(station_id, opts.probe_n):
            info = store.slice_info(key)
            if info.image_path is not None and info.image_path.exists():
                items.append((info.slice_id, load_image(info.image_path), {k: str(v) for k, v in info.meta.items()}))
        where = f"the slices station {station_id} sent"
    if len(items) < MIN_PROBES:
        raise CanaryError(f"canary probe set: {len(items)} slice(s) from {where}, need at least {MIN_PROBES} "
                          "(let the station send some, or give --probe-images DIR)")
    return items


def _score(address: str, access: StationAccess, items: list[tuple[str, np.ndarray, dict]]) -> list[ScoreRecord]:
    from gsal_wire.scorer_client import ItemFailed, ScorerClient

    with ScorerClient(address, insecure=access.insecure, ca=access.ca, client_cert=access.client_cert,
                      client_key=access.client_key, token=access.token, server_name=access.server_name) as cli:
        out = list(cli.score(items, timeout=access.timeout_s))
    bad = [r for r in out if isinstance(r, ItemFailed)]
    if bad:
        raise CanaryError(f"{len(bad)} probe slice(s) failed: {bad[0]}")
    return [r for r in out if isinstance(r, ScoreRecord)]


def run_canary(
    store: PoolStore, station: dict[str, Any], bundle_id: str, path: str, access: StationAccess,
    opts: CanaryOptions,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Deploy to the canary and gate it; (its station status, the canary summary with ``passed``)."""
    import grpc

    sid, addr = station["station_id"], station["address"]
    info: dict[str, Any] = {"station": sid, "drift_max": opts.drift_max, "passed": False, "rolled_back": False}

    def fail(reason: str, status: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        info["reason"] = reason
        log.warning("canary %s: %s", sid, reason)
        st = dict(status or {"address": addr})
        st.update(status=FAILED, ok=False, reason=reason)
        return st, info

    before = probe_station(sid, addr, access)
    info["old_bundle"] = before.bundle_id
    if not before.ok:
        return fail(f"not serving before the deploy ({before.health}: {before.detail})")
    items: list[tuple[str, np.ndarray, dict]] = []
    old: list[ScoreRecord] = []
    if opts.drift_max is not None:
        try:
            items = probe_items(store, sid, opts)
            old = _score(addr, access, items)
        except (CanaryError, grpc.RpcError) as e:
            return fail(f"probe scoring on the old bundle: {e}")
    status = load_on_station(store, station, path, bundle_id, access)
    if not status["ok"]:
        return fail(f"LoadBundle refused: {status.get('code')} {status.get('error')}", status)

    def roll_back(reason: str) -> tuple[dict[str, Any], dict[str, Any]]:
        known = {b["bundle_id"]: b for b in store.bundles()}
        old_b = known.get(before.bundle_id or "")
        if old_b is None or not old_b.get("path"):
            return fail(f"{reason}; NOT rolled back: the trainer does not know where bundle {before.bundle_id} is",
                        status)
        back = load_on_station(store, station, old_b["path"], old_b["bundle_id"], access)
        info["rolled_back"] = bool(back["ok"])
        return fail(reason + ("; rolled back" if back["ok"] else f"; rollback FAILED: {back.get('error')}"), status)

    t0 = time.perf_counter()
    after = wait_serving(sid, addr, access, bundle_id, timeout_s=opts.healthy_timeout_s)
    info["healthy_after_s"] = round(time.perf_counter() - t0, 3)
    if not (after.ok and after.bundle_id == bundle_id):
        return roll_back(f"not SERVING {bundle_id} within {opts.healthy_timeout_s:g}s ({after.health}, "
                         f"bundle {after.bundle_id}: {after.detail})")
    if opts.drift_max is not None:
        try:
            new = _score(addr, access, items)
            info.update(score_drift(old, new))
        except (CanaryError, grpc.RpcError) as e:
            return roll_back(f"probe scoring on the new bundle: {e}")
        if info["drift"] > opts.drift_max:
            return roll_back(f"score drift {info['drift']:.3f} > {opts.drift_max:g} (Spearman rho of D_img "
                             f"{info['spearman']:.3f} over {info['n']} probe slices)")
    info["passed"] = True
    info["reason"] = "healthy" + ("" if opts.drift_max is None else f", drift {info['drift']:.3f} <= {opts.drift_max:g}")
    return status, info
