"""Captioned image folders in the layout the ``datasets`` "imagefolder" loader and diffusers' text-to-image example
read: images plus ``metadata.jsonl``, one JSON object per line with ``file_name`` (relative to the folder) and
``text`` (the caption).

Checked when opened: a folder without ``metadata.jsonl``, a line that is not a JSON object, a missing or non-string
``file_name`` or ``text``, or a ``file_name`` outside the folder is an error naming the file and line. Images that
cannot be read (missing, truncated, not an image) or whose mode is not RGB (L, RGBA, P, CMYK, ...: converting them
would invent or drop content) are **skipped with one warning** listing them; with ``strict=True`` the first one is
an error instead. A folder left with no usable image is an error.

Images are resized so the shorter side is ``size`` (bicubic) and centre-cropped to ``size`` × ``size``, as diffusers'
example does, and returned as float32 (3, size, size) in [−1, 1].

    python -m contextdiff_ref.data.imagefolder --shapes 2000 --out data/shapes   # the shapes dataset in this layout
    python -m contextdiff_ref.data.imagefolder --shapes 4000 --out data/shapes --exclude-captions heldout.txt

``--exclude-captions FILE`` (one caption per line) keeps those compositions out of the folder, in either object
order: a held-out set to evaluate compositions the model never saw (``benchmarks.finetune_shapes``).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from contextdiff_ref.data.shapes import caption, composition, parse_caption, render, scene_stream
from runtime.cli import CLI_ERRORS, PLAIN, Parser, error_exit, setup_logging
from runtime.errors import ContextDiffError, InvalidArgumentError
from runtime.files import atomic_directory

logger = logging.getLogger(__name__)

METADATA = "metadata.jsonl"


class DataError(ContextDiffError):
    """A data folder that cannot be used, naming the file and what is wrong."""


@dataclass(frozen=True)
class ImageFolder:
    """The usable (file, caption) entries of a folder and the size images are brought to."""

    root: Path
    files: tuple[str, ...]
    captions: tuple[str, ...]
    size: int

    def __len__(self) -> int:
        return len(self.files)

    def image(self, index: int) -> np.ndarray:
        """Entry ``index`` as float32 (3, size, size) in [−1, 1]."""
        with Image.open(self.root / self.files[index]) as img:
            fitted = ImageOps.fit(img, (self.size, self.size), method=Image.Resampling.BICUBIC, centering=(0.5, 0.5))
        array = np.asarray(fitted, dtype=np.float32).transpose(2, 0, 1)
        return array / 127.5 - 1.0

    def batch(self, indices: np.ndarray) -> tuple[np.ndarray, list[str]]:
        """Images (B, 3, size, size) float32 in [−1, 1] and captions of the entries ``indices``."""
        return np.stack([self.image(int(i)) for i in indices]), [self.captions[int(i)] for i in indices]

    def positions(self, seed: int, start: int, count: int) -> np.ndarray:
        """Entries at positions ``start ..< start + count`` of the endless stream: every epoch a fresh permutation
        drawn from (seed, epoch), so position k depends only on (seed, k) and a resumed run continues exactly."""
        n = len(self)
        positions = np.arange(start, start + count, dtype=np.int64)
        epochs, offsets = np.divmod(positions, n)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            where = epochs == epoch
            out[where] = _permutation(seed, int(epoch), n)[offsets[where]]
        return out


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order of epoch ``epoch`` (drawn once, not per step: a run asks for the same epoch every step)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)  # shared by every caller of the cache
    return order


def _problem(path: Path) -> str | None:
    """Why an image cannot be used, or None."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as img:
            mode = img.mode
            img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None if mode == "RGB" else f"mode {mode}, not RGB"


