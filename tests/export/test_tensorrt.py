"""TensorRT plans: built through Polygraphy, recorded in the manifest, and matching ONNX Runtime.

Runs only where TensorRT and a CUDA GPU work; elsewhere every test here skips with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from export.build import BuildOptions, build_engine_dir

from export.tensorrt_build import tensorrt_status
from runtime.metrics import relative_l2
from runtime.options import BuildBackend, Precision
from runtime.specs import SPECS, Component, Profile

TRT_VERSION, REASON = tensorrt_status()
pytestmark = pytest.mark.skipif(TRT_VERSION is None, reason=REASON or "TensorRT unavailable")


def test_plans_build_cache_and_match_onnxruntime(latent_model_dir, tmp_path):
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from contextdiff_ref.models.graphs import model_dims
    from contextdiff_ref.models.model_dir import load_model_dir

    out = tmp_path / "engines"
    options = BuildOptions(backend=BuildBackend.TENSORRT, precision=Precision.FP16, max_images=2)
    results = build_engine_dir(latent_model_dir, out, options)
    assert {r.format for r in results} == {"tensorrt"}
    assert (out / "timing.cache").is_file()
    manifest = json.loads((out / "manifest.json").read_text())
    dims = model_dims(load_model_dir(latent_model_dir))
    for name, entry in manifest["components"].items():
        plan = entry["tensorrt"]
        assert plan["builder_version"] == TRT_VERSION and plan["compute_capability"]
        component = Component(name)
        batch, height, width = Profile.from_json(entry["profile"]).opt
        feed = SPECS[component].sample_inputs(dims, batch, height, width, np.random.default_rng(0))
        expected = ort.InferenceSession(str(out / entry["onnx"]["file"]), providers=["CPUExecutionProvider"]).run(None, feed)[0]
        with TrtRunner(EngineFromBytes((out / plan["file"]).read_bytes())) as runner:
            got = np.asarray(runner.infer(feed)[SPECS[component].outputs[0].name])
        assert np.all(np.isfinite(got)) and relative_l2(got, expected) <= 1e-2, name
    assert all(r.cached for r in build_engine_dir(latent_model_dir, out, options))
