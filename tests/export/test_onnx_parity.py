"""Every exported graph against the reference torch module, at three shapes inside its profile."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from contextdiff_ref.model_dir import load_model_dir
from contextdiff_ref.text import tokenize
from contextdiff_ref.graphs import graph_modules, model_dims
from export.trt_support import unsupported
from runtime.specs import SPECS, Component, Profile

COMPONENTS = list(Component)


def profile_shapes(profile: Profile) -> list[tuple[int, int, int]]:
    """Three distinct (batch, height, width) inside the profile: its min, a midpoint, and its max."""
    middle = tuple((lo + hi) // 2 for lo, hi in zip(profile.min, profile.max))
    middle = (middle[0], profile.opt[1], profile.opt[2])  # spatial sizes must stay multiples of the model's factor
    return [profile.min, middle, profile.max]


def run_parity(model_dir, engine_dir, component):
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    entry = manifest["components"][component.value]
    module = graph_modules(load_model_dir(model_dir))[component]
    dims = model_dims(load_model_dir(model_dir))
    session = ort.InferenceSession(str(engine_dir / entry["onnx"]["file"]), providers=["CPUExecutionProvider"])
    errors = []
    for i, (batch, height, width) in enumerate(profile_shapes(Profile.from_json(entry["profile"]))):
        feed = SPECS[component].sample_inputs(dims, batch, height, width, np.random.default_rng(i))
        with torch.no_grad():
            expected = module(*(torch.from_numpy(feed[t.name]) for t in SPECS[component].inputs)).numpy()
        got = session.run(None, feed)[0]
        assert got.shape == expected.shape and got.dtype == np.float32
        errors.append((got, expected))
    return entry, errors


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.value)
def test_fp32_graphs_match_torch(latent_model_dir, latent_fp32_dir, component):
    entry, pairs = run_parity(latent_model_dir, latent_fp32_dir, component)
    assert entry["precision"] == "fp32"
    assert len({g.shape for g, _ in pairs}) == 3  # three distinct shapes
    for got, expected in pairs:
        assert np.abs(got - expected).max() <= 1e-4


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.value)
def test_fp16_graphs_are_close_and_finite(latent_model_dir, latent_fp16_dir, component):
    entry, pairs = run_parity(latent_model_dir, latent_fp16_dir, component)
    assert entry["precision"] == "fp16", entry["note"]
    graph = onnx.load(str(latent_fp16_dir / entry["onnx"]["file"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    for got, expected in pairs:
        assert np.all(np.isfinite(got))
        assert np.linalg.norm(got - expected) / np.linalg.norm(expected) <= 1e-2


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_graph_is_supported_by_tensorrt(latent_fp32_dir, latent_fp16_dir, precision):
    engine_dir = latent_fp32_dir if precision == "fp32" else latent_fp16_dir
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        assert unsupported(onnx.load(str(engine_dir / entry["onnx"]["file"]))) == [], name


def test_runtime_tokenizer_matches_the_reference(latent_model_dir, latent_fp32_dir):
    components = load_model_dir(latent_model_dir)
    tokenizer = Tokenizer.from_file(str(latent_fp32_dir / "tokenizer.json"))
    prompts = ["", "a red circle at the top left", "A Blue  square, at the BOTTOM right!", " ".join(["yellow triangle"] * 20)]
    expected = tokenize(components, prompts).numpy()
    got = np.array([e.ids for e in tokenizer.encode_batch(prompts)])
    np.testing.assert_array_equal(got, expected)
