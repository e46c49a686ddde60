"""The latency benchmark script runs end to end and writes its JSON and table. Nothing here asserts on timings."""

from __future__ import annotations

import json

from benchmarks.latency import main


def test_latency_script_writes_json_and_table(tmp_path, capsys):
    out = tmp_path / "latency.json"
    assert main(["--steps", "2", "--runs", "2", "--warmup", "0", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = list(result["systems"])
    assert names[:2] == ["reference (eager PyTorch)", "diffusers DDIM baseline (no adapter)"]
    assert {"runtime onnxruntime-cpu fp32", "runtime onnxruntime-cpu fp16", "runtime torch fp32"} <= set(names)
    for name, system in result["systems"].items():
        assert system["runs"] == 2 and system["mean_s"] > 0 and system["p50_s"] <= system["p99_s"]
        assert {"unet", "text", "step"} <= set(system["stages_ms"]), name
    assert result["systems"][names[0]]["vs_reference"] == 1.0 and result["unet_gflops_per_call"] > 0
    assert result["config"]["steps"] == 2 and result["machine"]["torch"]
    table = capsys.readouterr().out
    assert table.count("\n| ") >= len(names) and "loop overhead" in table
