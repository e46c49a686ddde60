"""Which backend runs an engine directory, and its runners: ``backend=`` ("auto", "tensorrt", "onnxruntime",
"onnxruntime-cuda", "onnxruntime-cpu", "openvino") resolved against the manifest and this machine, then one runner
per component. ``runtime.Generator.load`` calls :func:`load_backend`; the Torch backend
(``contextdiff_ref.pipelines.torch_runner.torch_generator``) builds its own runners, as it needs torch.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.backends import cuda_driver
from runtime.backends.base import Runner
from runtime.backends.openvino import OpenVINORunner, int8_gain_reason, openvino_unavailable_reason
from runtime.backends.ort import OnnxRuntimeRunner
from runtime.backends.tensorrt import import_tensorrt, install_hint, tensorrt_module_name
from runtime.errors import InvalidArgumentError
from runtime.lora import base_initializers
from runtime.manifest import EngineManifest
from runtime.options import BACKENDS, CPU_BACKENDS, OpenVINOPrecision, PlanRuntime
from runtime.specs import Component

logger = logging.getLogger(__name__)

OPENVINO_CACHE = "openvino-cache"  # inside the engine directory: OpenVINO's compiled models, keyed by artifact and version


def gpu_ready() -> bool:
    """A GPU the CUDA driver shows, and CuPy to hold the loop's arrays on it."""
    return cuda_driver.device_count() > 0 and importlib.util.find_spec("cupy") is not None


def plan_runtime(manifest: EngineManifest) -> PlanRuntime | None:
    """The TensorRT the directory's plans need (one build makes them all alike), or None without plans."""
    kinds = {a.plan_runtime for a in manifest.components.values() if a.plan is not None}
    if len(kinds) != 1 or any(a.plan is None for a in manifest.components.values()):
        return None
    return kinds.pop()


def parse_precision(precision: str | OpenVINOPrecision | None) -> OpenVINOPrecision | None:
    if precision is None or isinstance(precision, OpenVINOPrecision):
        return precision
    try:
        return OpenVINOPrecision(precision)
    except ValueError:
        raise InvalidArgumentError("precision", precision, f"None or one of {[p.value for p in OpenVINOPrecision]} (the openvino backend's)") from None


def check_device(device: int | None) -> None:
    if device is not None and (isinstance(device, bool) or not isinstance(device, int) or device < 0):
        raise InvalidArgumentError("device", device, "None or a CUDA device index >= 0")


def pick_backend(backend: str, manifest: EngineManifest, precision: OpenVINOPrecision | None = None) -> tuple[str, OpenVINOPrecision | None]:
    """(backend, OpenVINO precision or None). auto: TensorRT (plans present and the TensorRT they need — full or lean —
    importable), then ONNX Runtime CUDA; on the CPU, OpenVINO where bf16 is wanted (``precision`` or the manifest) and
    the CPU has it, or int8 (the manifest records an int8 build), else ONNX Runtime CPU (OpenVINO f32 would write a
    compiled copy of every component into the engine directory on first load, which auto does not do unasked:
    docs/guides/cpu-backends.md). int8 needs the directory's int8 IR (refused without it, never run at f32)."""
    if backend not in BACKENDS:
        raise InvalidArgumentError("backend", backend, f"one of {', '.join(map(repr, BACKENDS))} ('torch': contextdiff_ref.pipelines.torch_runner.torch_generator)")
    if precision is not None and backend not in ("auto", "openvino"):
        raise InvalidArgumentError("precision", precision.value, f"None with backend {backend!r}: only the openvino backend takes a precision "
                                   "(the other backends run the artifacts' own precision, chosen at build time)")  # fmt: skip
    if backend == "openvino" or (backend == "auto" and precision is not None):
        wanted = precision or manifest.openvino_precision
        if why := openvino_unavailable_reason(wanted):
            raise InvalidArgumentError("backend", backend, f"a backend this machine can run: OpenVINO {wanted.value} cannot run here: {why}")
        _check_int8(manifest, wanted)
        return "openvino", wanted
    import onnxruntime as ort

    needed = plan_runtime(manifest)
    trt_module = tensorrt_module_name(needed) if needed else None
    trt_ok = trt_module is not None and gpu_ready()
    cuda_ok = "CUDAExecutionProvider" in ort.get_available_providers() and gpu_ready()
    if backend == "tensorrt" and not trt_ok:
        if needed is None:
            why = "the engine directory has no TensorRT plans; rebuild with --backend tensorrt"
        elif trt_module is None:
            version = next(iter(manifest.components.values())).plan_info["builder_version"]
            why = f"its plans need the {needed.value} TensorRT runtime {version}, which is not installed ({install_hint(needed, version)})"
        else:
            why = "no CUDA GPU (with CuPy) is available"
        raise InvalidArgumentError("backend", backend, f"a backend this machine can run: {why}; or use 'auto'")
    if backend == "onnxruntime-cuda" and not cuda_ok:
        raise InvalidArgumentError("backend", backend, "a backend this machine can run: needs onnxruntime-gpu, CuPy and a CUDA GPU")
    if backend == "auto":
        if trt_ok or cuda_ok:
            return ("tensorrt" if trt_ok else "onnxruntime-cuda"), None
        if manifest.openvino_precision is OpenVINOPrecision.INT8 and openvino_unavailable_reason(OpenVINOPrecision.INT8) is None:
            _check_int8(manifest, OpenVINOPrecision.INT8)
            return "openvino", OpenVINOPrecision.INT8
        if manifest.openvino_precision is OpenVINOPrecision.BF16:
            if (why := openvino_unavailable_reason(OpenVINOPrecision.BF16)) is None:
                return "openvino", OpenVINOPrecision.BF16
            logger.warning("%s asks for OpenVINO bf16 on the CPU, but %s: running its fp32 artifacts with ONNX Runtime at full precision",
                           manifest.root, why)  # fmt: skip
        return "onnxruntime-cpu", None
    if backend == "onnxruntime":
        return ("onnxruntime-cuda" if cuda_ok else "onnxruntime-cpu"), None
    return backend, None


