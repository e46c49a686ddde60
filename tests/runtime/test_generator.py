"""runtime.Generator against the reference pipeline, plus threads, memory, and engine-directory faults."""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from runtime.errors import ContextDiffError, InvalidArgumentError
from runtime.generator import Generator
from runtime.manifest import EngineDirectoryError
from runtime.metrics import psnr
from runtime.specs import Component
from tests.parity import PROMPTS, compare, record

# Image parity on the shipped (trained) models, 20 steps; measured on 2 threads of an AMD EPYC (AVX-512), 2026-12-05, worst over each test's parametrizations
# (CONTEXTDIFF_PARITY_LOG=file records every figure: tests/parity.py).
# The worst case (pixel model, eta 1, guidance 7.5, 3 images) depends on the reference's summation order: 98.5 dB and
# x̂_0 1.0e-4 with torch on two threads, 87.5 dB and 3.8e-4 on one (as under pytest-xdist); elsewhere 116-147.8 dB, 3e-7 to 2e-5.
FP32_PSNR = 85.0
FP32_X0 = 5e-4  # worst relative error of x̂_0 over the steps
FP16_PSNR = 55.0  # measured 62.2 (pixel), 76.4 (latent), 72.6 (latent, standard graphs)
TORCH_PSNR = 120.0  # measured 141.6 (latent; pixel: bit for bit)


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("guidance", [7.5, 1.0])
@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_fp32_parity_with_the_reference(latent, eta, guidance, batch, shipped):
    """The shipped models (trained: the UNet's output matters) through ONNX Runtime against the reference."""
    image_psnr, x0_error, _ = compare(*shipped("latent" if latent else "pixel"), batch=batch, guidance=guidance, eta=eta)
    assert image_psnr >= FP32_PSNR and x0_error <= FP32_X0, (image_psnr, x0_error)


@pytest.mark.slow
@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_guided_contextual_guidance_parity(latent, shipped):
    """The "guided" variant (method doc §5): one adapter call of batch 4N where the engine takes it, as the reference."""
    model_dir, engine_dir = shipped("latent" if latent else "pixel")
    assert json.loads((engine_dir / "manifest.json").read_text())["components"]["adapter"]["profile"]["max"][0] == 12  # 4 × 3 images
    image_psnr, x0_error, _ = compare(model_dir, engine_dir, batch=3, guidance=3.0, eta=1.0, contextual_guidance="guided")
    assert image_psnr >= FP32_PSNR and x0_error <= FP32_X0, (image_psnr, x0_error)


@pytest.mark.slow
def test_guided_variant_on_engines_built_for_two_adapter_rows_per_image(latent_fp32_dir):
    """Engine directories built before the "guided" variant (adapter profile 2N) run it as one adapter call per text."""
    gen = Generator.from_dir(latent_fp32_dir)
    call = dict(prompt=PROMPTS[3], num_inference_steps=4, guidance_scale=7.5, seed=1, progress=False, output_type="latent", contextual_guidance="guided")
    one_call = gen(**call).images
    adapter = gen.manifest.components[Component.ADAPTER]
    small = dataclasses.replace(adapter.profile, max=(6, *adapter.profile.max[1:]), opt=(6, *adapter.profile.opt[1:]))
    gen.manifest.components[Component.ADAPTER] = dataclasses.replace(adapter, profile=small)
    calls = []
    runner = gen.runners[Component.ADAPTER]
    infer = runner.infer
    runner.infer = lambda feed: calls.append(feed["sample"].shape[0]) or infer(feed)
    np.testing.assert_allclose(gen(**call).images, one_call, rtol=0, atol=1e-5)
    assert set(calls) == {6}  # 2 × 3 rows per call, two calls per step
    assert gen.max_images == 3


@pytest.mark.slow
@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_fp16_engines_stay_close(latent, shipped):
    image_psnr, _, images = compare(*shipped("latent" if latent else "pixel", "fp16"), batch=3, guidance=7.5, eta=0.0)
    assert np.all(np.isfinite(images)) and image_psnr >= FP16_PSNR, image_psnr


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_standard_graphs_match_the_reference_too(precision, shipped):
    """The other artifact flavour (ai.onnx ops only, what TensorRT is built from) through the same runtime."""
    model_dir, engine_dir = shipped("latent-standard", precision)
    assert {e["onnx"]["flavour"] for e in json.loads((engine_dir / "manifest.json").read_text())["components"].values()} == {"standard"}
    image_psnr, x0_error, images = compare(model_dir, engine_dir, batch=3, guidance=7.5, eta=1.0)
    if precision == "fp32":
        assert image_psnr >= FP32_PSNR and x0_error <= FP32_X0, (image_psnr, x0_error)
    else:
        assert np.all(np.isfinite(images)) and image_psnr >= FP16_PSNR, image_psnr


