"""The OpenVINO CPU backend: parity with the reference and with ONNX Runtime, explicit precision, the compiled-model
cache, the build-time precision record and auto's choice."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import openvino as ov  # the test extra installs it: a broken import fails, it does not skip
import pytest

from export.build import BuildOptions, build_engine_dir
from runtime.backends import openvino as openvino_backend
from runtime.backends import selection
from runtime.backends.openvino import OpenVINORunner, OpenVINOUnavailableError, bf16_unsupported_reason, cache_key, compile_cached
from runtime.backends.ort import OnnxRuntimeRunner
from runtime.backends.selection import OPENVINO_CACHE
from runtime.errors import InvalidArgumentError
from runtime.generator import Generator
from runtime.manifest import EngineDirectoryError, load_manifest
from runtime.metrics import psnr
from runtime.options import BuildBackend, OpenVINOPrecision
from runtime.specs import SPECS, Component
from tests.parity import compare, record

# Image parity on the shipped (trained) models, 20 steps; measured on 2 threads of an AMD EPYC (AVX-512), 2026-12-05.
OV_F32_PSNR = 100.0  # measured 120.6 to 133.3 dB
OV_F32_X0 = 1e-4  # measured 6e-7 to 3.6e-5 ("guided")
OV_BF16_PSNR = 24.0  # measured 27.5 dB: bf16 rounds every weight and activation of a trained model
NO_BF16 = bf16_unsupported_reason(ov.Core())  # None on CPUs with AVX512-BF16 / AMX


@pytest.fixture
def engines(pixel_fp32_dir, tmp_path) -> Path:
    """A private copy without the cache other tests wrote into the shared directory, so the cache is this test's alone."""
    return Path(shutil.copytree(pixel_fp32_dir, tmp_path / "engines", ignore=shutil.ignore_patterns(OPENVINO_CACHE)))


def _generate(gen: Generator, seed: int = 3) -> np.ndarray:
    return gen(["a red circle", "a blue square at the bottom right"], num_inference_steps=4, guidance_scale=3.0, seed=seed, progress=False).images


@pytest.mark.slow
@pytest.mark.parametrize("latent, eta, guidance, variant", [(False, 0.0, 7.5, None), (True, 1.0, 7.5, None), (True, 0.0, 1.0, None), (True, 0.0, 7.5, "guided")])
def test_f32_matches_the_reference(latent, eta, guidance, variant, shipped):
    """OpenVINO f32 on the shipped (trained) models against the reference."""
    image_psnr, x0_error, _ = compare(*shipped("latent" if latent else "pixel"), batch=3, guidance=guidance, eta=eta, backend="openvino",
                                      contextual_guidance=variant)  # fmt: skip
    assert image_psnr >= OV_F32_PSNR and x0_error <= OV_F32_X0, (image_psnr, x0_error)


@pytest.mark.slow
def test_every_component_equals_onnxruntime_at_the_profile_corners(shipped_latent_fp32_dir):
    """Each component of the shipped latent model (trained weights, dynamic batch and size) at both ends of its profile."""
    manifest = load_manifest(shipped_latent_fp32_dir)
    rng = np.random.default_rng(0)
    for component, artifacts in manifest.components.items():
        spec = SPECS[component]
        with OnnxRuntimeRunner(spec, artifacts.onnx) as ort_runner, OpenVINORunner(spec, artifacts.onnx) as ov_runner:
            for corner in (artifacts.profile.min, artifacts.profile.max):  # dynamic batch and size: both ends
                feed = spec.sample_inputs(manifest.dims, *corner, rng)
                expected, got = ort_runner.infer(feed), ov_runner.infer(feed)
                for name, value in expected.items():
                    assert got[name].shape == value.shape and got[name].dtype == value.dtype, (component, name)
                    error = float(np.abs(got[name] - value).max() / np.abs(value).max())
                    record(**{f"{component.value} {corner}": error})
                    assert error <= 1e-5, (component, corner, name, error)  # measured 2.3e-7 to 2.7e-6 of the largest value


