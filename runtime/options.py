"""The option enums every package shares: backends and precisions, one definition each. Torch-free.

All are ``str`` enums, so the strings users already write keep working on the command lines, in manifests and in
the HTTP API (``Backend("openvino") == "openvino"``). Two precisions are two different things, spelled as their tools
spell them: :class:`Precision` is what an artifact was built in (``fp32``/``fp16``: ONNX graphs, TensorRT plans),
:class:`OpenVINOPrecision` is how OpenVINO computes on the CPU: from the fp32/fp16 artifacts (``f32``/``bf16``), or from
the int8 OpenVINO IR a build made with NNCF (``int8``: export/openvino_int8.py).
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
    """OpenVINO's precision on the CPU: f32 and bf16 are its ``INFERENCE_PRECISION_HINT`` over the ONNX artifacts as
    built; int8 runs the int8 OpenVINO IR that ``build_engines.py --openvino-precision int8`` adds (NNCF, calibrated at
    build time), its unquantized ops in f32."""

    F32 = "f32"  # exact: what the ONNX graphs compute
    BF16 = "bf16"  # bfloat16 matmuls and convolutions where the CPU has them (AVX512-BF16, AMX); f32 accumulation
    INT8 = "int8"  # the engine directory's int8 IR: the UNets' convolutions int8 in weights and activations, every other weight int8

    @property
    def compute_hint(self) -> str:
        """OpenVINO's ``INFERENCE_PRECISION_HINT`` for this precision (int8's unquantized ops compute in f32)."""
        return "f32" if self is OpenVINOPrecision.INT8 else self.value

    @property
    def needs_ir(self) -> bool:
        """Whether it runs a build-time OpenVINO IR rather than the ONNX artifacts."""
        return self is OpenVINOPrecision.INT8


ONNX_OPENVINO_PRECISIONS: tuple[OpenVINOPrecision, ...] = (OpenVINOPrecision.F32, OpenVINOPrecision.BF16)  # those that run the ONNX artifacts


class PlanRuntime(str, enum.Enum):
    """Which TensorRT runs a plan, recorded per plan in the manifest (``tensorrt.runtime``)."""

    FULL = "full"  # the full TensorRT (``tensorrt``, > 1 GB installed) of the builder's version
    LEAN = "lean"  # ``tensorrt_lean`` (~50 MB) of the builder's version: plans built version-compatible, lean runtime excluded


def choices(enum_type: type[enum.Enum]) -> list[str]:
    """The values of a str enum, for argparse ``choices``."""
    return [member.value for member in enum_type]
