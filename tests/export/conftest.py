"""Engine directories built once per session from the tiny latent model (all four components)."""

from __future__ import annotations

import pytest

from export.build import Backend, BuildOptions, build_engine_dir
from export.onnx_export import Precision

PARITY_OPTIONS = dict(backend=Backend.ONNXRUNTIME, max_images=2, dynamic_size=True)


@pytest.fixture(scope="session")
def latent_fp32_dir(latent_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "latent-fp32"
    build_engine_dir(latent_model_dir, out, BuildOptions(precision=Precision.FP32, **PARITY_OPTIONS))
    return out


@pytest.fixture(scope="session")
def latent_fp16_dir(latent_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("engines") / "latent-fp16"
    build_engine_dir(latent_model_dir, out, BuildOptions(precision=Precision.FP16, **PARITY_OPTIONS))
    return out