def test_outputs_are_the_callers_own(pixel_fp32_dir):
    """The infer request reuses its buffers: what one call returned must survive the next."""
    manifest = load_manifest(pixel_fp32_dir)
    artifacts, spec = manifest.components[Component.UNET], SPECS[Component.UNET]
    rng = np.random.default_rng(1)
    with OpenVINORunner(spec, artifacts.onnx) as runner:
        first_feed = spec.sample_inputs(manifest.dims, *artifacts.profile.max, rng)
        first = runner.infer(first_feed)["model_output"]
        kept = first.copy()
        runner.infer(spec.sample_inputs(manifest.dims, *artifacts.profile.max, rng))
        assert np.array_equal(first, kept)


@pytest.mark.skipif(NO_BF16 is None, reason="this CPU has bf16: the refusal is for CPUs without it")
def test_bf16_is_refused_on_a_cpu_without_it(engines, monkeypatch):
    with pytest.raises(InvalidArgumentError, match=r"precision|bf16") as info:
        Generator.from_dir(engines, backend="openvino", precision="bf16")
    assert "no bf16 instructions" in str(info.value) and "OPTIMIZATION_CAPABILITIES" not in str(info.value)
    artifacts = load_manifest(engines).components[Component.UNET]
    with pytest.raises(OpenVINOUnavailableError, match="bf16"):
        OpenVINORunner(SPECS[Component.UNET], artifacts.onnx, precision=OpenVINOPrecision.BF16).activate()
    # Were the capability check fooled, OpenVINO would compile at f32 without a word: the read-back catches it.
    monkeypatch.setattr(openvino_backend, "bf16_unsupported_reason", lambda core: None)
    with pytest.raises(OpenVINOUnavailableError, match=r"compiled for 'f32' although 'bf16' was asked for"):
        OpenVINORunner(SPECS[Component.UNET], artifacts.onnx, precision=OpenVINOPrecision.BF16).activate()


@pytest.mark.slow
@pytest.mark.skipif(NO_BF16 is not None, reason=f"bf16 cannot run on this CPU: {NO_BF16}")
def test_bf16_stays_close_to_the_reference(shipped):
    image_psnr, _, images = compare(*shipped("latent"), batch=3, guidance=7.5, eta=0.0, backend="openvino", precision="bf16")
    assert np.all(np.isfinite(images)) and image_psnr >= OV_BF16_PSNR, image_psnr


def _cache_entries(engines: Path) -> list[str]:
    return sorted(p.name for p in (engines / OPENVINO_CACHE).glob("*/*"))


def test_compiled_models_are_cached_and_reused(engines):
    first = Generator.from_dir(engines, backend="openvino")
    assert first.backend == "openvino" and first.precision == "f32"
    assert not any(r.loaded_from_cache for r in first.runners.values())
    entries = _cache_entries(engines)
    assert [e.split("-")[0] for e in entries] == sorted(c.value for c in first.runners) and all("-f32-" in e for e in entries)
    assert not list((engines / OPENVINO_CACHE).rglob(".tmp-*"))  # no staging left behind
    expected = _generate(first)
    # the call's shapes got static-shape models, cached beside the dynamic ones under the same key plus the shapes
    static = sorted(set(_cache_entries(engines)) - set(entries))
    assert [e.split("-")[0] for e in static] == sorted(c.value for c in first.runners)
    assert all(len(e.split("-")) == 4 and e.rsplit("-", 1)[0] in entries for e in static), static
    assert all(len(r._static) == 1 for r in first.runners.values())
    second = Generator.from_dir(engines, backend="openvino")
    assert all(r.loaded_from_cache for r in second.runners.values())
    assert np.array_equal(_generate(second), expected)
    assert _cache_entries(engines) == sorted(entries + static)  # nothing compiled anew


