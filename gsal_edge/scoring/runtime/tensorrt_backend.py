"""TensorRT backend: runs a serialized engine (``.plan``) built by ``export/tensorrt_build.py``.

``tensorrt`` and CUDA are imported lazily, only when a :class:`TrtEngine` is created; elsewhere
:func:`tensorrt_status` says in one line why TensorRT cannot be used. Device buffers are torch CUDA
tensors (torch is already a dependency), so no pycuda / cuda-python is needed. Outputs with
data-dependent shapes (the detector's N detections) go through an ``IOutputAllocator``.
Written against the TensorRT 10 tensor API (``set_input_shape`` / ``set_tensor_address`` /
``execute_async_v3``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, EngineError, check_feeds


def tensorrt_status() -> tuple[bool, str]:
    """(usable, one-line reason): TensorRT importable and a CUDA GPU visible to torch."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return False, f"TensorRT not installed ({e.name or 'tensorrt'} missing)"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, f"TensorRT {trt.__version__} present but no CUDA GPU is visible"
        return True, f"TensorRT {trt.__version__} on {torch.cuda.get_device_name(0)}"
    except Exception as e:  # noqa: BLE001 - a broken CUDA install raises anything from deep inside torch
        return False, f"TensorRT present but CUDA is unusable ({e})"


def _torch_dtype(np_dtype: np.dtype) -> Any:
    import torch

    return {
        np.dtype(np.float32): torch.float32,
        np.dtype(np.float16): torch.float16,
        np.dtype(np.int64): torch.int64,
        np.dtype(np.int32): torch.int32,
        np.dtype(np.int8): torch.int8,
        np.dtype(np.uint8): torch.uint8,
        np.dtype(np.bool_): torch.bool,
    }[np.dtype(np_dtype)]


def _make_output_allocator(trt: Any, device: Any) -> Any:
    """An ``IOutputAllocator`` that hands TensorRT torch byte buffers for data-dependent outputs."""
    import torch

    class _Alloc(trt.IOutputAllocator):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IOutputAllocator.__init__(self)
            self.buffers: dict[str, Any] = {}
            self.shapes: dict[str, tuple[int, ...]] = {}

        def reallocate_output(self, name: str, memory: int, size: int, alignment: int) -> int:
            buf = self.buffers.get(name)
            if buf is None or buf.numel() < size:
                buf = torch.empty(max(int(size), 1), dtype=torch.uint8, device=device)
                self.buffers[name] = buf
            return int(buf.data_ptr())

        def reallocate_output_async(self, name: str, memory: int, size: int, alignment: int, stream: int) -> int:
            return self.reallocate_output(name, memory, size, alignment)

        def notify_shape(self, name: str, shape: Any) -> None:
            self.shapes[name] = tuple(int(d) for d in shape)

    return _Alloc()


class TrtEngine:
    """An :class:`gsal_edge.scoring.runtime.Engine` running one TensorRT plan on one GPU."""

    backend = "tensorrt"

    def __init__(self, name: str, plan_path: str | Path, device: int = 0) -> None:
        ok, why = tensorrt_status()
        if not ok:
            raise EngineError(f"{plan_path}: cannot run engine {name!r}: {why}")
        import tensorrt as trt
        import torch

        if name not in ENGINE_SIGNATURES:
            raise EngineError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
        self.name = name
        self.path = Path(plan_path)
        self.device = torch.device("cuda", device)
        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self.device):
            self.engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise EngineError(f"{self.path}: TensorRT could not deserialize the plan (other GPU or version?)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        ins, outs = ENGINE_SIGNATURES[name]
        if sorted(self._inputs) != sorted(s.name for s in ins) or sorted(self._outputs) != sorted(s.name for s in outs):
            raise EngineError(f"{self.path}: plan I/O {self._inputs}/{self._outputs} does not match engine {name!r}")
        self._out_dtype = {s.name: np.dtype(s.dtype) for s in outs}
        self._dtype = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._alloc = _make_output_allocator(trt, self.device)
        self._dynamic_out = {n for n in self._outputs if any(d < 0 for d in self.engine.get_tensor_shape(n))}
        self._uses_allocator = False

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        check_feeds(self.name, feeds)
        ctx = self.context
        keep: list[Any] = []
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            for n in self._inputs:
                arr = np.ascontiguousarray(feeds[n], dtype=self._dtype[n])
                t = torch.from_numpy(arr).to(self.device, non_blocking=False)
                keep.append(t)
                if not ctx.set_input_shape(n, tuple(arr.shape)):
                    raise EngineError(f"{self.name}: input {n} shape {arr.shape} is outside the plan's profile")
                ctx.set_tensor_address(n, int(t.data_ptr()))
            fixed: dict[str, Any] = {}
            for n in self._outputs:
                shape = tuple(ctx.get_tensor_shape(n))
                if n in self._dynamic_out or any(d < 0 for d in shape):
                    ctx.set_output_allocator(n, self._alloc)
                else:
                    t = torch.empty(shape, dtype=_torch_dtype(self._dtype[n]), device=self.device)
                    fixed[n] = t
                    ctx.set_tensor_address(n, int(t.data_ptr()))
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise EngineError(f"{self.name} ({self.path.name}): TensorRT execution failed")
            self.stream.synchronize()
            out: dict[str, np.ndarray] = {}
            for n in self._outputs:
                if n in fixed:
                    arr = fixed[n].cpu().numpy()
                else:
                    shape = self._alloc.shapes[n]
                    count = int(np.prod(shape)) if shape else 1
                    nbytes = count * self._dtype[n].itemsize
                    raw = self._alloc.buffers[n][:nbytes].cpu().numpy()
                    arr = raw.view(self._dtype[n])[:count].reshape(shape)
                out[n] = arr.astype(self._out_dtype[n], copy=False)
        return out

    def __repr__(self) -> str:
        return f"TrtEngine({self.name!r}, {str(self.path)!r}, device={self.device})"
