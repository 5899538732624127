"""ONNX Runtime backend: one ``InferenceSession`` per engine, CPU execution provider by default.

CUDA / TensorRT execution providers are used when asked for and present (:func:`gpu_providers`).
The session's input/output names are checked against ``ENGINE_SIGNATURES`` when it is opened, so a
wrong model file fails at load time with the file named, not at the first request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
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


def _default_threads() -> int:
    """Intra-op threads: ``GSAL_ORT_THREADS`` or 0 (= let onnxruntime choose)."""
    return int(os.environ.get("GSAL_ORT_THREADS", "0"))


class OrtEngine:
    """An :class:`gsal_edge.scoring.runtime.Engine` running one ONNX file in ONNX Runtime."""

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        path: str | Path,
        providers: Sequence[ProviderLike] | None = None,
        threads: int | None = None,
    ) -> None:
        import onnxruntime as ort

        if name not in ENGINE_SIGNATURES:
            raise EngineError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise EngineError(f"{self.path}: ONNX file for engine {name!r} not found")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = _default_threads() if threads is None else int(threads)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: EP fallbacks are reported through ``providers``
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

    def __repr__(self) -> str:
        return f"OrtEngine({self.name!r}, {str(self.path)!r}, providers={self.providers})"
