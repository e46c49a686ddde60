"""TensorRT runner: one deserialized plan, CuPy buffers bound once, a CUDA graph per input shape.

Written against TensorRT 10's documented Python API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``) and its CUDA-graph guidance: after a shape change, enqueue once
before capturing; capture on a non-blocking stream (capture must not touch the legacy default stream). TensorRT
cannot be installed where this package is developed, so the TensorRT calls run only where TensorRT and a GPU
work; the bookkeeping (``GraphBook``: when to rebind, run, capture or replay) is plain Python and tested on the CPU.
Plans built with ``--tensorrt-runtime lean`` run through the lean runtime's module (``tensorrt_lean``), whose
Python API for deserializing and running engines is the full one's. LoRAs refit plans built with ``--tensorrt-refit``
(runtime/backends/tensorrt_refit.py, written and not run, like the rest of this module).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Hashable, Iterable, Mapping

import numpy as np

from runtime.backends import cuda_driver
from runtime.backends.base import RunnerBase
from runtime.backends.tensorrt_refit import REBUILD_REFIT, apply_refit, refit_weights, stage_refit
from runtime.errors import RunnerError
from runtime.options import PlanRuntime
from runtime.specs import ComponentSpec, ModelDims, Profile

logger = logging.getLogger(__name__)

# Import names, in order of preference: the ``tensorrt_lean`` meta-package re-exports the bindings wheel's module.
_MODULES = {PlanRuntime.FULL: ("tensorrt",), PlanRuntime.LEAN: ("tensorrt_lean", "tensorrt_lean_bindings")}
# The wheels per CUDA major ({cu}: cu12 or cu13; both exist from TensorRT 10.13.2 on, cu12 alone before).
_PACKAGES = {PlanRuntime.FULL: "tensorrt-{cu}=={v}", PlanRuntime.LEAN: "tensorrt-lean-{cu}-libs=={v} tensorrt-lean-{cu}-bindings=={v}"}


def tensorrt_module_name(runtime: PlanRuntime) -> str | None:
    """The importable module that runs ``runtime``'s plans here, or None (nothing is imported)."""
    return next((name for name in _MODULES[runtime] if importlib.util.find_spec(name) is not None), None)


def import_tensorrt(runtime: PlanRuntime) -> ModuleType:
    name = tensorrt_module_name(runtime)
    if name is None:
        raise ImportError(f"none of {', '.join(_MODULES[runtime])} is installed")
    return importlib.import_module(name)


_FIRST_CU13 = (10, 13, 2)  # the first TensorRT with cu13 wheels (10.13.2.6); a CUDA 13 driver also runs the cu12 ones


def cuda_wheel_tag(driver_version: str | None, tensorrt_version: str) -> str:
    """"cu13" where the CUDA driver is 13 or newer and TensorRT ``tensorrt_version`` has cu13 wheels, else "cu12"
    (also without a driver)."""
    major = int(driver_version.split(".")[0]) if driver_version else 12
    release = tuple(int(p) for p in tensorrt_version.split(".")[:3] if p.isdigit())
    return "cu13" if major >= 13 and release >= _FIRST_CU13 else "cu12"


def install_hint(runtime: PlanRuntime, version: str) -> str:
    """The pip command that installs what runs ``runtime`` plans built by TensorRT ``version``, for this machine's
    CUDA major (the driver's version, runtime/backends/cuda_driver.py)."""
    return "pip install " + _PACKAGES[runtime].format(v=version, cu=cuda_wheel_tag(cuda_driver.driver_version(), version))


MAX_GRAPHS = 16  # captured graphs kept per runner (one per distinct input shape); later shapes run uncaptured


@dataclass(frozen=True)
class Action:
    rebind: bool  # the input shapes differ from the context's: set them (and the addresses) before this call
    how: str  # "run" (plain enqueue), "capture" (capture a graph, then launch it) or "replay" (launch a captured graph)