def _check_int8(manifest: EngineManifest, precision: OpenVINOPrecision) -> None:
    """int8 needs every component's int8 IR in the manifest; where this CPU cannot gain from it, a warning says so."""
    if precision is not OpenVINOPrecision.INT8:
        return
    missing = sorted(c.value for c, a in manifest.components.items() if a.openvino_ir is None)
    if missing:
        raise InvalidArgumentError("precision", precision.value, f"'f32' or 'bf16' for {manifest.root}: it has no int8 OpenVINO IR for {missing}; "
                                   "rebuild it with `python export/build_engines.py --openvino-precision int8`")  # fmt: skip
    if why := int8_gain_reason():
        logger.warning("OpenVINO int8 asked for, but %s", why)


def openvino_streams(manifest: EngineManifest) -> int:
    """OpenVINO streams a call's batch is split over (runtime.backends.openvino): for a video model two where the CPU has
    two or more, each part whole videos (the default video edit on a 2-core Xeon: 3.32 → 3.04 s, the same frames); an
    image model's calls run whole (one image's guided batch of 2 split in two ran 2% slower there)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(2, cpus) if manifest.num_frames else 1


def make_runners(manifest: EngineManifest, backend: str, device_id: int, precision: OpenVINOPrecision | None = None) -> dict[Component, Runner]:
    """One runner per component of ``manifest`` for a resolved ``backend`` (what :func:`pick_backend` returns)."""
    if backend == "openvino":
        cache, streams, unit = manifest.root / OPENVINO_CACHE, openvino_streams(manifest), manifest.num_frames or 1
        int8 = precision is OpenVINOPrecision.INT8  # the int8 IR in place of the ONNX artifact (pick_backend checked it is there)
        return {c: OpenVINORunner(a.spec, a.openvino_ir if int8 else a.onnx, precision=precision, cache_root=cache,
                                  artifact_sha256=a.openvino_ir_sha256 if int8 else a.onnx_sha256, streams=streams, batch_unit=unit)
                for c, a in manifest.components.items()}  # fmt: skip
    if backend == "tensorrt":
        from runtime.backends.tensorrt import TensorRTRunner
        from runtime.manifest import check_tensorrt_plan

        needed = plan_runtime(manifest)
        trt = import_tensorrt(needed)
        capability = cuda_driver.gpu_info(device_id).compute_capability  # "9.0", as the exporter records it
        runners: dict[Component, Runner] = {}
        for component, artifacts in manifest.components.items():
            check_tensorrt_plan(artifacts, trt.__version__, capability)
            runners[component] = TensorRTRunner(artifacts.spec, artifacts.plan, manifest.dims, artifacts.profile, device_id=device_id,
                                                plan_runtime=needed, refittable=bool((artifacts.plan_info or {}).get("refittable")),
                                                base_weights=functools.partial(base_initializers, manifest, component))  # fmt: skip
        logger.info("TensorRT plans run by %s %s", trt.__name__, trt.__version__)
        return runners
    cuda = backend == "onnxruntime-cuda"
    return {c: OnnxRuntimeRunner(a.spec, a.onnx, model=manifest.dims, cuda=cuda, device_id=device_id) for c, a in manifest.components.items()}


@dataclass
class LoadedBackend:
    """What :func:`load_backend` chose and built: the backend's name, OpenVINO's precision (None for the others),
    the runners (not yet activated), the array module they exchange (NumPy, or CuPy on a GPU) and the CUDA device."""

    name: str
    precision: OpenVINOPrecision | None
    runners: dict[Component, Runner]
    xp: Any
    device_id: int


def load_backend(manifest: EngineManifest, backend: str = "auto", device: int | None = None,
                 precision: str | OpenVINOPrecision | None = None) -> LoadedBackend:  # fmt: skip
    """Check the arguments, pick the backend (:func:`pick_backend`) and build its runners for a loaded, validated manifest."""
    check_device(device)
    chosen, ov_precision = pick_backend(backend, manifest, parse_precision(precision))
    on_cpu = chosen in CPU_BACKENDS
    if not on_cpu and (device or 0) >= cuda_driver.device_count():
        raise InvalidArgumentError("device", device, f"a CUDA device index below {cuda_driver.device_count()} (the devices the driver shows)")
    runners = make_runners(manifest, chosen, device or 0, ov_precision)
    xp: Any = np
    if not on_cpu:
        import cupy as xp
    return LoadedBackend(chosen, ov_precision, runners, xp, device or 0)
