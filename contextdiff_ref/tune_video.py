"""``python -m contextdiff_ref.tune_video --model DIR --video SRC --prompt "..." --out RUN``: one-shot tuning of a
video model on its source video (method doc §7); rerun the same command to resume. ``--model`` is an image model
directory (inflated to the video's frame count first) or a video model directory. The tuned video model directory
is written to ``RUN/model`` at every checkpoint; ``--baseline`` tunes with r ≡ 0 (plain Tune-A-Video)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.video.tune import TuneConfig, VideoTuner
from runtime.cli import CLI_ERRORS, TIMED, Parser, error_exit, setup_logging
from runtime.errors import InvalidArgumentError
from runtime.video_io import read_video


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    d = TuneConfig()
    parser = Parser(prog="python -m contextdiff_ref.tune_video", description=__doc__.split("\n\n")[0].split(": ", 1)[-1])
    parser.add_argument("--model", type=Path, required=True, help="image or video model directory to start from")
    parser.add_argument("--video", type=Path, required=True, help="the source video (mp4 or GIF)")
    parser.add_argument("--prompt", required=True, help="the source video's caption")
    parser.add_argument("--out", type=Path, required=True, help="run directory: checkpoint.pt, log.jsonl, model/")
    parser.add_argument("--baseline", action="store_true", help="tune with r ≡ 0 (plain Tune-A-Video)")
    parser.add_argument("--steps", type=int, default=d.steps, help="tune until this many steps (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=d.learning_rate, help="learning rate (default: %(default)s)")
    parser.add_argument("--videos-per-step", type=int, default=d.videos_per_step, help="noisy copies of the video per step (default: %(default)s)")
    parser.add_argument("--text-dropout", type=float, default=d.text_dropout, help="fraction of copies trained with the empty prompt (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--add-words", nargs="*", default=[], metavar="WORD",
                        help="words the tokenizer should keep whole when inflating an image model (the shapes model: moving from to)")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="steps between checkpoints (default: %(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    try:
        if args.checkpoint_every < 1:
            raise InvalidArgumentError("--checkpoint-every", args.checkpoint_every, "a positive integer")
        config = TuneConfig(baseline=args.baseline, steps=args.steps, learning_rate=args.lr, videos_per_step=args.videos_per_step,
                            text_dropout=args.text_dropout, seed=args.seed, words=tuple(args.add_words))  # fmt: skip
        tuner = VideoTuner(config, args.model, read_video(args.video), args.prompt, args.out, device=args.device)
        model = tuner.run(args.checkpoint_every)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    logging.getLogger(__name__).info("tuned video model: %s", model)
    return 0


if __name__ == "__main__":
    sys.exit(main())
