"""The command lines' scaffolding, shared by every CLI in the repository (runtime is the lowest layer): a parser that
exits 2 with one line on bad usage, the one-line error exit for the package's errors, and the logging setup."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable, Iterable, Sequence

from runtime.errors import ContextDiffError

# What a CLI reports as one line ``error: ...`` with exit status 2 (anything else is a bug: its traceback shows).
CLI_ERRORS: tuple[type[BaseException], ...] = (ContextDiffError, OSError)

PLAIN = "%(message)s"
NAMED = "%(levelname)s %(name)s: %(message)s"
TIMED = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Parser(argparse.ArgumentParser):
    """argparse with one clear line and exit status 2 on a usage error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {message} (see --help)\n")


def error_exit(exc: BaseException) -> int:
    """Print ``error: <exc>`` to stderr; the exit status for it (2)."""
    print(f"error: {exc}", file=sys.stderr)
    return 2


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``, with :data:`CLI_ERRORS` turned into the one-line error and exit status 2."""
    try:
        return main(argv)
    except CLI_ERRORS as exc:
        return error_exit(exc)


def setup_logging(fmt: str = NAMED, level: int = logging.INFO, quiet: Iterable[str] = (), datefmt: str | None = None) -> None:
    """Log to stderr in ``fmt`` (:data:`PLAIN`, :data:`NAMED`, :data:`TIMED` or another); the loggers ``quiet`` at WARNING."""
    logging.basicConfig(level=level, format=fmt, datefmt=datefmt)
    for name in quiet:
        logging.getLogger(name).setLevel(logging.WARNING)


CLIP_SAMPLE = {"model": None, "on": True, "off": False}  # --clip-sample: the model's setting, or forced on / off


def add_mask_arguments(p: argparse.ArgumentParser) -> None:
    """--mask, --mask-dilation (local blending, :func:`runtime.video_io.read_mask`) and --region-noise for the edit commands (runtime's and the reference's)."""
    p.add_argument("--mask", type=Path, default=None,
                   help="confine the edit to a region (local blending): a video of the source's size and length, or one frame for all "
                        "(mp4 or GIF), whose bright pixels (largest channel > 0.5) mark where the edit may change it; e.g. the source itself "
                        "for objects on a dark background; for an image, a single-channel PNG of its size (white: edit here)")  # fmt: skip
    p.add_argument("--mask-dilation", type=int, default=0, help="grow the --mask region by this many pixels (default: %(default)s)")
    p.add_argument("--region-noise", type=float, default=0.0,
                   help="with --mask: fraction of fresh noise (from --seed) mixed into the inverted frames inside the region, 0 to 1; "
                        "1 frees an edit to another shape from the source's outline (default: %(default)s)")  # fmt: skip


def add_edit_arguments(p: argparse.ArgumentParser, *, eta: bool, images: bool = False) -> None:
    """The video-edit options both edit commands take (``python -m runtime edit``, ``python -m contextdiff_ref.edit_video``):
    the source video, its prompt and the edited one, the output, the sampling (step caching's ``--cache-interval`` included) and the
    local blending (:func:`add_mask_arguments`).
    ``eta``: the command offers DDIM's eta (the runtime's editor does, the reference pipeline does not). ``images``: the
    source may be an image too (``--mode``; ``--source-prompt`` then only for mode invert, ``--strength`` by mode)."""
    if images:
        p.add_argument("video", type=Path, metavar="SOURCE", help="source image (PNG or JPEG, RGB) or video (mp4 or GIF, as many frames as the model's num_frames)")
        p.add_argument("--mode", choices=["img2img", "invert"], default=None,
                       help="image edits: img2img (the contextual forward process to the --strength step, then sampling) or invert "
                            "(inversion with --source-prompt, then sampling; videos always); default: invert with --source-prompt, else img2img")  # fmt: skip
    else:
        p.add_argument("video", type=Path, help="source video (mp4 or GIF), as many frames as the model's num_frames")
    p.add_argument("--source-prompt", required=not images, default=None, help="the source's caption (used for the inversion)")
    p.add_argument("--prompt", required=True, help="the edited caption")
    p.add_argument("-o", "--output", type=Path, required=True, help="edited video (.mp4, .mkv, .mov or .gif)" + (", or image (.png)" if images else ""))
    p.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and of the edit (default: %(default)s)")
    p.add_argument("--strength", type=float, default=None if images else 1.0,
                   help="invert (or noise) only this fraction of the steps and sample back from there (default: "
                        + ("1 for videos and mode invert, 0.8 for img2img)" if images else "%(default)s, all the way to x_T)"))  # fmt: skip
    p.add_argument("--negative-prompt", default=None, help="the guidance's unconditional prompt (e.g. the source prompt; default: empty)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (default: the model's recommendation)")
    p.add_argument("--clip-sample", choices=list(CLIP_SAMPLE), default="off",
                   help="x̂_0 clipping: the model's setting, or forced (default: %(default)s; clipping makes inversion lossy)")
    if eta:
        p.add_argument("--eta", type=float, default=0.0, help="DDIM eta of the edit in [0, 1] (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"noise seed {'when eta > 0 or ' if eta else ''}with --region-noise (default: %(default)s)")
    p.add_argument("--cache-interval", type=int, default=1, metavar="K",
                   help="step caching of the edit's sampling pass (the inversion runs every step): every K-th step runs the whole UNet "
                        + ("(engines built with --step-cache; " if images else "(") + "default 1: every step, exact)")  # fmt: skip
    add_mask_arguments(p)
    p.add_argument("--fps", type=float, default=8.0, help="frames per second of the output (default: %(default)s)")
