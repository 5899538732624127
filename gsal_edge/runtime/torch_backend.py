"""PyTorch backend: runs the same ``nn.Module`` wrappers that ``export/`` turns into ONNX."""

from __future__ import annotations

import numpy as np
import torch

from gsal_edge.runtime.base import ENGINE_SIGNATURES, check_feeds


class TorchEngine:
    """Wrap an ``nn.Module`` whose ``forward`` takes the engine's inputs positionally, in signature order."""

    backend = "torch"

    def __init__(self, name: str, module: torch.nn.Module, device: str = "cpu") -> None:
        if name not in ENGINE_SIGNATURES:
            raise ValueError(f"unknown engine {name!r}; known: {sorted(ENGINE_SIGNATURES)}")
        self.name = name
        self.device = torch.device(device)
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
