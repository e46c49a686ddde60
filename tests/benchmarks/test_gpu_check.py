"""The GPU check's harness, run on the CPU backends (``--device cpu``): environment report, parity against the CPU
reference, interleaved latency, per-stage times, a failing backend recorded without stopping the check, and which
GPU backends a machine like the lent GPU image (CUDA torch and CuPy, ONNX Runtime's CPU build, no TensorRT) runs.
Nothing here asserts on timings."""

from __future__ import annotations

import importlib.util
import json

import numpy as np

from benchmarks import gpu_check
from benchmarks.environment import PACKAGES, environment


def test_environment_reports_every_package_as_this_machine_has_it():
    env = environment()
    assert set(env["packages"]) == {name for name, _ in PACKAGES}
    for name, status in env["packages"].items():
        assert status["ok"] is (importlib.util.find_spec(name) is not None and status["error"] is None), name
        assert status["ok"] or status["error"], name
    assert env["packages"]["onnxruntime"]["ok"] and env["gpus"] == [] and env["gpu_error"]
    assert env["onnxruntime_gpu"] is ("CUDAExecutionProvider" in env["onnxruntime_providers"])


def test_the_gpu_image_runs_torch_cuda_and_says_why_not_the_others():
    env = {
        "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0", "memory_gib": 79.6}], "gpu_error": None,
        "packages": {name: {"ok": name in ("torch", "cupy", "onnxruntime", "onnx"), "version": "x", "error": None if name in ("torch", "cupy", "onnxruntime", "onnx") else "ModuleNotFoundError"} for name, _ in PACKAGES},
        "torch_cuda": {"built_for": "13.0", "available": True}, "onnxruntime_providers": ["CPUExecutionProvider"], "onnxruntime_gpu": False,
    }  # fmt: skip
    found = {c.name: c.why_not for c in gpu_check.candidates(env, "cuda")}
    assert found["torch cuda fp16 + CUDA graphs"] is None
    assert "CPU build" in found["onnxruntime cuda fp16"]
    assert "TensorRT" in found["tensorrt fp16"] and found["tensorrt lean fp16"]
    here = {c.name: c.why_not for c in gpu_check.candidates(environment(), "cuda")}
    assert all(here.values())  # this machine has no GPU: every GPU backend names its reason


def test_cpu_dry_run_writes_parity_latency_json_and_markdown(latent_model_dir, tmp_path, capsys):
    out = tmp_path / "check"
    args = ["--out", str(out), "--device", "cpu", "--models", str(latent_model_dir), "--steps", "2", "--parity-steps", "2",
            "--runs", "3", "--warmup", "0", "--stage-runs", "1", "--work", str(tmp_path)]  # fmt: skip
    assert gpu_check.main(args) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    model = result["models"][str(latent_model_dir)]
    systems = model["systems"]
    assert set(systems) == {"reference eager fp32 (PyTorch)", "diffusers eager fp32 (no adapter)", "torch cpu fp32", "onnxruntime cpu fp32"}
    assert model["skipped"] == {} and model["unet_gflops_per_call"] > 0
    for name in ("reference eager fp32 (PyTorch)", "torch cpu fp32", "onnxruntime cpu fp32"):  # the same model in fp32: identical images
        assert systems[name]["finite"] and systems[name]["image_psnr_vs_cpu_reference"] >= 60, name
    for name, s in systems.items():
        assert s["runs"] == 3 and {"unet", "step"} <= set(s["stages_ms"]), name
        assert s["p50_s"] <= s["p99_s"] and s["mean_s"] > 0, name
    baseline = systems["diffusers eager fp32 (no adapter)"]["p50_s"]
    assert np.isclose(systems["torch cpu fp32"]["vs_diffusers_p50"], systems["torch cpu fp32"]["p50_s"] / baseline)
    assert result["goal"] is None  # judged only for the SD-1.5-class model on a GPU
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in systems) and table.strip() in capsys.readouterr().out
    assert not list(tmp_path.glob("gpu-check-*"))  # scratch engines removed


def test_a_failing_backend_is_recorded_and_the_check_goes_on(latent_model_dir, tmp_path, monkeypatch):
    def broken(model, work):
        raise RuntimeError("engine exploded")

    real = gpu_check.candidates
    monkeypatch.setattr(gpu_check, "candidates", lambda env, device: [gpu_check.Candidate("broken", None, broken), *real(env, device)[1:]])
    out = tmp_path / "check"
    args = ["--out", str(out), "--device", "cpu", "--models", str(latent_model_dir), "--steps", "1", "--parity-steps", "1",
            "--runs", "1", "--warmup", "0", "--stage-runs", "1", "--work", str(tmp_path)]  # fmt: skip
    assert gpu_check.main(args) == 1
    systems = json.loads((out / "gpu_check.json").read_text())["models"][str(latent_model_dir)]["systems"]
    assert systems["broken"]["error"] == "RuntimeError: engine exploded"
    assert systems["onnxruntime cpu fp32"]["runs"] == 1  # measured all the same
    assert "| broken | failed: RuntimeError: engine exploded" in (out / "gpu_check.md").read_text()
