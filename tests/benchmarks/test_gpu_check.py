"""The GPU check's harness, run on the CPU backends (``--device cpu``): environment report, parity against the CPU
reference, interleaved latency, per-stage times, a failing backend recorded without stopping the check, and which
GPU backends a machine like the lent GPU image (CUDA torch and CuPy, ONNX Runtime's CPU build, no TensorRT) runs.
Nothing here asserts on timings."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
import torch

from benchmarks import gpu_check, gpu_plan
from benchmarks.environment import PACKAGES, environment
from contextdiff_ref.models.model_dir import load_model_dir, save_model_dir
from tests.parity import record

# measured on 2 threads of an AMD EPYC (AVX-512), 2026-12-05: diffusers 136.6 dB, ONNX Runtime 135.8, torch cpu 149.3 (8 steps, r ≡ 0)
GPU_CHECK_DIFFUSERS_DB, GPU_CHECK_ORT_DB = 110.0, 110.0


def test_environment_reports_every_package_as_this_machine_has_it():
    env = environment()
    assert set(env["packages"]) == {name for name, _ in PACKAGES}
    for name, status in env["packages"].items():
        assert status["ok"] is (importlib.util.find_spec(name) is not None and status["error"] is None), name
        assert status["ok"] or status["error"], name
    assert env["packages"]["onnxruntime"]["ok"] and bool(env["gpus"]) is not bool(env["gpu_error"])  # GPUs listed, or why there are none
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
    env = environment()
    here = {c.name: c.why_not for c in gpu_check.candidates(env, "cuda")}
    if not env["gpus"]:
        assert all(here.values())  # no GPU on this machine: every GPU backend names its reason
    else:  # a GPU machine: what it lacks is named, and the backends it has are offered
        assert (here["torch cuda fp16 + CUDA graphs"] is None) is env.get("torch_cuda", {}).get("available", False)
        assert all(why is None or (isinstance(why, str) and why) for why in here.values())


@pytest.mark.slow
def test_cpu_dry_run_writes_parity_latency_json_and_markdown(shipped_latent_dir, tmp_path, capsys):
    """On the shipped latent model (trained) with its adapter's output layer zeroed (r ≡ 0), so that diffusers' own
    pipeline and scheduler — code the reference does not share — draw what the reference must: each row's PSNR
    against the CPU reference is then a comparison of independent code (ONNX Runtime's graphs; diffusers' loop),
    except the reference's own row, the same computation run twice (it checks determinism: bit for bit)."""
    components = load_model_dir(shipped_latent_dir)
    with torch.no_grad():
        components.adapter.proj_out.weight.zero_()
        components.adapter.proj_out.bias.zero_()
    model_dir = save_model_dir(components, tmp_path / "r-zero")
    out = tmp_path / "check"
    args = ["--out", str(out), "--device", "cpu", "--models", str(model_dir), "--steps", "2", "--parity-steps", "8",
            "--runs", "3", "--warmup", "0", "--stage-runs", "1", "--work", str(tmp_path)]  # fmt: skip
    assert gpu_check.main(args) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    model = result["models"][str(model_dir)]
    systems = model["systems"]
    assert set(systems) == {"reference eager fp32 (PyTorch)", "diffusers eager fp32 (no adapter)", "torch cpu fp32", "onnxruntime cpu fp32"}
    assert model["skipped"] == {} and model["unet_gflops_per_call"] > 0
    measured = {name: s["image_psnr_vs_cpu_reference"] for name, s in systems.items()}
    record(**measured)
    assert all(s["finite"] for s in systems.values())
    assert measured["reference eager fp32 (PyTorch)"] >= 300.0  # psnr's ceiling (MSE floored at 1e-30): bit for bit
    assert measured["diffusers eager fp32 (no adapter)"] >= GPU_CHECK_DIFFUSERS_DB, measured  # independent code
    assert measured["onnxruntime cpu fp32"] >= GPU_CHECK_ORT_DB and measured["torch cpu fp32"] >= GPU_CHECK_ORT_DB, measured
    for name, s in systems.items():
        assert s["runs"] == 3 and {"unet", "step"} <= set(s["stages_ms"]), name
        assert s["p50_s"] <= s["p99_s"] and s["mean_s"] > 0, name
    assert result["goal"] is None  # judged only for the SD-1.5-class model on a GPU
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in systems) and table.strip() in capsys.readouterr().out
    assert not list(tmp_path.glob("gpu-check-*"))  # scratch engines removed


