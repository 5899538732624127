"""PyTorch backend: runs the same ``nn.Module`` wrappers that ``export/`` turns into ONNX."""

from __future__ import annotations

import logging

import numpy as np
import torch

from gsal_edge.scoring.runtime.base import ENGINE_SIGNATURES, check_feeds

log = logging.getLogger(__name__)


def set_cuda_tf32(allow: bool) -> None:
    """Allow or forbid TF32 in cuDNN convolutions and CUDA matmuls, process-wide (PyTorch's flags are global).

    PyTorch lets cuDNN convolutions round to TF32 by default. For GSAL scoring that is not harmless: on an
    H100 it moved detector proposals (one box by 83 px) and changed a proposal's concept against the CPU
    records, while fp32 matched the CPU to 3.5e-7 at the same speed (bench/gpu_check.sh, docs/results.md).
    """
    if torch.backends.cudnn.allow_tf32 != allow or torch.backends.cuda.matmul.allow_tf32 != allow:
        log.info("CUDA TF32 %s for convolutions and matmuls (process-wide)", "allowed" if allow else "off")
    torch.backends.cudnn.allow_tf32 = allow
    torch.backends.cuda.matmul.allow_tf32 = allow


class TorchEngine:
    """Wrap an ``nn.Module`` whose ``forward`` takes the engine's inputs positionally, in signature order.

    On a CUDA device the engine runs in fp32 (TF32 off, see :func:`set_cuda_tf32`) unless ``allow_tf32``.
    """

    backend = "torch"

    def __init__(self, name: str, module: torch.nn.Module, device: str = "cpu", allow_tf32: bool = False) -> None:
        if name not in ENGINE_SIGNATURES:
            raise ValueError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
        self.name = name
        self.device = torch.device(device)
        if self.device.type == "cuda":
            set_cuda_tf32(allow_tf32)
        self.module = module.to(self.device).eval()
        self._inputs = [s.name for s in ENGINE_SIGNATURES[name][0]]
        self._outputs = [s.name for s in ENGINE_SIGNATURES[name][1]]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.name, feeds)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])).to(self.device) for n in self._inputs]
        with torch.inference_mode():
            out = self.module(*args)
        if isinstance(out, torch.Tensor):
            out = (out,)
        if len(out) != len(self._outputs):
            raise RuntimeError(f"{self.name}: module returned {len(out)} outputs, expected {self._outputs}")
        return {n: t.detach().cpu().numpy() for n, t in zip(self._outputs, out)}
