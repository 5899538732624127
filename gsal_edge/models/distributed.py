"""torch.distributed plumbing for data-parallel detector training (DDP), library side.

* :func:`init_from_env` / :func:`teardown`: join / leave the process group that ``torchrun`` describes
  in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``);
  backend ``gloo`` on CPU, ``nccl`` when the process trains on a CUDA device.
* :func:`current`: the :class:`DistContext` of this process when it is one of >= 2 ranks, else None;
  :func:`gsal_edge.models.detector_training.train_detector` reads it to shard its batches.
* :func:`shard_positions`, :func:`all_reduce_mean`, :func:`wrap_model`: the three pieces the training
  loop needs (``DistributedSampler`` sharding, logged-loss averaging, the DDP wrapper).
* :func:`torchrun_command` / :func:`launch`: start ``python -m torch.distributed.run`` as a subprocess.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from gsal_edge.errors import GSALError

BACKENDS = ("auto", "gloo", "nccl")


class DistributedError(GSALError, RuntimeError):
    """The process group cannot be set up, or a torchrun launch failed; the message says why."""


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, checkpoints and evaluates."""
        return self.rank == 0

    @property
    def device(self) -> str:
        """The device this rank trains on: ``cuda:LOCAL_RANK`` with nccl, else ``cpu``."""
        return f"cuda:{self.local_rank}" if self.backend == "nccl" else "cpu"


def env_world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment; (0, 1, 0) outside torchrun."""
    try:
        return (int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError as e:
        raise DistributedError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {e}") from None


def choose_backend(backend: str = "auto", device: str | None = None) -> str:
    """``nccl`` when training on CUDA (``device`` cuda, or auto with a GPU present), else ``gloo``."""
    if backend not in BACKENDS:
        raise DistributedError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if backend == "nccl" and not torch.cuda.is_available():
            raise DistributedError("backend nccl needs a CUDA GPU; use gloo on CPU")
        return backend
    on_cuda = device.startswith("cuda") if device else torch.cuda.is_available()
    return "nccl" if on_cuda and dist.is_nccl_available() else "gloo"


def init_from_env(backend: str = "auto", device: str | None = None) -> DistContext:
    """Join the process group torchrun describes (a no-op context of one rank outside torchrun)."""
    rank, world, local = env_world()
    be = choose_backend(backend, device)
    if world > 1 and not dist.is_initialized():
        if not dist.is_available():
            raise DistributedError("this torch build has no torch.distributed")
        if be == "nccl":
            torch.cuda.set_device(local)
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {missing} unset: start the workers with torchrun")
        dist.init_process_group(backend=be, rank=rank, world_size=world)
    return DistContext(rank, world, local, be)


def teardown() -> None:
    """Wait for every rank, then leave the process group (nothing to do outside one)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def current() -> DistContext | None:
    """This process's context when an initialized process group has >= 2 ranks, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    _, _, local = env_world()
    return DistContext(dist.get_rank(), dist.get_world_size(), local, dist.get_backend())


def shard_positions(n_samples: int, ctx: DistContext | None) -> np.ndarray:
    """The positions (0..n_samples-1 of an epoch's already shuffled sample order) this rank trains on.

    ``DistributedSampler(shuffle=False)``: rank r gets positions r, r + N, r + 2N, ... (the list padded
    to a multiple of N by repeating its start), so consecutive runs of ``batch / N`` of them, taken on
    every rank, make up exactly the single-process batch of ``batch`` positions. One rank: all of them.
    """
    if ctx is None:
        return np.arange(n_samples)
    from torch.utils.data.distributed import DistributedSampler

    sampler = DistributedSampler(range(n_samples), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=False)
    return np.fromiter(iter(sampler), dtype=np.int64, count=len(sampler))


def all_reduce_mean(values: dict[str, float], ctx: DistContext | None) -> dict[str, float]:
    """The mean over ranks of each value (every rank must pass the same keys, in the same order)."""
    if ctx is None or not values:
        return dict(values)
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / ctx.world_size for k, v in zip(values, t.tolist())}


def wrap_model(model: torch.nn.Module, ctx: DistContext | None) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` (gradients averaged over ranks) or ``model`` on one rank."""
    if ctx is None:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.local_rank] if ctx.backend == "nccl" else None
    return DistributedDataParallel(model, device_ids=ids)


# ---------------------------------------------------------------------------------------- launching


def torchrun_command(module: str, args: Sequence[str], nproc: int, *, nnodes: int = 1,
                     python: str | None = None) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc_per_node N -m MODULE ARGS`` (one node)."""
    if nproc < 1:
        raise DistributedError(f"nproc must be >= 1, got {nproc}")
    if nnodes != 1:
        raise DistributedError("launch() starts one node; on several nodes run torchrun on each "
                               "(see docs/distributed-training.md)")
    return [python or sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
            "--nproc_per_node", str(nproc), "-m", module, *map(str, args)]


def launch(module: str, args: Sequence[str], nproc: int, *, log_path: str | Path | None = None,
           echo: bool = False, threads_per_proc: int | None = None, timeout_s: float | None = None,
           cwd: str | Path | None = None) -> None:
    """Run ``module`` under torchrun with ``nproc`` local processes and wait for it.

    Output goes to ``log_path`` (and to stderr with ``echo``). ``threads_per_proc`` sets
    ``OMP_NUM_THREADS`` of every worker. After ``timeout_s`` the whole process group is killed.
    A non-zero exit raises :class:`DistributedError` with the end of the output.
    """
    cmd = torchrun_command(module, args, nproc)
    env = dict(os.environ)
    if threads_per_proc is not None:
        env["OMP_NUM_THREADS"] = str(threads_per_proc)
    if Path("/sys/class/net/lo").exists():
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: keep gloo's traffic on the loopback
    env["PYTHONUNBUFFERED"] = "1"
    # the workers import the same gsal_edge as this process (an editable install may point elsewhere)
    here = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    tail = bytearray()
    log = open(log_path, "wb") if log_path is not None else None  # noqa: SIM115 - closed below
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                start_new_session=True)
        timer = threading.Timer(timeout_s, _kill_group, (proc,)) if timeout_s else None
        if timer:
            timer.start()
        try:
            assert proc.stdout is not None
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                if log:
                    log.write(chunk)
                if echo:
                    sys.stderr.buffer.write(chunk)
                    sys.stderr.flush()
                tail = (tail + chunk)[-6000:]
            rc = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None:
                _kill_group(proc)
    finally:
        if log:
            log.close()
    if rc != 0:
        why = f"killed after {timeout_s:g}s" if rc in (-signal.SIGKILL, -signal.SIGTERM) else f"exit code {rc}"
        raise DistributedError(f"torchrun ({nproc} processes, {module}) failed: {why}"
                               f"{f' (log {log_path})' if log_path else ''}\n"
                               f"{tail.decode(errors='replace')[-3000:]}")


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM torchrun and its workers (their own session), SIGKILL what is left after 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
