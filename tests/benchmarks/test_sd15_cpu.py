"""The SD-1.5-class CPU benchmark's bookkeeping: which systems run here, the issue's target ratios and the table.
The benchmark itself runs for minutes on a 4 GB model: it is a script (docs/results/performance.md), not a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.sd15_cpu import SYSTEMS, available_systems, markdown, targets

DIFFUSERS, REFERENCE, ORT, OV_F32, OV_BF16 = SYSTEMS


def _system(step: float) -> dict:
    return {"runs": 3, "load_s": 1.0, "peak_rss_mib": 4096.0, "all_finite": True, "s_per_step_mean": step, "s_per_step_p50": step,
            "s_per_step_min": step, "s_per_step_max": step, "e2e_s_mean": 4 * step, "end_rss_anon_mib": 2048.0, "end_rss_file_mib": 1024.0, "stages_ms": {"unet": 900 * step}}  # fmt: skip


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="the CPU's flags are read from /proc (Linux only)")
def test_systems_that_cannot_run_are_named_with_a_reason():
    """OpenVINO bf16 runs exactly where the CPU has bf16 instructions — read from the kernel's CPU flags, not from
    the detection the benchmark itself uses."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    has_bf16 = bool(flags & {"avx512_bf16", "amx_bf16"})
    systems, skipped = available_systems()
    assert systems[:4] == [DIFFUSERS, REFERENCE, ORT, OV_F32]
    assert (OV_BF16 in systems) is has_bf16 and set(skipped) == ({OV_BF16} - set(systems))
    assert all("bf16" in why for why in skipped.values()), skipped


def test_targets_and_table():
    result = {"sizes": {"256": {DIFFUSERS: _system(3.0), REFERENCE: _system(4.0), ORT: _system(2.0), OV_F32: _system(2.2), OV_BF16: _system(1.2)},
                        "512": {DIFFUSERS: _system(12.0), REFERENCE: _system(13.0), ORT: _system(10.0), OV_F32: _system(9.0)}},
              "skipped": {}}  # fmt: skip
    got = targets(result)
    assert got["256"]["openvino_f32_over_onnxruntime_per_step"] == pytest.approx(1.1) and got["256"]["openvino_f32_no_slower"] is False
    assert got["256"]["openvino_bf16_over_diffusers_per_step"] == pytest.approx(0.4) and got["256"]["openvino_bf16_at_most_half"] is True
    assert got["512"]["openvino_f32_no_slower"] is True and got["512"]["openvino_bf16_at_most_half"] is None  # bf16 did not run there
    result["skipped"] = {OV_BF16: "this CPU has no bf16 instructions"}
    table = markdown(result)
    assert table.count(f"| {OV_F32} |") == 2 and "| 2.00 / 1.00 |" in table and f"| all | {OV_BF16} | not run: this CPU has no bf16 instructions |" in table


def test_flop_rates_against_the_matching_peak():
    """Step caching's loop computes full UNet calls on steps 0, k, 2k, ... and shallow ones between; each row is set
    against the matmul peak of its precision."""
    from benchmarks.sd15_cpu import SYSTEM_KEYS, add_flop_rates, loop_flops, peak_kind

    flops = {"unet": 100, "unet_shallow": 30, "adapter": 5}
    int8_cache = SYSTEM_KEYS["openvino-int8-cache"]
    assert loop_flops(int8_cache, flops, 10, 3, 1.0) == (4 * 100 + 6 * 30 + 10 * 5, 10 * 100 + 10 * 5)  # full steps 0, 3, 6, 9
    assert loop_flops(DIFFUSERS, flops, 10, 3, 0.0) == (1000, 1000)  # every step full, no adapter
    assert [peak_kind(s) for s in (DIFFUSERS, ORT, OV_F32, OV_BF16, int8_cache, SYSTEM_KEYS["openvino-bf16-cache"])] == ["f32", "f32", "f32", "bf16", "int8", "bf16"]
    rows = {OV_BF16: {**_system(2.0), "adapter_calls_per_step": 1.0}, int8_cache: {**_system(1.0), "adapter_calls_per_step": 1.0}}
    add_flop_rates(rows, {"unet": 10**9, "unet_shallow": 4 * 10**8, "adapter": 10**8}, {"f32": 10.0, "bf16": 40.0, "int8": 80.0}, 4, 2)
    assert rows[OV_BF16]["achieved_gflops"] == pytest.approx(4.4 / 8) and rows[OV_BF16]["fraction_of_peak"] == pytest.approx(0.55 / 40)
    assert rows[int8_cache]["achieved_gflops"] == pytest.approx((2 + 0.8 + 0.4) / 4)  # full steps 0 and 2 of 4
    assert rows[int8_cache]["effective_gflops"] == pytest.approx(4.4 / 4) and rows[int8_cache]["peak_kind"] == "int8"
    table = markdown({"sizes": {"256": rows}, "skipped": {}, "matmul_peak_gflops": {"f32": 10.0, "bf16": 40.0, "int8": 80.0}})
    assert "| 1 | 1% int8 |" in table  # 0.8 GFLOP/s of an int8 peak of 80 and "Measured matmul peaks (GFLOP/s): f32 10, bf16 40, int8 80" in table
    assert f"| 256 | {OV_BF16} | 2.00 | – |" in table  # no diffusers row among these: no × diffusers


def test_model_flops_from_configs_and_matmul_peaks(latent_model_dir):
    """Counted on the meta device from the configs: a shallow call costs less than a full one; from 32 to 64 pixels
    convolutions and linear layers cost 4x, self-attention's matmuls 16x; the peaks are positive rates (not timed
    against anything here)."""
    from benchmarks.models import cpu_matmul_peaks, model_dir_flops

    small, large = model_dir_flops(latent_model_dir, 32), model_dir_flops(latent_model_dir, 64)
    assert 0 < small["unet_shallow"] < small["unet"] and small["adapter"] > 0
    assert 4 < large["unet"] / small["unet"] < 16, (small, large)  # measured: 5.64 (0.38 -> 2.15 GFLOP per guided call)
    peaks = cpu_matmul_peaks(n=128, repeats=1)
    assert set(peaks) == {"f32", "bf16", "int8"} and all(v > 0 for v in peaks.values())
