"""``python -m contextdiff_ref.train --out runs/contextdiff``: train the shapes model (ContextDiff or the baseline);
rerun the same command to resume. The trainer: :mod:`contextdiff_ref.training.shapes_trainer`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.training.shapes_trainer import TrainConfig, Trainer, export_model
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = TrainConfig()
    parser = Parser(prog="python -m contextdiff_ref.train", description="Train the shapes model (ContextDiff or the no-adapter baseline); rerun to resume.")
    parser.add_argument("--out", type=Path, required=True, help="run directory: checkpoint.pt, log.jsonl, model/ (EMA weights)")
    parser.add_argument("--baseline", action="store_true", help="train with r ≡ 0 (no adapter): the comparison model")
    parser.add_argument("--steps", type=int, default=defaults.steps, help="train until this many steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.learning_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--snr-gamma", type=float, default=0.0, help="Min-SNR-γ loss weighting; 0: the plain loss of the prediction type (default: %(default)s)")
    parser.add_argument("--high-noise-fraction", type=float, default=defaults.high_noise_fraction,
                        help="fraction of each batch trained at the last 5%% of timesteps, where only the text tells the layout (default: %(default)s)")
    parser.add_argument("--init-from", type=Path, default=None, metavar="CHECKPOINT",
                        help="start a new phase from another run's checkpoint.pt (weights and step; fresh optimizer, EMA, warm-up)")
    parser.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--export", type=Path, default=None, metavar="DIR",
                        help="do not train: write the checkpoint's EMA model directory to DIR (atomically) and exit")
    parser.add_argument("--recommended-guidance", type=float, default=None,
                        help="with --export: the guidance scale stored in the model directory (callers' default)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    try:
        if args.checkpoint_every < 1:
            raise InvalidArgumentError("--checkpoint-every", args.checkpoint_every, "a positive integer")
        if args.threads is not None:
            if args.threads < 1:
                raise InvalidArgumentError("--threads", args.threads, "a positive integer")
            torch.set_num_threads(args.threads)
        if args.export is not None:
            export_model(args.out, args.export, args.recommended_guidance)
            return 0
        config = TrainConfig(baseline=args.baseline, steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
                             snr_gamma=args.snr_gamma or None, high_noise_fraction=args.high_noise_fraction, init_from=str(args.init_from.resolve()) if args.init_from else None)
        trainer = Trainer(config, args.out, device=args.device)
        if trainer.step >= config.steps:
            logger.info("%s is already at step %d (>= --steps %d); nothing to do", args.out, trainer.step, config.steps)
            return 0
        trainer.run(args.checkpoint_every)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