def test_static_shape_models_equal_the_dynamic_one(pixel_fp32_dir):
    """Models compiled for the call's shapes (the first ``static_shapes`` of them) compute what the dynamic model does;
    other shapes run the dynamic one; static_shapes=0 never compiles one; a bad count is a clear error."""
    manifest = load_manifest(pixel_fp32_dir)
    spec, artifacts = SPECS[Component.UNET], manifest.components[Component.UNET]
    rng = np.random.default_rng(0)
    _, height, width = artifacts.profile.opt
    feeds = [spec.sample_inputs(manifest.dims, batch, height, width, rng) for batch in (1, 2, 3)]
    with OpenVINORunner(spec, artifacts.onnx, static_shapes=0) as dynamic, OpenVINORunner(spec, artifacts.onnx) as static:
        for feed in feeds:
            want, got = dynamic.infer(feed)["model_output"], static.infer(feed)["model_output"]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
            if len(static._static) == 1:  # the first static model compiled: the dynamic one's weights went back before
                assert static.request is None
        assert not dynamic._static and sorted(shapes[0][0] for shapes in static._static) == [1, 2]
        assert static.request is not None  # batch 3: the dynamic model, compiled again
    with OpenVINORunner(spec, artifacts.onnx) as static:  # shapes the graph cannot take: a clear error, not OpenVINO's trace
        wrong = dict(feeds[0], sample=np.zeros((1, 7, height, width), np.float32))
        with pytest.raises(InvalidArgumentError, match=r"invalid unet input shapes=.*\(1, 7, .*shapes unet\.\S+\.onnx takes"):
            static.infer(wrong)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(InvalidArgumentError, match="static_shapes"):
            OpenVINORunner(spec, artifacts.onnx, static_shapes=bad)


def test_batches_split_over_streams_equal_whole_calls(pixel_fp32_dir):
    """streams=2: a batch that splits into two parts of whole units runs as two parts at once on one static model
    compiled for a part, with the whole call's results; a batch that does not runs whole; bad values are clear errors."""
    manifest = load_manifest(pixel_fp32_dir)
    spec, artifacts = SPECS[Component.UNET], manifest.components[Component.UNET]
    rng = np.random.default_rng(1)
    _, height, width = artifacts.profile.opt
    feeds = {batch: spec.sample_inputs(manifest.dims, batch, height, width, rng) for batch in (2, 3)}
    with OpenVINORunner(spec, artifacts.onnx, static_shapes=3) as whole, OpenVINORunner(spec, artifacts.onnx, static_shapes=3, streams=2) as split:
        for feed in feeds.values():
            np.testing.assert_allclose(split.infer(feed)["model_output"], whole.infer(feed)["model_output"], rtol=1e-4, atol=1e-5)
        assert {shapes[0][0]: len(requests) for shapes, requests in split._static.items()} == {2: 2, 3: 1}
        assert all(len(requests) == 1 for requests in whole._static.values())
    with OpenVINORunner(spec, artifacts.onnx, streams=2, batch_unit=2) as units:  # batch 2 is one unit: it runs whole
        units.infer(feeds[2])
        assert [len(requests) for requests in units._static.values()] == [1]
    for name in ("streams", "batch_unit"):
        for bad in (0, -1, 1.5, True, "2"):
            with pytest.raises(InvalidArgumentError, match=name):
                OpenVINORunner(spec, artifacts.onnx, **{name: bad})


def test_a_damaged_cache_entry_is_recompiled(engines, caplog):
    expected = _generate(Generator.from_dir(engines, backend="openvino"))
    blobs = list((engines / OPENVINO_CACHE).rglob("*.blob"))
    assert len(blobs) == 6  # each component's dynamic model and one static-shape model
    for i, blob in enumerate(blobs):  # one truncated, the others garbage
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2] if i == 0 else b"not a blob" * 100)
    with caplog.at_level(logging.WARNING, logger="runtime.backends.openvino"):
        gen = Generator.from_dir(engines, backend="openvino")
        assert not any(r.loaded_from_cache for r in gen.runners.values()) and "was not usable" in caplog.text
        assert np.array_equal(_generate(gen), expected)
    assert all(r.loaded_from_cache for r in Generator.from_dir(engines, backend="openvino").runners.values())  # rewritten whole
    assert len(list((engines / OPENVINO_CACHE).rglob("*.blob"))) == 6


