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
from runtime.errors import ContextDiffError
from runtime.video_io import add_mask_arguments, read_mask, read_video, write_video


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m contextdiff_ref.edit_video", description="Edit a video with a tuned ContextDiff video model.")
    parser.add_argument("video", type=Path, help="source video (mp4 or GIF)")
    parser.add_argument("--model", type=Path, default=None,
                        help="video model directory (contextdiff_ref.tune_video's RUN/model; default: the embedded default video model, "
                             "tuned on contextdiff_ref/models/shapes-video/source.gif)")
    parser.add_argument("--source-prompt", required=True, help="the source video's caption (used for the inversion)")
    parser.add_argument("--prompt", required=True, help="the edited caption")
    parser.add_argument("-o", "--output", type=Path, required=True, help="edited video (.mp4 or .gif)")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and of the edit (default: %(default)s)")
    parser.add_argument("--strength", type=float, default=1.0,
                        help="invert only this fraction of the steps and sample back from there (default: %(default)s, all the way to x_T)")
    parser.add_argument("--negative-prompt", default=None, help="the guidance's unconditional prompt (e.g. the source prompt; default: empty)")
    parser.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's recommendation)")
    parser.add_argument("--clip-sample", choices=["model", "on", "off"], default="off",
                        help="x̂_0 clipping: the model's setting, or forced (default: %(default)s; clipping makes inversion lossy)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of --region-noise (default: %(default)s)")
    add_mask_arguments(parser)
    parser.add_argument("--fps", type=float, default=8.0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_loading()
    try:
        clip_sample = {"model": None, "on": True, "off": False}[args.clip_sample]
        model = args.model if args.model is not None else default_video_model_dir()
        video = read_video(args.video)
        mask = None if args.mask is None else read_mask(args.mask, len(video), args.mask_dilation)
        pipe = VideoEditPipeline.from_pretrained(model, device=args.device, clip_sample=clip_sample)
        frames = pipe.edit(video, args.source_prompt, args.prompt, args.steps, args.guidance, args.seed, strength=args.strength,
                           negative_prompt=args.negative_prompt, mask=mask, region_noise=args.region_noise)  # fmt: skip
        write_video(args.output, frames, fps=args.fps)
    except (ContextDiffError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info("wrote %s", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
