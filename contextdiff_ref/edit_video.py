"""``python -m contextdiff_ref.edit_video SRC.mp4 [--model DIR] --source-prompt "..." --prompt "..." -o out.mp4``:
edit a video with a tuned video model (method doc §7: contextual DDIM inversion with the source prompt, then
contextual DDIM with the edited prompt and classifier-free guidance). mp4 and GIF in and out. ``--mask`` confines
the edit to a region (local blending): a video whose bright pixels (largest channel > 0.5) mark where the edit may
change the frames, grown by ``--mask-dilation`` pixels — e.g. the source itself, for objects on a dark background; ``--region-noise``
mixes fresh noise into the inverted frames there, so an edit to another shape is not held to the source's outline."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from contextdiff_ref.models.defaults import default_video_model_dir
from contextdiff_ref.models.model_dir import quiet_loading
from contextdiff_ref.video.pipeline import VideoEditPipeline
from runtime.cli import CLI_ERRORS, CLIP_SAMPLE, TIMED, Parser, add_edit_arguments, error_exit, setup_logging
from runtime.video_io import read_mask, read_video, write_video


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m contextdiff_ref.edit_video", description="Edit a video with a tuned ContextDiff video model.")
    add_edit_arguments(parser, eta=False)
    parser.add_argument("--model", type=Path, default=None,
                        help="video model directory (contextdiff_ref.tune_video's RUN/model; default: the embedded default video model, "
                             "tuned on contextdiff_ref/models/shapes-video/source.gif)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(TIMED)
    quiet_loading()
    try:
        clip_sample = CLIP_SAMPLE[args.clip_sample]
        model = args.model if args.model is not None else default_video_model_dir()
        video = read_video(args.video)
        mask = None if args.mask is None else read_mask(args.mask, len(video), args.mask_dilation)
        pipe = VideoEditPipeline.from_pretrained(model, device=args.device, clip_sample=clip_sample)
        frames = pipe.edit(video, args.source_prompt, args.prompt, args.steps, args.guidance, args.seed, strength=args.strength,
                           negative_prompt=args.negative_prompt, mask=mask, region_noise=args.region_noise, cache_interval=args.cache_interval)  # fmt: skip
        write_video(args.output, frames, fps=args.fps)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    logging.getLogger(__name__).info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
