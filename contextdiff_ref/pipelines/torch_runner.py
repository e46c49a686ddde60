"""The Torch backend of runtime.Generator: the reference modules behind the runtime's Runner protocol.

It lives here, not in ``runtime``, because it runs ``contextdiff_ref``'s modules and ``runtime`` never imports
torch or this package. On the CPU, NumPy arrays are shared with torch without copies (``torch.from_numpy``);
on a GPU, CuPy arrays through DLPack (``torch.from_dlpack`` / ``cupy.from_dlpack``), optionally in fp16.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch

from contextdiff_ref.models.graphs import graph_modules
from contextdiff_ref.models.model_dir import load_model_dir
from runtime.backends.base import RunnerBase
from runtime.generator import Generator
from runtime.manifest import load_manifest
from runtime.specs import SPECS, ComponentSpec

logger = logging.getLogger(__name__)


class TorchRunner(RunnerBase):
    """Runs one spec'd reference module (a ``contextdiff_ref.models.graphs`` wrapper) on ``device``."""

    def __init__(self, spec: ComponentSpec, module: torch.nn.Module, *, device: str = "cpu", fp16: bool = False, cuda_graphs: bool = True) -> None:
        super().__init__(spec)
        self.module, self.device, self.fp16 = module, torch.device(device), fp16
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        self._graphs: dict[tuple, tuple[Any, list[torch.Tensor], torch.Tensor]] = {}

    def _activate(self) -> None:
        self.module.to(self.device, torch.float16 if self.fp16 else torch.float32).eval()

    def _to_torch(self, value: Any) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else torch.from_dlpack(value)
        if self.fp16 and tensor.is_floating_point():
            tensor = tensor.half()
        return tensor.to(self.device)

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        inputs = [self._to_torch(feed[t.name]) for t in self.spec.inputs]
        with torch.inference_mode():
            out = self._replay(inputs) if self.cuda_graphs else self.module(*inputs)
            out = out.float().contiguous()
        if self.device.type == "cpu":
            return {self.spec.outputs[0].name: out.numpy()}
        import cupy

        return {self.spec.outputs[0].name: cupy.from_dlpack(out)}

    def _replay(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        """CUDA graphs, one per input shape: captured on first sight (after a warm-up on a side stream), then
        replayed with the inputs copied into the captured tensors — no per-kernel launch overhead."""
        key = tuple(tuple(x.shape) for x in inputs)
        if key not in self._graphs:
            static = [x.clone() for x in inputs]
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.module(*static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                output = self.module(*static)
            self._graphs[key] = (graph, static, output)
        graph, static, output = self._graphs[key]
        for target, source in zip(static, inputs):
            target.copy_(source)
        graph.replay()
        return output


def torch_generator(model_dir: str | os.PathLike[str], engine_dir: str | os.PathLike[str], *, device: str = "cpu", fp16: bool = False) -> Generator:
    """A runtime.Generator whose engines are the reference modules of ``model_dir``; ``engine_dir`` supplies the
    manifest, tokenizer and scheduler (its ONNX/plan files are not used)."""
    manifest = load_manifest(engine_dir, verify=False)
    modules = graph_modules(load_model_dir(model_dir))
    runners = {c: TorchRunner(SPECS[c], modules[c], device=device, fp16=fp16) for c in manifest.components}
    xp = np
    if torch.device(device).type == "cuda":
        import cupy as xp  # noqa: F811
    return Generator(manifest, runners, backend="torch", xp=xp)
