"""Text–image alignment metrics of the shapes dataset (``shared/docs/shapes-dataset.md``, last section). NumPy only.

Each quadrant of a generated image is read independently:
1. foreground = pixels whose largest channel exceeds 0.5; fewer than 20 of them -> the quadrant is empty;
2. colour: channel c is "on" when more than half of the foreground pixels have c > 0.5; the colour is the palette
   entry with exactly that on/off pattern (none, e.g. for white, when no entry has it);
3. shape: the best intersection-over-union between the foreground and the rendered mask of each shape, over every
   allowed size and jitter of that quadrant (ties go to the earlier of square, circle, triangle).
Then per image: colour-position (named colour in the named quadrant), full (shape right too), exact prompt (every
named object fully right and no object in an unnamed quadrant).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from contextdiff_ref.data.shapes import COLOURS, JITTERS, POSITIONS, SHAPES, SIZES, Scene, quadrant_of, shape_mask
from runtime.errors import InvalidArgumentError

THRESHOLD = 0.5
MIN_PIXELS = 20


@dataclass(frozen=True)
class QuadrantReading:
    colour: str | None  # None: empty quadrant, or an off-palette colour
    shape: str | None
    pixels: int  # foreground pixels

    @property
    def occupied(self) -> bool:
        return self.pixels >= MIN_PIXELS


@functools.lru_cache(maxsize=None)
def _templates(position: str) -> tuple[np.ndarray, np.ndarray]:
    """(K, 256) bool masks of every shape/size/jitter inside ``position``'s quadrant, and (K,) shape indices."""
    rows, cols = quadrant_of(position)
    x, y = POSITIONS[position]
    masks, labels = [], []
    for k, shape in enumerate(SHAPES):
        for size in SIZES:
            for dy in JITTERS:
                for dx in JITTERS:
                    masks.append(shape_mask(shape, size, x + dx, y + dy)[rows, cols].reshape(-1))
                    labels.append(k)
    return np.stack(masks), np.asarray(labels)


def read_quadrant(image: np.ndarray, position: str) -> QuadrantReading:
    """Read the object in one quadrant of an (32, 32, 3) image with values in [0, 1]."""
    rows, cols = quadrant_of(position)
    return read_patch(image[rows, cols], position)


def read_patch(patch: np.ndarray, position: str = "top left") -> QuadrantReading:
    """Read the object in a (16, 16, 3) patch with values in [0, 1], its shapes matched against the templates of
    ``position``'s quadrant. Masks of integer centres only translate, so the "top left" templates (centre (8, 8) ± a
    jitter) read any 16 x 16 window centred on an integer point, e.g. a moving object's (contextdiff_ref/video)."""
    foreground = patch.max(axis=-1) > THRESHOLD
    count = int(foreground.sum())
    if count < MIN_PIXELS:
        return QuadrantReading(None, None, count)
    on = tuple(float(v) for v in ((patch[foreground] > THRESHOLD).mean(axis=0) > 0.5))  # step 2
    colour = next((name for name, rgb in COLOURS.items() if rgb == on), None)
    masks, labels = _templates(position)  # step 3
    fg = foreground.reshape(-1)
    intersection = (masks & fg).sum(axis=1)
    union = (masks | fg).sum(axis=1)
    shape = SHAPES[labels[int(np.argmax(intersection / union))]]
    return QuadrantReading(colour, shape, count)


@dataclass(frozen=True)
class ImageScore:
    objects: int  # named objects
    colour_position: int  # of them with the right colour in the right quadrant
    full: int  # of them with colour and shape right
    exact: bool  # all named objects fully right and every other quadrant empty