@pytest.mark.slow
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


CONFIG = {"steps": 50, "parity_steps": 5, "warmup": 2, "runs": 5, "stage_runs": 2, "finetune_steps": 20}


def test_the_plan_orders_by_value_and_a_tiny_budget_keeps_the_goal_and_drops_the_rest_in_order():
    items = gpu_plan.items(["default", "sd15"], "cuda", CONFIG, 16, runnable=[])
    order = [(i.kind, i.model) for i in items]
    assert order == [("pair", "sd15"), ("parity", "sd15"), ("pair", "default"), ("parity", "default"), ("others", "default"), ("finetune", None),
                     ("others", "sd15")]  # fmt: skip
    assert "goal" in items[0].what and all(i.estimate_s > 0 and i.basis for i in items)
    full = gpu_plan.plan(gpu_plan.items(["default", "sd15"], "cuda", CONFIG, 16, runnable=[]), 540)
    assert all(i.status == "planned" for i in full)  # the lent image (Torch CUDA only) fits one 10-minute command
    tiny = gpu_plan.plan(items, 1)
    assert tiny[0].status == "planned" and all(i.status == "skipped" and "would not fit" in i.why for i in tiny[1:])
    first_two = sum(i.estimate_s for i in items[:2]) + gpu_plan.RESERVE_S
    middle = gpu_plan.plan(gpu_plan.items(["default", "sd15"], "cuda", CONFIG, 16, runnable=[]), first_two + 1)
    assert [i.status for i in middle] == ["planned"] * 2 + ["skipped"] * 5  # a prefix: the least valuable go first
    text = gpu_plan.describe(middle, first_two + 1)
    assert text.index("goal") < text.index("parity") and text.count("skipped") == 5
    with_trt = gpu_plan.items(["sd15"], "cuda", CONFIG, 16, runnable=["tensorrt fp16"])
    assert with_trt[-1].estimate_s > items[-1].estimate_s + gpu_plan.ENGINE_BUILD_S["tensorrt fp16"] - 1  # engine builds are counted


def test_cuda_without_a_gpu_writes_the_environment_report_and_stops_at_once(tmp_path):
    env = environment()
    if gpu_check.no_gpu_reason(env) is None:
        pytest.skip("a CUDA GPU is visible here (torch can use it); this test is about machines without one")
    start = time.perf_counter()
    assert gpu_check.main(["--out", str(tmp_path), "--device", "cuda"]) == 1
    assert time.perf_counter() - start < 60  # no model written, nothing fine-tuned on the CPU
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["no_gpu"].startswith(("no GPU", "torch cannot")) and result["models"] == {} and "finetune" not in result
    assert "Nothing was run" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.slow
def test_a_tiny_budget_runs_the_first_item_and_reports_the_skipped_ones(latent_model_dir, tmp_path):
    out = tmp_path / "check"
    args = ["--out", str(out), "--device", "cpu", "--models", str(latent_model_dir), "--steps", "1", "--parity-steps", "1",
            "--runs", "1", "--warmup", "0", "--stage-runs", "1", "--work", str(tmp_path), "--budget-s", "1"]  # fmt: skip
    assert gpu_check.main(args) == 0
    result = json.loads((out / "gpu_check.json").read_text())
    assert [i["status"] for i in result["plan"]["items"]] == ["ran", "skipped", "skipped"]
    assert set(result["models"][str(latent_model_dir)]["systems"]) == {"diffusers eager fp32 (no adapter)", "torch cpu fp32"}
    assert "would not fit" in (out / "gpu_check.md").read_text()
