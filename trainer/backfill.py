"""Backfill: score an archive of slices with a bundle and ingest the records into the pool store.

The pipeline, on the driver (the process that runs ``gsal-edge backfill``):

1. verify the bundle (signature and hashes, as a station does) and pin its folder and id;
2. list the archive's slice files (ids = paths relative to the archive root) and drop every slice id that
   already holds a record of this bundle for this station in the store (resume: nothing is scored twice);
3. hand batches of ``batch_size`` slices to the workers; each worker holds one ONNX Runtime
   :class:`~gsal_edge.scoring.scorer.GSALScorer` over the bundle (loaded once), reads and validates its
   slices exactly as the station does (:func:`gsal_edge.data.slices.read_slice_file` +
   :func:`~gsal_edge.data.slices.decode_slice` under :class:`~gsal_edge.data.slices.SliceLimits`) and
   returns the score records with the slices' bytes;
4. commit the results in chunks of ``ingest_batch`` through :meth:`PoolStore.ingest`, the idempotent
   path the trainer's gRPC ``Ingest`` uses: a record counts as done only once committed, so a run killed
   at any point loses at most the uncommitted chunk, which the next run scores again.

Workers: ``in-process`` (no Ray; one scorer in this process) or Ray actors (``ray.init()`` of a local
instance, or ``address="auto"`` / ``"ray://head:10001"`` for a cluster, unchanged). Each actor reserves
``cpus_per_worker`` CPUs (ONNX Runtime gets as many intra-op threads) and ``gpus_per_worker`` GPUs, keeps
two batches queued so it never waits for the driver, and is restarted once by Ray if its process dies.
On a cluster every node reads the archive itself, so ``images`` must be a path all nodes see (a shared
mount) and every node needs ``gsal-edge[fleet]`` installed. Ray is imported only when used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.data.slices import DEFAULT_LIMITS, SLICE_SUFFIXES, SliceLimits
from gsal_edge.errors import GSALError
from trainer.store.pool_store import PoolStore
from trainer.store.types import IngestItem, IngestResult, StoreError, check_station

log = logging.getLogger(__name__)

IN_PROCESS = ("none", "in-process", "")
FLEET_HINT = "pip install 'gsal-edge[fleet]'"
_DEPTH = 2  # batches queued per Ray actor: one scoring, one waiting


class BackfillError(GSALError, RuntimeError):
    """A backfill cannot start or a worker failed; the message names the archive, bundle or worker."""


@dataclass(frozen=True)
class BackfillConfig:
    """What to score, with which bundle, for which station, on which workers."""

    images: str  # archive folder, or a file:// URI of one
    bundle: str  # a bundle folder, or a bundles folder whose LATEST names one
    station: str = "backfill"
    trusted_keys: tuple[str, ...] = ()
    allow_unsigned: bool = False
    recursive: bool = True
    limit: int | None = None  # take at most this many not-yet-stored slices (failing ones count too)
    meta: dict[str, str] = field(default_factory=dict)
    batch_size: int = 8  # slices per scorer call
    ingest_batch: int = 64  # records per store commit
    ray_address: str = "local"  # local | auto | ray://host:port | host:port | none
    workers: int = 2  # 0 = in-process
    cpus_per_worker: int = 1
    gpus_per_worker: float = 0.0
    num_cpus: int | None = None  # CPUs of a local Ray instance (default: workers * cpus_per_worker)
    object_store_mb: int = 200  # object store of a local Ray instance
    backend: str = "onnxruntime"
    device: str = "cpu"  # in-process: cpu | cuda:N; a Ray actor with gpus_per_worker > 0 uses its own GPU
    threads: int | None = None  # in-process intra-op threads (None: ONNX Runtime's default)
    limits: SliceLimits = DEFAULT_LIMITS

    @property
    def in_process(self) -> bool:
        return self.workers == 0 or self.ray_address.strip().lower() in IN_PROCESS


@dataclass(frozen=True)
class ArchiveSlice:
    """One slice file of the archive: its id (relative posix path) and where to read it."""

    slice_id: str
    path: str


@dataclass
class ScoredSlice:
    """A worker's result for one slice: the record and the pixels to store, or why it failed."""

    slice_id: str
    record: ScoreRecord | None = None
    image: bytes | None = None
    image_format: str | None = None
    width: int | None = None
    height: int | None = None
    error: str | None = None


