"""The service's fixtures without Ray: the tiny pixel model's service, FastAPI's TestClient over the deployment's app, LoRA files."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app, direct_submit
from serving.config import ServiceConfig
from serving.service import ImageService


@pytest.fixture(scope="module")
def pixel_service(pixel_fp32_dir):
    return ImageService(ServiceConfig(engines=str(pixel_fp32_dir), max_steps=20))


@pytest.fixture(scope="module")
def client(pixel_service):
    return TestClient(create_app(pixel_service, direct_submit(pixel_service)))


@pytest.fixture(scope="module")
def lora_files(pixel_model_dir, tmp_path_factory):
    from tests.runtime.lora_files import make_lora

    root = tmp_path_factory.mktemp("service-loras")
    return {"a": make_lora(pixel_model_dir, root / "a.safetensors", seed=0), "b": make_lora(pixel_model_dir, root / "b.safetensors", seed=7, text_encoder=False)}
