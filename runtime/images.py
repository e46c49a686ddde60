"""Turning a decoded sample into what callers asked for; shared by the reference pipeline and the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class GenerationOutput:
    """``images``: float32 (N, H, W, 3) in [0, 1] for "np", a list of PIL images for "pil",
    and the final sample x_0 (N, C, h, w) float32 for "latent"."""

    images: Any
    seed: int


def to_images(decoded: np.ndarray, output_type: str) -> Any:
    """decoded (N, 3, H, W) float in [-1, 1] (values outside are clipped) -> "np" or "pil" images."""
    images = np.clip(np.asarray(decoded, dtype=np.float32) / 2 + 0.5, 0.0, 1.0).transpose(0, 2, 3, 1)
    images = np.ascontiguousarray(images)
    if output_type == "np":
        return images
    from PIL import Image

    return [Image.fromarray(np.round(image * 255).astype(np.uint8)) for image in images]


def make_grid(images: np.ndarray, columns: int | None = None) -> np.ndarray:
    """(N, H, W, 3) -> one (rows·H, columns·W, 3) image, row-major, empty cells black."""
    n, h, w, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = -(-n // columns)
    grid = np.zeros((rows * h, columns * w, c), dtype=images.dtype)
    for i, image in enumerate(images):
        r, q = divmod(i, columns)
        grid[r * h : (r + 1) * h, q * w : (q + 1) * w] = image
    return grid
