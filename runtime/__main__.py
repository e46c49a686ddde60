"""``python -m runtime "a red circle at the top left" -o out.png``: generate from an engine directory.
``python -m runtime edit SRC.mp4 --source-prompt "..." --prompt "..." -o out.mp4``: edit a video with a video model's
engine directory (method doc §7); ``python -m runtime edit SRC.png --prompt "..." -o out.png``: edit an image with an
image model's (image-to-image, ``--mode invert`` with ``--source-prompt``, ``--mask`` for inpainting)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runtime import DEFAULT_MODEL_NAME, DEFAULT_VIDEO_MODEL_NAME
from runtime.cli import CLI_ERRORS, CLIP_SAMPLE, Parser, add_edit_arguments, error_exit, setup_logging
from runtime.errors import ContextDiffError
from runtime.lora import add_lora_argument
from runtime.options import OpenVINOPrecision, choices

DEFAULT_ENGINES = Path("engines") / DEFAULT_MODEL_NAME  # where `python export/build_engines.py` writes the default model
DEFAULT_VIDEO_ENGINES = Path("engines") / DEFAULT_VIDEO_MODEL_NAME  # `... --model contextdiff_ref/models/shapes-video`


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m runtime", description="Generate images from a ContextDiff engine directory (no torch needed). "
                                                    "To edit a video: python -m runtime edit --help")  # fmt: skip
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
    p.add_argument("--precision", choices=choices(OpenVINOPrecision), default=None,
                   help="the openvino backend's precision: f32, bf16, or int8 (an engine directory built with --openvino-precision int8); "
                        "default: what the engine directory records, else f32")  # fmt: skip
    p.add_argument("--contextual-guidance", choices=["conditional", "guided"], default=None,
                   help="how guidance meets the adapter's shift (method doc §5; default: the model's, recorded in its scheduler config)")
    add_lora_argument(p)
    p.add_argument("--cache-interval", type=int, default=1, metavar="K",
                   help="step caching: every K-th step runs the whole UNet (engines built with --step-cache; default 1: every step, exact)")
    return p.parse_args(argv)


def parse_edit_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog="python -m runtime edit", description="Edit an image or a video with a ContextDiff engine directory (no torch needed).")
    add_edit_arguments(p, eta=True, images=True)
    p.add_argument("--engines", type=Path, default=None,
                   help=f"engine directory (default: {DEFAULT_ENGINES} for images, {DEFAULT_VIDEO_ENGINES} for videos, built by "
                        "`python export/build_engines.py --model contextdiff_ref/models/shapes-video`)")  # fmt: skip
    p.add_argument("--backend", default="auto", help="as for image generation (default: %(default)s)")
    add_lora_argument(p)
    return p.parse_args(argv)


def edit_image_main(args: argparse.Namespace) -> str:
    """An image edit (runtime.Generator.edit); the output is written atomically, and nothing on an error."""
    from runtime.generator import Generator
    from runtime.image_io import read_image, read_image_mask, write_image

    if args.output.suffix.lower() != ".png":
        raise ContextDiffError(f"--output={args.output}: the file name must end in .png for an image")
    image = read_image(args.video)
    mask = None if args.mask is None else read_image_mask(args.mask, args.mask_dilation)
    mode = args.mode or ("invert" if args.source_prompt is not None else "img2img")
    gen = Generator.from_dir(args.engines or DEFAULT_ENGINES, backend=args.backend, loras=args.lora)
    result = gen.edit(image, args.prompt, mode=mode, source_prompt=args.source_prompt, mask=mask, strength=args.strength, region_noise=args.region_noise,
                      num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed, negative_prompt=args.negative_prompt, eta=args.eta,
                      clip_sample=CLIP_SAMPLE[args.clip_sample], cache_interval=args.cache_interval)  # fmt: skip
    write_image(args.output, result.images[0])
    return f"{mode}, {gen.backend}"


def edit_video_main(args: argparse.Namespace) -> str:
    from runtime.video_editor import VideoEditor
    from runtime.video_io import VIDEO_SUFFIXES, read_mask, read_video, write_video

    if args.output.suffix.lower() not in VIDEO_SUFFIXES:
        raise ContextDiffError(f"--output={args.output}: the file name must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if args.source_prompt is None or args.mode == "img2img":
        raise ContextDiffError("--source-prompt is required for a video (videos are edited by inversion; --mode img2img is for images)")
    frames = read_video(args.video)
    mask = None if args.mask is None else read_mask(args.mask, len(frames), args.mask_dilation)
    editor = VideoEditor.from_dir(args.engines or DEFAULT_VIDEO_ENGINES, backend=args.backend, clip_sample=CLIP_SAMPLE[args.clip_sample],
                                  loras=args.lora)
    edited = editor.edit(frames, args.source_prompt, args.prompt, args.steps, args.guidance, args.seed, strength=1.0 if args.strength is None else args.strength,
                         negative_prompt=args.negative_prompt, eta=args.eta, mask=mask, region_noise=args.region_noise,
                         cache_interval=args.cache_interval)  # fmt: skip
    write_video(args.output, edited, fps=args.fps)
    return editor.backend


def edit_main(argv: list[str] | None = None) -> int:
    args = parse_edit_args(argv)
    setup_logging()
    from runtime.image_io import is_image_file

    try:
        how = (edit_image_main if is_image_file(args.video) else edit_video_main)(args)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(f"wrote {args.output}: {args.video} edited to {args.prompt!r} from {args.engines or 'the default engines'} ({how})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["edit"]:
        return edit_main(argv[1:])
    args = parse_args(argv)
    setup_logging()
    from PIL import Image

    from runtime.generator import Generator
    from runtime.images import make_grid

    try:
        if args.output.suffix.lower() != ".png":
            raise ContextDiffError(f"--output={args.output}: the file name must end in .png")
        if args.num_images < 1:
            raise ContextDiffError(f"--num-images={args.num_images}: must be at least 1")
        gen = Generator.from_dir(args.engines, backend=args.backend, precision=args.precision, loras=args.lora)
        result = gen([args.prompt] * args.num_images, negative_prompt=args.negative_prompt, num_inference_steps=args.steps,
                     guidance_scale=args.guidance, eta=args.eta, seed=args.seed, contextual_guidance=args.contextual_guidance,
                     cache_interval=args.cache_interval)  # fmt: skip
        image = make_grid(result.images) if args.num_images > 1 else result.images[0]
        args.output.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255).round().astype("uint8")).save(args.output)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    backend = f"{gen.backend} {gen.precision}" if gen.precision else gen.backend
    print(f"wrote {args.output} for {args.prompt!r} from {args.engines} ({backend}), seed {result.seed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
