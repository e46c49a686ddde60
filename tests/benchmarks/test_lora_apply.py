"""The LoRA benchmark script (benchmarks/lora_apply.py) on the tiny pixel model: what it records and that its
exactness and removal checks come out as the LoRA tests measure them — its behaviour, not its timings."""

from __future__ import annotations

import json
import shutil

import pytest

from benchmarks.lora_apply import main
from runtime.backends.selection import OPENVINO_CACHE


@pytest.mark.slow
def test_lora_apply_script_on_the_tiny_model(pixel_model_dir, pixel_fp32_dir, tmp_path, capsys):
    engines = shutil.copytree(pixel_fp32_dir, tmp_path / "engines", ignore=shutil.ignore_patterns(OPENVINO_CACHE))
    out = tmp_path / "lora-apply.json"
    argv = ["--model", str(pixel_model_dir), "--engines", str(engines), "--work", str(tmp_path / "work"), "--rank", "2", "--std", "0.3",
            "--steps", "2", "--switches", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    result = json.loads(out.read_text())
    prep = result["prepared"]
    assert prep["lora_changed_initializers"] == 32 and 0 < prep["lora_changed_bytes"] < prep["artifact_bytes"]  # the UNet's 8 attentions x 4
    assert set(result["backends"]) | set(result["skipped"]) == {"onnxruntime-cpu", "openvino"}
    for backend, r in result["backends"].items():
        assert r["psnr_lora_at_load_vs_merged_engine_db"] >= 100.0 and r["psnr_lora_vs_base_db"] < 60.0, (backend, r)
        assert r["removed_equals_base_bitwise"] and len(r["switch_s"]) == len(r["first_image_after_switch_s"]) == 2
        assert r["peak_rss_lora_mib"] >= r["peak_rss_lora_after_load_mib"] > 0
    assert "| onnxruntime-cpu |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([*argv, "--rank", "0"])
