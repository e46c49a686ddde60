"""Shared fixtures: tiny seeded model directories, built once per test session (a few seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def pixel_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-pixel", latent=False, seed=0)


@pytest.fixture(scope="session")
def latent_model_dir(tmp_path_factory) -> Path:
    from contextdiff_ref.models.tiny import write_tiny_model_dir

    return write_tiny_model_dir(tmp_path_factory.mktemp("models") / "tiny-latent", latent=True, seed=1)


@pytest.fixture(scope="session")
def pixel_pipe(pixel_model_dir):
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(pixel_model_dir)


@pytest.fixture(scope="session")
def latent_pipe(latent_model_dir):
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    return ContextDiffPipeline.from_pretrained(latent_model_dir)


# Engine directories (ONNX Runtime artifacts), built once per session: up to 3 images per call. The default flavour
# for ONNX Runtime has attention fused into its MultiHeadAttention op; the "standard" ones use ai.onnx ops only.
def _engines(model_dir, tmp_path_factory, name, precision, dynamic_size, flavour=None):
    from export.build import Backend, BuildOptions, build_engine_dir
    from export.onnx_export import Flavour, Precision

    out = tmp_path_factory.mktemp("engines") / name
    options = BuildOptions(backend=Backend.ONNXRUNTIME, precision=Precision(precision), max_images=3, dynamic_size=dynamic_size,
                           flavour=Flavour(flavour) if flavour else None)  # fmt: skip
    build_engine_dir(model_dir, out, options)
    return out


@pytest.fixture(scope="session")
def latent_fp32_dir(latent_model_dir, tmp_path_factory):
    return _engines(latent_model_dir, tmp_path_factory, "latent-fp32", "fp32", dynamic_size=True)


@pytest.fixture(scope="session")
def latent_fp16_dir(latent_model_dir, tmp_path_factory):
    return _engines(latent_model_dir, tmp_path_factory, "latent-fp16", "fp16", dynamic_size=True)


@pytest.fixture(scope="session")
def latent_standard_fp32_dir(latent_model_dir, tmp_path_factory):
    return _engines(latent_model_dir, tmp_path_factory, "latent-standard-fp32", "fp32", dynamic_size=True, flavour="standard")


@pytest.fixture(scope="session")
def latent_standard_fp16_dir(latent_model_dir, tmp_path_factory):
    return _engines(latent_model_dir, tmp_path_factory, "latent-standard-fp16", "fp16", dynamic_size=True, flavour="standard")


@pytest.fixture(scope="session")
def pixel_fp32_dir(pixel_model_dir, tmp_path_factory):
    return _engines(pixel_model_dir, tmp_path_factory, "pixel-fp32", "fp32", dynamic_size=False)


@pytest.fixture(scope="session")
def pixel_fp16_dir(pixel_model_dir, tmp_path_factory):
    return _engines(pixel_model_dir, tmp_path_factory, "pixel-fp16", "fp16", dynamic_size=False)


@pytest.fixture(scope="session")
def shipped_latent_fp32_dir(tmp_path_factory):
    """ONNX Runtime engines of the shipped latent shapes model (a trained model: its UNet's output matters)."""
    from contextdiff_ref.models.defaults import latent_model_dir

    return _engines(latent_model_dir(), tmp_path_factory, "shipped-latent-fp32", "fp32", dynamic_size=False)