def test_same_results_from_four_threads(pixel_fp32_dir):
    gen = Generator.from_dir(pixel_fp32_dir)
    run = lambda seed: gen(PROMPTS[1], num_inference_steps=4, eta=1.0, seed=seed, progress=False).images  # noqa: E731
    serial = {seed: run(seed) for seed in range(8)}
    threaded: dict[int, np.ndarray] = {}

    def worker(seeds):
        for seed in seeds:
            threaded[seed] = run(seed)

    threads = [threading.Thread(target=worker, args=([i, i + 4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert set(threaded) == set(serial)
    for seed in serial:
        np.testing.assert_array_equal(threaded[seed], serial[seed])


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="RSS is read from /proc (Linux only)")
def test_memory_stays_flat_over_200_generations(pixel_fp32_dir):
    gen = Generator.from_dir(pixel_fp32_dir)
    call = lambda i: gen(PROMPTS[1], num_inference_steps=1, eta=1.0, seed=i, progress=False)  # noqa: E731  (each stage once per generation)
    for i in range(20):  # warm-up: allocator pools and ONNX Runtime arenas settle
        call(i)
    before = _rss_bytes()
    for i in range(200):
        call(i)
    growth = _rss_bytes() - before
    assert growth < 16 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB over 200 generations"


def test_defaults_and_bad_arguments(pixel_fp32_dir):
    gen = Generator.from_dir(pixel_fp32_dir)
    assert gen.backend == "onnxruntime-cpu"
    images = gen("", num_inference_steps=2, seed=0, progress=False).images
    assert images.shape == (1, 32, 32, 3) and 0.0 <= images.min() and images.max() <= 1.0
    for kwargs, name in [(dict(prompt=[]), "prompt"), (dict(prompt="x", eta=2.0), "eta"), (dict(prompt="x", seed="1"), "seed"),
                         (dict(prompt="x", guidance_scale=float("nan")), "guidance_scale"), (dict(prompt="x", height=31), "height"),
                         (dict(prompt="x", latents=np.zeros((1, 3, 8, 8), np.float32)), "latents")]:  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=f"invalid {name}="):
            gen(num_inference_steps=2, progress=False, **kwargs)
    with pytest.raises(InvalidArgumentError, match="up to 3 image"):  # the engines were built for 3 images per call
        gen(["a"] * 4, num_inference_steps=2, progress=False)
    with pytest.raises(InvalidArgumentError, match="32x32 to 32x32"):  # static size
        gen("a", height=64, num_inference_steps=2, progress=False)
    with pytest.raises(InvalidArgumentError, match="backend"):
        Generator.from_dir(pixel_fp32_dir, backend="tensorrt-typo")


def test_dynamic_size_engines_take_both_ends_of_their_profile(latent_fp32_dir):
    """The text encoder's profile holds no image size: only the spatial engines' profiles bound the size."""
    gen = Generator.from_dir(latent_fp32_dir)
    for size in (16, 64):  # samples of 8 x 8 and 32 x 32, the profile's ends
        assert gen("a", height=size, width=size, num_inference_steps=2, progress=False).images.shape == (1, size, size, 3)
    with pytest.raises(InvalidArgumentError, match="sample sizes 8x8 to 32x32"):
        gen("a", height=68, num_inference_steps=2, progress=False)


def test_long_prompt_is_truncated_with_a_warning(pixel_fp32_dir, caplog):
    gen = Generator.from_dir(pixel_fp32_dir)
    with caplog.at_level("WARNING"):
        gen(" ".join(["red circle"] * 20), num_inference_steps=2, progress=False)
    assert any("truncated" in r.message for r in caplog.records)


@pytest.fixture()
def engine_copy(pixel_fp32_dir, tmp_path) -> Path:
    return Path(shutil.copytree(pixel_fp32_dir, tmp_path / "engines"))


def _manifest(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def _break(root: Path, how: str) -> str:
    unet = root / _manifest(root)["components"]["unet"]["onnx"]["file"]
    if how == "missing-dir":
        shutil.rmtree(root)
        return "not found"
    if how == "missing-manifest":
        (root / "manifest.json").unlink()
        return "missing"
    if how == "missing-file":
        unet.unlink()
        return "missing file"
    if how == "corrupted":
        data = bytearray(unet.read_bytes())
        data[len(data) // 2] ^= 0xFF
        unet.write_bytes(bytes(data))
        return "sha256 mismatch"
    if how == "truncated":
        unet.write_bytes(unet.read_bytes()[:1000])
        return "sha256 mismatch"
    if how == "format-version":
        (root / "manifest.json").write_text(json.dumps({**_manifest(root), "format_version": 99}))
        return "format_version=99"
    (root / "manifest.json").write_text("{truncated")
    return "cannot read"


@pytest.mark.parametrize("how", ["missing-dir", "missing-manifest", "missing-file", "corrupted", "truncated", "format-version", "malformed"])
def test_engine_directory_faults(engine_copy, how):
    needle = _break(engine_copy, how)
    with pytest.raises(EngineDirectoryError, match=needle) as info:
        Generator.from_dir(engine_copy)
    assert isinstance(info.value, ContextDiffError) and ("build_engines.py" in str(info.value))


def test_gpu_backends_are_clear_errors_where_unavailable(pixel_fp32_dir):
    from runtime.backends.selection import gpu_ready

    if gpu_ready():
        pytest.skip("a CUDA GPU is visible here; this test is about machines without one")
    with pytest.raises(InvalidArgumentError, match="no TensorRT plans"):
        Generator.from_dir(pixel_fp32_dir, backend="tensorrt")
    with pytest.raises(InvalidArgumentError, match="onnxruntime-gpu"):
        Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cuda")
    assert Generator.from_dir(pixel_fp32_dir, backend="onnxruntime").backend == "onnxruntime-cpu"
    with pytest.raises(InvalidArgumentError, match="device"):
        Generator.from_dir(pixel_fp32_dir, device=-1)


def test_plan_built_elsewhere_is_refused():
    from runtime.manifest import ComponentArtifacts, check_tensorrt_plan
    from runtime.specs import Profile

    artifacts = ComponentArtifacts(Component.UNET, "fp16", Profile((1, 8, 8), (2, 8, 8), (2, 8, 8)), Path("unet.onnx"), Path("unet.plan"),
                                   {"builder_version": "10.0.1", "compute_capability": "8.6"})  # fmt: skip
    check_tensorrt_plan(artifacts, "10.0.1", "8.6")  # the machine it was built for
    for version, capability in [("10.3.0", "8.6"), ("10.0.1", "9.0")]:
        with pytest.raises(EngineDirectoryError, match="build_engines.py"):
            check_tensorrt_plan(artifacts, version, capability)


@pytest.mark.slow
@pytest.mark.parametrize("latent, variant", [(False, "conditional"), (True, "conditional"), (True, "guided")], ids=["pixel", "latent", "latent-guided"])
def test_torch_backend_matches_the_reference(latent, variant, shipped):
    from contextdiff_ref.pipelines.torch_runner import torch_generator

    model_dir, engine_dir = shipped("latent" if latent else "pixel")
    gen = torch_generator(model_dir, engine_dir)
    kwargs = dict(num_inference_steps=10, guidance_scale=7.5, eta=1.0, seed=3, progress=False, contextual_guidance=variant)
    expected = ContextDiffPipeline.from_pretrained(model_dir)(PROMPTS[3], **kwargs).images
    got = gen(PROMPTS[3], **kwargs).images
    record(psnr=psnr(got, expected))
    assert gen.backend == "torch" and psnr(got, expected) >= TORCH_PSNR


@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_torch_backend_needs_no_engine_directory(latent, shipped):
    """The Torch backend takes its manifest, tokenizer and scheduler from the model directory itself (no ONNX export):
    the same images, bit for bit, as with an engine directory's."""
    from contextdiff_ref.pipelines.torch_runner import torch_generator

    model_dir, engine_dir = shipped("latent" if latent else "pixel")
    alone, with_dir = torch_generator(model_dir), torch_generator(model_dir, engine_dir)
    assert alone.limits == with_dir.limits  # without an engine directory it also offers step caching's shallow UNet
    assert set(alone.manifest.components) - {Component.UNET_SHALLOW} == set(with_dir.manifest.components)
    kwargs = dict(num_inference_steps=2, guidance_scale=7.5, seed=3, progress=False)
    np.testing.assert_array_equal(alone(PROMPTS[3][:1], **kwargs).images, with_dir(PROMPTS[3][:1], **kwargs).images)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("latent", [False, True], ids=["pixel", "latent"])
def test_run_batch_gives_each_call_its_own_images(latent, eta, pixel_fp32_dir, latent_fp32_dir):
    """Calls joined into one engine pass (the serving layer's dynamic batching) get exactly what each gets alone:
    per-call noise from per-call seeds (also the per-step noise of eta > 0), per-call negative prompts and image counts."""
    gen = Generator.from_dir(latent_fp32_dir if latent else pixel_fp32_dir)
    first, second, third = PROMPTS[3]
    calls = [dict(prompt=first, seed=3), dict(prompt=[second, third], negative_prompt="blurry", seed=11)]
    requests = [gen.validate(num_inference_steps=3, eta=eta, guidance_scale=7.5, **c) for c in calls]
    assert gen.max_images == 3 and sum(r.batch_size for r in requests) == 3
    joined = gen.run_batch(requests)
    for call, out in zip(calls, joined):
        alone = gen(num_inference_steps=3, eta=eta, guidance_scale=7.5, progress=False, **call)
        assert out.seed == alone.seed == call["seed"]
        np.testing.assert_array_equal(out.images, alone.images)
    other = gen.validate(first, num_inference_steps=4, eta=eta, seed=1)
    with pytest.raises(InvalidArgumentError, match="batch_key"):
        gen.run_batch([requests[0], other])
    with pytest.raises(InvalidArgumentError, match="up to 3 image"):
        gen.run_batch([requests[1], requests[1]])
