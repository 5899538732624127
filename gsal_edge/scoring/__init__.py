"""The station's scoring runtime: :class:`~gsal_edge.scoring.scorer.GSALScorer` (slices in, spec §11
records out), bundles (manifest, hashes, signatures, loading) and the engine backends in ``runtime/``.

The ONNX Runtime path (``scorer``, ``bundle`` with ``backend="onnxruntime"``, ``runtime.base``,
``runtime.onnxruntime_backend``) imports no torch — a CPU station needs none. Torch is imported only by
``torch_scorer`` and ``runtime.torch_backend``, on request. Must not import :mod:`gsal_edge.benchmark`.
"""
