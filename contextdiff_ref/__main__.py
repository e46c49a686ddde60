"""``python -m contextdiff_ref PROMPT -o out.png``: generate with the reference pipeline."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime.cli import CLI_ERRORS, Parser, error_exit, setup_logging
from runtime.errors import ContextDiffError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m contextdiff_ref", description="Generate images with the PyTorch reference ContextDiff pipeline.")
    parser.add_argument("prompt", help='text prompt, e.g. "a red circle at the top left"')
    parser.add_argument("-o", "--output", type=Path, default=Path("contextdiff.png"), help="PNG file to write (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's recommendation, else 7.5)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    parser.add_argument("--height", type=int, default=None)
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    from contextdiff_ref.models.defaults import default_model_dir
    from contextdiff_ref.models.model_dir import quiet_loading
    from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

    quiet_loading()
    try:
        if args.output.suffix.lower() != ".png":
            raise ContextDiffError(f"--output={args.output}: the file name must end in .png")
        model = args.model if args.model is not None else default_model_dir()
        pipe = ContextDiffPipeline.from_pretrained(model, device=args.device)
        result = pipe(args.prompt, negative_prompt=args.negative_prompt, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      eta=args.eta, seed=args.seed, height=args.height, width=args.width, output_type="pil")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        result.images[0].save(args.output)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(f"wrote {args.output} ({result.images[0].width}x{result.images[0].height}) for {args.prompt!r} from {model}, seed {result.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