class GraphBook:
    """Per input-shape key: the first call after a shape change runs plainly (TensorRT's required enqueue after a
    shape change), a second call with the same shape captures a CUDA graph, every later one replays it — also after
    other shapes came in between. ``clear()`` forgets everything (a closed runner rebinds from scratch)."""

    def __init__(self, max_graphs: int = MAX_GRAPHS) -> None:
        self.max_graphs = max_graphs
        self.clear()

    def clear(self) -> None:
        self.bound: Hashable | None = None
        self.graphs: dict[Hashable, Any] = {}

    def next(self, key: Hashable) -> Action:
        rebind, self.bound = key != self.bound, key
        if key in self.graphs:
            return Action(rebind, "replay")
        if not rebind and len(self.graphs) < self.max_graphs:
            return Action(False, "capture")
        return Action(rebind, "run")

    def captured(self, key: Hashable, graph: Any) -> None:
        self.graphs[key] = graph


class TensorRTRunner(RunnerBase):
    """Inputs are copied into buffers bound at activation (so captured graphs stay valid); outputs are views of
    bound buffers, valid until the next ``infer`` — the denoising loop consumes them before calling again."""

    def __init__(self, spec: ComponentSpec, plan: Path, model: ModelDims, profile: Profile, *, device_id: int = 0,
                 cuda_graphs: bool = True, plan_runtime: PlanRuntime = PlanRuntime.FULL, refittable: bool = False,
                 base_weights: Callable[[Iterable[str]], Mapping[str, np.ndarray]] | None = None) -> None:  # fmt: skip
        """``plan_runtime``: the TensorRT the plan was built for — the full one, or the lean runtime (the same Python
        API for deserializing and running engines). ``refittable``: the plan was built with ``--tensorrt-refit`` (its
        manifest entry says so); ``base_weights(names)``: the base values of initializers, as stored in the artifact
        (runtime.lora.base_initializers) — both needed for LoRAs (runtime/backends/tensorrt_refit.py)."""
        super().__init__(spec)
        self.plan, self.model, self.profile, self.device_id, self.plan_runtime = plan, model, profile, device_id, plan_runtime
        self.refittable, self.base_weights = refittable, base_weights or (lambda names: {})
        self.book = GraphBook(MAX_GRAPHS if cuda_graphs else 0)
        self._views: dict[str, Any] = {}
        self._pending: dict[str, np.ndarray] = {}  # the LoRA'd initializers in use: refit at (every) activation
        self._refitted: set[str] = set()  # the initializers the engine holds LoRA'd values of

    def prepare_weights(self, weights: Any) -> Callable[[], None]:
        """LoRA weights (runtime.lora.ComponentWeights; None: the base): checked on a fresh ``trt.Refitter`` now, refit
        by the returned call (runtime/backends/tensorrt_refit.py); a plan built without ``--tensorrt-refit`` is refused."""
        where = f"TensorRT {self.spec.name} ({self.plan.name})"
        if not self.refittable:
            raise RunnerError(f"{where}: the plan was built without --tensorrt-refit, so it cannot take a LoRA's weights; {REBUILD_REFIT}")
        new = dict(weights.initializers) if weights is not None else {}
        if not self.active:
            return lambda: setattr(self, "_pending", new)
        refitter, held = self._stage(new, where)

        def commit() -> None:
            self._refit(refitter, held, where)
            self._refitted, self._pending = set(new), new

        return commit

    def _stage(self, new: Mapping[str, np.ndarray], where: str) -> tuple[Any, dict[str, np.ndarray]]:
        weights = refit_weights(self._refitted, new, self.base_weights)
        return stage_refit(self._trt, self._engine, self._trt_logger, weights, self.base_weights, where)

    def _refit(self, refitter: Any, held: Mapping[str, np.ndarray], where: str) -> None:
        """Refit once the engine has no work queued; captured CUDA graphs are dropped (captured again at their next calls).
        ``held``: the arrays the refitter reads, alive until it returns."""
        self._stream.synchronize()
        try:
            apply_refit(refitter, where)
        except RunnerError:
            self.close()  # the engine's weights are unknown: never run it
            raise
        self.book.clear()

    def _activate(self) -> None:
        import cupy as cp

        trt = import_tensorrt(self.plan_runtime)
        with cp.cuda.Device(self.device_id):
            self._trt_logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._trt_logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.plan.read_bytes())
            if self._engine is None:
                raise RunnerError(f"TensorRT could not deserialize {self.plan}")
            self._context = self._engine.create_execution_context()
            self._stream = cp.cuda.Stream(non_blocking=True)  # capture must not touch the legacy default stream
            largest = {**self.spec.input_shapes(self.model, *self.profile.max), **self.spec.output_shapes(self.model, *self.profile.max)}
            self._buffers = {t.name: cp.empty(largest[t.name], dtype=np.dtype(t.dtype)) for t in self.spec.inputs + self.spec.outputs}
            self._trt, self._refitted = trt, set()  # a deserialized plan holds the base weights
            if self.refittable and not self._engine.refittable:
                raise RunnerError(f"TensorRT {self.spec.name}: the manifest records {self.plan.name} as refittable, but the engine is not; {REBUILD_REFIT}")
            if self._pending:  # LoRAs given before activation (Generator.load)
                where = f"TensorRT {self.spec.name} ({self.plan.name})"
                self._refit(*self._stage(self._pending, where), where)
                self._refitted = set(self._pending)
        self.book.clear()
        self._views = {}

    def close(self) -> None:
        self._context = self._engine = self._runtime = None
        self._buffers, self._views = {}, {}
        self.book.clear()
        super().close()

    def _bind(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Set the input shapes and the tensor addresses for ``shapes``; the views are prefixes of the bound buffers."""
        views = {}
        for tensor in self.spec.inputs:
            shape = shapes[tensor.name]
            views[tensor.name] = self._buffers[tensor.name].ravel()[: int(np.prod(shape))].reshape(shape)
            if not self._context.set_input_shape(tensor.name, shape):
                raise RunnerError(f"TensorRT {self.spec.name}: input {tensor.name!r} of shape {shape} is outside the plan's profile {self.profile}")
        for tensor in self.spec.outputs:
            shape = tuple(self._context.get_tensor_shape(tensor.name))
            views[tensor.name] = self._buffers[tensor.name].ravel()[: int(np.prod(shape))].reshape(shape)
        for name, view in views.items():
            if not self._context.set_tensor_address(name, view.data.ptr):
                raise RunnerError(f"TensorRT {self.spec.name}: could not bind the address of {name!r}")
        self._views = views

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RunnerError(f"TensorRT {self.spec.name}: execute_async_v3 failed (see TensorRT's log above)")

    def _infer(self, feed: Mapping[str, Any]) -> dict[str, Any]:
        import cupy as cp

        shapes = {t.name: tuple(feed[t.name].shape) for t in self.spec.inputs}
        key = tuple(shapes.values())
        action = self.book.next(key)
        if action.rebind:
            self._bind(shapes)
        self._stream.wait_event(cp.cuda.get_current_stream().record())  # the feed was written on the caller's stream
        with self._stream:
            for tensor in self.spec.inputs:
                self._views[tensor.name][...] = cp.asarray(feed[tensor.name])
        if action.how == "run":
            self._enqueue()
        elif action.how == "capture":  # only the engine goes into the graph; the input copies stay outside it
            self._stream.begin_capture()
            try:
                self._enqueue()
            finally:
                graph = self._stream.end_capture()
            self.book.captured(key, graph)
            graph.launch(self._stream)
        else:
            self.book.graphs[key].launch(self._stream)
        self._stream.synchronize()
        return {t.name: self._views[t.name] for t in self.spec.outputs}