def score_image(image: np.ndarray, scene: Scene) -> ImageScore:
    """Score one (32, 32, 3) image in [0, 1] against the scene its prompt describes."""
    image = np.asarray(image)
    if image.shape != (32, 32, 3):
        raise InvalidArgumentError("image", f"array of shape {image.shape}", "shape (32, 32, 3) with values in [0, 1]")
    readings = {p: read_quadrant(image, p) for p in POSITIONS}
    named = {o.position: o for o in scene}
    cp = sum(readings[p].occupied and readings[p].colour == o.colour for p, o in named.items())
    full = sum(readings[p].occupied and readings[p].colour == o.colour and readings[p].shape == o.shape for p, o in named.items())
    stray = any(readings[p].occupied for p in POSITIONS if p not in named)
    return ImageScore(len(named), int(cp), int(full), full == len(named) and not stray)


METRICS = ("colour_position_accuracy", "full_accuracy", "exact_prompt_rate")


def per_image_metrics(scores: Sequence[ImageScore]) -> dict[str, np.ndarray]:
    """Per-image values of each metric, (n,) float64: accuracies as the fraction of the image's named objects."""
    return {
        "colour_position_accuracy": np.array([s.colour_position / s.objects for s in scores], dtype=np.float64),
        "full_accuracy": np.array([s.full / s.objects for s in scores], dtype=np.float64),
        "exact_prompt_rate": np.array([float(s.exact) for s in scores], dtype=np.float64),
    }


def summarize(scores: Sequence[ImageScore]) -> dict[str, float | int]:
    """The three metrics over a prompt set (accuracies over named objects), with the image and object counts."""
    if not scores:
        raise InvalidArgumentError("scores", "an empty list", "at least one scored image")
    objects = sum(s.objects for s in scores)
    return {
        "images": len(scores),
        "objects": objects,
        "colour_position_accuracy": sum(s.colour_position for s in scores) / objects,
        "full_accuracy": sum(s.full for s in scores) / objects,
        "exact_prompt_rate": sum(s.exact for s in scores) / len(scores),
    }


def paired_interval(a: np.ndarray, b: np.ndarray, z: float = 1.96, groups: Sequence[int] | None = None) -> dict[str, float]:
    """Mean of the paired differences a − b ((n,) values of one metric on the same items) with a
    normal-approximation confidence interval (95% for z = 1.96) from the items' differences.

    ``groups`` ((n,) labels: the prompt of each image when a prompt has several) adds ``prompt_ci_low/high``, the
    interval over the groups' mean differences. The first interval holds for the prompt set as fixed (the seeds are
    the only chance in it; the items' pooled spread makes it conservative); the second for the set as a sample of
    prompts like it (images of one prompt count as one draw)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    out = _mean_interval(d, z)
    if groups is not None:
        labels = np.asarray(groups)
        if labels.shape != d.shape:
            raise InvalidArgumentError("groups", f"{labels.shape[0] if labels.ndim else labels} labels", f"one per item ({len(d)})")
        by_group = _mean_interval(np.array([d[labels == g].mean() for g in dict.fromkeys(labels.tolist())]), z)
        out |= {"prompt_ci_low": by_group["ci_low"], "prompt_ci_high": by_group["ci_high"]}
    return out


def _mean_interval(d: np.ndarray, z: float) -> dict[str, float]:
    half = z * (d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.inf)
    return {"difference": float(d.mean()), "ci_low": float(d.mean() - half), "ci_high": float(d.mean() + half)}


def paired_difference(a: Sequence[ImageScore], b: Sequence[ImageScore], z: float = 1.96, groups: Sequence[int] | None = None) -> dict[str, dict[str, float]]:
    """Mean difference a − b of each metric over the same prompts and seeds, with a normal-approximation
    confidence interval (95% for z = 1.96) from the per-image paired differences; with ``groups`` (the prompt of each
    image) also the one from the per-prompt mean differences (:func:`paired_interval`)."""
    if len(a) != len(b) or not a:
        raise InvalidArgumentError("scores", f"{len(a)} and {len(b)} images", "two equal, non-empty lists (same prompts and seeds)")
    pa, pb = per_image_metrics(a), per_image_metrics(b)
    return {name: paired_interval(pa[name], pb[name], z, groups) for name in METRICS}