def open_image_folder(root: str | os.PathLike[str], size: int, *, strict: bool = False) -> ImageFolder:
    """Read and check ``root/metadata.jsonl`` and its images (see the module doc for what is skipped or refused)."""
    root = Path(root)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise InvalidArgumentError("size", size, "a positive integer (pixels)")
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    metadata = root / METADATA
    if not metadata.is_file():
        raise DataError(f"{root} has no {METADATA}: expected one JSON object per line, {{\"file_name\": \"0001.png\", \"text\": \"a caption\"}}")
    files, captions, skipped = [], [], []
    resolved_root = root.resolve()
    with open(metadata, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = f"{metadata}, line {number}"
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not JSON ({exc})") from exc
            if not isinstance(entry, dict):
                raise DataError(f"{where}: expected a JSON object with file_name and text, got {type(entry).__name__}")
            for key in ("file_name", "text"):
                if not isinstance(entry.get(key), str):
                    missing = "missing" if key not in entry else f"{type(entry[key]).__name__}, not a string"
                    raise DataError(f"{where}: {key} is {missing}" + (" (every image needs a caption)" if key == "text" else ""))
            path = (root / entry["file_name"]).resolve()
            if not path.is_relative_to(resolved_root):
                raise DataError(f"{where}: file_name {entry['file_name']!r} is outside {root}")
            problem = _problem(path)
            if problem is not None:
                if strict:
                    raise DataError(f"{where}: {entry['file_name']} is {problem}")
                skipped.append(f"{entry['file_name']} ({problem})")
                continue
            files.append(entry["file_name"])
            captions.append(entry["text"])
    if skipped:
        logger.warning("%s: skipping %d unusable image(s): %s%s", root, len(skipped), "; ".join(skipped[:5]), " ..." if len(skipped) > 5 else "")
    if not files:
        raise DataError(f"{root}: no usable image in {METADATA}" + (f" ({len(skipped)} skipped)" if skipped else ""))
    return ImageFolder(root, tuple(files), tuple(captions), size)


def write_shapes_folder(out: str | os.PathLike[str], count: int, seed: int = 0, exclude: Iterable[str] = ()) -> Path:
    """The first ``count`` scenes of the shapes dataset's stream (seed ``seed``) as 32 × 32 PNGs with
    ``metadata.jsonl``, written atomically; scenes whose caption is in ``exclude`` (in either object order) are
    skipped, so the folder still holds ``count`` images. Without ``exclude``: ``sample_scenes(seed, 0, count)``."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidArgumentError("count", count, "a positive integer")
    held_out = frozenset(composition(caption(parse_caption(text))) for text in exclude)
    scenes = itertools.islice(scene_stream(seed, held_out), count)
    return write_image_folder(out, ((f"{i:06d}.png", render(scene), caption(scene)) for i, scene in enumerate(scenes)))


def read_caption_file(path: str | os.PathLike[str], option: str = "--exclude-captions") -> list[str]:
    """Captions of the shapes dataset, one per line (blank lines ignored), or a DataError naming ``option``, the file
    and what is wrong with it."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        what = "not found" if isinstance(exc, FileNotFoundError) else f"unreadable as UTF-8 text ({type(exc).__name__})"
        raise DataError(f"{option} {path}: {what}; expected a text file of captions, one per line") from None
    captions = [line.strip() for line in lines if line.strip()]
    if not captions:
        raise DataError(f"{option} {path}: no captions in it; expected a text file of captions, one per line")
    for number, text in enumerate((line.strip() for line in lines), 1):
        if text:
            try:
                parse_caption(text)
            except InvalidArgumentError as exc:
                raise DataError(f"{option} {path}, line {number}: {text[:80]!r} is not {exc.allowed}") from None
    return captions


def write_image_folder(out: str | os.PathLike[str], entries: Iterable[tuple[str, np.ndarray, str]]) -> Path:
    """Write ``entries`` — (file name, float (H, W, 3) image in [0, 1], caption) — as PNGs with ``metadata.jsonl``,
    atomically (a failure leaves nothing at ``out``)."""
    with atomic_directory(out) as tmp:
        records = []
        for name, image, text in entries:
            Image.fromarray(np.round(image * 255).astype(np.uint8), "RGB").save(tmp / name)
            records.append(json.dumps({"file_name": name, "text": text}))
        (tmp / METADATA).write_text("\n".join(records) + "\n", encoding="utf-8")
    return Path(out)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m contextdiff_ref.data.imagefolder", description="Write the shapes dataset as an image folder with metadata.jsonl.")
    parser.add_argument("--shapes", type=int, required=True, metavar="N", help="number of images")
    parser.add_argument("--out", type=Path, required=True, help="folder to write (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="scene stream seed (default: %(default)s)")
    parser.add_argument("--exclude-captions", type=Path, default=None, metavar="FILE",
                        help="a text file of captions (one per line) whose compositions the folder must not hold, in either object order")
    args = parser.parse_args(argv)
    setup_logging(PLAIN)
    try:
        exclude = read_caption_file(args.exclude_captions) if args.exclude_captions is not None else ()
        write_shapes_folder(args.out, args.shapes, args.seed, exclude)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    logger.info("wrote %d images and %s to %s", args.shapes, METADATA, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
