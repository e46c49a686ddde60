"""Step caching in the runtime (issue 34): the loop picks the whole UNet or the shallow one per step
(runtime.step_cache) on ONNX Runtime, OpenVINO and the Torch backend, against the reference pipeline's
``cache_interval``; interval 1 is today's path; what is refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from export.artifacts import read_manifest
from runtime.errors import InvalidArgumentError
from runtime.generator import Generator
from runtime.metrics import psnr
from tests.parity import record

PROMPT = "a red circle at the top left"
KW = dict(num_inference_steps=10, guidance_scale=3.0, seed=0, progress=False)
# image PSNR of the runtime's interval-3 images against the reference's interval-3 images (fp32, the tiny pixel
# model, 10 steps, guidance 3): measured 2026-12-05 on 2 threads of an AMD EPYC — ONNX Runtime 132.6 dB, OpenVINO
# 129.9 dB, the Torch backend bitwise (300 dB). Interval 3 itself is 26.7 dB from the exact path here.
MIN_PSNR = 110.0
FP16_MIN_PSNR = 65.0  # the same with an fp16 step-cache build: measured 72.2 dB (same machine, 2026-12-05)


@pytest.mark.slow
def test_interval_one_is_the_exact_path_bitwise(pixel_step_cache_dir, pixel_fp32_dir):
    """A step-cache build's UNet also outputs its feature; interval 1 ignores it and gives bitwise the images of a
    build without step caching (same flavour, ONNX Runtime CPU)."""
    exact = Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu")(PROMPT, **KW).images
    gen = Generator.from_dir(pixel_step_cache_dir, backend="onnxruntime-cpu")
    np.testing.assert_array_equal(gen(PROMPT, **KW).images, exact)
    np.testing.assert_array_equal(gen(PROMPT, cache_interval=1, **KW).images, exact)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "openvino", "torch"])
def test_interval_three_matches_the_reference(backend, pixel_step_cache_dir, pixel_model_dir, pixel_pipe):
    if backend == "torch":
        from contextdiff_ref.pipelines.torch_runner import torch_generator

        gen = torch_generator(pixel_model_dir)  # no engine directory: the reference modules, step caching included
    else:  # OpenVINO is a test dependency: its absence fails the run, as the skip policy wants
        gen = Generator.from_dir(pixel_step_cache_dir, backend=backend)
    reference = pixel_pipe(PROMPT, cache_interval=3, **KW).images
    exact = pixel_pipe(PROMPT, **KW).images
    got = gen(PROMPT, cache_interval=3, **KW).images
    listed = gen(PROMPT, full_steps=[0, 3, 6, 9], **KW).images
    record(psnr=psnr(got, reference), psnr_interval3_vs_exact=psnr(reference, exact))
    assert psnr(got, reference) >= MIN_PSNR
    np.testing.assert_array_equal(listed, got)
    assert psnr(got, exact) < psnr(got, reference)  # the shallow steps ran


@pytest.mark.slow
def test_caching_needs_a_step_cache_build(pixel_fp32_dir):
    gen = Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu")
    with pytest.raises(InvalidArgumentError, match=r"cache_interval.*--step-cache"):
        gen(PROMPT, cache_interval=3, **KW)
    for bad, match in (({"cache_interval": 0}, "cache_interval"), ({"cache_interval": 2.5}, "cache_interval"),
                       ({"full_steps": [1, 2]}, "full_steps.*step 0")):  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=match):
            gen(PROMPT, **bad, **KW)


@pytest.mark.slow
def test_cli_cache_interval(pixel_step_cache_dir, pixel_fp32_dir, tmp_path, capsys):
    from runtime.__main__ import main

    out = tmp_path / "a.png"
    assert main([PROMPT, "-o", str(out), "--engines", str(pixel_step_cache_dir), "--steps", "4", "--cache-interval", "2"]) == 0 and out.is_file()
    assert main([PROMPT, "-o", str(out), "--engines", str(pixel_fp32_dir), "--steps", "4", "--cache-interval", "2"]) != 0
    assert "--step-cache" in capsys.readouterr().err


@pytest.mark.slow
def test_an_fp16_step_cache_build_matches_the_reference(pixel_step_cache_fp16_dir, pixel_pipe):
    """fp16 graphs for step caching: the UNet's ``feature`` output, which the up layer taking the branch also reads inside the graph,
    stays fp16 inside and float32 outside (the converter once left that reader on the fp32 copy: the build failed),
    and interval 3 on ONNX Runtime matches the reference's interval 3 at fp16's precision."""
    manifest = read_manifest(pixel_step_cache_fp16_dir)
    assert {manifest["components"][c]["precision"] for c in ("unet", "unet_shallow")} == {"fp16"}
    unet = onnx.load(str(pixel_step_cache_fp16_dir / manifest["components"]["unet"]["onnx"]["file"]))
    assert {o.name: o.type.tensor_type.elem_type for o in unet.graph.output}["feature"] == onnx.TensorProto.FLOAT
    gen = Generator.from_dir(pixel_step_cache_fp16_dir, backend="onnxruntime-cpu")
    got, reference = gen(PROMPT, cache_interval=3, **KW).images, pixel_pipe(PROMPT, cache_interval=3, **KW).images
    record(psnr=psnr(got, reference))
    assert psnr(got, reference) >= FP16_MIN_PSNR


@pytest.mark.slow
def test_a_build_at_branch_zero_runs_the_reference_split_there(pixel_step_cache_dir, pixel_model_dir, pixel_pipe, tmp_path):
    """``--step-cache-branch 0``: the shallow part keeps only conv_in and the last up layer. The build records the
    branch and its feature's channels, gets UNet artifacts of its own (other components come from the ONNX cache), and
    interval 3 on ONNX Runtime and on the Torch backend (which follows the directory's branch) matches the reference
    split at branch 0, not at branch 1."""
    from contextdiff_ref.pipelines.torch_runner import torch_generator
    from export.build import BuildOptions, build_engine_dir
    from runtime.manifest import load_manifest
    from runtime.options import BuildBackend

    out = tmp_path / "branch0"
    build_engine_dir(pixel_model_dir, out, BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=3, step_cache=True, step_cache_branch=0))
    manifest, default = read_manifest(out), read_manifest(pixel_step_cache_dir)
    assert manifest["build"]["step_cache_branch"] == 0 and default["build"]["step_cache_branch"] == 1
    assert load_manifest(out).step_cache_branch == 0
    unet = pixel_pipe.components.unet
    assert manifest["model"]["dims"]["feature_channels"] == unet.up_blocks[-1].resnets[0].out_channels  # the last up layer's input
    for component, same in (("text_encoder", True), ("adapter", True), ("unet", False), ("unet_shallow", False)):
        assert (manifest["components"][component]["source_key"] == default["components"][component]["source_key"]) == same, component
    at_zero, at_one = (pixel_pipe(PROMPT, cache_interval=3, cache_branch=b, **KW).images for b in (0, 1))
    got = Generator.from_dir(out, backend="onnxruntime-cpu")(PROMPT, cache_interval=3, **KW).images
    torch_got = torch_generator(pixel_model_dir, out)(PROMPT, cache_interval=3, **KW).images
    record(psnr=psnr(got, at_zero), psnr_torch=psnr(torch_got, at_zero), psnr_branch0_vs_branch1=psnr(at_zero, at_one))
    assert psnr(got, at_zero) >= MIN_PSNR and psnr(torch_got, at_zero) >= MIN_PSNR
    assert psnr(got, at_one) < MIN_PSNR - 30  # the branch matters: not the default split's images


def test_build_engines_refuses_a_bad_step_cache_branch(tmp_path, capsys):
    """``--step-cache-branch`` without ``--step-cache``, or outside the branches the UNet's last up-block takes: one
    line naming the argument, nothing written."""
    from export.build_engines import main

    out = tmp_path / "engines"
    assert main(["--step-cache-branch", "0", "--out", str(out)]) == 2
    assert "--step-cache-branch=0" in capsys.readouterr().err
    assert main(["--step-cache", "--step-cache-branch", "2", "--out", str(out)]) == 2
    assert "invalid --step-cache-branch=2: an integer from 0 to 1" in capsys.readouterr().err
    assert not out.exists()
