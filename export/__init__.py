"""Turn checkpoints into a deployable, signed bundle: ONNX (+TensorRT) engines, parity checks, manifest.

``config`` (ExportConfig: ONNX options, tolerances, TensorRT profiles), ``sources`` (where the
checkpoints are, the PyTorch reference), ``onnx_export`` (one engine -> ONNX), ``parity`` (ONNX Runtime
vs PyTorch, TensorRT vs ORT), ``tensorrt_build`` (plans, lazy), ``bundle_writer`` + ``signing`` (folder,
manifest, ed25519), ``pipeline`` (the whole ``gsal-edge export``), ``tiny`` (random-init sources for
tests), ``cli`` (its typer app). Stations read bundles with ``gsal_edge.scoring.bundle`` and never import
this package.
"""
