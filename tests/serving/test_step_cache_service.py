"""Step caching through the service (issue 34): ``cache_interval`` in the request, validated in one place (422 naming
the field); requests with different intervals never share an engine call, and each batched result is its call alone,
bitwise; engines built without step caching's graphs refuse it saying how to build them."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from runtime.errors import InvalidArgumentError
from runtime.generator import Generator
from serving.app import create_app, direct_submit
from serving.config import ServiceConfig
from serving.service import ImageService, chunk_jobs
from tests.serving.test_edits import _b64_png

PROMPT = "a red circle at the top left"


@pytest.fixture(scope="module")
def cache_service(pixel_step_cache_dir, lora_files):
    return ImageService(ServiceConfig(engines=str(pixel_step_cache_dir), max_steps=20, loras={"b": {"file": str(lora_files["b"])}}))


@pytest.mark.slow  # a step-cache engine build
def test_cached_requests_batch_by_interval_and_keep_their_results(cache_service):
    service, Body = cache_service, cache_service.request_model
    common = dict(num_inference_steps=4, guidance_scale=3.0)
    bodies = [Body(prompt=PROMPT, seed=1, cache_interval=2, **common), Body(prompt="a blue square", seed=2, cache_interval=2, **common),
              Body(prompt=PROMPT, seed=1, **common), Body(prompt=PROMPT, seed=4, cache_interval=3, **common)]  # fmt: skip
    jobs = [service.job(b) for b in bodies]
    assert [[jobs.index(j) for j in chunk] for chunk in chunk_jobs(jobs, 3)] == [[0, 1], [2], [3]]  # one plan per engine call
    results = service.run_jobs(jobs)
    assert [r.batch_images for r in results] == [2, 2, 1, 1]
    for body, result in zip(bodies, results):
        alone = service.generator([body.prompt], seed=body.seed, cache_interval=body.cache_interval, progress=False, **common).images
        np.testing.assert_array_equal(result.images, alone)  # bitwise
    assert not np.array_equal(results[0].images, results[2].images)  # same prompt and seed: the shallow steps ran
    image = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    edit = dict(mode="invert", source_prompt="a blue square", num_inference_steps=4, seed=5, cache_interval=2)
    [edited] = service.run_jobs([service.edit_job(service.edit_request_model(image=_b64_png(image), prompt=PROMPT, **edit))])
    np.testing.assert_array_equal(edited.images, service.generator.edit(image, PROMPT, progress=False, **edit).images)  # its sampling pass cached
    assert not np.array_equal(edited.images, service.generator.edit(image, PROMPT, progress=False, **dict(edit, cache_interval=1)).images)
    client = TestClient(create_app(service, direct_submit(service)))
    assert client.get("/v1/model").json()["step_cache"] is True
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert schema["ImageRequest"]["properties"]["cache_interval"]["maximum"] == 20 and "cache_interval" in schema["ImageEditRequest"]["properties"]
    for body, field in ((dict(prompt=PROMPT, cache_interval=0), "cache_interval"), (dict(prompt=PROMPT, cache_interval=21), "cache_interval"),
                        (dict(prompt=PROMPT, cache_interval=2, lora="b"), "cache_interval")):  # fmt: skip
        reply = client.post("/v1/images", json=dict(body, num_inference_steps=2))
        assert reply.status_code == 422 and reply.json()["error"]["field"] == field, reply.text
    assert "lora 'b' changes the UNet" in reply.json()["error"]["message"]


def test_engines_without_step_caching_refuse_it_saying_how_to_build(client, pixel_service):
    assert client.get("/v1/model").json()["step_cache"] is False
    prop = client.get("/openapi.json").json()["components"]["schemas"]["ImageRequest"]["properties"]["cache_interval"]
    assert (prop["minimum"], prop["maximum"]) == (1, 1) and "--step-cache" in prop["description"]
    reply = client.post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=2, cache_interval=2))
    error = reply.json()["error"]
    assert reply.status_code == 422 and error["field"] == "cache_interval" and error["value"] == 2, reply.text
    assert "build_engines.py --step-cache" in error["message"] and str(pixel_service.generator.manifest.root) in error["message"]
    assert client.post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=2, cache_interval=1)).status_code == 200
    with pytest.raises(InvalidArgumentError, match=r"cache_interval=3: .*--step-cache"):  # the runtime's own check, for embedders
        pixel_service.generator.validate(PROMPT, num_inference_steps=4, cache_interval=3)
    assert isinstance(pixel_service.generator, Generator)
