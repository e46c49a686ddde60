"""The option enums every package shares: backends and precisions, one definition each. Torch-free.

All are ``str`` enums, so the strings users already write keep working on the command lines, in manifests and in
the HTTP API (``Backend("openvino") == "openvino"``). Two precisions are two different things, spelled as their tools
spell them: :class:`Precision` is what an artifact was built in (``fp32``/``fp16``: ONNX graphs, TensorRT plans),
:class:`OpenVINOPrecision` is how OpenVINO computes on the CPU from fp32/fp16 artifacts (``f32``/``bf16``).
"""

from __future__ import annotations

import enum


class Backend(str, enum.Enum):
    """Who runs an engine directory (``runtime.Generator(backend=...)``, ``python -m runtime --backend``)."""

    AUTO = "auto"  # TensorRT plans on a GPU, else ONNX Runtime (CUDA where it has a GPU), else the CPU
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"  # CUDA when available, else the CPU
    ONNXRUNTIME_CUDA = "onnxruntime-cuda"
    ONNXRUNTIME_CPU = "onnxruntime-cpu"
    OPENVINO = "openvino"


BACKENDS: tuple[str, ...] = tuple(b.value for b in Backend)
CPU_BACKENDS: tuple[str, ...] = (Backend.ONNXRUNTIME_CPU.value, Backend.OPENVINO.value)


class BuildBackend(str, enum.Enum):
    """What an engine directory is built for (``export/build_engines.py --backend``; the manifest's ``build.backend``)."""

    AUTO = "auto"  # TensorRT where it is usable, else ONNX Runtime
    TENSORRT = "tensorrt"
    ONNXRUNTIME = "onnxruntime"


class Precision(str, enum.Enum):
    """The precision an artifact is built in (the manifest's ``components.<name>.precision``)."""

    FP32 = "fp32"
    FP16 = "fp16"


class OpenVINOPrecision(str, enum.Enum):
    """OpenVINO's inference precision on the CPU (``INFERENCE_PRECISION_HINT``); the artifacts stay as built."""

    F32 = "f32"  # exact: what the ONNX graphs compute
    BF16 = "bf16"  # bfloat16 matmuls and convolutions where the CPU has them (AVX512-BF16, AMX); f32 accumulation


class PlanRuntime(str, enum.Enum):
    """Which TensorRT runs a plan, recorded per plan in the manifest (``tensorrt.runtime``)."""

    FULL = "full"  # the full TensorRT (``tensorrt``, > 1 GB installed) of the builder's version
    LEAN = "lean"  # ``tensorrt_lean`` (~50 MB) of the builder's version: plans built version-compatible, lean runtime excluded


def choices(enum_type: type[enum.Enum]) -> list[str]:
    """The values of a str enum, for argparse ``choices``."""
    return [member.value for member in enum_type]
