"""POST /v1/images/edits fuzzed by Schemathesis from the schema the service publishes, in process (FastAPI's app over
the tiny pixel model's generator, at most 3 steps a request, no Ray): no 5xx, documented status codes, content types,
headers and bodies, schema-invalid bodies refused. ``benchmarks/serve_fuzz.py`` fuzzes every operation of a live Ray
service the same way."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from serving.app import create_app, direct_submit
from serving.config import ServiceConfig
from serving.service import ImageService


@pytest.fixture(scope="module")
def edits_schema(pixel_service, pixel_fp32_dir):
    service = ImageService(ServiceConfig(engines=str(pixel_fp32_dir), max_steps=3), generator=pixel_service.generator)  # cheap requests
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(service, direct_submit(service)))


schema = schemathesis.pytest.from_fixture("edits_schema").include(path="/v1/images/edits", method="POST")


# Not checked: positive_data_acceptance. The schema bounds every field but cannot say which strings are base64 PNGs
# of a size the engines take, nor the rules between fields (source_prompt only with mode invert, region_noise only
# with a mask): such schema-valid bodies get a 422 naming the field, by design.
@schema.parametrize()
@settings(max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))  # the same cases every run
def test_the_edits_endpoint_survives_fuzzing(case):
    case.call_and_validate(excluded_checks=[positive_data_acceptance])
