"""LoRAs applied to built engine directories without rebuilding (runtime/lora.py, export/weight_map.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from runtime import Generator
from runtime.lora import LoraError, LoraSpec, lora_weights, parse_lora_arg
from runtime.manifest import EngineDirectoryError, load_manifest
from runtime.metrics import psnr
from runtime.specs import Component
from tests.runtime.lora_files import make_lora, to_kohya

ALPHA = 2.0
CALL = dict(seed=0, num_inference_steps=2, progress=False)
# Measured 147.5 dB (max |Δ| 3e-7), the base pair 147.7 dB: the Torch/ONNX Runtime gap, the merged weights bitwise equal
TORCH_LORA_PSNR = 100.0


@pytest.fixture(scope="module")
def loras(pixel_model_dir, tmp_path_factory) -> dict[str, Path]:
    """LoRA A (UNet + text encoder, rank 4) with its merged model directory, its kohya rewrite, and LoRA B."""
    root = tmp_path_factory.mktemp("loras")
    a = make_lora(pixel_model_dir, root / "a.safetensors", alpha=ALPHA, seed=0, merged_dir=root / "merged-a")
    return {"a": a, "kohya_a": to_kohya(a, root / "a-kohya.safetensors", ALPHA), "merged_a": root / "merged-a",
            "b": make_lora(pixel_model_dir, root / "b.safetensors", alpha=ALPHA, seed=7, text_encoder=False)}  # fmt: skip


def _images(generator: Generator) -> np.ndarray:
    return generator("a red circle at the top left", **CALL).images


def test_the_export_maps_module_weights_to_initializers(pixel_fp32_dir):
    manifest = load_manifest(pixel_fp32_dir)
    for component in (Component.UNET, Component.TEXT_ENCODER, Component.ADAPTER):
        weights = json.loads(manifest.components[component].weight_map.read_text())["weights"]
        assert weights, component
    unet = json.loads(manifest.components[Component.UNET].weight_map.read_text())["weights"]
    q = unet["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"]
    assert len(q) == 1 and q[0]["transpose"]  # a Linear's weight is the MatMul's Wᵀ
    assert len(unet["down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"]) == 2  # GEGLU's value and gate halves


@pytest.mark.slow
def test_lora_at_load_equals_an_engine_built_from_the_merged_model(loras, pixel_fp32_dir, tmp_path):
    """Measured bitwise (the merged initializers equal peft's fuse, the images equal: PSNR inf, max |Δ| 0); the floor
    leaves room for a BLAS whose float32 matmul rounds B·A differently from torch's."""
    from export.build import BuildOptions, build_engine_dir
    from runtime.options import BuildBackend, Precision

    merged = tmp_path / "engines"
    build_engine_dir(loras["merged_a"], merged, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32, max_images=3))
    applied = _images(Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["a"], 1.0)]))
    assert psnr(applied, _images(Generator.from_dir(merged, backend="onnxruntime-cpu"))) >= 100.0


def test_scale_zero_and_removal_give_the_base_bitwise_and_a_switch_equals_a_fresh_load(loras, pixel_fp32_dir):
    expected = _images(Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu"))
    b = _images(Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["b"], 1.0)]))
    gen = Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["a"], 0.0)])
    assert np.array_equal(_images(gen), expected)
    gen.set_loras([(loras["a"], 1.0)])
    a = _images(gen)
    assert psnr(a, expected) < 60  # the LoRA changes the images
    gen.set_loras([(loras["b"], 1.0)])
    assert np.array_equal(_images(gen), b)  # from the base weights: nothing of A is left
    assert gen.loras == (LoraSpec(loras["b"], 1.0),)
    gen.set_loras([])
    assert np.array_equal(_images(gen), expected)
    with pytest.raises(LoraError, match="not a finite number"):
        gen.set_loras([(loras["a"], 1.0), (loras["b"], float("nan"))])
    bad = loras["b"].with_name("b-other-base.safetensors")
    _reshaped(loras["b"], bad)
    gen.set_loras([(loras["a"], 1.0)])
    with pytest.raises(LoraError):
        gen.set_loras([(bad, 1.0)])
    assert np.array_equal(_images(gen), a) and gen.loras == (LoraSpec(loras["a"], 1.0),)  # a failed switch keeps A


