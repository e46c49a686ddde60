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
