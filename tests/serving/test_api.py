"""The HTTP API without Ray (FastAPI's TestClient over the same app the deployment serves), the service's batch
execution, and the config. Ray Serve's own batching, backpressure and HTTP proxy: tests/serving/test_ray.py."""

from __future__ import annotations

import asyncio
import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from runtime.errors import ConfigError
from runtime.generator import Generator
from serving.app import create_app, direct_submit
from serving.config import ServiceConfig
from serving.service import ImageService, chunk_jobs, png_bytes

PROMPT = "a red circle at the top left"


def _decode(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def _alone(gen: Generator, seed: int, n: int = 1, **kw) -> np.ndarray:
    images = gen([PROMPT] * n, seed=seed, progress=False, **kw).images
    return np.stack([np.asarray(Image.open(io.BytesIO(png_bytes(im)))) for im in images])


def test_health_ready_and_model(client, pixel_fp32_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    info = client.get("/v1/model").json()
    assert info["engine_dir"] == str(pixel_fp32_dir) and info["max_images_per_request"] == 3 and info["max_steps"] == 20
    assert info["height"] == {"minimum": 32, "maximum": 32, "multiple": info["height"]["multiple"]}
    assert set(info["components"]) == {"text_encoder", "unet", "adapter"}


def test_docs_page_needs_no_internet(client):
    """/docs is Swagger UI whose script, stylesheet and icon the service serves itself (an offline deployment gets a
    working page): every asset the page names is served from /docs/assets, none comes from another host."""
    import re

    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text and "/openapi.json" in page.text
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sorted(urls) == ["/docs/assets/favicon-32x32.png", "/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"], urls
    assert "http://" not in page.text and "https://" not in page.text
    script = client.get("/docs/assets/swagger-ui-bundle.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript") and "SwaggerUIBundle" in script.text
    assert client.get("/docs/assets/swagger-ui.css").text.lstrip().startswith(".swagger-ui")
    other = client.get("/docs/assets/index.html")  # in the bundle's folder, but not one of the page's assets
    assert other.status_code == 404 and other.json()["error"]["field"] == "name"
    assert client.get("/docs/assets/..%2F..%2Fapp.py").status_code == 404
    assert client.get("/redoc").status_code == 404  # ReDoc's page would need a CDN: not offered


def test_json_and_png_responses_are_the_generators_images(client, pixel_service):
    body = dict(prompt=PROMPT, seed=5, num_inference_steps=4, eta=1.0, guidance_scale=3.0, num_images=2)
    r = client.post("/v1/images", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    expected = _alone(pixel_service.generator, 5, n=2, num_inference_steps=4, eta=1.0, guidance_scale=3.0)
    assert data["seed"] == 5 and data["batch_images"] == 2 and (data["height"], data["width"]) == (32, 32)
    np.testing.assert_array_equal(np.stack([_decode(b) for b in data["images"]]), expected)
    png = client.post("/v1/images", json={**body, "num_images": 1, "response_format": "png"})
    assert png.headers["content-type"] == "image/png" and png.headers["x-seed"] == "5"
    one = _alone(pixel_service.generator, 5, n=1, num_inference_steps=4, eta=1.0, guidance_scale=3.0)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), one)


def test_no_seed_gets_a_fresh_one_that_reproduces(client):
    first = client.post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=3)).json()
    again = client.post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=3, seed=first["seed"])).json()
    assert again["images"] == first["images"]


@pytest.mark.parametrize(
    "body, field",
    [
        (dict(prompt=PROMPT, num_inference_steps=0), "num_inference_steps"),
        (dict(prompt=PROMPT, num_inference_steps=21), "num_inference_steps"),  # above the service's max_steps
        (dict(prompt=PROMPT, num_inference_steps="4"), "num_inference_steps"),  # strict: no coercion of strings
        (dict(prompt=PROMPT, num_inference_steps=4.5), "num_inference_steps"),  # 4.0 is an integer to JSON Schema, 4.5 is not
        (dict(prompt=PROMPT, eta=1.5), "eta"),
        (dict(prompt=PROMPT, guidance_scale=-1), "guidance_scale"),
        (dict(prompt=PROMPT, seed=-1), "seed"),
        (dict(prompt=PROMPT, seed=2**53), "seed"),  # JSON-safe seeds only
        (dict(prompt=PROMPT, seed=True), "seed"),
        (dict(prompt=PROMPT, num_images=4), "num_images"),  # the engines' batch profile: 3
        (dict(prompt=PROMPT, height=64), "height"),  # the engines were built for 32 x 32 only
        (dict(prompt=PROMPT, width=30), "width"),
        (dict(prompt=PROMPT, response_format="gif"), "response_format"),
        (dict(prompt=PROMPT, latents=[0.0]), "latents"),  # unknown field
        (dict(prompt=7), "prompt"),
        (dict(prompt="x" * 2001), "prompt"),
        (dict(num_inference_steps=3), "prompt"),
    ],
)
def test_bad_fields_are_422_naming_the_field(client, body, field):
    r = client.post("/v1/images", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field and field in error["message"] and error["allowed"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b"J\x16%\xff\xfe"])
