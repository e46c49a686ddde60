"""TensorRT plans for the lean runtime: the build flags, the manifest's record, which module the Generator picks and
what it says when it cannot, and the lean wheel's API against what the runner calls. No GPU is needed: plans are
only built and run where TensorRT's builder and a GPU exist (tests/export/test_tensorrt.py)."""

from __future__ import annotations


import pytest

from export.tensorrt_build import config_flags
from runtime.backends import cuda_driver, selection
from runtime.backends.tensorrt import install_hint, tensorrt_module_name
from runtime.errors import InvalidArgumentError
from runtime.manifest import EngineDirectoryError, check_tensorrt_plan, load_manifest
from runtime.options import PlanRuntime
from runtime.specs import Component
from tests.runtime.backends.placeholder_plans import with_placeholder_plans


def test_lean_plans_are_built_version_compatible_without_the_lean_runtime_inside():
    from polygraphy.backend.trt import CreateConfig  # Polygraphy imports TensorRT lazily: the config object exists here

    for fp16 in (False, True):
        lean = CreateConfig(**config_flags(fp16=fp16, lean=True))
        assert lean.version_compatible and lean.exclude_lean_runtime and lean.tf32 is (not fp16)
        full = CreateConfig(**config_flags(fp16=fp16, lean=False))
        assert not full.version_compatible and not full.exclude_lean_runtime


def _with_plans(src, dst, runtime: str | None, version: str = "10.16.1.11"):
    """A copy of ``src`` whose manifest records a placeholder TensorRT plan per component, run by ``runtime``."""
    return with_placeholder_plans(src, dst, version=version, runtime=runtime)


def test_the_manifest_records_which_tensorrt_runs_the_plans(latent_fp32_dir, tmp_path):
    lean = load_manifest(_with_plans(latent_fp32_dir, tmp_path / "lean", "lean"))
    assert {a.plan_runtime for a in lean.components.values()} == {PlanRuntime.LEAN}
    assert selection.plan_runtime(lean) is PlanRuntime.LEAN
    older = load_manifest(_with_plans(latent_fp32_dir, tmp_path / "older", None))  # before the field existed: full TensorRT
    assert selection.plan_runtime(older) is PlanRuntime.FULL
    assert selection.plan_runtime(load_manifest(latent_fp32_dir)) is None  # ONNX only
    with pytest.raises(EngineDirectoryError, match="malformed"):
        load_manifest(_with_plans(latent_fp32_dir, tmp_path / "bad", "fast"))


def test_the_generator_picks_the_tensorrt_the_plans_need(latent_fp32_dir, tmp_path, monkeypatch):
    lean = load_manifest(_with_plans(latent_fp32_dir, tmp_path / "lean", "lean"))
    full = load_manifest(_with_plans(latent_fp32_dir, tmp_path / "full", "full"))
    monkeypatch.setattr(selection, "gpu_ready", lambda: True)  # the choice, not the GPU, is under test
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: "12.8")  # the hint names the driver's CUDA major's wheels
    found = {PlanRuntime.LEAN: "tensorrt_lean", PlanRuntime.FULL: None}
    monkeypatch.setattr(selection, "tensorrt_module_name", found.get)
    assert selection.pick_backend("auto", lean)[0] == "tensorrt"
    assert selection.pick_backend("tensorrt", lean)[0] == "tensorrt"
    assert selection.pick_backend("auto", full)[0] != "tensorrt"  # full TensorRT missing: ONNX Runtime instead
    with pytest.raises(InvalidArgumentError, match=r"full TensorRT runtime 10\.16\.1\.11, which is not installed \(pip install tensorrt-cu12==10\.16\.1\.11\)"):
        selection.pick_backend("tensorrt", full)
    monkeypatch.setattr(selection, "tensorrt_module_name", lambda runtime: None)
    with pytest.raises(InvalidArgumentError, match=r"pip install tensorrt-lean-cu12-libs==10\.16\.1\.11 tensorrt-lean-cu12-bindings==10\.16\.1\.11"):
        selection.pick_backend("tensorrt", lean)
    monkeypatch.setattr(selection, "tensorrt_module_name", found.get)
    monkeypatch.setattr(selection, "gpu_ready", lambda: False)
    with pytest.raises(InvalidArgumentError, match="no CUDA GPU"):
        selection.pick_backend("tensorrt", lean)
    assert selection.pick_backend("auto", lean)[0] == "onnxruntime-cpu"


def test_a_lean_plan_needs_the_builders_exact_version(latent_fp32_dir, tmp_path):
    artifacts = load_manifest(_with_plans(latent_fp32_dir, tmp_path / "lean", "lean")).components[Component.UNET]
    check_tensorrt_plan(artifacts, "10.16.1.11", "9.0")
    with pytest.raises(EngineDirectoryError, match="TensorRT lean runtime 10.16.0.72"):
        check_tensorrt_plan(artifacts, "10.16.0.72", "9.0")
    with pytest.raises(EngineDirectoryError, match="compute capability 8.0"):
        check_tensorrt_plan(artifacts, "10.16.1.11", "8.0")


@pytest.mark.parametrize(
    "driver, version, tag",
    [(None, "10.16.1.11", "cu12"), ("12.8", "11.4.0.106", "cu12"), ("13.0", "10.16.1.11", "cu13"), ("13.1", "11.4.0.106", "cu13"),
     ("13.0", "10.13.0.35", "cu12")],  # fmt: skip  # the last: before TensorRT 10.13.2 there are cu12 wheels only
)
def test_the_install_hint_names_the_wheels_for_the_drivers_cuda_major(monkeypatch, driver, version, tag):
    monkeypatch.setattr(cuda_driver, "driver_version", lambda: driver)
    assert install_hint(PlanRuntime.LEAN, version) == f"pip install tensorrt-lean-{tag}-libs=={version} tensorrt-lean-{tag}-bindings=={version}"
    assert install_hint(PlanRuntime.FULL, version) == f"pip install tensorrt-{tag}=={version}"


@pytest.mark.skipif(tensorrt_module_name(PlanRuntime.LEAN) is None, reason="the tensorrt_lean wheels are not installed")
def test_the_lean_wheel_has_every_call_the_runner_makes():
    """The runner's calls, checked against the real lean bindings (they import without a GPU)."""
    from runtime.backends.tensorrt import import_tensorrt

    trt = import_tensorrt(PlanRuntime.LEAN)
    assert trt.__version__.split(".")[0] in ("10", "11")
    assert not hasattr(trt, "Builder")  # the lean runtime: it runs plans, it cannot build them
    assert hasattr(trt.Logger, "WARNING") and hasattr(trt.Runtime, "deserialize_cuda_engine")
    assert hasattr(trt.ICudaEngine, "create_execution_context")
    for call in ("set_input_shape", "get_tensor_shape", "set_tensor_address", "execute_async_v3"):
        assert hasattr(trt.IExecutionContext, call), call
