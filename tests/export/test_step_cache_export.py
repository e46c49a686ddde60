"""Step caching's graphs (``--step-cache``, issue 34): the UNet with its feature output and the shallow UNet, in both
flavours, against the reference ``CachedUNet.full``/``shallow`` on the tiny pixel model; the manifest's records;
the standard flavour inside TensorRT's support matrix; what older manifests get; a video model's graphs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from contextdiff_ref.models.graphs import graph_modules, model_dims
from contextdiff_ref.models.model_dir import load_model_dir
from export.build import BuildOptions, build_engine_dir
from export.tensorrt_matrix import unsupported
from runtime.manifest import load_manifest
from runtime.specs import SPECS, UNET_WITH_FEATURE, Component, ModelDims, Profile, component_spec
from tests.export.test_onnx_parity import profile_shapes
from tests.parity import record

# largest |onnx - torch| / largest |torch| per output, three shapes; measured 2026-12-05 on 2 threads of an AMD EPYC
# (onnxruntime / standard flavour): unet.model_output 4.1e-7 / 5.2e-7, unet.feature 1.05e-6 / 9.8e-7,
# unet_shallow.model_output 2.6e-7 / 3.1e-7
FP32_MAX_REL = 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["onnxruntime", "standard"])
def test_step_cache_graphs_match_the_reference(request, pixel_model_dir, flavour):
    engine_dir = request.getfixturevalue("pixel_step_cache_dir" if flavour == "onnxruntime" else "pixel_step_cache_standard_dir")
    manifest = json.loads((engine_dir / "manifest.json").read_text())
    components = load_model_dir(pixel_model_dir)
    modules, dims = graph_modules(components, step_cache=True), model_dims(components)
    assert list(manifest["components"]) == ["text_encoder", "unet", "unet_shallow", "adapter"]
    assert manifest["model"]["dims"]["feature_channels"] == dims.feature_channels == components.unet.config.block_out_channels[1]
    errors = {}
    for component in (Component.UNET, Component.UNET_SHALLOW):
        entry, spec = manifest["components"][component.value], component_spec(component, step_cache=True)
        assert entry["io"] == spec.to_json() and entry["onnx"]["flavour"] == flavour
        graph = onnx.load(str(engine_dir / entry["onnx"]["file"]))
        if flavour == "standard":
            assert unsupported(graph) == [], component
        session = ort.InferenceSession(str(engine_dir / entry["onnx"]["file"]), providers=["CPUExecutionProvider"])
        for i, (batch, height, width) in enumerate(profile_shapes(Profile.from_json(entry["profile"]))):
            feed = spec.sample_inputs(dims, batch, height, width, np.random.default_rng(i))
            with torch.no_grad():
                expected = modules[component](*(torch.from_numpy(feed[t.name]) for t in spec.inputs))
            expected = expected if isinstance(expected, tuple) else (expected,)
            for t, got, want in zip(spec.outputs, session.run(None, feed), expected):
                assert got.shape == tuple(want.shape) == spec.output_shapes(dims, batch, height, width)[t.name]
                rel = float(np.abs(got - want.numpy()).max() / np.abs(want.numpy()).max())
                errors[f"{component.value}.{t.name}"] = max(rel, errors.get(f"{component.value}.{t.name}", 0.0))
    record(**errors)
    assert max(errors.values()) <= FP32_MAX_REL, errors
    loaded = load_manifest(engine_dir)
    assert loaded.step_cache and loaded.components[Component.UNET].spec is UNET_WITH_FEATURE
    assert build_engine_dir(pixel_model_dir, engine_dir, _options(engine_dir)) and _all_cached(pixel_model_dir, engine_dir)


def _options(engine_dir):
    from runtime.options import BuildBackend, Precision
    from export.onnx_export import Flavour

    data = json.loads((engine_dir / "manifest.json").read_text())
    flavour = Flavour(data["components"]["unet"]["onnx"]["flavour"])
    return BuildOptions(backend=BuildBackend.ONNXRUNTIME, precision=Precision.FP32, max_images=3, flavour=flavour, step_cache=True, onnx_cache=None)


def _all_cached(model_dir, engine_dir) -> bool:
    """A second build of the same directory reuses every artifact, the step-cache graphs included."""
    return all(r.cached for r in build_engine_dir(model_dir, engine_dir, _options(engine_dir)))


def test_specs_and_older_manifests():
    """The shallow UNet takes the feature the step-cache UNet gives; ModelDims read from a manifest written before
    step caching (no feature_channels) still load, with no step caching."""
    shallow = SPECS[Component.UNET_SHALLOW]
    assert [t.name for t in UNET_WITH_FEATURE.outputs] == ["model_output", "feature"]
    assert UNET_WITH_FEATURE.outputs[1] == shallow.inputs[3] and shallow.outputs == SPECS[Component.UNET].outputs
    assert component_spec(Component.UNET) is SPECS[Component.UNET]
    old = {k: v for k, v in dataclasses.asdict(ModelDims(4, 77, 768, 49408, 1000, 8, 8, feature_channels=320)).items() if k != "feature_channels"}
    dims = ModelDims(**old)
    assert dims.feature_channels == 0
    assert UNET_WITH_FEATURE.output_shapes(dataclasses.replace(dims, feature_channels=320), 2, 64, 64)["feature"] == (2, 320, 64, 64)


def test_video_models_get_the_inflated_unets_graphs():
    """A video model's step-cache graphs are its inflated UNet's (tested end to end: tests/runtime/test_video_editor.py):
    its dims give the feature's channels, and the shallow UNet's artifact is made from ``unet/`` and ``temporal/``, as
    the UNet's is (a change of the temporal layers rebuilds both)."""
    from contextdiff_ref.models.defaults import default_video_model_dir
    from contextdiff_ref.video.model_dir import load_video_model_dir
    from export.build import _VIDEO_SOURCE_FOLDERS

    components = load_video_model_dir(default_video_model_dir()).components
    assert model_dims(components).feature_channels == components.unet.unet.config.block_out_channels[1] > 0
    assert set(graph_modules(components, step_cache=True)) == {Component.TEXT_ENCODER, Component.UNET, Component.UNET_SHALLOW, Component.ADAPTER}
    assert _VIDEO_SOURCE_FOLDERS[Component.UNET_SHALLOW] == _VIDEO_SOURCE_FOLDERS[Component.UNET] == ("unet", "temporal")
