"""Coordinate input planes: their values, the model-directory flag, and an exported UNet that takes the sample alone."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from contextdiff_ref.models.coordinates import coordinate_planes
from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir
from contextdiff_ref.models.shapes_model import build_shapes_components
from runtime.errors import ModelDirectoryError
from runtime.metrics import relative_l2
from runtime.specs import Component


def test_planes_are_pixel_centre_coordinates_x_then_y():
    planes = coordinate_planes(torch.zeros(2, 3, 4, 8, dtype=torch.float16))
    assert planes.shape == (2, 2, 4, 8) and planes.dtype == torch.float16
    x, y = planes[0, 0].float(), planes[0, 1].float()
    assert torch.allclose(x[0], (torch.arange(8) + 0.5) / 4 - 1) and torch.allclose(y[:, 0], (torch.arange(4) + 0.5) / 2 - 1)
    assert (x == x[:1]).all() and (y == y[:, :1]).all()  # x varies along a row only, y down a column only
    assert torch.equal(x.flip(-1), -x) and torch.equal(y.flip(0), -y)  # centred: mirror images negate
    assert torch.equal(planes[0], planes[1])


@pytest.fixture(scope="module")
def coordinate_model_dir(tmp_path_factory):
    components = build_shapes_components(seed=3)
    for module in (components.text_encoder, components.unet, components.adapter):
        module.eval().requires_grad_(False)
    return save_model_dir(components, tmp_path_factory.mktemp("coords") / "model")


def test_model_directory_keeps_the_flag_and_the_planes_reach_the_unet(coordinate_model_dir):
    components = load_model_dir(coordinate_model_dir)
    assert components.unet_coordinate_channels and components.unet.config.in_channels == 5
    sample, text = torch.randn(2, 3, 32, 32), torch.randn(2, 20, 64)
    with torch.no_grad():
        got = components.predict(sample, 500, text)
        direct = components.unet(torch.cat([sample, coordinate_planes(sample)], 1), 500, encoder_hidden_states=text).sample
        blind = components.unet(torch.cat([sample, torch.zeros_like(sample[:, :2])], 1), 500, encoder_hidden_states=text).sample
    assert got.shape == sample.shape and torch.equal(got, direct)
    assert (got - blind).abs().max() > 1e-3  # the planes are an input that matters, not a no-op


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_a_bad_flag_is_named(coordinate_model_dir, tmp_path, value):
    import shutil

    broken = shutil.copytree(coordinate_model_dir, tmp_path / "m")
    index = json.loads((broken / "model_index.json").read_text())
    index["unet_coordinate_channels"] = value
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirectoryError, match="unet_coordinate_channels"):
        load_model_dir(broken)


def test_a_missing_flag_is_caught_by_the_channel_count(coordinate_model_dir, tmp_path):
    import shutil

    broken = shutil.copytree(coordinate_model_dir, tmp_path / "m")
    index = json.loads((broken / "model_index.json").read_text())
    del index["unet_coordinate_channels"]
    (broken / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelDirectoryError, match=r"in_channels=5 must be out_channels \(3\) \+ 0"):
        load_model_dir(broken)


@pytest.mark.slow
def test_exported_unet_takes_the_sample_alone_and_matches_torch_at_every_size(coordinate_model_dir, tmp_path):
    """Only the UNet is exported (the component this is about), in the standard flavour TensorRT would parse, then
    converted to fp16 (from that one export, as a build does), and both run by ONNX Runtime at three sizes against the
    torch module."""
    import onnx
    import onnxruntime as ort

    from contextdiff_ref.models.graphs import graph_modules, model_dims
    from export.onnx_export import Flavour, export_onnx, to_fp16
    from export.tensorrt_matrix import unsupported
    from runtime.specs import SPECS

    components = load_model_dir(coordinate_model_dir)
    dims, module, spec = model_dims(components), graph_modules(components)[Component.UNET], SPECS[Component.UNET]
    assert dims.channels == 3  # what the engines take: the sample alone, the planes made inside the graph
    trace = {k: torch.from_numpy(v) for k, v in spec.sample_inputs(dims, 2, 32, 32, np.random.default_rng(0)).items()}
    fp32 = export_onnx(module, spec, trace, tmp_path / "fp32" / "unet.onnx", flavour=Flavour.STANDARD)
    # three sizes (the planes follow the sample's height and width), batches 1 and 2 (64 x 64 at batch 1: the tiny
    # UNet's attention at full resolution costs 4096² scores per head); the torch outputs serve both precisions
    feeds = [spec.sample_inputs(dims, batch, size, size, np.random.default_rng(i)) for i, (batch, size) in enumerate([(1, 16), (2, 32), (1, 64)])]
    with torch.no_grad():
        outputs = [module(*(torch.from_numpy(feed[t.name]) for t in spec.inputs)).numpy() for feed in feeds]
    for precision, files in (("fp32", fp32), ("fp16", to_fp16(fp32[0], tmp_path / "fp16" / "unet.onnx"))):
        graph = onnx.load(str(files[0]))
        assert unsupported(graph) == [], precision  # Shape/Range/Expand/Concat: TensorRT 10 ops
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.graph.initializer) is (precision == "fp16")
        session = ort.InferenceSession(str(files[0]), providers=["CPUExecutionProvider"])
        for feed, expected in zip(feeds, outputs):
            batch, size = feed["sample"].shape[0], feed["sample"].shape[-1]
            got = session.run(None, feed)[0]
            assert got.shape == expected.shape == (batch, 3, size, size) and np.all(np.isfinite(got))
            if precision == "fp32":
                assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max(), np.abs(got - expected).max() / np.abs(expected).max()
            else:
                assert relative_l2(got, expected) <= 1e-2
