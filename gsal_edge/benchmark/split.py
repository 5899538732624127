"""How a run divides its data: the fixed test split, each seed's initial labeled set, the budget schedule,
each round's candidates, the rare classes and what a labeled set holds of them."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from gsal_edge.benchmark.config import BenchError
from gsal_edge.data.dataset import DetectionDataset

__all__ = ["budget_schedule", "candidate_ids", "choose_rare_classes", "class_counts", "initial_set", "labeled_summary",
           "pool_test_split", "rare_classes", "subsample", "validation_split"]


def subsample(ds: DetectionDataset, max_images: int | None, split_seed: int) -> DetectionDataset:
    """A seeded subset of ``max_images`` images (the data set itself when it is no larger)."""
    if max_images is None or len(ds.images) <= max_images:
        return ds
    rng = np.random.default_rng([split_seed, 7])
    keep = {ds.images[i].image_id for i in rng.permutation(len(ds.images))[:max_images]}
    return ds.subset(keep)


def pool_test_split(ds: DetectionDataset, test_fraction: float, split_seed: int) -> tuple[list[str], list[str]]:
    """(test ids, pool ids), each sorted: the stratified seeded split of the detector training."""
    from gsal_edge.models.detector_training import split_ids

    pool, test = split_ids(ds, test_fraction, split_seed)
    return sorted(test), sorted(pool)


def validation_split(ds: DetectionDataset, rest_ids: list[str], val_fraction: float, test_fraction: float,
                     split_seed: int) -> tuple[list[str], list[str]]:
    """(validation ids, pool ids), each sorted: ``val_fraction`` of ALL images drawn from ``rest_ids`` (what the
    test split left), stratified like the test split and seeded by ``split_seed`` alone, so it is the same for
    every strategy and AL seed. Its labels are for evaluation only (the F1 thresholds); it is never in the pool."""
    if val_fraction <= 0:
        return [], sorted(rest_ids)
    from gsal_edge.models.detector_training import split_ids

    share = val_fraction / (1.0 - test_fraction)  # of what the test split left
    if not 0 < share < 1:
        raise BenchError(f"data.val_fraction {val_fraction} with test_fraction {test_fraction}: nothing left "
                         "for the pool")
    pool, val = split_ids(ds.subset(set(rest_ids)), share, int(split_seed) + 1)
    if not val:
        raise BenchError(f"data.val_fraction {val_fraction}: the validation split of {len(rest_ids)} images "
                         "is empty; raise it or use more images")
    return sorted(val), sorted(pool)


def initial_set(pool_ids: list[str], size: int, seed: int) -> list[str]:
    """The seed's initial labeled set: ``size`` pool images, shared by every strategy of that seed."""
    rng = np.random.default_rng([int(seed), 1001])
    idx = rng.permutation(len(pool_ids))[:size]
    return [pool_ids[i] for i in sorted(idx)]


def budget_schedule(n_pool: int, init: float, step: float, budget: float) -> tuple[list[float], list[int]]:
    """Labeled shares init, init+step, ..., budget and the labeled-set sizes at each (>= 1, increasing)."""
    n_steps = math.floor((budget - init) / step + 1e-9)
    fracs = [round(init + i * step, 10) for i in range(n_steps + 1)]
    sizes = [max(1, round(f * n_pool)) for f in fracs]
    for i in range(1, len(sizes)):
        if sizes[i] <= sizes[i - 1]:
            raise BenchError(f"a pool of {n_pool} images is too small for step {step}: budget {fracs[i]} "
                             f"labels {sizes[i]} images, no more than at {fracs[i - 1]}")
    if sizes[-1] > n_pool:
        raise BenchError(f"budget {budget} needs {sizes[-1]} images but the pool has {n_pool}")
    return fracs, sizes


def candidate_ids(unlabeled: list[str], n: int | None, seed: int, r: int) -> list[str]:
    """Round ``r``'s candidates: the unlabeled pool, or a seeded random subset of ``n`` images."""
    if n is None or len(unlabeled) <= n:
        return unlabeled
    rng = np.random.default_rng([int(seed), r, 0x5EED])
    keep = np.sort(rng.choice(len(unlabeled), size=n, replace=False))
    return [unlabeled[i] for i in keep]


def class_counts(ds: DetectionDataset, ids: list[str]) -> dict[str, int]:
    """Annotated instances per class of the images ``ids`` (every class of the data set, zeros included)."""
    by_id = ds.by_id()
    per = {c: 0 for c in ds.classes}
    for i in ids:
        for a in by_id[i].annotations:
            per[a.category] += 1
    return per


def rare_classes(instance_counts: dict[str, int], fraction: float) -> list[str]:
    """Classes in the bottom ``fraction`` by instance count (at least one; ties by name)."""
    if not instance_counts:
        return []
    k = max(1, round(fraction * len(instance_counts)))
    return sorted(sorted(instance_counts), key=lambda c: instance_counts[c])[:k]


def choose_rare_classes(pool_counts: dict[str, int], configured: list[str] | None, fraction: float) -> list[str]:
    """The run's rare classes: the configured ones (each a class of the data), else :func:`rare_classes`."""
    if configured is None:
        return rare_classes(pool_counts, fraction)
    unknown = sorted(set(configured) - set(pool_counts))
    if unknown:
        raise BenchError(f"rare_classes {unknown} are not classes of the data ({', '.join(pool_counts)})")
    return list(configured)


def labeled_summary(ds: DetectionDataset, labeled: list[str], rare: list[str]) -> dict[str, Any]:
    """Labeled instances per class and rare-class retrieval (truth; both label modes)."""
    per = class_counts(ds, labeled)
    covered = [c for c in rare if per[c] > 0]
    return {"instances_per_class": per, "instances": sum(per.values()),
            "rare": {"classes": list(rare), "covered": covered, "n_covered": len(covered),
                     "n_rare": len(rare), "instances": sum(per[c] for c in rare)}}
