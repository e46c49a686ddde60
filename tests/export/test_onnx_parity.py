"""Every exported graph, in both flavours, against the reference torch module at three shapes inside its profile; the
TensorRT support check on the graphs meant for TensorRT (and on graphs it must reject)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from tokenizers import Tokenizer

from contextdiff_ref.models.graphs import graph_modules, model_dims
from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.models.text import tokenize
from export.tensorrt_matrix import unsupported
from runtime.metrics import relative_l2
from runtime.specs import SPECS, Component, Profile
from tests.parity import record

# an image model's; the VAE encoder: tests/runtime/test_video_editor.py; the shallow UNet (--step-cache): tests/export/test_step_cache_export.py
COMPONENTS = [c for c in Component if c not in (Component.VAE_ENCODER, Component.UNET_SHALLOW)]


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


FLAVOURS = ["onnxruntime", "standard"]
# Each component of the shipped latent model (trained weights) against its torch module at three shapes; measured on
# 2 threads of an AMD EPYC, worst over components and flavours: see each constant.
# (measured on 2 threads of an AMD EPYC (AVX-512), 2026-12-05)
FP32_MAX_REL = 5e-5  # largest |onnx - torch| / largest |torch|: measured 4.6e-7 (text encoder) to 1.1e-5 (VAE decoder)
FP16_REL_L2 = 3e-3  # relative L2 error: measured 2.0e-4 (VAE decoder) to 7.1e-4 (UNet)
ATTENTION = {Component.UNET, Component.ADAPTER, Component.VAE_DECODER}  # components with diffusers attention layers


@pytest.fixture()
def engine_dirs(request):
    """{(flavour, precision): engine dir}, built lazily (session fixtures) for what a test asks."""
    names = {("onnxruntime", "fp32"): "shipped_latent_fp32_dir", ("onnxruntime", "fp16"): "shipped_latent_fp16_dir",
             ("standard", "fp32"): "shipped_latent_standard_fp32_dir", ("standard", "fp16"): "shipped_latent_standard_fp16_dir"}  # fmt: skip
    return lambda flavour, precision: request.getfixturevalue(names[flavour, precision])


def op_types(engine_dir, entry) -> set[tuple[str, str]]:
    return {(n.domain, n.op_type) for n in onnx.load(str(engine_dir / entry["onnx"]["file"]), load_external_data=False).graph.node}


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.value)
def test_fp32_graphs_match_torch(shipped_latent_dir, engine_dirs, component, flavour):
    engine_dir = engine_dirs(flavour, "fp32")
    entry, pairs = run_parity(shipped_latent_dir, engine_dir, component)
    assert entry["precision"] == "fp32" and entry["onnx"]["flavour"] == flavour
    fused = ("com.microsoft", "MultiHeadAttention") in op_types(engine_dir, entry)
    assert fused == (flavour == "onnxruntime" and component in ATTENTION)
    assert len({g.shape for g, _ in pairs}) == 3  # three distinct shapes
    errors = [float(np.abs(got - expected).max() / np.abs(expected).max()) for got, expected in pairs]
    record(max_rel=max(errors))
    assert max(errors) <= FP32_MAX_REL, errors


@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("component", COMPONENTS, ids=lambda c: c.value)
def test_fp16_graphs_are_close_and_finite(shipped_latent_dir, engine_dirs, component, flavour):
    engine_dir = engine_dirs(flavour, "fp16")
    entry, pairs = run_parity(shipped_latent_dir, engine_dir, component)
    assert entry["precision"] == "fp16", entry["note"]
    graph = onnx.load(str(engine_dir / entry["onnx"]["file"]))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer)
    assert all(np.all(np.isfinite(got)) for got, _ in pairs)
    errors = [relative_l2(got, expected) for got, expected in pairs]
    record(rel_l2=max(errors))
    assert max(errors) <= FP16_REL_L2, errors


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_every_standard_graph_is_supported_by_tensorrt(engine_dirs, precision):
    engine_dir = engine_dirs("standard", precision)
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    for name, entry in manifest["components"].items():
        assert unsupported(onnx.load(str(engine_dir / entry["onnx"]["file"]))) == [], name


@pytest.mark.slow
def test_fused_graphs_are_rejected_for_tensorrt(engine_dirs):
    """The checker must refuse what TensorRT cannot parse: here, the ONNX Runtime flavour's contrib op."""
    engine_dir = engine_dirs("onnxruntime", "fp32")
    entry = json.loads((engine_dir / "manifest.json").read_text())["components"]["unet"]
    problems = unsupported(onnx.load(str(engine_dir / entry["onnx"]["file"])))
    assert problems and all("com.microsoft" in p and "MultiHeadAttention" in p for p in problems)


def test_the_support_checker_rejects_what_tensorrt_cannot_run():
    """Hand-made graphs, one per kind of rejection: an op TensorRT lacks, an unsupported input type, an opset out of
    range, Conv weights that are not initializers, an unsupported Resize mode, a used LayerNormalization mean output."""
    from onnx import TensorProto, helper

    def model(nodes, inputs, opset=18, initializers=()):
        outputs = [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)]
        graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    w = helper.make_tensor_value_info("w", TensorProto.FLOAT, [4, 3, 3, 3])
    cases = {
        "not supported": model([helper.make_node("StringNormalizer", ["s"], ["y"])], [helper.make_tensor_value_info("s", TensorProto.STRING, [2])]),
        "input type": model([helper.make_node("Relu", ["d"], ["y"])], [helper.make_tensor_value_info("d", TensorProto.DOUBLE, [2])]),
        "opset 7": model([helper.make_node("Relu", ["x"], ["y"])], [x], opset=7),
        "weights must be an initializer": model([helper.make_node("Conv", ["x", "w"], ["y"])], [x, w]),
        "mode=cubic": model([helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic")], [x],
                            initializers=[helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])]),
        "only the first output": model([helper.make_node("LayerNormalization", ["x", "g"], ["n", "mean"]), helper.make_node("Relu", ["mean"], ["y"])],
                                       [x], initializers=[helper.make_tensor("g", TensorProto.FLOAT, [8], [1.0] * 8)]),
    }  # fmt: skip
    for needle, graph in cases.items():
        problems = unsupported(graph)
        assert any(needle in p for p in problems), (needle, problems)
    assert unsupported(model([helper.make_node("Relu", ["x"], ["y"])], [x])) == []  # and accepts a plain one


def test_runtime_tokenizer_matches_the_reference(latent_model_dir, latent_fp32_dir):
    components = load_model_dir(latent_model_dir)
    tokenizer = Tokenizer.from_file(str(latent_fp32_dir / "tokenizer.json"))
    prompts = ["", "a red circle at the top left", "A Blue  square, at the BOTTOM right!", " ".join(["yellow triangle"] * 20)]
    expected = tokenize(components, prompts).numpy()
    got = np.array([e.ids for e in tokenizer.encode_batch(prompts)])
    np.testing.assert_array_equal(got, expected)
