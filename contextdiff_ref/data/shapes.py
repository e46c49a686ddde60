"""The "shapes" dataset (``shared/docs/shapes-dataset.md``): scenes, exact rendering, captions, evaluation prompts.

NumPy only. A scene is a tuple of :class:`ShapeObject`; :func:`render` draws it on a 32 x 32 black canvas,
:func:`caption` writes its prompt, :func:`sample_scenes` draws training scenes from a seed (one- and two-object
scenes half and half), and :func:`evaluation_scenes` gives the two evaluation prompt sets.

Rendering ties: pixel (i, j) has centre (x, y) = (j + 0.5, i + 0.5); with an integer centre (cx, cy) and an odd
size d the square's and triangle's box edges fall on pixel centres, so the box is half-open —
``cx − d/2 <= x < cx + d/2`` (and likewise for y) — which gives a square of exactly d x d pixels. A disc is
``(x − cx)² + (y − cy)² < (d/2)²`` (no pixel centre can lie on the circle). The triangle is the part of the
half-open box with ``2·|x − cx| <= y − top``: apex at the top centre, base d on the bottom edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from runtime.errors import InvalidArgumentError

SIZE = 32  # canvas height and width
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
SHAPES = ("square", "circle", "triangle")
POSITIONS: dict[str, tuple[int, int]] = {  # nominal centre (x, y)
    "top left": (8, 8),
    "top right": (24, 8),
    "bottom left": (8, 24),
    "bottom right": (24, 24),
}
SIZES = tuple(range(8, 13))  # d, uniform in 8..12
JITTERS = (-1, 0, 1)


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    position: str
    size: int = 10
    dx: int = 0  # centre jitter, x
    dy: int = 0  # centre jitter, y

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, tuple(COLOURS)), ("shape", self.shape, SHAPES),
                                     ("position", self.position, tuple(POSITIONS)), ("size", self.size, SIZES),
                                     ("dx", self.dx, JITTERS), ("dy", self.dy, JITTERS)):  # fmt: skip
            if value not in allowed:
                raise InvalidArgumentError(name, value, f"one of {', '.join(map(repr, allowed))}")

    @property
    def centre(self) -> tuple[int, int]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy


Scene = tuple[ShapeObject, ...]

_Y, _X = np.mgrid[0:SIZE, 0:SIZE] + 0.5  # pixel centres: _X[i, j] = j + 0.5, _Y[i, j] = i + 0.5


def shape_mask(shape: str, size: int, cx: float, cy: float) -> np.ndarray:
    """(32, 32) bool: pixels whose centre is inside the shape (tie rules in the module docstring)."""
    half = size / 2
    in_box = (_X >= cx - half) & (_X < cx + half) & (_Y >= cy - half) & (_Y < cy + half)
    if shape == "square":
        return in_box
    if shape == "circle":
        return (_X - cx) ** 2 + (_Y - cy) ** 2 < half**2
    if shape == "triangle":
        return in_box & (2 * np.abs(_X - cx) <= _Y - (cy - half))
    raise InvalidArgumentError("shape", shape, f"one of {', '.join(map(repr, SHAPES))}")


def render(scene: Scene) -> np.ndarray:
    """(32, 32, 3) float32 image in [0, 1], black background."""
    image = np.zeros((SIZE, SIZE, 3), dtype=np.float32)
    for obj in scene:
        image[shape_mask(obj.shape, obj.size, *obj.centre)] = COLOURS[obj.colour]
    return image


def caption(scene: Scene) -> str:
    """ "a red circle at the top left" or "... and a {c2} {s2} at the {p2}"."""
    if not 1 <= len(scene) <= 2:
        raise InvalidArgumentError("scene", f"{len(scene)} objects", "1 or 2 objects")
    return " and ".join(f"a {o.colour} {o.shape} at the {o.position}" for o in scene)


def composition(text: str) -> str:
    """The caption of the same objects in a fixed order: two captions that differ only in which object is named first
    are one composition ("a red circle at the top left and a blue square at the bottom right" and the reverse)."""
    return " and ".join(sorted(text.split(" and ")))


def parse_caption(text: str) -> Scene:
    """The scene (nominal size and centre) a caption of this dataset describes; anything else raises
    InvalidArgumentError naming ``caption``."""
    allowed = 'a caption of the shapes dataset: "a {colour} {shape} at the {position}", optionally " and " a second one in another quadrant'
    objects = []
    for phrase in text.split(" and ") if isinstance(text, str) else [None]:
        words = phrase.split(" ", 3) if isinstance(phrase, str) else []
        if len(words) != 4 or words[0] != "a" or not words[3].startswith("at the "):
            raise InvalidArgumentError("caption", text, allowed)
        colour, shape, position = words[1], words[2], words[3][len("at the ") :]
        if colour not in COLOURS or shape not in SHAPES or position not in POSITIONS:
            raise InvalidArgumentError("caption", text, allowed)
        objects.append(ShapeObject(colour, shape, position))
    if not 1 <= len(objects) <= 2 or len({o.position for o in objects}) != len(objects):
        raise InvalidArgumentError("caption", text, allowed)
    return tuple(objects)


def random_scene(rng: np.random.Generator, num_objects: int) -> Scene:
    """A scene of ``num_objects`` (1 or 2) in distinct quadrants, colours/shapes/sizes/jitters uniform."""
    positions = rng.choice(len(POSITIONS), size=num_objects, replace=False)
    names = list(POSITIONS)
    return tuple(
        ShapeObject(colour=list(COLOURS)[rng.integers(len(COLOURS))], shape=SHAPES[rng.integers(len(SHAPES))],
                    position=names[p], size=int(rng.integers(SIZES[0], SIZES[-1] + 1)),
                    dx=int(rng.integers(-1, 2)), dy=int(rng.integers(-1, 2)))  # fmt: skip
        for p in positions
    )


def sample_scenes(seed: int, index: int, count: int) -> list[Scene]:
    """Training batch number ``index`` of the stream ``seed``: ``count`` scenes, one or two objects with
    probability ½ each. Depends only on (seed, index), so a resumed run sees the same data."""
    rng = np.random.default_rng([seed, index])
    return [random_scene(rng, 1 + int(rng.integers(2))) for _ in range(count)]


def scene_stream(seed: int, exclude: frozenset[str] = frozenset()) -> Iterator[Scene]:
    """Endless scenes of the stream ``seed`` (``sample_scenes(seed, 0, n)``'s first n, for any n), skipping every scene
    whose :func:`composition` is in ``exclude`` (compositions, e.g. a held-out evaluation set)."""
    rng = np.random.default_rng([seed, 0])
    while True:
        scene = random_scene(rng, 1 + int(rng.integers(2)))
        if not exclude or composition(caption(scene)) not in exclude:
            yield scene


def training_batch(seed: int, index: int, count: int) -> tuple[np.ndarray, list[str]]:
    """(count, 3, 32, 32) float32 in [−1, 1] (the model's 2·v − 1) and the captions."""
    scenes = sample_scenes(seed, index, count)
    images = np.stack([render(s) for s in scenes]).transpose(0, 3, 1, 2)
    return images * 2.0 - 1.0, [caption(s) for s in scenes]


def one_object_scenes() -> list[Scene]:
    """The one-object evaluation set: all 6 colours x 3 shapes x 4 positions = 72 (nominal size and centre)."""
    return [(ShapeObject(c, s, p),) for c in COLOURS for s in SHAPES for p in POSITIONS]


def two_object_scenes(count: int = 72, seed: int = 0) -> list[Scene]:
    """The two-object evaluation set: ``count`` scenes drawn with ``seed`` (distinct quadrants)."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, 2) for _ in range(count)]


def seen_two_object_scenes(captions: Iterable[str], count: int = 72) -> list[Scene]:
    """The first ``count`` distinct two-object compositions among ``captions`` (e.g. a training folder's, in its order),
    as scenes of nominal size: prompts a model was trained on, beside :func:`two_object_scenes`."""
    scenes, seen = [], set()
    for text in captions:
        if " and " in text and composition(text) not in seen:
            seen.add(composition(text))
            scenes.append(parse_caption(text))
            if len(scenes) == count:
                return scenes
    raise InvalidArgumentError("captions", f"{len(scenes)} distinct two-object compositions", f"at least {count}")


def evaluation_sets() -> dict[str, list[Scene]]:
    return {"one_object": one_object_scenes(), "two_object": two_object_scenes()}


def quadrant_of(position: str) -> tuple[slice, slice]:
    """(rows, cols) slices of a position's 16 x 16 quadrant."""
    x, y = POSITIONS[position]
    r, c = (y // 16) * 16, (x // 16) * 16
    return slice(r, r + 16), slice(c, c + 16)


def vocabulary() -> tuple[str, ...]:
    """Every word a caption can use (the tokenizer merges each into one token)."""
    base = ["a", "at", "the", "and"] + [w for p in POSITIONS for w in p.split()] + list(COLOURS) + list(SHAPES)
    return tuple(dict.fromkeys(base))
