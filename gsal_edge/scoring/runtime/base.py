"""The engine interface and the fixed signatures of the four station models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from gsal_edge.errors import GSALError


class EngineError(GSALError, RuntimeError):
    """An engine was fed inputs that do not match its signature, or failed to run."""


@dataclass(frozen=True)
class TensorSpec:
    """Name, dtype and shape of one engine input/output; ``None`` or a string marks a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | str | None, ...]


# The contract of docs/DESIGN.md "Engines" (also the ONNX input/output names).
ENGINE_SIGNATURES: dict[str, tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]] = {
    "vae_encoder": (
        (TensorSpec("image", "float32", ("batch", 3, "height", "width")),),
        (TensorSpec("latent", "float32", ("batch", "c", "h", "w")),),
    ),
    "unet": (
        (
            TensorSpec("latent", "float32", ("batch", "c", "h", "w")),
            TensorSpec("timestep", "int64", ("batch",)),
        ),
        (TensorSpec("eps", "float32", ("batch", "c", "h", "w")),),
    ),
    "clip_image": (
        (TensorSpec("image", "float32", ("batch", 3, "size", "size")),),
        (TensorSpec("embedding", "float32", ("batch", "dim")),),
    ),
    "detector": (
        (TensorSpec("image", "float32", (1, "height", "width")),),
        (
            TensorSpec("boxes", "float32", ("n", 4)),
            TensorSpec("scores", "float32", ("n",)),
            TensorSpec("labels", "int64", ("n",)),
            TensorSpec("class_probs", "float32", ("n", "classes")),
        ),
    ),
}


@runtime_checkable
class Engine(Protocol):
    """A loaded model: ``run`` maps named input arrays to named output arrays."""

    name: str
    backend: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def check_feeds(engine_name: str, feeds: dict[str, np.ndarray]) -> None:
    """Raise :class:`EngineError` naming the input when ``feeds`` do not fit the engine's signature."""
    if engine_name not in ENGINE_SIGNATURES:
        raise EngineError(f"unknown engine {engine_name!r}; known: {sorted(ENGINE_SIGNATURES)}")
    inputs, _ = ENGINE_SIGNATURES[engine_name]
    missing = [s.name for s in inputs if s.name not in feeds]
    if missing:
        raise EngineError(f"{engine_name}: missing input(s) {missing}")
    for spec in inputs:
        arr = feeds[spec.name]
        if not isinstance(arr, np.ndarray):
            raise EngineError(f"{engine_name}.{spec.name}: expected a numpy array, got {type(arr).__name__}")
        if arr.dtype != np.dtype(spec.dtype):
            raise EngineError(f"{engine_name}.{spec.name}: dtype {arr.dtype}, expected {spec.dtype}")
        if arr.ndim != len(spec.shape):
            raise EngineError(f"{engine_name}.{spec.name}: {arr.ndim}-D array {arr.shape}, expected {spec.shape}")
        for axis, (want, got) in enumerate(zip(spec.shape, arr.shape)):
            if isinstance(want, int) and want != got:
                raise EngineError(f"{engine_name}.{spec.name}: axis {axis} is {got}, expected {want}")