def test_the_cache_key_follows_artifacts_version_and_precision():
    core = ov.Core()
    base = cache_key(core, "2026.4.1-22982", "unet", OpenVINOPrecision.F32, ["a" * 64])
    assert base.parts[0].startswith("openvino-2026.4.1-cpu") and base.name.startswith("unet-f32-")
    assert cache_key(core, "2026.4.1-22982", "unet", OpenVINOPrecision.F32, ["a" * 64]) == base
    others = [cache_key(core, "2026.5.0-1", "unet", OpenVINOPrecision.F32, ["a" * 64]),
              cache_key(core, "2026.4.1-22982", "unet", OpenVINOPrecision.BF16, ["a" * 64]),
              cache_key(core, "2026.4.1-22982", "unet", OpenVINOPrecision.F32, ["b" * 64]),
              cache_key(core, "2026.4.1-22982", "unet", OpenVINOPrecision.F32, ["a" * 64, "c" * 64])]  # fmt: skip
    assert len({base, *others}) == 5


def test_a_rebuilt_artifact_replaces_its_stale_entry(engines):
    Generator.from_dir(engines, backend="openvino")
    version_dir = next((engines / OPENVINO_CACHE).iterdir())
    stale = version_dir / "unet-f32-0123456789abcdef"  # what an earlier build of the UNet left
    stale.mkdir()
    (stale / "1.blob").write_bytes(b"old")
    shutil.rmtree(next(p for p in version_dir.glob("unet-f32-*") if p != stale))  # the current UNet's entry is gone: compiled afresh
    Generator.from_dir(engines, backend="openvino")
    assert not stale.exists() and len(list(version_dir.glob("unet-f32-*"))) == 1


class _InterruptedCore:
    """A core whose compile writes part of a blob into the cache directory and is then interrupted."""

    def compile_model(self, path, device, config):
        Path(config["CACHE_DIR"], "123.blob").write_bytes(b"half")
        raise KeyboardInterrupt


def test_an_interrupted_compile_leaves_no_entry(tmp_path):
    key = Path("openvino-x-cpu0") / "unet-f32-0011223344556677"
    with pytest.raises(KeyboardInterrupt):
        compile_cached(_InterruptedCore(), tmp_path / "unet.onnx", {}, tmp_path / "cache", key)
    assert not (tmp_path / "cache" / key).exists() and not list((tmp_path / "cache").rglob(".tmp-*"))


def test_an_unwritable_cache_is_skipped_with_a_warning(pixel_fp32_dir, tmp_path, caplog):
    (tmp_path / "file").write_text("not a directory")
    artifacts = load_manifest(pixel_fp32_dir).components[Component.ADAPTER]
    runner = OpenVINORunner(SPECS[Component.ADAPTER], artifacts.onnx, cache_root=tmp_path / "file" / "cache", artifact_sha256=artifacts.onnx_sha256)
    with caplog.at_level(logging.WARNING, logger="runtime.backends.openvino"):
        runner.activate()
    assert runner.active and "not writable" in caplog.text


def test_precision_recorded_at_build_time(pixel_model_dir, pixel_fp32_dir, tmp_path, monkeypatch, caplog):
    out = Path(shutil.copytree(pixel_fp32_dir, tmp_path / "bf16"))
    results = build_engine_dir(pixel_model_dir, out, BuildOptions(backend=BuildBackend.ONNXRUNTIME, max_images=3, openvino_precision="bf16"))
    assert all(r.cached for r in results)  # the same ONNX artifacts: only the manifest's record changes
    assert json.loads((out / "manifest.json").read_text())["build"]["openvino_precision"] == "bf16"
    manifest = load_manifest(out)
    assert manifest.openvino_precision is OpenVINOPrecision.BF16
    assert load_manifest(pixel_fp32_dir).openvino_precision is OpenVINOPrecision.F32
    # auto: OpenVINO bf16 where it can run, else ONNX Runtime at full precision, saying why
    if NO_BF16 is None:
        assert selection.pick_backend("auto", manifest) == ("openvino", OpenVINOPrecision.BF16)
    else:
        with caplog.at_level(logging.WARNING, logger="runtime.backends.selection"):
            assert selection.pick_backend("auto", manifest) == ("onnxruntime-cpu", None)
        assert "asks for OpenVINO bf16" in caplog.text and "no bf16 instructions" in caplog.text
        with pytest.raises(InvalidArgumentError, match="OpenVINO bf16 cannot run here"):
            Generator.from_dir(out, backend="openvino")  # the record is honoured or refused, never run at f32
        assert Generator.from_dir(out, backend="openvino", precision="f32").precision == "f32"  # the caller's word wins
    monkeypatch.setattr(selection, "openvino_unavailable_reason", lambda precision: None)  # a bf16 CPU, as far as the choice goes
    assert selection.pick_backend("auto", manifest) == ("openvino", OpenVINOPrecision.BF16)
    assert selection.pick_backend("auto", load_manifest(pixel_fp32_dir)) == ("onnxruntime-cpu", None)  # f32: ONNX Runtime
    assert selection.pick_backend("auto", manifest, OpenVINOPrecision.F32) == ("openvino", OpenVINOPrecision.F32)


