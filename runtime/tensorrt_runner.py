"""TensorRT runner: one deserialized plan, CuPy buffers bound once, CUDA-graph replay for static shapes.

Written against TensorRT 10's documented Python API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). TensorRT cannot be installed where this package is developed, so
this module is exercised only where ``import tensorrt`` works; it is imported lazily by runtime.generator.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from runtime.runners import RunnerBase
from runtime.specs import ComponentSpec, ModelDims, Profile

logger = logging.getLogger(__name__)


class TensorRTRunner(RunnerBase):
    """Inputs are copied into buffers bound at activation (so a captured CUDA graph stays valid); outputs are views
    of bound buffers, valid until the next ``infer`` — the denoising loop consumes them before calling again."""

    def __init__(self, spec: ComponentSpec, plan: Path, model: ModelDims, profile: Profile, *, device_id: int = 0) -> None:
        super().__init__(spec)
        self.plan, self.model, self.profile, self.device_id = plan, model, profile, device_id
        self.static = profile.min == profile.max
        self._graph = None
        self._shapes: dict[str, tuple[int, ...]] | None = None

    def _activate(self) -> None:
        import cupy as cp
        import tensorrt as trt

        cp.cuda.Device(self.device_id).use()
        self._trt_logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {self.plan}")
        self._context = self._engine.create_execution_context()
        self._stream = cp.cuda.Stream(non_blocking=False)  # blocking: ordered after the loop's default-stream work
        largest = {**self.spec.input_shapes(self.model, *self.profile.max), **self.spec.output_shapes(self.model, *self.profile.max)}
        self._buffers = {t.name: cp.empty(largest[t.name], dtype=np.dtype(t.dtype)) for t in self.spec.inputs + self.spec.outputs}

    def close(self) -> None:
        self._graph = self._context = self._engine = self._runtime = None
        self._buffers = {}
        super().close()

    def _bind(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
        """Set input shapes and tensor addresses for ``shapes``; returns the views in the bound buffers."""
        views = {}
        for tensor in self.spec.inputs:
            shape = shapes[tensor.name]
            views[tensor.name] = self._buffers[tensor.name].ravel()[: int(np.prod(shape))].reshape(shape)
            self._context.set_input_shape(tensor.name, shape)
        for tensor in self.spec.outputs:
            shape = tuple(self._context.get_tensor_shape(tensor.name))
            views[tensor.name] = self._buffers[tensor.name].ravel()[: int(np.prod(shape))].reshape(shape)
        for name, view in views.items():
            self._context.set_tensor_address(name, view.data.ptr)
        return views

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import cupy as cp

        shapes = {t.name: tuple(feed[t.name].shape) for t in self.spec.inputs}
        if shapes != self._shapes:
            self._views, self._shapes, self._graph = self._bind(shapes), shapes, None
        with self._stream:
            for tensor in self.spec.inputs:
                self._views[tensor.name][...] = cp.asarray(feed[tensor.name])
            if self._graph is not None:
                self._graph.launch(self._stream)
            elif self.static:  # capture once, replay every later call: no per-call launch overhead
                self._stream.begin_capture()
                self._context.execute_async_v3(self._stream.ptr)
                self._graph = self._stream.end_capture()
                self._graph.launch(self._stream)
            else:
                self._context.execute_async_v3(self._stream.ptr)
        self._stream.synchronize()
        return {t.name: self._views[t.name] for t in self.spec.outputs}
