"""POST /v1/images/edits without Ray (FastAPI's TestClient over the deployment's app): the image Generator.edit gives
alone, bitwise, also when batched with compatible edits; 422 naming the field for bad images; the published schema."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from runtime.generator import Generator
from serving.service import png_bytes

SOURCE, EDITED = "a red circle at the top left", "a blue square at the top left"


def _b64_png(array: np.ndarray, mode: str | None = None) -> str:
    buffer = io.BytesIO()
    image = Image.fromarray(array)
    (image.convert(mode) if mode else image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _source() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[2:18, 4:20] = 255
    return image, mask


def _alone(gen: Generator, image: np.ndarray, mask: np.ndarray | None = None, **kwargs) -> np.ndarray:
    out = gen.edit(image, EDITED, mask=None if mask is None else mask.astype(np.float32) / 255, progress=False, **kwargs).images[0]
    return np.asarray(Image.open(io.BytesIO(png_bytes(out))))


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def test_an_edit_is_the_generators_edit(client, pixel_service):
    image, mask = _source()
    body = dict(image=_b64_png(image), prompt=EDITED, num_inference_steps=4, guidance_scale=3.0, seed=9)
    reply = client.post("/v1/images/edits", json=body)
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(_decode(reply.json()["images"][0]), _alone(pixel_service.generator, image, num_inference_steps=4, guidance_scale=3.0, seed=9))
    masked = dict(body, mask=_b64_png(mask), mode="invert", source_prompt=SOURCE, region_noise=0.5, response_format="png")
    reply = client.post("/v1/images/edits", json=masked)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png" and reply.headers["x-seed"] == "9"
    got = np.asarray(Image.open(io.BytesIO(reply.content)))
    want = _alone(pixel_service.generator, image, mask, mode="invert", source_prompt=SOURCE, region_noise=0.5, num_inference_steps=4, guidance_scale=3.0, seed=9)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got[mask == 0], image[mask == 0])  # outside the mask: the image itself


def test_compatible_edits_share_a_sampling_pass_and_keep_their_results(pixel_service):
    image, mask = _source()
    other = np.ascontiguousarray(image[::-1])
    body = pixel_service.edit_request_model
    common = dict(prompt=EDITED, num_inference_steps=3, guidance_scale=3.0, mode="invert", source_prompt=SOURCE, mask=_b64_png(mask))
    jobs = [pixel_service.edit_job(body(image=_b64_png(image), seed=1, **common)), pixel_service.edit_job(body(image=_b64_png(other), seed=2, region_noise=1.0, **common)),
            pixel_service.edit_job(body(image=_b64_png(image), seed=3, **dict(common, num_inference_steps=4)))]  # fmt: skip
    results = pixel_service.run_jobs(jobs)
    assert [r.batch_images for r in results] == [2, 2, 1]
    kwargs = dict(mode="invert", source_prompt=SOURCE, guidance_scale=3.0)
    wants = [_alone(pixel_service.generator, image, mask, seed=1, num_inference_steps=3, **kwargs),
             _alone(pixel_service.generator, other, mask, seed=2, region_noise=1.0, num_inference_steps=3, **kwargs),
             _alone(pixel_service.generator, image, mask, seed=3, num_inference_steps=4, **kwargs)]  # fmt: skip
    for result, want in zip(results, wants):
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png_bytes(result.images[0])))), want)  # bitwise


def test_bad_images_are_422_naming_the_field(client):
    image, mask = _source()
    good = dict(image=_b64_png(image), prompt=EDITED, num_inference_steps=2)
    cases = [
        (dict(good, image="not base64!"), "image", "base64"),
        (dict(good, image=base64.b64encode(b"GIF89a....").decode()), "image", "not a PNG"),
        (dict(good, image=_b64_png(np.zeros((32, 32, 4), np.uint8))), "image", "RGBA"),
        (dict(good, image=_b64_png(np.zeros((64, 64, 3), np.uint8))), "image", "64x64"),  # refused from the PNG header
        (dict(good, image=_b64_png(np.zeros((16, 16, 3), np.uint8))), "image", "16x16"),  # the engines' profile
        (dict(good, mask=_b64_png(mask[:16, :16])), "mask", "single-channel 32x32"),
        (dict(good, mask=_b64_png(image)), "mask", "not single-channel"),
        (dict(good, mode="invert"), "source_prompt", "non-empty"),
        (dict(good, strength=0.0), "strength", "greater than 0"),
        (dict(good, region_noise=0.5), "region_noise", "mask"),
    ]
    for body, field, text in cases:
        reply = client.post("/v1/images/edits", json=body)
        assert reply.status_code == 422 and reply.json()["error"]["field"] == field, (field, reply.text)
        assert text in reply.json()["error"]["message"] + reply.json()["error"]["allowed"], (text, reply.text)


def test_the_edit_endpoint_is_in_the_published_schema(client):
    schema = client.get("/openapi.json").json()
    assert "/v1/images/edits" in schema["paths"] and "/v1/images" in schema["paths"]
    body = schema["components"]["schemas"]["ImageEditRequest"]
    assert body["additionalProperties"] is False and set(body["required"]) == {"image", "prompt"}
    assert {"mask", "mode", "source_prompt", "strength", "region_noise", "seed", "response_format"} <= set(body["properties"])
    assert "height" not in body["properties"]  # the image's own size
