"""LoRAs on TensorRT by refitting (runtime/backends/tensorrt_refit.py): what can run without TensorRT's builder or a
GPU — the build flag and the manifest's record, the refusals, and which named arrays the runner hands to the refitter
(a fake refitter records them: it stands in for TensorRT only to observe our calls, and no TensorRT result is
claimed). The refitter's API is checked against the real lean bindings where they are installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from export.tensorrt_build import config_flags
from runtime.backends.tensorrt import TensorRTRunner, tensorrt_module_name
from runtime.backends.tensorrt_refit import refit_weights, stage_refit
from runtime.errors import RunnerError
from runtime.lora import LoraError, LoraSpec, base_initializers, lora_weights
from runtime.manifest import load_manifest
from runtime.options import PlanRuntime
from runtime.specs import Component
from tests.runtime.backends.placeholder_plans import with_placeholder_plans
from tests.runtime.lora_files import make_lora


def test_refittable_plans_are_built_with_the_refit_flag():
    from polygraphy.backend.trt import CreateConfig  # Polygraphy imports TensorRT lazily: the config object exists here

    assert CreateConfig(**config_flags(fp16=True, lean=False, refit=True)).refittable
    assert not CreateConfig(**config_flags(fp16=True, lean=False)).refittable


def _with_plans(src: Path, dst: Path, refittable: bool | None) -> Path:
    """A copy of ``src`` whose manifest records a placeholder TensorRT plan per component (full TensorRT)."""
    return with_placeholder_plans(src, dst, runtime="full", refittable=refittable)


@pytest.fixture(scope="module")
def lora(pixel_model_dir, tmp_path_factory) -> Path:
    return make_lora(pixel_model_dir, tmp_path_factory.mktemp("trt-lora") / "a.safetensors", seed=0, text_encoder=False)


def test_plans_built_without_refit_are_refused_before_any_work(pixel_fp32_dir, lora, tmp_path):
    for refittable in (None, False):  # older manifests have no field: not refittable
        manifest = load_manifest(_with_plans(pixel_fp32_dir, tmp_path / f"plans-{refittable}", refittable))
        with pytest.raises(LoraError, match=r"a\.safetensors: the unet plan of .* built without --tensorrt-refit.*--backend tensorrt --tensorrt-refit"):
            lora_weights(manifest, [LoraSpec(lora)], "tensorrt")
        assert lora_weights(manifest, [LoraSpec(lora, 0.0)], "tensorrt") == {}  # scale 0 changes nothing: allowed
        artifacts = manifest.components[Component.UNET]
        runner = TensorRTRunner(artifacts.spec, artifacts.plan, manifest.dims, artifacts.profile, plan_runtime=PlanRuntime.FULL)
        with pytest.raises(RunnerError, match=r"unet\.plan\): the plan was built without --tensorrt-refit"):
            runner.prepare_weights(None)
    refittable = load_manifest(_with_plans(pixel_fp32_dir, tmp_path / "refit", True))
    assert Component.UNET in lora_weights(refittable, [LoraSpec(lora)], "tensorrt")


class FakeRefitter:
    """Records what the runner hands over; ``combined`` maps a weight to those TensorRT would report missing with it."""

    def __init__(self, names, combined=None, reject=()):
        self.names, self.combined, self.reject = list(names), combined or {}, set(reject)
        self.weights, self.refits = {}, 0

    def get_all_weights(self):
        return self.names

    def set_named_weights(self, name, weights):
        if name in self.reject:
            return False
        self.weights[name] = np.array(weights)
        return True

    def get_missing_weights(self):
        return sorted({m for n in self.weights for m in self.combined.get(n, ())} - set(self.weights))

    def refit_cuda_engine(self):
        self.refits += 1
        return True


class FakeTrt:
    def __init__(self, refitter):
        self.refitter, self.Weights = refitter, np.asarray

    def Refitter(self, engine, logger):  # noqa: N802 (TensorRT's name)
        return self.refitter


def _initializers(graph: Path) -> dict[str, np.ndarray]:
    """The graph's initializers read by onnx: the oracle for the base values (independent of the weight map's offsets)."""
    return {t.name: numpy_helper.to_array(t, base_dir=str(graph.parent)) for t in onnx.load(str(graph)).graph.initializer}


def test_the_runner_refits_the_lora_weights_and_restores_the_base_of_those_it_no_longer_changes(pixel_fp32_dir, lora, tmp_path):
    manifest = load_manifest(_with_plans(pixel_fp32_dir, tmp_path / "refit", True))
    artifacts = manifest.components[Component.UNET]
    base = _initializers(artifacts.onnx)
    a = lora_weights(manifest, [LoraSpec(lora)], "tensorrt")[Component.UNET]
    half = lora_weights(manifest, [LoraSpec(lora, 0.5)], "tensorrt")[Component.UNET]
    names = sorted(a.initializers)
    runner = TensorRTRunner(artifacts.spec, artifacts.plan, manifest.dims, artifacts.profile, refittable=True,
                            base_weights=lambda n: base_initializers(manifest, Component.UNET, n))  # fmt: skip
    refitters = []

    def switch(weights, combined=None):
        refitters.append(FakeRefitter(base, combined))
        runner._trt = FakeTrt(refitters[-1])
        runner.prepare_weights(weights)()
        return refitters[-1]

    runner.active, runner._engine, runner._trt_logger = True, object(), None  # an activated runner, minus TensorRT
    runner._stream = type("Stream", (), {"synchronize": lambda self: None})()
    runner.book.graphs["shape"] = "captured graph"
    got = switch(a)
    assert got.refits == 1 and got.weights.keys() == set(names) and not runner.book.graphs  # graphs captured again after a refit
    assert all(np.array_equal(got.weights[n], a.initializers[n]) and not np.array_equal(got.weights[n], base[n]) for n in names)
    # A -> A at 0.5 with the first weight no longer changed: it goes back to its base, read from the artifact
    del half.initializers[names[0]]
    got = switch(half)
    assert got.weights.keys() == set(names) and np.array_equal(got.weights[names[0]], base[names[0]])
    assert all(np.array_equal(got.weights[n], half.initializers[n]) for n in names[1:])
    assert runner._pending is not None and set(runner._pending) == set(names[1:])  # what a reactivation refits
    got = switch(None)  # removal: every weight a LoRA changed, back at the base
    assert got.weights.keys() == set(names[1:]) and all(np.array_equal(got.weights[n], base[n]) for n in names[1:])
    assert runner._refitted == set() and runner._pending == {}
    # weights TensorRT combined with a changed one (q, k, v in one GEMM) are supplied at their base values
    other = next(n for n in base if n not in names and base[n].ndim == 2)
    got = switch(a, combined={names[0]: [other]})
    assert np.array_equal(got.weights[other], base[other]) and got.weights.keys() == set(names) | {other}


def test_refit_refusals_name_the_plan_and_the_weight():
    values = {"w": np.ones((2, 2), np.float32)}
    stored = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}

    def base(names):
        return {n: stored[n] for n in names if n in stored}

    with pytest.raises(RunnerError, match=r"unet\.plan: the plan has no refittable weight named \['w'\]"):
        stage_refit(FakeTrt(FakeRefitter(["x"])), None, None, values, base, "unet.plan")
    with pytest.raises(RunnerError, match=r"unet\.plan: TensorRT rejected the weight 'w' \(float32 \(2, 2\)\)"):
        stage_refit(FakeTrt(FakeRefitter(["w"], reject={"w"})), None, None, values, base, "unet.plan")
    with pytest.raises(RunnerError, match=r"unet\.plan: TensorRT needs the weight\(s\) \['', 'z'\] refitted with the LoRA'd ones"):
        stage_refit(FakeTrt(FakeRefitter(["w", "z"], {"w": ["z", ""]})), None, None, values, base, "unet.plan")  # "": an unnamed weight
    refitter, held = stage_refit(FakeTrt(FakeRefitter(["w", "b"], {"w": ["b"]})), None, None, values, base, "unet.plan")
    assert held.keys() == {"w", "b"} and refitter.refits == 0  # staged, not applied
    with pytest.raises(RunnerError, match=r"no base value for the initializer\(s\) \['gone'\]"):
        refit_weights({"gone"}, {}, lambda names: {})


@pytest.mark.skipif(tensorrt_module_name(PlanRuntime.LEAN) is None, reason="the tensorrt_lean wheels are not installed")
def test_the_lean_bindings_have_every_refit_call_the_runner_makes():
    """The calls, checked against the real lean bindings (they import without a GPU; a plan cannot be built here)."""
    from runtime.backends.tensorrt import import_tensorrt

    trt = import_tensorrt(PlanRuntime.LEAN)
    for call in ("get_all_weights", "set_named_weights", "get_missing_weights", "refit_cuda_engine"):
        assert hasattr(trt.Refitter, call), call
    assert hasattr(trt.ICudaEngine, "refittable")
    weights = trt.Weights(np.ones((3, 2), np.float16))  # an fp16 artifact's stored weight
    assert weights.size == 6 and weights.dtype == trt.DataType.HALF


def test_refit_is_refused_without_tensorrt_plans(pixel_model_dir, tmp_path):
    from export.build import BuildOptions, build_engine_dir
    from runtime.errors import InvalidArgumentError
    from runtime.options import BuildBackend

    with pytest.raises(InvalidArgumentError, match=r"--tensorrt-refit.*only with TensorRT plans"):
        build_engine_dir(pixel_model_dir, tmp_path / "engines", BuildOptions(backend=BuildBackend.ONNXRUNTIME, tensorrt_refit=True))
    assert not (tmp_path / "engines").exists()
