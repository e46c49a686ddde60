"""The TensorRT runner inside runtime.Generator, against ONNX Runtime. Runs only where TensorRT, CuPy and a CUDA GPU
work; elsewhere it skips with the reason."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from export.tensorrt_build import tensorrt_status

TRT_VERSION, REASON = tensorrt_status()
MISSING = REASON or ("" if importlib.util.find_spec("cupy") else "CuPy is not installed")
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING or "TensorRT unavailable")


def test_tensorrt_generator_matches_onnxruntime(latent_model_dir, tmp_path):
    from export.build import BuildOptions, build_engine_dir
    from runtime.generator import Generator
    from runtime.options import BuildBackend, Precision

    out = tmp_path / "trt"
    build_engine_dir(latent_model_dir, out, BuildOptions(backend=BuildBackend.TENSORRT, precision=Precision.FP32, max_images=1))
    kwargs = dict(num_inference_steps=10, seed=0, progress=False)
    trt_images = Generator.from_dir(out, backend="tensorrt")("a red circle", **kwargs).images
    ort_images = Generator.from_dir(out, backend="onnxruntime-cpu")("a red circle", **kwargs).images
    assert 10 * np.log10(1.0 / np.mean((trt_images - ort_images) ** 2)) >= 35.0