def test_a_body_that_is_not_an_object_is_422(client, content):
    r = client.post("/v1/images", content=content, headers={"content-type": "application/json"})
    assert r.status_code in (400, 422) and r.json()["error"]["message"], r.text


def test_unparseable_bodies_name_the_body_and_what_is_wrong(client):
    """A truncated JSON text is a decode error at its position (not a field "27"); a form-encoded body says JSON was
    expected (not a Python bytes literal)."""
    r = client.post("/v1/images", content=b'{"prompt": "a red', headers={"content-type": "application/json"})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "body" and error["value"] is None, r.text
    assert error["message"].startswith("invalid body: JSON decode error at position 11 (Unterminated string") and "application/json" in error["allowed"]
    r = client.post("/v1/images", data={"prompt": "x"})
    error = r.json()["error"]
    assert r.status_code == 422 and error["field"] == "body" and error["value"] is None, r.text
    assert error["message"] == "invalid body: expected application/json, got Content-Type application/x-www-form-urlencoded", r.text


def test_the_openapi_schema_is_the_engines_exact_limits(latent_fp32_dir):
    service = ImageService(ServiceConfig(engines=str(latent_fp32_dir), max_steps=40))
    schema = TestClient(create_app(service, direct_submit(service))).get("/openapi.json").json()
    body = schema["components"]["schemas"]["ImageRequest"]
    assert body["additionalProperties"] is False and body["required"] == ["prompt"]
    props = body["properties"]
    assert (props["num_inference_steps"]["minimum"], props["num_inference_steps"]["maximum"]) == (1, 40)
    assert props["num_images"]["maximum"] == 3 and props["eta"]["maximum"] == 1.0
    seed = next(s for s in props["seed"]["anyOf"] if s.get("type") == "integer")
    assert (seed["minimum"], seed["maximum"]) == (0, 2**53 - 1) and "ge" not in seed  # bounds as JSON Schema names them
    height = next(s for s in props["height"]["anyOf"] if s.get("type") == "integer")
    gen, lim = service.generator, service.generator.limits
    unet = gen.manifest.components[next(c for c in gen.manifest.components if c.value == "unet")].profile
    f = lim.vae_scale_factor
    assert height["multipleOf"] == lim.pixel_factor and height["maximum"] == unet.max[1] * f and height["minimum"] >= unet.min[1] * f
    assert props["response_format"]["enum"] == ["png", "json"]
    responses = schema["paths"]["/v1/images"]["post"]["responses"]
    assert set(responses) == {"200", "400", "422", "500", "503", "504"} and "image/png" in responses["200"]["content"]
    # Every size the schema allows is served (the dynamic profile's both ends), at that size.
    for size in (int(height["minimum"]), int(height["maximum"])):  # FastAPI's OpenAPI model writes bounds as JSON numbers (32.0)
        job = service.job(service.request_model(prompt=PROMPT, height=size, width=size, num_inference_steps=2))
        assert service.run_jobs([job])[0].images.shape == (1, size, size, 3)


def test_run_jobs_groups_compatible_jobs_and_keeps_each_result(pixel_service):
    Body = pixel_service.request_model
    bodies = [Body(prompt=PROMPT, seed=1, num_images=2, num_inference_steps=3), Body(prompt="a blue square", seed=2, num_images=2, num_inference_steps=3),
              Body(prompt=PROMPT, seed=3, num_inference_steps=4), Body(prompt="", seed=4, num_inference_steps=3)]  # fmt: skip
    jobs = [pixel_service.job(b) for b in bodies]
    assert [[jobs.index(j) for j in chunk] for chunk in chunk_jobs(jobs, 3)] == [[0], [1, 3], [2]]
    results = pixel_service.run_jobs(jobs)
    assert [r.batch_images for r in results] == [2, 3, 1, 3]
    for body, result in zip(bodies, results):
        alone = pixel_service.generator([body.prompt] * body.num_images, seed=body.seed, num_inference_steps=body.num_inference_steps,
                                        progress=False).images  # fmt: skip
        np.testing.assert_array_equal(result.images, alone)
    cancelled = [pixel_service.job(b) for b in bodies[:2]]
    cancelled[0].cancelled = True
    skipped, served = pixel_service.run_jobs(cancelled)
    assert skipped is None and served.batch_images == 2


def test_timeout_is_504_and_engine_failure_is_500(pixel_fp32_dir):
    service = ImageService(ServiceConfig(engines=str(pixel_fp32_dir), request_timeout_s=0.2))
    seen = []

    async def slow(job):
        seen.append(job)
        await asyncio.sleep(5)

    r = TestClient(create_app(service, slow)).post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=2))
    assert r.status_code == 504 and "request_timeout_s" in r.json()["error"]["message"] and seen[0].cancelled

    async def broken(job):
        return RuntimeError("device lost")

    r = TestClient(create_app(service, broken)).post("/v1/images", json=dict(prompt=PROMPT, num_inference_steps=2))
    assert r.status_code == 500 and "device lost" in r.json()["error"]["message"]


