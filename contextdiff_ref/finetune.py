"""``python -m contextdiff_ref.finetune --model DIR --data FOLDER --out RUN``: fine-tune a ContextDiff model directory
(e.g. one made by ``python -m contextdiff_ref.models.attach`` from Stable Diffusion) on a captioned image folder
(``metadata.jsonl``); rerun the same command to resume. Unchanged under ``accelerate launch`` for many GPUs or
machines. ``--export DIR`` writes the run's EMA model directory (LoRA merged) for ``export/build_engines.py``.
The trainer: :mod:`contextdiff_ref.training.finetune`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.training.finetune import FinetuneConfig, Finetuner, export_finetuned
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = FinetuneConfig(model="", data="")
    p = Parser(prog="python -m contextdiff_ref.finetune", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    p.add_argument("--out", type=Path, required=True, help="run directory: checkpoint.pt, log.jsonl, samples/")
    p.add_argument("--model", type=Path, help="ContextDiff model directory to start from")
    p.add_argument("--data", type=Path, help="image folder with metadata.jsonl (file_name, text)")
    p.add_argument("--export", type=Path, default=None, metavar="DIR", help="do not train: write the checkpoint's EMA model directory to DIR and exit")
    p.add_argument("--baseline", action="store_true", help="train the same with r ≡ 0 (no adapter): the comparison model")
    p.add_argument("--steps", type=int, default=d.steps, help="train until this many steps (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="per process (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.learning_rate, help="AdamW learning rate (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up (default: %(default)s)")
    p.add_argument("--ema-decay", type=float, default=d.ema_decay, help="(default: %(default)s)")
    p.add_argument("--text-dropout", type=float, default=d.text_dropout, help="fraction trained with the empty prompt (default: %(default)s)")
    p.add_argument("--snr-gamma", type=float, default=0.0, help="Min-SNR-γ weighting; 0: the plain loss (default: %(default)s)")
    p.add_argument("--high-noise-fraction", type=float, default=d.high_noise_fraction,
                   help="fraction of each batch trained at the last 5%% of timesteps, where only the text tells the layout (default: %(default)s)")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="0: train the whole UNet; r > 0: LoRA of rank r, also written to <out>/lora.safetensors at every checkpoint (runtime's --lora reads it) (default: %(default)s)")
    p.add_argument("--lora-alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--train-text-encoder", action="store_true", help="train the text encoder too (frozen by default)")
    p.add_argument("--resolution", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--mixed-precision", default=d.mixed_precision, help="no, bf16 (CPUs too: autocast, fast with AVX512-BF16 or AMX) or fp16 (CUDA GPUs only; refused "
                                                                     "without one) (default: %(default)s)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in the backward pass (less memory)")
    p.add_argument("--cache-latents", action="store_true", help="encode the images with the VAE once (<out>/latents.safetensors)")
    p.add_argument("--zero-terminal-snr", action=argparse.BooleanOptionalAction, default=d.zero_terminal_snr,
                   help="train on the model's schedule rescaled to zero terminal SNR with trailing spacing (ε-prediction becomes v); "
                        "the exported model keeps that schedule (default: %(default)s)")
    p.add_argument("--posterior-sample", action=argparse.BooleanOptionalAction, default=d.posterior_sample,
                   help="train on a sample μ + σε' of the VAE's posterior instead of its mean μ (the adapter then sees noise the "
                        "sampler's smooth x̂_0 never has; default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=50, help="steps between log records (default: %(default)s)")
    p.add_argument("--sample-every", type=int, default=0, help="write samples/step-000500.png (the step in six digits) at checkpoints on multiples of this (0: never)")
    p.add_argument("--sample-prompt", action="append", default=[], help="a prompt of the sample strip (repeat for more)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    try:
        if args.export is not None:
            export_finetuned(args.out, args.export)
            return 0
        for name in ("model", "data"):
            if getattr(args, name) is None:
                raise InvalidArgumentError(f"--{name}", None, "a directory (required unless --export)")
        for name in ("checkpoint_every", "log_every"):
            if getattr(args, name) < 1:
                raise InvalidArgumentError(f"--{name.replace('_', '-')}", getattr(args, name), "a positive integer")
        if args.sample_every < 0:
            raise InvalidArgumentError("--sample-every", args.sample_every, "an integer >= 0")
        config = FinetuneConfig(
            model=str(args.model.resolve()), data=str(args.data.resolve()), baseline=args.baseline, steps=args.steps,
            batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=args.warmup_steps, ema_decay=args.ema_decay,
            text_dropout=args.text_dropout, snr_gamma=args.snr_gamma or None, high_noise_fraction=args.high_noise_fraction, lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
            train_text_encoder=args.train_text_encoder, resolution=args.resolution, seed=args.seed,
            mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing, cache_latents=args.cache_latents,
            zero_terminal_snr=args.zero_terminal_snr, posterior_sample=args.posterior_sample,
        )  # fmt: skip
        trainer = Finetuner(config, args.out)
        if trainer.step >= config.steps:
            logger.info("%s is already at step %d (>= --steps %d); nothing to do", args.out, trainer.step, config.steps)
            return 0
        trainer.run(args.checkpoint_every, args.log_every, args.sample_every, tuple(args.sample_prompt))
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
