"""LoRAs on the OpenVINO backend (runtime/backends/openvino.py): the touched constants replaced before compiling, the
compile cache keyed by the LoRA set, switching and removal from the base weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from runtime.backends.openvino import LORA_CACHE_SETS, prune_lora_sets
from runtime.backends.selection import OPENVINO_CACHE
from runtime.errors import RunnerError
from runtime.generator import Generator
from runtime.metrics import psnr
from tests.runtime.lora_files import make_lora

# Measured on 1 thread of this CPU, OpenVINO 2026.4, 2026-12-05 (3 steps, 2 images of the tiny pixel model): OpenVINO
# f32 with LoRA A against ONNX Runtime with LoRA A 146.4 dB (max |Δ| 4.2e-7), the base pair 146.6 dB (3.9e-7); the LoRA
# changes the images (35.6 dB from the base).
OV_LORA_PSNR = 100.0


@pytest.fixture(scope="module")
def ov_loras(pixel_model_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ov-loras")
    return {"a": make_lora(pixel_model_dir, root / "a.safetensors", seed=0), "b": make_lora(pixel_model_dir, root / "b.safetensors", seed=7, text_encoder=False)}


@pytest.fixture
def engines(pixel_fp32_dir, tmp_path) -> Path:
    return Path(shutil.copytree(pixel_fp32_dir, tmp_path / "engines", ignore=shutil.ignore_patterns(OPENVINO_CACHE)))


def _images(gen: Generator) -> np.ndarray:
    return gen(["a red circle", "a blue square at the bottom right"], num_inference_steps=3, guidance_scale=3.0, seed=1, progress=False).images


def _entries(engines: Path) -> set[str]:
    return {p.name for p in (engines / OPENVINO_CACHE).glob("*/*")}


@pytest.mark.slow
def test_openvino_lora_equals_onnxruntime_and_switches_from_the_base(ov_loras, engines):
    a = [(ov_loras["a"], 1.0)]
    want_a = _images(Generator.from_dir(engines, backend="onnxruntime-cpu", loras=a))
    base = _images(Generator.from_dir(engines, backend="openvino"))
    base_entries = _entries(engines)
    gen = Generator.from_dir(engines, backend="openvino", loras=a)
    got_a = _images(gen)
    assert psnr(got_a, want_a) >= OV_LORA_PSNR and psnr(got_a, base) < 60
    lora_entries = _entries(engines) - base_entries  # the LoRA'd components' own entries; the base's are left as they were
    assert lora_entries and all("-lora" in e and e.split("-")[0] in ("unet", "text_encoder") for e in lora_entries)
    again = Generator.from_dir(engines, backend="openvino", loras=a)  # the LoRA set's entry, not the base's
    assert again.runners[next(iter(again.runners))].loaded_from_cache and np.array_equal(_images(again), got_a)
    fresh_b = _images(Generator.from_dir(engines, backend="openvino", loras=[(ov_loras["b"], 1.0)]))
    gen.set_loras([(ov_loras["b"], 1.0)])
    assert np.array_equal(_images(gen), fresh_b)  # from the base: nothing of A left
    gen.set_loras([])
    assert np.array_equal(_images(gen), base)
    assert np.array_equal(_images(Generator.from_dir(engines, backend="openvino", loras=[(ov_loras["a"], 0.0)])), base)
    b_entries = _entries(engines) - base_entries - lora_entries
    assert LORA_CACHE_SETS >= 2 and b_entries and _entries(engines) >= base_entries | lora_entries  # A's and B's kept
    for runner in gen.runners.values():
        runner.lora_cache_sets = 1
    gen.set_loras([(ov_loras["a"], 1.0)])  # A used again: B's entries go, A's and the base's stay
    assert _entries(engines) == base_entries | lora_entries and np.array_equal(_images(gen), got_a)


def test_lora_cache_pruning_keeps_the_base_and_the_most_recently_used_sets(tmp_path):
    import os

    root = tmp_path / "openvino-2026.4.1-cpu12345678"
    names = ["unet-f32-aaaa", "unet-f32-aaaa-2x3x8x8", "text_encoder-f32-cccc-lora0001", "unet-f32-bbbb-lora0009"]  # base, other artifacts
    names += [f"unet-f32-aaaa-lora000{i}" for i in range(1, 6)] + ["unet-f32-aaaa-lora0002-2x3x8x8", "unet-f32-aaaa-lora0002-2x3x8x8-s2"]
    for i, name in enumerate(names):
        (root / name).mkdir(parents=True)
        os.utime(root / name, (1000 + i, 1000 + i))
    os.utime(root / "unet-f32-aaaa-lora0002-2x3x8x8", (5000, 5000))  # set 2 used last (through its static-shape entry)
    prune_lora_sets(root / "unet-f32-aaaa-lora0001", keep=3)  # set 1 in use now: 1, 2 and the most recent other (5) stay
    left = {p.name for p in root.iterdir()}
    assert left == set(names) - {"unet-f32-aaaa-lora0003", "unet-f32-aaaa-lora0004"}, sorted(left)
    assert (root / "unet-f32-aaaa-lora0001").stat().st_mtime > 5000  # marked used
    prune_lora_sets(root / "unet-f32-aaaa", keep=0)  # a base entry: marked, nothing removed
    assert {p.name for p in root.iterdir()} == left
    prune_lora_sets(root / "unet-f32-aaaa-lora0005", keep=1)
    assert {p.name for p in root.iterdir()} == set(names[:4]) | {"unet-f32-aaaa-lora0005"}


@pytest.mark.slow
def test_a_constant_openvino_does_not_name_is_refused_and_the_switch_fails_whole(ov_loras, engines, monkeypatch):
    from runtime.backends import openvino as backend

    gen = Generator.from_dir(engines, backend="openvino", loras=[(ov_loras["b"], 1.0)])
    expected = _images(gen)
    real = backend.replace_constants
    monkeypatch.setattr(backend, "replace_constants", lambda ov, model, overrides, path: real(ov, model, {**overrides, "no_such_initializer": np.zeros(1, np.float32)}, path))
    with pytest.raises(RunnerError, match=r"read no constant for the initializer\(s\) \['no_such_initializer'\]"):
        gen.set_loras([(ov_loras["a"], 1.0)])
    monkeypatch.undo()
    assert np.array_equal(_images(gen), expected) and gen.loras[0].path == ov_loras["b"]
