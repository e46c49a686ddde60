"""The latency benchmark script runs end to end and writes its JSON and table. Nothing here asserts on timings."""

from __future__ import annotations

import json

import pytest

from benchmarks.latency import main


@pytest.mark.slow
def test_latency_script_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert main(["--steps", "2", "--runs", "2", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = list(result["systems"])
    assert names[:2] == ["reference (eager PyTorch)", "diffusers DDIM baseline (no adapter)"]
    assert {"runtime onnxruntime-cpu fp32", "runtime onnxruntime-cpu fp16", "runtime torch fp32"} <= set(names)
    for openvino in ("runtime openvino f32", "runtime openvino bf16"):  # run, or said why not (no OpenVINO, no bf16)
        assert (openvino in names) != (openvino in result["skipped"]), openvino
    for name, system in result["systems"].items():
        stages = system["stages_ms"]
        assert system["runs"] == 2 and {"unet", "text", "step"} <= set(stages), name
        assert 2 * stages["step"] / 1e3 < system["mean_s"], name  # both steps happen inside the timed call, with text and decode
        assert 0 <= system["loop_overhead_fraction"] < 1, name  # the engine calls counted per step happen inside the step
    assert result["unet_gflops_per_call"] > 0
    assert result["config"]["steps"] == 2 and result["machine"]["torch"]
    table = capsys.readouterr().out
    assert table.count("\n| ") >= len(names) + len(result["skipped"]) and "loop overhead" in table


def test_device_cuda_without_a_gpu_refuses_instead_of_running_on_the_cpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible here; this test is about machines without one")
    with pytest.raises(SystemExit) as exit_:
        main(["--sd15", "--device", "cuda", "--out", "unused.json"])
    assert exit_.value.code == 2 and "--device cuda: torch sees no GPU" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [(["--cache-interval", "0"], "--cache-interval must be >= 1"),
                                           (["--video", "--cache-interval", "2"], "takes no --cache-interval")])  # fmt: skip
def test_bad_cache_interval_is_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--out", "unused.json"])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
