"""What a machine offers the GPU paths: GPUs and driver (asked of the CUDA driver itself), CUDA runtime, and which of
the packages the backends need import, with versions or the reason they do not. Nothing here needs a GPU."""

from __future__ import annotations

import importlib
import os
import platform
import sys
from typing import Any

from benchmarks.harness import render_table
from runtime.backends import cuda_driver

# (import name, what it is for)
PACKAGES = (
    ("torch", "reference pipeline, Torch backend, diffusers baseline"),
    ("cupy", "the runtime's arrays on a GPU"),
    ("onnxruntime", "ONNX Runtime backends (CUDA with onnxruntime-gpu)"),
    ("tensorrt", "TensorRT builder and full runtime"),
    ("tensorrt_lean", "TensorRT lean runtime (meta-package)"),
    ("tensorrt_lean_bindings", "TensorRT lean runtime (bindings wheel)"),
    ("diffusers", "reference models, diffusers baseline"),
    ("transformers", "reference text encoder"),
    ("onnx", "export"),
    ("onnxscript", "export"),
    ("polygraphy", "TensorRT builds"),
)


def package_status(name: str) -> dict[str, Any]:
    """{"ok": imports, "version": ..., "error": why not}. The index's TensorRT placeholder raises on import: caught."""
    try:
        module = importlib.import_module(name)
    except Exception as exc:  # ImportError, or a placeholder package's own error
        return {"ok": False, "version": None, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    return {"ok": True, "version": str(getattr(module, "__version__", "unknown")), "error": None}


def _gpus() -> tuple[list[dict[str, Any]], str | None]:
    try:
        count = cuda_driver.device_count()
        infos = [cuda_driver.gpu_info(i) for i in range(count)]
    except cuda_driver.CudaUnavailable as exc:
        return [], str(exc)
    gpus = [{"index": g.index, "name": g.name, "compute_capability": g.compute_capability, "memory_gib": g.total_memory_bytes / 2**30} for g in infos]
    return gpus, None if gpus else "the CUDA driver shows no GPU (or is not installed)"


def environment() -> dict[str, Any]:
    """The report; ``packages`` maps each name of :data:`PACKAGES` to its status."""
    gpus, gpu_error = _gpus()
    packages = {name: {**package_status(name), "for": purpose} for name, purpose in PACKAGES}
    report: dict[str, Any] = {
        "python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "gpus": gpus, "gpu_error": gpu_error, "cuda_driver": cuda_driver.driver_version(), "packages": packages,
    }  # fmt: skip
    if packages["cupy"]["ok"]:
        try:
            import cupy

            version = cupy.cuda.runtime.runtimeGetVersion()
            report["cuda_runtime_cupy"] = f"{version // 1000}.{version % 1000 // 10}"
        except Exception as exc:  # CuPy imports without CUDA; asking the runtime then fails
            report["cuda_runtime_cupy"] = f"unavailable ({type(exc).__name__})"
    if packages["torch"]["ok"]:
        import torch

        report["torch_cuda"] = {"built_for": torch.version.cuda, "available": torch.cuda.is_available()}
    if packages["onnxruntime"]["ok"]:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
        report["onnxruntime_providers"] = providers
        report["onnxruntime_gpu"] = "CUDAExecutionProvider" in providers
    return report


def markdown(report: dict[str, Any]) -> str:
    gpus = ", ".join(f"{g['name']} (sm {g['compute_capability']}, {g['memory_gib']:.0f} GiB)" for g in report["gpus"]) or f"none: {report['gpu_error']}"
    lines = [
        f"- GPU: {gpus}; CUDA driver {report['cuda_driver'] or '–'}; CUDA runtime (CuPy) {report.get('cuda_runtime_cupy', '–')}",
        f"- Python {report['python']}, {report['platform']}, {report['cpu_count']} CPUs",
        f"- torch CUDA: {report.get('torch_cuda', '–')}; ONNX Runtime providers: {', '.join(report.get('onnxruntime_providers', [])) or '–'}",
        "",
        render_table(["package", "imports", "version / reason"],
                     [[name, "yes" if s["ok"] else "no", s["version"] if s["ok"] else s["error"]] for name, s in report["packages"].items()]),
    ]
    return "\n".join(lines)
