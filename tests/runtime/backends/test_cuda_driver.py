"""The CUDA driver query the exporter, the backend choice and the benchmarks share (runtime/backends/cuda_driver.py)."""

from __future__ import annotations

import pytest

from runtime.backends import cuda_driver


def test_the_cuda_driver_answers_without_torch():
    count = cuda_driver.device_count()
    assert isinstance(count, int) and count >= 0
    if count == 0:
        for ask in (cuda_driver.gpu_info, cuda_driver.memory_in_use):
            with pytest.raises(cuda_driver.CudaUnavailable, match="CUDA"):
                ask(0)
    else:
        info = cuda_driver.gpu_info(0)
        assert info.name and info.total_memory_bytes > 2**30
        assert info.compute_capability.count(".") == 1 and all(part.isdigit() for part in info.compute_capability.split("."))
        assert 0 < cuda_driver.memory_in_use(0) <= info.total_memory_bytes
        with pytest.raises(cuda_driver.CudaUnavailable, match="does not exist"):
            cuda_driver.gpu_info(count)