@dataclass
class BackfillReport:
    """Counts of one backfill run (``skipped``: already in the store before it started)."""

    bundle_id: str
    station: str
    executor: str
    workers: int
    listed: int = 0
    skipped: int = 0
    scored: int = 0
    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    scoring_seconds: float = 0.0  # from the first batch handed out to the last result (excludes start-up)

    @property
    def failed(self) -> int:
        return len(self.failures)

    @property
    def slices_per_s(self) -> float:
        return self.scored / self.scoring_seconds if self.scoring_seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"{self.listed} slices listed, {self.skipped} already stored, {self.scored} scored "
                f"({self.inserted} inserted, {self.duplicates} duplicates, {self.conflicts} conflicts), "
                f"{self.failed} failed; {self.executor} x{self.workers}, {self.slices_per_s:.1f} slices/s, "
                f"{self.seconds:.1f}s in all")


# ----------------------------------------------------------------------------- the archive
def archive_root(images: str) -> Path:
    """The archive folder of ``images`` (a folder or a ``file://`` URI); BackfillError if it is neither."""
    parsed = urlparse(images)
    if parsed.scheme == "file":
        root = Path(unquote(parsed.path))
    elif parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        raise BackfillError(f"--images {images!r}: scheme {parsed.scheme!r} is not supported; give a folder "
                            "or a file:// URI on a filesystem every worker mounts")
    else:
        root = Path(images)
    if not root.is_dir():
        raise BackfillError(f"--images {images!r}: {root} is not a folder")
    return root


def list_archive(images: str, recursive: bool = True) -> list[ArchiveSlice]:
    """Every slice file (``.png``, ``.tif``, ``.tiff``, ``.npy``) under the archive, sorted by id."""
    root = archive_root(images)
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.is_file() and p.suffix.lower() in SLICE_SUFFIXES)
    return [ArchiveSlice(p.relative_to(root).as_posix(), str(p)) for p in files]


def scored_slice_ids(store: PoolStore, station: str, bundle_id: str) -> set[str]:
    """Slice ids of ``station`` that already hold a record made by ``bundle_id`` (what a resume skips)."""
    return store.scored_slice_ids(station, bundle_id)


def _batches(items: Sequence[ArchiveSlice], size: int) -> Iterator[list[tuple[str, str]]]:
    for i in range(0, len(items), size):
        yield [(s.slice_id, s.path) for s in items[i:i + size]]


# ----------------------------------------------------------------------------- the worker
class SliceScorer:
    """One scorer over the bundle: reads, validates and scores batches of archive slices.

    The unit of work of both executors: in-process it is a plain object, under Ray an actor.
    """

    def __init__(self, bundle_dir: str, trusted_keys: Sequence[str], allow_unsigned: bool, station: str,
                 backend: str, threads: int | None, limits: SliceLimits, meta: dict[str, str],
                 device: str = "cpu") -> None:
        from gsal_edge.scoring.bundle import load_bundle, trusted_keys_from

        keys = trusted_keys_from(trusted_keys) if trusted_keys else None
        providers = None
        if device.startswith("cuda") and backend == "onnxruntime":
            from gsal_edge.scoring.runtime.onnxruntime_backend import gpu_providers

            providers = gpu_providers(int(device.partition(":")[2] or 0))
        self.scorer = load_bundle(bundle_dir, backend=backend, trusted_keys=keys, allow_unsigned=allow_unsigned,
                                  providers=providers, threads=threads, device=device, station=station)
        self.limits = limits
        self.meta = dict(meta)

    def bundle_id(self) -> str:
        return str(self.scorer.bundle_id)

    def _read(self, slice_id: str, path: str) -> tuple[Any, ScoredSlice]:
        """Decode one file as the station decodes a received slice; the pixels and the bytes to store."""
        from gsal_edge.data.slices import check_slice_id, decode_slice, read_slice_file
        from trainer.images import encode_pixels

        check_slice_id(slice_id, self.limits)
        f = read_slice_file(path)
        arr = decode_slice(f.data, f.shape, f.dtype, f.encoding, self.limits)
        # PNG / TIFF are stored as read (like the station's forwarded payload); raw pixels as the trainer's
        # gRPC Ingest stores them (trainer.images.encode_pixels)
        data, fmt = (f.data, f.encoding) if f.encoding in ("png", "tiff") else encode_pixels(arr, slice_id)
        h, w = int(arr.shape[0]), int(arr.shape[1])
        return arr, ScoredSlice(slice_id, image=bytes(data), image_format=fmt, width=w, height=h)

    def score(self, batch: Sequence[tuple[str, str]]) -> list[ScoredSlice]:
        """Score one batch of (slice id, path); a slice that cannot be read or scored comes back with ``error``."""
        out: list[ScoredSlice] = []
        ready: list[tuple[Any, ScoredSlice]] = []
        for slice_id, path in batch:
            try:
                ready.append(self._read(slice_id, path))
            except (GSALError, OSError, ValueError) as e:
                out.append(ScoredSlice(slice_id, error=f"{path}: {e}"))
        if not ready:
            return out
        try:
            records = self.scorer.score([a for a, _ in ready], [s.slice_id for _, s in ready],
                                        [self.meta] * len(ready))
        except Exception:  # noqa: BLE001 - find the slice that breaks the batch; score the others alone
            records = None
        if records is not None:
            for (_, s), rec in zip(ready, records):
                s.record = rec
                out.append(s)
            return out
        for arr, s in ready:
            try:
                s.record = self.scorer.score([arr], [s.slice_id], [self.meta])[0]
            except Exception as e:  # noqa: BLE001 - one bad slice must not stop the archive
                s.image, s.error = None, f"scoring failed: {type(e).__name__}: {e}"
            out.append(s)
        return out


