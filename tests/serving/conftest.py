"""The service's fixtures without Ray: the tiny pixel model's service and FastAPI's TestClient over the deployment's app."""

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
