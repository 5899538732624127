"""One small engine interface and its backends (PyTorch, ONNX Runtime, TensorRT).

Every model the station runs is an :class:`Engine`: named numpy arrays in, named numpy arrays out,
with the input/output names of docs/DESIGN.md ("Engines") — which are also the ONNX graph names —
so the scoring pipeline runs unchanged on any backend. The backends live in their own modules
(``torch_backend.TorchEngine``, ``onnxruntime_backend.OrtEngine``, ``tensorrt_backend.TrtEngine``)
and are imported only where used: this package stays free of torch.
"""

from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, Engine, EngineError, TensorSpec, check_feeds

__all__ = ["ENGINE_SIGNATURES", "Engine", "EngineError", "TensorSpec", "check_feeds"]
