"""One small engine interface and its backends (PyTorch, ONNX Runtime, TensorRT).

Every model the station runs is an :class:`Engine`: named numpy arrays in, named numpy arrays out,
with the input/output names of docs/DESIGN.md ("Engines") — which are also the ONNX graph names —
so the scoring pipeline runs unchanged on any backend.
"""

from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, Engine, EngineError, TensorSpec, check_feeds
from gsal_edge.scoring.runtime.torch_backend import TorchEngine

__all__ = ["ENGINE_SIGNATURES", "Engine", "EngineError", "TensorSpec", "TorchEngine", "check_feeds"]
