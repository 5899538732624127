"""Follow a bundles folder: when its ``LATEST`` names another bundle, hot-swap to it.

For stations that receive bundles by file (a shared mount, rsync, a USB stick on an air-gapped line)
rather than by the ``LoadBundle`` RPC. The swap is the same call as ``LoadBundle``
(:meth:`server.station.Station.load_bundle`): the bundle is verified (hashes, signature against the
trusted keys), warmed up and switched to without dropping requests; a bundle that fails any step is
logged and the current one keeps serving. A refused bundle is not retried until ``LATEST`` names
another one, so a bad bundle costs one verification, not one per poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from gsal_edge.scoring.bundle import BundleError, resolve_bundle_dir
from server.station import SwapError, SwapResult

log = logging.getLogger(__name__)


class BundleWatcher:
    """Polls ``folder`` every ``interval_s`` seconds and calls ``load(path)`` for each newly named bundle.

    ``current``: the bundle folder already being served (e.g. from ``--bundle``), so the first poll does
    not reload it.
    """

    def __init__(self, folder: str | Path, load: Callable[[str], SwapResult], interval_s: float = 5.0,
                 current: str | Path | None = None) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.folder = Path(folder)
        self.load = load
        self.interval_s = float(interval_s)
        self._last: Path | None = Path(current).resolve() if current else None
        self._last_problem = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self.refused = 0

    def check_once(self) -> SwapResult | None:
        """One poll: the swap's result when a new bundle was loaded, else None (nothing new, or refused)."""
        try:
            target = resolve_bundle_dir(self.folder).resolve()
        except (BundleError, OSError) as e:
            problem = f"{e}"
            if problem != self._last_problem:  # say it once, not once per poll
                log.warning("watching %s: %s", self.folder, problem)
                self._last_problem = problem
            return None
        self._last_problem = ""
        if target == self._last:
            return None
        self._last = target
        try:
            res = self.load(str(target))
        except SwapError as e:
            self.refused += 1
            log.warning("watching %s: %s refused (%s): %s; the current bundle keeps serving",
                        self.folder, target.name, e.code, e)
            return None
        self.swaps += 1
        log.info("watching %s: now serving %s (was %r)", self.folder, res.bundle_id, res.previous_bundle_id)
        return res

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check_once()
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("watching %s: poll failed", self.folder)
            self._stop.wait(self.interval_s)

    def start(self) -> BundleWatcher:
        """Poll in a daemon thread (the first poll at once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="bundle-watcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
