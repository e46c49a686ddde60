"""``python -m runtime "a red circle at the top left" -o out.png``: generate from an engine directory."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from runtime import DEFAULT_MODEL_NAME
from runtime.errors import ContextDiffError

DEFAULT_ENGINES = Path("engines") / DEFAULT_MODEL_NAME  # where `python export/build_engines.py` writes the default model


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _Parser(prog="python -m runtime", description="Generate images from a ContextDiff engine directory (no torch needed).")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", type=Path, default=Path("contextdiff.png"), help="PNG to write (default: %(default)s)")
    p.add_argument("--engines", type=Path, default=DEFAULT_ENGINES, help="engine directory (default: %(default)s)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default: %(default)s)")
    p.add_argument("--guidance", type=float, default=None, help="guidance scale (default: the model's recommendation, else 7.5)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta in [0, 1] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default: %(default)s)")
    p.add_argument("--num-images", type=int, default=1, help="images for the prompt; more than one are written as a grid")
    p.add_argument("--backend", default="auto",
                   help="auto, tensorrt, onnxruntime, onnxruntime-cuda, onnxruntime-cpu or openvino (default: %(default)s)")
    p.add_argument("--precision", choices=["f32", "bf16"], default=None,
                   help="the openvino backend's inference precision (default: what the engine directory records, else f32)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from PIL import Image

    from runtime.generator import Generator
    from runtime.images import make_grid

    try:
        if args.output.suffix.lower() != ".png":
            raise ContextDiffError(f"--output={args.output}: the file name must end in .png")
        if args.num_images < 1:
            raise ContextDiffError(f"--num-images={args.num_images}: must be at least 1")
        gen = Generator.from_dir(args.engines, backend=args.backend, precision=args.precision)
        result = gen([args.prompt] * args.num_images, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, eta=args.eta, seed=args.seed)  # fmt: skip
        image = make_grid(result.images) if args.num_images > 1 else result.images[0]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype("uint8")).save(args.output)
    except (ContextDiffError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    backend = f"{gen.backend} {gen.precision}" if gen.precision else gen.backend
    print(f"wrote {args.output} for {args.prompt!r} from {args.engines} ({backend}), seed {result.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