# ----------------------------------------------------------------------------- executors
class InProcessExecutor:
    """One scorer in this process; batches in order."""

    name = "in-process"

    def __init__(self, worker_args: dict[str, Any]) -> None:
        self.worker = SliceScorer(**worker_args)
        self.workers = 1

    def map(self, batches: Iterable[list[tuple[str, str]]]) -> Iterator[list[ScoredSlice]]:
        for b in batches:
            yield self.worker.score(b)

    def close(self) -> None:
        pass


def import_ray() -> Any:
    """The ``ray`` module, or BackfillError saying how to install it (or to run without it)."""
    try:
        import ray
    except ImportError as e:
        raise BackfillError(f"Ray is not installed ({e}); {FLEET_HINT}, or run in-process with "
                            "--ray-address none") from None
    return ray


class RayExecutor:
    """``workers`` Ray actors, each one :class:`SliceScorer`; results come back as batches finish."""

    name = "ray"

    def __init__(self, cfg: BackfillConfig, worker_args: dict[str, Any]) -> None:
        ray = import_ray()
        self.ray = ray
        self.owns_ray = False
        if not ray.is_initialized():
            try:
                if cfg.ray_address.strip().lower() == "local":
                    ray.init(num_cpus=cfg.num_cpus or cfg.workers * cfg.cpus_per_worker,
                             num_gpus=None if cfg.gpus_per_worker else 0,
                             object_store_memory=cfg.object_store_mb * 1024 * 1024, include_dashboard=False,
                             log_to_driver=False)
                else:
                    ray.init(address=cfg.ray_address, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BackfillError(f"--ray-address {cfg.ray_address!r}: Ray did not start or connect "
                                    f"({type(e).__name__}: {e})") from None
            self.owns_ray = True
        actor_cls = ray.remote(num_cpus=cfg.cpus_per_worker, num_gpus=cfg.gpus_per_worker,
                               max_restarts=1, max_task_retries=1)(SliceScorer)
        # Ray gives an actor with GPUs its own CUDA_VISIBLE_DEVICES, so its first GPU is cuda:0
        args = dict(worker_args, threads=max(1, cfg.cpus_per_worker),
                    device="cuda:0" if cfg.gpus_per_worker > 0 else "cpu")
        self.actors = [actor_cls.remote(**args) for _ in range(cfg.workers)]
        self.workers = cfg.workers
        try:  # every actor has loaded the bundle (or its error surfaces here, before any scoring)
            ray.get([a.bundle_id.remote() for a in self.actors])
        except ray.exceptions.RayError as e:
            self.close()
            raise BackfillError(f"a Ray worker could not load the bundle: {_ray_cause(e)}") from None

    def map(self, batches: Iterable[list[tuple[str, str]]]) -> Iterator[list[ScoredSlice]]:
        ray = self.ray
        todo = iter(batches)
        inflight: dict[Any, Any] = {}

        def submit(actor: Any) -> None:
            b = next(todo, None)
            if b is not None:
                inflight[actor.score.remote(b)] = actor

        for actor in self.actors:
            for _ in range(_DEPTH):
                submit(actor)
        while inflight:
            done, _ = ray.wait(list(inflight), num_returns=1)
            actor = inflight.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:
                raise BackfillError(f"a Ray worker failed: {_ray_cause(e)}") from None
            submit(actor)
            yield result

    def close(self) -> None:
        for a in getattr(self, "actors", []):
            try:
                self.ray.kill(a)
            except self.ray.exceptions.RayError as e:
                log.debug("Ray worker already gone: %s", e)
        if self.owns_ray:
            self.ray.shutdown()


def _ray_cause(e: BaseException) -> str:
    cause = getattr(e, "cause", None) or getattr(e, "__cause__", None)
    return f"{type(cause or e).__name__}: {cause or e}"


# ----------------------------------------------------------------------------- the driver
def _verify(cfg: BackfillConfig) -> Any:
    from gsal_edge.scoring.bundle import verify_bundle

    try:
        keys = [Path(k) for k in cfg.trusted_keys]
        return verify_bundle(cfg.bundle, keys or None, allow_unsigned=cfg.allow_unsigned)
    except GSALError as e:
        raise BackfillError(f"--bundle {cfg.bundle}: {e}") from None


def _check(cfg: BackfillConfig) -> None:
    try:
        check_station(cfg.station, "--station")
    except StoreError as e:
        raise BackfillError(str(e)) from None
    for name in ("batch_size", "ingest_batch", "cpus_per_worker"):
        if getattr(cfg, name) < 1:
            raise BackfillError(f"{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.workers < 0 or (cfg.limit is not None and cfg.limit < 0):
        raise BackfillError(f"workers and limit must be >= 0, got {cfg.workers} and {cfg.limit}")


def _ingest(store: PoolStore, station: str, done: list[ScoredSlice], report: BackfillReport) -> None:
    items = [IngestItem(station, s.record, image=s.image, image_format=s.image_format, width=s.width,
                        height=s.height) for s in done if s.record is not None]
    if not items:
        return
    res: IngestResult = store.ingest(items)
    report.inserted += res.inserted
    report.duplicates += res.duplicates
    report.conflicts += res.conflicts
    report.scored += len(items)


def run_backfill(cfg: BackfillConfig, store: PoolStore, *, progress: bool = True) -> BackfillReport:
    """Score the archive's not-yet-stored slices with the bundle and ingest them; see the module doc."""
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    _check(cfg)
    manifest = _verify(cfg)
    listed = list_archive(cfg.images, cfg.recursive)
    stored = scored_slice_ids(store, cfg.station, manifest.bundle_id)
    todo = [s for s in listed if s.slice_id not in stored]
    skipped = len(listed) - len(todo)
    if cfg.limit is not None:
        todo = todo[:cfg.limit]
    worker_args = {"bundle_dir": str(manifest.root), "trusted_keys": list(cfg.trusted_keys),
                   "allow_unsigned": cfg.allow_unsigned, "station": cfg.station, "backend": cfg.backend,
                   "threads": cfg.threads, "limits": cfg.limits, "meta": dict(cfg.meta), "device": cfg.device}
    report = BackfillReport(manifest.bundle_id, cfg.station, "in-process" if cfg.in_process else "ray",
                            1 if cfg.in_process else cfg.workers, listed=len(listed), skipped=skipped)
    if not todo:
        report.seconds = time.perf_counter() - t0
        return report
    executor: InProcessExecutor | RayExecutor = (
        InProcessExecutor(worker_args) if cfg.in_process else RayExecutor(cfg, worker_args))
    pending: list[ScoredSlice] = []
    bar = tqdm(total=skipped + len(todo), initial=skipped, desc="backfill", unit="slice", disable=not progress)
    try:
        t1 = time.perf_counter()
        for results in executor.map(_batches(todo, cfg.batch_size)):
            for s in results:
                if s.error is not None:
                    report.failures.append((s.slice_id, s.error))
                    log.warning("%s: not scored (%s)", s.slice_id, s.error)
            pending.extend(s for s in results if s.record is not None)
            if len(pending) >= cfg.ingest_batch:
                _ingest(store, cfg.station, pending, report)
                pending = []
            bar.update(len(results))
            bar.set_postfix(rate=f"{(report.scored + len(pending)) / max(time.perf_counter() - t1, 1e-9):.1f}/s",
                            failed=report.failed, refresh=False)
        _ingest(store, cfg.station, pending, report)
        report.scoring_seconds = time.perf_counter() - t1
    finally:
        bar.close()
        executor.close()
    report.seconds = time.perf_counter() - t0
    return report
