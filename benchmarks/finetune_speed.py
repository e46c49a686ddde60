"""Fine-tuning throughput and memory: a short ``contextdiff_ref.finetune`` run on a model directory (the SD-1.5-class
one on a GPU), on the shapes images upscaled to the model's size. Part of ``python -m benchmarks.gpu_check``;
standalone:

    python -m benchmarks.finetune_speed --model models/sd15-contextdiff --steps 20 --json finetune-speed.json

Reports images per second (median over the steps after ``--warmup``; the whole global batch), seconds per step and
the peak GPU memory torch allocated, for the settings given (default: the whole UNet and the adapter, bf16 autocast,
gradient checkpointing, batch 4).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from runtime.cli import CLI_ERRORS, Parser, error_exit, setup_logging

logger = logging.getLogger("benchmarks.finetune_speed")


def measure(model_dir: Path, work: Path, steps: int = 20, warmup: int = 3, batch_size: int = 4, mixed_precision: str = "bf16",
            gradient_checkpointing: bool = True, lora_rank: int = 0) -> dict[str, Any]:  # fmt: skip
    """One short run in ``work``; returns settings and measurements."""
    from contextdiff_ref.data.imagefolder import write_shapes_folder
    from contextdiff_ref.training.finetune import FinetuneConfig, Finetuner

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    data = write_shapes_folder(work / "finetune-data", max(64, batch_size * 4))
    config = FinetuneConfig(model=str(model_dir), data=str(data), steps=warmup + steps, batch_size=batch_size, warmup_steps=0,
                            mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, lora_rank=lora_rank)  # fmt: skip
    trainer = Finetuner(config, work / "finetune-run")
    trainer.run(checkpoint_every=10**9, log_every=1)  # one checkpoint, at the end
    records = [json.loads(line) for line in (work / "finetune-run" / "log.jsonl").read_text().splitlines()][warmup:]
    trained = sum(p.numel() for p in trainer.parameters)
    return {
        "settings": {"steps": steps, "warmup": warmup, "batch_size": batch_size, "processes": trainer.accelerator.num_processes, "resolution": trainer.size,
                     "mixed_precision": mixed_precision, "gradient_checkpointing": gradient_checkpointing, "lora_rank": lora_rank},
        "trained_parameters": trained,
        "images_per_second": float(np.median([r["images_per_second"] for r in records])),
        "seconds_per_step": float(np.median([r["seconds_per_step"] for r in records])),
        "max_memory_gib": max((r.get("max_memory_gib", 0.0) for r in records), default=None) if torch.cuda.is_available() else None,
        "final_loss": records[-1]["loss"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m benchmarks.finetune_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="ContextDiff model directory")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--mixed-precision", default="bf16" if torch.cuda.is_available() else "no")
    p.add_argument("--no-gradient-checkpointing", action="store_true")
    p.add_argument("--lora-rank", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    setup_logging("%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from runtime.files import atomic_write_json
    from contextdiff_ref.models.model_dir import quiet_loading
    from runtime.errors import ContextDiffError

    quiet_loading()
    try:
        with tempfile.TemporaryDirectory(prefix="finetune-speed-") as work:
            result = measure(args.model, Path(work), args.steps, args.warmup, args.batch_size, args.mixed_precision,
                             not args.no_gradient_checkpointing, args.lora_rank)  # fmt: skip
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        atomic_write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
