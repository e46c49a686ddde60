"""The fine-tuning throughput check (a stage of the GPU check) on the CPU with a tiny latent model."""

from __future__ import annotations

import torch

from benchmarks.finetune_speed import measure
from contextdiff_ref.models.attach import attach_adapter
from tests.contextdiff_ref.models.test_attach import write_sd_dir


def test_measure_reports_throughput_of_a_short_run(tmp_path):
    model = attach_adapter(write_sd_dir(tmp_path / "sd"), tmp_path / "model", hidden_dim=32, num_layers=1)
    result = measure(model, tmp_path, steps=1, warmup=1, batch_size=2, mixed_precision="no", gradient_checkpointing=True)
    assert result["settings"]["resolution"] == 32 and result["settings"]["processes"] == 1
    assert result["images_per_second"] > 0 and result["seconds_per_step"] > 0
    assert abs(result["images_per_second"] * result["seconds_per_step"] - 2) < 1e-6  # one timed step of batch 2
    assert result["trained_parameters"] > 0
    assert (result["max_memory_gib"] is None) is (not torch.cuda.is_available())  # peak memory is a GPU's figure
    assert (tmp_path / "finetune-run" / "checkpoint.pt").is_file()
