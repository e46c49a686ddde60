"""The two numbers every comparison here reports, one definition each: PSNR and the relative L2 error. Torch-free,
so the exporter's fp16 check, the benchmarks and the tests all use them."""

from __future__ import annotations

from typing import Any

import numpy as np


def psnr(a: Any, b: Any, peak: float = 1.0) -> float:
    """10 log10(peak² / MSE) in float64 (images in [0, 1]: peak 1); the MSE is floored at 1e-30, so identical
    arrays give 300 dB, not inf."""
    return float(10 * np.log10(peak**2 / max(np.mean((np.asarray(a, np.float64) - b) ** 2), 1e-30)))


def relative_l2(got: Any, expected: Any) -> float:
    """‖got − expected‖ / ‖expected‖ in float64 (the denominator floored at 1e-30)."""
    expected = np.asarray(expected, np.float64)
    return float(np.linalg.norm(np.asarray(got, np.float64) - expected) / max(np.linalg.norm(expected), 1e-30))
