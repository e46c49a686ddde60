"""The speed options' fidelity report: option names, PSNR, and the command line on the tiny pixel model (paired
against the exact path on the same seeds)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.speed_options import PSNR_CAP_DB, SpeedOption, main, parse_option, psnr_db
from runtime.errors import InvalidArgumentError
from runtime.options import OpenVINOPrecision


def test_option_names():
    assert parse_option("exact") == SpeedOption("exact")
    assert parse_option("cache-3") == SpeedOption("cache-3", "onnxruntime-cpu", None, 3)
    assert parse_option("int8+cache-5") == SpeedOption("int8+cache-5", "openvino", OpenVINOPrecision.INT8, 5)
    assert parse_option("bf16") == SpeedOption("bf16", "openvino", OpenVINOPrecision.BF16, 1)
    for bad in ("cache-1", "cache-x", "fp16", "int8+bf16", "cache-2+cache-3", ""):
        with pytest.raises(InvalidArgumentError, match=r"--options.*'exact', or '\+'-joined parts"):
            parse_option(bad)


def test_psnr():
    a = np.zeros((2, 4, 4, 3), np.float32)
    b = a.copy()
    b[1] += 0.1  # mse 0.01: 20 dB
    assert psnr_db(a, b).tolist() == pytest.approx([PSNR_CAP_DB, 20.0])


@pytest.mark.slow
def test_command_line_on_the_tiny_model(pixel_model_dir, pixel_step_cache_dir, tmp_path, capsys):
    engines = shutil.copytree(pixel_step_cache_dir, tmp_path / "engines")  # built with --step-cache and 3 images per call: reused
    out = tmp_path / "report.json"
    args = ["--model", str(pixel_model_dir), "--engines", str(engines), "--options", "cache-2", "cache-3", "--limit", "2", "--steps", "4",
            "--batch", "3", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert list(report["options"]) == ["cache-2", "cache-3"] and report["skipped"] == {}
    for option in report["options"].values():
        for name, s in option["sets"].items():
            assert s["images"] == 2 and set(s["alignment_difference"]) == {"colour_position_accuracy", "full_accuracy", "exact_prompt_rate"}
            assert all(d["ci_low"] <= d["difference"] <= d["ci_high"] for d in s["alignment_difference"].values())
    # one_object set, measured 2026-12-05 on 2 shared threads of an AMD EPYC: cache interval 2 38.5 dB, 3 37.1 dB (two_object:
    # 37.3, 35.9); fewer full steps, further from the exact path
    two, three = (report["options"][o]["sets"]["one_object"]["psnr_db"] for o in ("cache-2", "cache-3"))
    assert 34 < three < two < 43
    assert "| cache-2 | one_object | 2 |" in capsys.readouterr().out
    assert main(["--model", str(pixel_model_dir), "--options", "fp16"]) == 2
    assert "--options" in capsys.readouterr().err
