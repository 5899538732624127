"""ONNX Runtime backend: one ``InferenceSession`` per engine, CPU execution provider by default.

Session options are explicit (:class:`OrtSessionSettings`: threads, graph optimization, execution mode,
spinning, profiling), from the caller or the ``GSAL_ORT_*`` environment variables.
CUDA / TensorRT execution providers are used when asked for and present (:func:`gpu_providers`).
The session's input/output names are checked against ``ENGINE_SIGNATURES`` when it is opened, so a
wrong model file fails at load time with the file named, not at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, EngineError, check_feeds

ProviderLike = str | tuple[str, dict[str, Any]]


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers."""
    import onnxruntime as ort

    return list(ort.get_available_providers())


def gpu_providers(device_id: int = 0, tensorrt: bool = False) -> list[ProviderLike]:
    """CUDA (and optionally the TensorRT EP) first where present, always ending with CPU."""
    have = set(available_providers())
    out: list[ProviderLike] = []
    if tensorrt and "TensorrtExecutionProvider" in have:
        out.append(("TensorrtExecutionProvider", {"device_id": device_id}))
    if "CUDAExecutionProvider" in have:
        out.append(("CUDAExecutionProvider", {"device_id": device_id}))
    out.append("CPUExecutionProvider")
    return out


EXECUTION_MODES = ("sequential", "parallel")
GRAPH_OPT_LEVELS = ("disable", "basic", "extended", "all")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, not the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class OrtSessionSettings:
    """ONNX Runtime session options, set explicitly instead of left to onnxruntime's defaults.

    ``intra_op_threads`` 0 means :func:`available_cores`. ``allow_spinning`` off: an idle intra-op thread
    sleeps instead of busy-waiting, which on a loaded or small CPU (four sessions, each with its own
    pool, plus the gRPC threads) was the difference between ORT being slower or faster than PyTorch.
    ``profile_dir``: write onnxruntime's per-node JSON profile there (``OrtEngine.end_profiling``).
    """

    intra_op_threads: int = 0
    inter_op_threads: int = 1
    execution_mode: str = "sequential"
    graph_optimization: str = "all"
    allow_spinning: bool = False
    profile_dir: str | None = None

    def __post_init__(self) -> None:
        if self.intra_op_threads < 0 or self.inter_op_threads < 1:
            raise EngineError(f"ORT threads: intra_op {self.intra_op_threads} must be >= 0 (0 = all cores), "
                              f"inter_op {self.inter_op_threads} >= 1")
        if self.execution_mode not in EXECUTION_MODES:
            raise EngineError(f"ORT execution_mode {self.execution_mode!r}: expected one of {EXECUTION_MODES}")
        if self.graph_optimization not in GRAPH_OPT_LEVELS:
            raise EngineError(f"ORT graph_optimization {self.graph_optimization!r}: expected one of {GRAPH_OPT_LEVELS}")

    @property
    def threads(self) -> int:
        """The intra-op thread count actually used."""
        return self.intra_op_threads or available_cores()

    @classmethod
    def from_env(cls, threads: int | None = None) -> OrtSessionSettings:
        """Settings from ``GSAL_ORT_THREADS``, ``GSAL_ORT_INTER_THREADS``, ``GSAL_ORT_EXECUTION_MODE``,
        ``GSAL_ORT_GRAPH_OPT``, ``GSAL_ORT_SPINNING`` (1/0), ``GSAL_ORT_PROFILE_DIR``; ``threads`` wins."""
        env = os.environ
        try:
            intra = int(env.get("GSAL_ORT_THREADS", "0")) if threads is None else int(threads)
            inter = int(env.get("GSAL_ORT_INTER_THREADS", "1"))
        except ValueError as e:
            raise EngineError(f"GSAL_ORT_THREADS / GSAL_ORT_INTER_THREADS must be integers ({e})") from e
        return cls(
            intra_op_threads=intra,
            inter_op_threads=inter,
            execution_mode=env.get("GSAL_ORT_EXECUTION_MODE", "sequential"),
            graph_optimization=env.get("GSAL_ORT_GRAPH_OPT", "all"),
            allow_spinning=env.get("GSAL_ORT_SPINNING", "0").strip().lower() in ("1", "true", "yes", "on"),
            profile_dir=env.get("GSAL_ORT_PROFILE_DIR") or None,
        )

    def session_options(self, engine_name: str) -> Any:
        """An ``onnxruntime.SessionOptions`` carrying these settings."""
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = self.inter_op_threads
        opts.execution_mode = (ort.ExecutionMode.ORT_PARALLEL if self.execution_mode == "parallel"
                               else ort.ExecutionMode.ORT_SEQUENTIAL)
        opts.graph_optimization_level = levels[self.graph_optimization]
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if self.allow_spinning else "0")
        if self.profile_dir:
            Path(self.profile_dir).mkdir(parents=True, exist_ok=True)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(self.profile_dir) / f"ort_{engine_name}")
        opts.log_severity_level = 3  # errors only: EP fallbacks are reported through ``providers``
        return opts

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "intra_op_threads": self.threads}


class OrtEngine:
    """An :class:`gsal_edge.scoring.runtime.Engine` running one ONNX file in ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        path: str | Path,
        providers: Sequence[ProviderLike] | None = None,
        threads: int | None = None,
        settings: OrtSessionSettings | None = None,
    ) -> None:
        """``settings`` default to :meth:`OrtSessionSettings.from_env` (``threads`` overrides their count)."""
        import onnxruntime as ort

        if name not in ENGINE_SIGNATURES:
            raise EngineError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"{self.path}: ONNX file for engine {name!r} not found")
        if settings is None:
            settings = OrtSessionSettings.from_env(threads)
        elif threads is not None:
            settings = replace(settings, intra_op_threads=int(threads))
        self.settings = settings
        opts = settings.session_options(name)
        have = set(available_providers())
        want = list(providers) if providers else ["CPUExecutionProvider"]
        usable = [p for p in want if (p if isinstance(p, str) else p[0]) in have]
        if not usable:
            raise EngineError(f"{self.path}: none of the providers {want} is available (have {sorted(have)})")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts, providers=usable)
        except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            raise EngineError(f"{self.path}: onnxruntime could not load it ({e})") from e
        self.providers = list(self.session.get_providers())
        ins, outs = ENGINE_SIGNATURES[name]
        self._inputs = [s.name for s in ins]
        self._outputs = [s.name for s in outs]
        got_in = sorted(i.name for i in self.session.get_inputs())
        got_out = [o.name for o in self.session.get_outputs()]
        if got_in != sorted(self._inputs) or sorted(got_out) != sorted(self._outputs):
            raise EngineError(
                f"{self.path}: graph has inputs {got_in} / outputs {got_out}, "
                f"engine {name!r} needs {self._inputs} / {self._outputs}"
            )

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, feeds)
        try:
            out = self.session.run(self._outputs, {n: np.ascontiguousarray(feeds[n]) for n in self._inputs})
        except Exception as e:
            shapes = {n: feeds[n].shape for n in self._inputs}
            raise EngineError(f"{self.name} ({self.path.name}): onnxruntime failed on inputs {shapes}: {e}") from e
        return dict(zip(self._outputs, out))

    def end_profiling(self) -> Path | None:
        """Stop onnxruntime's profiler and return its JSON file (None when profiling is off)."""
        if not self.settings.profile_dir:
            return None
        return Path(self.session.end_profiling())

    def __repr__(self) -> str:
        return f"OrtEngine({self.name!r}, {str(self.path)!r}, providers={self.providers})"
