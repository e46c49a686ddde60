"""Image files for ``python -m runtime edit IMAGE``: PNG/JPEG in, PNG out (written atomically: no partial file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.files import atomic_write
from runtime.video_io import dilate

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def is_image_file(path: str | os.PathLike[str]) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike[str]) -> Any:
    """The PIL image as stored (its mode unchanged: :func:`runtime.validation.validate_image` says what it is if not RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return image


def read_image_mask(path: str | os.PathLike[str], dilation: int = 0) -> Any:
    """An edit region from a single-channel image (PIL mode L or 1; soft values kept); with ``dilation`` > 0 the pixels
    above one half, grown by that many pixels (:func:`runtime.video_io.dilate`), as a float32 (H, W) array."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 0:
        raise InvalidArgumentError("mask_dilation", dilation, "an integer >= 0 (pixels)")
    mask = read_image(path)
    if dilation == 0 or mask.mode not in ("L", "1"):
        return mask  # validate_image_mask names a mask that is not single-channel
    return dilate(np.asarray(mask, dtype=np.float32) / (1.0 if mask.mode == "1" else 255.0) > 0.5, dilation).astype(np.float32)


def write_image(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """(H, W, 3) float in [0, 1] -> an 8-bit PNG, atomically."""
    from PIL import Image

    if Path(path).suffix.lower() != ".png":
        raise InvalidArgumentError("output", str(path), "a file name ending in .png")
    pixels = Image.fromarray(np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8))
    return atomic_write(path, lambda tmp: pixels.save(tmp, format="PNG"))
