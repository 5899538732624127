"""The benchmark's diffusion cache: a scorer's image-level E_rec / V_den stage, memoized per exact input.

The prior and its settings are fixed over a run while the detector changes every round, so the pool's
whole-slice difficulty is computed once and reused by every round and strategy (and by a resumed run).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.benchmark.fingerprints import sha

__all__ = ["DiffusionCache"]

log = logging.getLogger(__name__)


class DiffusionCache:
    """Memoizes a scorer's image-level difficulty stage (E_rec, V_den and their per-position maps).

    The key is (namespace, image id, sha256 of the exact prior input row), so a hit is bit-identical
    to a recomputation; namespace = prior fingerprint + the diffusion settings (K, t, DDIM steps, base
    seed). Only rows of whole pool images are stored (proposal crops depend on the detector and are
    always recomputed). Persisted to ``path`` (npz) so a resumed run does not pay again.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, tuple[float, float, np.ndarray, np.ndarray]] = {}
        self.dirty = False
        self.hits = 0
        self.misses = 0
        if path is not None and path.is_file():
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with np.load(path, allow_pickle=False) as z:
                keys, E, V, em, vm = z["keys"], z["E"], z["V"], z["e_map"], z["v_map"]
        except (OSError, KeyError, ValueError) as e:
            log.warning("%s: unreadable diffusion cache (%s); starting empty", path, e)
            return
        for i, k in enumerate(keys.tolist()):
            self.entries[str(k)] = (float(E[i]), float(V[i]), em[i], vm[i])

    def save(self) -> None:
        """Write the cache atomically when it changed (npz; maps of equal shape per file)."""
        if self.path is None or not self.dirty or not self.entries:
            return
        keys = sorted(self.entries)
        shapes = {self.entries[k][2].shape for k in keys}
        if len(shapes) != 1:  # several prior resolutions in one run: keep them in memory only
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), E=np.array([self.entries[k][0] for k in keys]),
                 V=np.array([self.entries[k][1] for k in keys]),
                 e_map=np.stack([self.entries[k][2] for k in keys]),
                 v_map=np.stack([self.entries[k][3] for k in keys]))
        os.replace(tmp, self.path)
        self.dirty = False

    def attach(self, scorer: Any, namespace: str, storable_ids: set[str]) -> None:
        """Memoize ``scorer``'s diffusion stage (``GSALScorer.difficulty_memo``) with this cache."""

        def memo(images01: np.ndarray, ids: list[str], compute: Callable[..., Any]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
            return self.lookup(images01, ids, compute, namespace, storable_ids)

        scorer.difficulty_memo = memo

    def lookup(self, images01: np.ndarray, ids: list[str], compute: Callable[..., Any], namespace: str,
               storable_ids: set[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The stage's result for these rows: cached rows from memory, the others from ``compute``
        (stored when their id is in ``storable_ids``: whole pool slices, never proposal crops)."""
        images01 = np.ascontiguousarray(images01)
        keys = [f"{namespace}|{iid}|{sha(images01[j].tobytes(), 20)}" for j, iid in enumerate(ids)]
        miss = [j for j, k in enumerate(keys) if k not in self.entries]
        fresh: dict[int, tuple[float, float, np.ndarray, np.ndarray]] = {}
        if miss:
            E, V, em, vm = compute(images01[miss], [ids[j] for j in miss])
            for n, j in enumerate(miss):
                fresh[j] = (float(E[n]), float(V[n]), np.array(em[n]), np.array(vm[n]))
                if ids[j] in storable_ids:
                    self.entries[keys[j]] = fresh[j]
                    self.dirty = True
        self.hits += len(ids) - len(miss)
        self.misses += len(miss)
        rows = [fresh[j] if j in fresh else self.entries[keys[j]] for j in range(len(ids))]
        if not rows:
            return compute(images01, ids)
        return (np.array([r[0] for r in rows]), np.array([r[1] for r in rows]),
                np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]))