def test_a_switch_whose_load_fails_goes_back_to_the_previous_weights(loras, pixel_fp32_dir, monkeypatch):
    """A switch frees each touched component's session before loading its new one (one copy of the weights in memory,
    not two); when a load fails there (simulated: the second of them), that component and the one already switched go
    back to the previous LoRA: the error names the component, the images are A's bitwise."""
    from runtime.backends.ort import OnnxRuntimeRunner
    from runtime.errors import RunnerError

    gen = Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["a"], 1.0)])
    a = _images(gen)
    real, loaded = OnnxRuntimeRunner._new_session, []

    def second_load_fails(runner, overrides):
        loaded.append(runner.spec.name)
        if len(loaded) == 2:
            raise MemoryError("simulated: no memory for the new session")
        return real(runner, overrides)

    monkeypatch.setattr(OnnxRuntimeRunner, "_new_session", second_load_fails)
    with pytest.raises(RunnerError, match=r"could not load \w+ with new weights: MemoryError: simulated"):
        gen.set_loras([(loras["b"], 1.0)])  # A touches the UNet and the text encoder, B the UNet: both are switched
    assert len(loaded) == 4 and loaded[1] == loaded[2] and loaded[3] == loaded[0] != loaded[1], loaded  # failed one, then the first, reloaded
    monkeypatch.undo()
    assert gen.loras == (LoraSpec(loras["a"], 1.0),)
    assert np.array_equal(_images(gen), a)


def test_kohya_and_peft_layouts_give_the_same_weights(loras, pixel_fp32_dir):
    manifest = load_manifest(pixel_fp32_dir)
    peft = lora_weights(manifest, [LoraSpec(loras["a"], 0.7)])
    kohya = lora_weights(manifest, [LoraSpec(loras["kohya_a"], 0.7)])
    assert set(peft) == set(kohya) == {Component.UNET, Component.TEXT_ENCODER}
    for component in peft:
        assert peft[component].initializers.keys() == kohya[component].initializers.keys()
        assert all(np.array_equal(v, kohya[component].initializers[k]) for k, v in peft[component].initializers.items())


def _reshaped(src: Path, dest: Path) -> None:
    """The LoRA with every down projection's input widened: a LoRA for another base model."""
    from safetensors.numpy import load_file

    save_file({k: np.concatenate([v, v], axis=1) if "lora_A" in k else v for k, v in load_file(str(src)).items()}, str(dest))


def test_bad_lora_files_are_refused_naming_the_file_and_the_problem(loras, pixel_fp32_dir, tmp_path):
    manifest = load_manifest(pixel_fp32_dir)
    pickled = tmp_path / "lora.pt"
    pickled.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(LoraError, match=r"lora\.pt: a pickle file.*refused"):
        lora_weights(manifest, [LoraSpec(pickled)])
    other = tmp_path / "other.safetensors"
    _reshaped(loras["b"], other)
    with pytest.raises(LoraError, match=r"other\.safetensors: unet module down_blocks\.0\..*to_[qkv]: .*shape \(32, 64\), the engine's is \(32, 32\)"):
        lora_weights(manifest, [LoraSpec(other)])
    stray = tmp_path / "stray.safetensors"
    save_file({"unet.no_such_block.to_q.lora_A.weight": np.ones((2, 32), np.float32), "unet.no_such_block.to_q.lora_B.weight": np.ones((32, 2), np.float32),
               "something_else": np.ones(1, np.float32)}, str(stray))  # fmt: skip
    with pytest.raises(LoraError, match=r"stray\.safetensors: 2 LoRA keys match no module .*no_such_block.*ignore_unmatched"):
        lora_weights(manifest, [LoraSpec(stray)])
    assert lora_weights(manifest, [LoraSpec(stray)], ignore_unmatched=True) == {}
    with pytest.raises(LoraError, match=r"a\.safetensors: scale inf is not a finite number"):
        Generator.from_dir(pixel_fp32_dir, loras=[(loras["a"], float("inf"))])