def test_config_errors_name_the_field(pixel_fp32_dir, tmp_path):
    from serving.deployment import build_app

    with pytest.raises(ConfigError, match=r"max_batch_images=0"):
        ServiceConfig.parse({"engines": str(pixel_fp32_dir), "max_batch_images": 0})
    with pytest.raises(ConfigError, match=r"replicas"):
        ServiceConfig.parse({"replicas": 2})  # not a field: num_replicas
    with pytest.raises(ConfigError, match=r"min_replicas=3 must not exceed max_replicas=2"):
        ServiceConfig.parse({"autoscaling": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ConfigError, match=r"engines=.*no engine directory.*build_engines.py --batch 8"):
        build_app({"engines": str(tmp_path / "missing")})
    with pytest.raises(ConfigError, match=r"max_batch_images=4: the engines .* take at most 3"):
        ImageService(ServiceConfig(engines=str(pixel_fp32_dir), max_batch_images=4))


def test_config_becomes_serve_deployment_options():
    from serving.deployment import deployment_options

    fixed = deployment_options(ServiceConfig(num_replicas=3, num_gpus=1, max_queued_requests=5, retry_after_s=4))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed and fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert fixed["max_queued_requests"] == 5 and fixed["backpressure_config"] == {"status_code": 503, "retry_after_s": 4.0}
    scaled = deployment_options(ServiceConfig.parse({"autoscaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}}))
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8.0} and "num_replicas" not in scaled


def test_the_shipped_config_file_is_valid():
    from serving.__main__ import CONFIG, load_config
    from serving.config import DEFAULT_SERVING_ENGINES

    http, args = load_config(CONFIG)
    config = ServiceConfig.parse(args)  # a typo in a field name would be a ConfigError here
    assert http == {"host": "127.0.0.1", "port": 8000} and config.engines == DEFAULT_SERVING_ENGINES and config.max_queued_requests == 64


def test_loras_named_in_the_config_serve_requests_that_name_them(pixel_fp32_dir, lora_files, client):
    plain_client = client
    loras = {"a": {"file": str(lora_files["a"]), "scale": 0.5}, "b": {"file": str(lora_files["b"])}}
    service = ImageService(ServiceConfig(engines=str(pixel_fp32_dir), max_steps=20, loras=loras))
    client = TestClient(create_app(service, direct_submit(service)))
    assert client.get("/v1/model").json()["loras"] == {"a": {"file": str(lora_files["a"]), "scale": 0.5}, "b": {"file": str(lora_files["b"]), "scale": 1.0}}
    Body = service.request_model
    bodies = [Body(prompt=PROMPT, seed=1, num_inference_steps=2, lora="a"), Body(prompt=PROMPT, seed=1, num_inference_steps=2),
              Body(prompt=PROMPT, seed=1, num_inference_steps=2, lora="b"), Body(prompt="a blue square", seed=2, num_inference_steps=2, lora="a")]  # fmt: skip
    jobs = [service.job(b) for b in bodies]
    assert [[jobs.index(j) for j in chunk] for chunk in chunk_jobs(jobs, 3)] == [[0, 3], [1], [2]]  # never two LoRAs in one call
    results = service.run_jobs(jobs)
    for body, result, loaded in zip(bodies, results, ([(lora_files["a"], 0.5)], [], [(lora_files["b"], 1.0)], [(lora_files["a"], 0.5)])):
        gen = Generator.from_dir(pixel_fp32_dir, backend=service.generator.backend, loras=loaded)
        np.testing.assert_array_equal(result.images, gen([body.prompt], seed=body.seed, num_inference_steps=2, progress=False).images)
    assert results[1].images.tolist() != results[0].images.tolist()
    r = client.post("/v1/images", json=dict(prompt=PROMPT, seed=1, num_inference_steps=2, lora="a"))
    assert r.status_code == 200 and np.array_equal(_decode(r.json()["images"][0]), np.asarray(Image.open(io.BytesIO(png_bytes(results[0].images[0])))))
    unknown = client.post("/v1/images", json=dict(prompt=PROMPT, lora="c"))
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "lora", unknown.text
    assert plain_client.post("/v1/images", json=dict(prompt=PROMPT, lora="a")).status_code == 422  # a service without LoRAs


def test_a_lora_for_another_base_fails_the_start_naming_it(pixel_fp32_dir, lora_files, tmp_path):
    from safetensors.numpy import load_file, save_file

    other = tmp_path / "other.safetensors"
    save_file({k: np.concatenate([v, v], axis=1) if "lora_A" in k else v for k, v in load_file(str(lora_files["b"])).items()}, str(other))
    with pytest.raises(ConfigError, match=r"loras\.style: .*other\.safetensors: unet module .*the engine's is"):
        ImageService(ServiceConfig(engines=str(pixel_fp32_dir), loras={"style": {"file": str(other)}}))
    with pytest.raises(ConfigError, match=r"loras\.style\.scale"):
        ServiceConfig.parse({"engines": str(pixel_fp32_dir), "loras": {"style": {"file": "x.safetensors", "scale": float("nan")}}})
