"""The ONNX Runtime backend: the engine directory's ONNX artifacts on ONNX Runtime's CPU or CUDA execution provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from runtime.backends.base import Array, RunnerBase
from runtime.errors import InvalidArgumentError, RunnerError, first_line
from runtime.specs import ComponentSpec, ModelDims


# ONNX Runtime's CPU provider computes an fp16 graph's MatMul/Conv in float32: its FuseFp16InitializerToFp32NodeTransformer
# (graph optimization level ALL) replaces each fp16 weight ``W`` those nodes read by a float32 copy named
# ``FusedBack_W``, before the overrides (``add_initializer``) are looked up by name; so an override of ``W`` alone is
# never read (measured with ONNX Runtime 1.31.1: the output was the base's bitwise).
FUSED_FP16_PREFIX = "FusedBack_"


def fp16_fused_overrides(overrides: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CPU provider's overrides: each fp16 initializer also as the float32 copy ONNX Runtime fuses it into
    (``FUSED_FP16_PREFIX`` + name; the fp16 value widened exactly, what the fused copy of the base holds). An override
    whose name the session does not have is unused, so both are given: the fused name where the weight was fused, the
    own name where an fp16 kernel reads it."""
    out = dict(overrides)
    for name, value in overrides.items():
        if value.dtype == np.float16:
            out[FUSED_FP16_PREFIX + name] = value.astype(np.float32)
    return out


class OnnxRuntimeRunner(RunnerBase):
    """ONNX Runtime: the CPU execution provider (NumPy arrays), or the CUDA one (CuPy arrays, always I/O-bound).

    I/O binding (``io_binding=True``, implied by ``cuda``): inputs are bound where the caller's arrays live and
    outputs are preallocated there with the shapes ``spec`` gives for this call (``model`` fixes the constant dims),
    so nothing is copied between host and device and no ``OrtValue`` has to be converted. On the CPU the same code
    binds NumPy arrays, which is how the default test suite runs it.
    """

    def __init__(self, spec: ComponentSpec, path: Path, *, model: ModelDims | None = None, cuda: bool = False, device_id: int = 0,
                 threads: int | None = None, io_binding: bool = False) -> None:  # fmt: skip
        super().__init__(spec)
        self.path, self.model, self.cuda, self.device_id, self.threads = path, model, cuda, device_id, threads
        self.io_binding = io_binding or cuda
        if self.io_binding and model is None:
            raise InvalidArgumentError("model", model, "the model's ModelDims: I/O binding preallocates outputs of the call's shapes")
        self.session = None
        self._overrides: dict[str, np.ndarray] = {}  # initializers a LoRA changed (runtime/lora.py): name -> value as stored
        self._kept: list[Any] = []  # their OrtValues, which the session reads and must outlive it

    def prepare_weights(self, weights: Any) -> Callable[[], None]:
        """LoRA weights: the initializers overridden at session creation (``SessionOptions.add_initializer``), always
        over the graph's own base weights. For an active runner the returned call drops the session, then creates the
        new one (so a switch never holds the component's weights twice); if that fails it is back on its previous
        weights, and raises."""
        overrides = dict(weights.initializers) if weights is not None else {}
        if not self.active:
            return lambda: setattr(self, "_overrides", overrides)

        def commit() -> None:
            previous = self._overrides
            self.session, self._kept = None, []  # the old session's weights are freed before the new ones load
            try:
                self.session, self._kept = self._new_session(overrides)
            except Exception as exc:
                self.session, self._kept = self._new_session(previous)
                raise RunnerError(f"{type(self).__name__} could not load {self.spec.name} with new weights: {first_line(exc)}") from exc
            self._overrides = overrides

        return commit

    def _activate(self) -> None:
        self.session, self._kept = self._new_session(self._overrides)

    def _new_session(self, overrides: Mapping[str, np.ndarray]) -> tuple[Any, list[Any]]:
        import onnxruntime as ort

        options = ort.SessionOptions()
        overrides = dict(overrides) if self.cuda else fp16_fused_overrides(overrides)
        kept = [ort.OrtValue.ortvalue_from_numpy(value) for value in overrides.values()]
        for name, value in zip(overrides, kept):
            options.add_initializer(name, value)
        if self.threads:
            options.intra_op_num_threads = self.threads
        if not self.cuda:  # memory-pattern planning preallocates for the largest plan; off, SD-1.5's VAE decoder at 512 px
            options.enable_mem_pattern = False  # peaks at 1.71 instead of 2.78 GiB and its UNet at 3.90 instead of 4.44, no slower
            # Each session has its own thread pool, whose threads spin after a run; the loop alternates UNet and adapter
            # sessions, so on few cores one pool's spinning steals the other's: off, a default video edit on 2 cores
            # takes 5.1 instead of 6.6 s.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = [("CUDAExecutionProvider", {"device_id": self.device_id})] if self.cuda else ["CPUExecutionProvider"]
        session = ort.InferenceSession(str(self.path), sess_options=options, providers=providers)
        used = session.get_providers()
        if self.cuda and used[0] != "CUDAExecutionProvider":  # ONNX Runtime falls back to the CPU with only a warning
            raise RunnerError(f"{self.spec.name}: ONNX Runtime could not load its CUDA execution provider (the session runs on {used}); "
                               f"this onnxruntime {ort.__version__} offers {ort.get_available_providers()}: install onnxruntime-gpu "
                               "built for this machine's CUDA, or use the onnxruntime-cpu backend")  # fmt: skip
        return session, kept

    def close(self) -> None:
        self.session, self._kept = None, []
        super().close()

    def _infer(self, feed: Mapping[str, Array]) -> dict[str, Array]:
        if self.io_binding:
            return self._infer_bound(feed)
        outputs = self.session.run(None, {k: np.ascontiguousarray(feed[k]) for k in (t.name for t in self.spec.inputs)})
        return {t.name: out for t, out in zip(self.spec.outputs, outputs)}

    def _infer_bound(self, feed: Mapping[str, Array]) -> dict[str, Array]:
        if self.cuda:
            import cupy as xp

            device, pointer = "cuda", lambda a: a.data.ptr
        else:
            xp, device, pointer = np, "cpu", lambda a: a.ctypes.data
        inputs = {t.name: xp.ascontiguousarray(feed[t.name]) for t in self.spec.inputs}
        shapes = self.spec.output_shapes(self.model, *self.spec.call_dims({k: v.shape for k, v in inputs.items()}, self.model))
        outputs = {t.name: xp.empty(shapes[t.name], dtype=np.dtype(t.dtype)) for t in self.spec.outputs}
        if self.cuda:  # the inputs were written on CuPy's stream; ONNX Runtime reads them on its own
            xp.cuda.get_current_stream().synchronize()
        binding = self.session.io_binding()
        for name, value in inputs.items():
            binding.bind_input(name, device, self.device_id, value.dtype, tuple(value.shape), pointer(value))
        for name, value in outputs.items():
            binding.bind_output(name, device, self.device_id, value.dtype, tuple(value.shape), pointer(value))
        self.session.run_with_iobinding(binding)  # synchronises its execution providers before returning (ONNX Runtime's default)
        return outputs