def test_an_engine_directory_built_before_weight_maps_says_to_rebuild(loras, pixel_fp32_dir, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(pixel_fp32_dir, old)
    data = json.loads((old / "manifest.json").read_text())
    for entry in data["components"].values():
        (old / entry["onnx"].pop("weight_map")["file"]).unlink()
    (old / "manifest.json").write_text(json.dumps(data))
    Generator.from_dir(old, backend="onnxruntime-cpu").close()  # still loads without LoRAs
    with pytest.raises(EngineDirectoryError, match=r"a\.safetensors: the engine directory .* has no weight map .*rebuild it for LoRAs"):
        Generator.from_dir(old, backend="onnxruntime-cpu", loras=[(loras["a"], 1.0)])


def test_lora_argument():
    assert parse_lora_arg("style.safetensors") == LoraSpec(Path("style.safetensors"), 1.0)
    assert parse_lora_arg("style.safetensors:0.5") == LoraSpec(Path("style.safetensors"), 0.5)
    assert parse_lora_arg("c:/loras/x.safetensors") == LoraSpec(Path("c:/loras/x.safetensors"), 1.0)
    with pytest.raises(LoraError, match="not a finite number"):
        parse_lora_arg("x.safetensors:nan")


def test_torch_backend_lora_equals_onnxruntime_and_switches_exactly(loras, pixel_model_dir, pixel_fp32_dir):
    """The Torch backend merges into its modules' weights from saved bases: with LoRA A it gives what ONNX Runtime with
    A gives (the tiny model's Torch/ONNX Runtime gap), and its base, scale 0, switches and removal are exact."""
    from contextdiff_ref.pipelines.torch_runner import torch_generator

    want = _images(Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["a"], 1.0)]))
    gen = torch_generator(pixel_model_dir, pixel_fp32_dir)
    base = _images(gen)
    fresh_b = _images(torch_generator(pixel_model_dir, pixel_fp32_dir, loras=[(loras["b"], 1.0)]))
    gen.set_loras([(loras["a"], 1.0)])
    got = _images(gen)
    assert psnr(got, want) >= TORCH_LORA_PSNR and psnr(got, base) < 60
    manifest, name = load_manifest(pixel_fp32_dir), "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    part = json.loads(manifest.components[Component.UNET].weight_map.read_text())["weights"][name][0]
    onnx_value = lora_weights(manifest, [LoraSpec(loras["a"])])[Component.UNET].initializers[part["initializer"]]
    assert np.array_equal(gen.runners[Component.UNET].weights()[name].detach().numpy().T, onnx_value)  # the merged weight, bitwise
    gen.set_loras([(loras["b"], 1.0)])
    assert np.array_equal(_images(gen), fresh_b)
    gen.set_loras([(loras["a"], 0.0)])
    assert np.array_equal(_images(gen), base) and not any(r._saved for r in gen.runners.values())


def test_cli_lora_applies_and_a_bad_scale_is_one_line_naming_lora(loras, pixel_fp32_dir, tmp_path, capsys):
    from PIL import Image

    from runtime.__main__ import main

    out = tmp_path / "a.png"
    args = ["a red circle at the top left", "-o", str(out), "--engines", str(pixel_fp32_dir), "--steps", "2", "--backend", "onnxruntime-cpu"]
    assert main([*args, "--lora", f"{loras['a']}:0.5"]) == 0
    want = Generator.from_dir(pixel_fp32_dir, backend="onnxruntime-cpu", loras=[(loras["a"], 0.5)])("a red circle at the top left", seed=0, num_inference_steps=2, progress=False)
    assert np.array_equal(np.asarray(Image.open(out)), (want.images[0] * 255).round().astype(np.uint8))
    capsys.readouterr()
    for argv in ([*args, "--lora", "x.safetensors:nan"], ["edit", "v.mp4", "--source-prompt", "a", "--prompt", "b", "-o", "o.mp4", "--lora", "x.safetensors:inf"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and len(err) == 1, err
        assert err[0].startswith("error: argument --lora: x.safetensors: scale") and "is not a finite number" in err[0], err


@pytest.mark.slow
def test_lora_on_an_fp16_engine_on_onnxruntime_cpu_equals_the_fp16_engine_of_the_merged_model(shipped_pixel_dir, shipped_pixel_fp16_dir, tmp_path):
    """ONNX Runtime's CPU provider fuses fp16 weights into float32 copies before the overrides are looked up
    (runtime/backends/ort.py): without the fused copies' overrides the LoRA did nothing (the base's output bitwise).
    The weights are the fp16 base + the delta, rounded once to fp16; the merged engine rounds the fp32 merged weight:
    one fp16 rounding apart. Measured on the shipped pixel model (2 steps, ONNX Runtime 1.31.1, AMD EPYC): 75.6 dB
    (max |Δ| 3.0e-3); the LoRA'd images are 36.0 dB from the base's."""
    from export.build import BuildOptions, build_engine_dir
    from runtime.options import BuildBackend, Precision

    lora = make_lora(shipped_pixel_dir, tmp_path / "shipped.safetensors", alpha=ALPHA, seed=3, text_encoder=False, merged_dir=tmp_path / "merged")
    weights = lora_weights(load_manifest(shipped_pixel_fp16_dir), [LoraSpec(lora)])
    assert weights and all(v.dtype == np.float16 for w in weights.values() for v in w.initializers.values())
    merged = tmp_path / "merged-engines"
    build_engine_dir(tmp_path / "merged", merged, BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP16, max_images=3))
    want = _images(Generator.from_dir(merged, backend="onnxruntime-cpu"))
    gen = Generator.from_dir(shipped_pixel_fp16_dir, backend="onnxruntime-cpu")
    base = _images(gen)
    gen.set_loras([(lora, 1.0)])
    got = _images(gen)
    assert psnr(got, want) >= 70.0 and psnr(got, base) < 45.0
    gen.set_loras([(lora, 0.0)])
    assert np.array_equal(_images(gen), base)  # scale 0 changes no weight: the base, bitwise