def test_bad_precision_and_records_are_clear_errors(pixel_model_dir, engines, tmp_path):
    with pytest.raises(InvalidArgumentError, match=r"invalid precision='fp16': None or one of \['f32', 'bf16', 'int8'\]"):
        Generator.from_dir(engines, backend="openvino", precision="fp16")
    with pytest.raises(InvalidArgumentError, match=r"invalid precision='f32': None with backend 'onnxruntime-cpu'"):
        Generator.from_dir(engines, backend="onnxruntime-cpu", precision="f32")
    with pytest.raises(InvalidArgumentError, match=r"invalid --openvino-precision='fp8'"):
        build_engine_dir(pixel_model_dir, tmp_path / "x", BuildOptions(backend=BuildBackend.ONNXRUNTIME, openvino_precision="fp8"))
    data = json.loads((engines / "manifest.json").read_text())
    data["build"]["openvino_precision"] = "fp8"
    (engines / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(EngineDirectoryError, match="malformed"):
        Generator.from_dir(engines, backend="openvino")


def test_a_graph_openvino_cannot_compile_is_one_clear_error(tmp_path):
    bad = tmp_path / "unet.onnx"
    bad.write_bytes(b"this is not an ONNX graph")
    with pytest.raises(OpenVINOUnavailableError, match=r"^unet: OpenVINO \S+ could not compile .*unet\.onnx: ") as info:
        OpenVINORunner(SPECS[Component.UNET], bad).activate()
    assert "\n" not in str(info.value)


def test_openvino_missing_is_a_clear_error(engines, monkeypatch):
    real_import = openvino_backend.importlib.import_module

    def no_openvino(name, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real_import(name, *args)

    monkeypatch.setattr(openvino_backend.importlib, "import_module", no_openvino)
    with pytest.raises(InvalidArgumentError, match=r"needs OpenVINO.*pip install openvino"):
        Generator.from_dir(engines, backend="openvino")
    assert Generator.from_dir(engines).backend == "onnxruntime-cpu"  # auto never needs it


def test_cli_runs_openvino_and_refuses_what_it_cannot(engines, tmp_path, capsys):
    from runtime.__main__ import main

    out = tmp_path / "ov.png"
    assert main(["a red circle", "--engines", str(engines), "--backend", "openvino", "--steps", "3", "-o", str(out)]) == 0
    assert "(openvino f32)" in capsys.readouterr().out and out.is_file()
    reference = tmp_path / "ort.png"
    assert main(["a red circle", "--engines", str(engines), "--backend", "onnxruntime-cpu", "--steps", "3", "-o", str(reference)]) == 0
    from PIL import Image

    assert psnr(np.asarray(Image.open(out), np.float64) / 255, np.asarray(Image.open(reference), np.float64) / 255) >= 40.0  # 8-bit rounding
    if NO_BF16 is not None:
        assert main(["a red circle", "--engines", str(engines), "--backend", "openvino", "--precision", "bf16", "-o", str(tmp_path / "b.png")]) == 2
        assert "no bf16 instructions" in capsys.readouterr().err and not (tmp_path / "b.png").exists()
