"""The "moving shapes" video set: clips of one or two shapes of the shapes dataset moving across the canvas. NumPy only.

A clip has F frames (8 by default) of the 32 x 32 canvas of ``shared/docs/shapes-dataset.md``, rendered by its exact
rules (:func:`contextdiff_ref.data.shapes.shape_mask`). Each object moves in a straight line from the nominal centre of
one quadrant to that of another, its centre on frame f (of F) at the integer point

    round(start + (end − start) · f / (F − 1))        (per axis; round half to even, as NumPy does)

so the object is exactly the same pixels, translated, on every frame. Captions:

- one object:  "a {colour} {shape} moving from the {start} to the {end}"
               e.g. "a red circle moving from the top left to the top right"
- two objects: "a {c1} {s1} and a {c2} {s2} moving from the {side} to the {side}", both objects moving one quadrant
               the same way (:data:`PAIRED_MOVES`; from the left to the right: the first object in the top row, the
               second in the bottom row), so they never share a 16 x 16 window.

The words "moving", "from" and "to" are new to the shapes model's tokenizer (:data:`MOTION_WORDS`; inflation adds
them). An edit changes the colour and the shape of the first object and keeps its motion (:func:`edit_clip`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from contextdiff_ref.data.shapes import COLOURS, POSITIONS, SHAPES, SIZE, SIZES, shape_mask
from runtime.errors import InvalidArgumentError

NUM_FRAMES = 8
MOTION_WORDS = ("moving", "from", "to")
# (from side, to side) -> the two objects' (start, end): first the top (or left) one, then the other
PAIRED_MOVES: dict[tuple[str, str], tuple[tuple[str, str], tuple[str, str]]] = {
    ("left", "right"): (("top left", "top right"), ("bottom left", "bottom right")),
    ("right", "left"): (("top right", "top left"), ("bottom right", "bottom left")),
    ("top", "bottom"): (("top left", "bottom left"), ("top right", "bottom right")),
    ("bottom", "top"): (("bottom left", "top left"), ("bottom right", "top right")),
}


@dataclass(frozen=True)
class MovingObject:
    colour: str
    shape: str
    start: str  # quadrant names of contextdiff_ref.data.shapes.POSITIONS
    end: str
    size: int = 10

    def __post_init__(self) -> None:
        for name, value, allowed in (("colour", self.colour, tuple(COLOURS)), ("shape", self.shape, SHAPES),
                                     ("start", self.start, tuple(POSITIONS)), ("end", self.end, tuple(POSITIONS)),
                                     ("size", self.size, SIZES)):  # fmt: skip
            if value not in allowed:
                raise InvalidArgumentError(name, value, f"one of {', '.join(map(repr, allowed))}")
        if self.start == self.end:
            raise InvalidArgumentError("end", self.end, f"a quadrant other than start={self.start!r}")

    def centres(self, num_frames: int = NUM_FRAMES) -> np.ndarray:
        """(F, 2) int64: the centre (x, y) on each frame."""
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
            raise InvalidArgumentError("num_frames", num_frames, "an integer >= 2")
        a, b = np.array(POSITIONS[self.start], dtype=np.float64), np.array(POSITIONS[self.end], dtype=np.float64)
        f = np.arange(num_frames, dtype=np.float64)[:, None] / (num_frames - 1)
        return np.rint(a + (b - a) * f).astype(np.int64)


Clip = tuple[MovingObject, ...]


def render_clip(clip: Clip, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """(F, 32, 32, 3) float32 frames in [0, 1], black background."""
    frames = np.zeros((num_frames, SIZE, SIZE, 3), dtype=np.float32)
    for obj in clip:
        for frame, (cx, cy) in zip(frames, obj.centres(num_frames)):
            frame[shape_mask(obj.shape, obj.size, float(cx), float(cy))] = COLOURS[obj.colour]
    return frames


def clip_caption(clip: Clip) -> str:
    """The clip's prompt (module docstring)."""
    if len(clip) == 1:
        o = clip[0]
        return f"a {o.colour} {o.shape} moving from the {o.start} to the {o.end}"
    if len(clip) == 2:
        a, b = clip
        sides = next((k for k, moves in PAIRED_MOVES.items() if moves == ((a.start, a.end), (b.start, b.end))), None)
        if sides is None:
            raise InvalidArgumentError("clip", f"objects moving {a.start}->{a.end} and {b.start}->{b.end}",
                                       "two objects moving one quadrant the same way (e.g. both from the left to the right)")
        return f"a {a.colour} {a.shape} and a {b.colour} {b.shape} moving from the {sides[0]} to the {sides[1]}"
    raise InvalidArgumentError("clip", f"{len(clip)} objects", "1 or 2 objects")


def random_clip(rng: np.random.Generator, num_objects: int) -> Clip:
    """A clip of ``num_objects`` (1: any two distinct quadrants; 2: a shared one-quadrant move); colours, shapes
    and sizes uniform (the two objects' colours differ)."""
    colours, quadrants = list(COLOURS), list(POSITIONS)

    def pick(**where: str) -> MovingObject:
        return MovingObject(colour=where.get("colour") or colours[rng.integers(len(colours))], shape=SHAPES[rng.integers(len(SHAPES))],
                            start=where["start"], end=where["end"], size=int(rng.integers(SIZES[0], SIZES[-1] + 1)))  # fmt: skip

    if num_objects == 1:
        start, end = rng.choice(len(quadrants), size=2, replace=False)
        return (pick(start=quadrants[start], end=quadrants[end]),)
    if num_objects == 2:
        (s1, e1), (s2, e2) = list(PAIRED_MOVES.values())[rng.integers(len(PAIRED_MOVES))]
        first = pick(start=s1, end=e1)
        other = [c for c in colours if c != first.colour]
        return first, pick(start=s2, end=e2, colour=other[rng.integers(len(other))])
    raise InvalidArgumentError("num_objects", num_objects, "1 or 2")


def evaluation_clips(count: int = 24, seed: int = 0, num_objects: int = 1) -> list[Clip]:
    """``count`` source clips drawn with ``seed`` (the video-editing evaluation set)."""
    rng = np.random.default_rng([seed, num_objects])
    return [random_clip(rng, num_objects) for _ in range(count)]


def edit_clip(clip: Clip, colour: str, shape: str) -> Clip:
    """The clip with its first object's colour and shape replaced (its motion and size kept)."""
    return (replace(clip[0], colour=colour, shape=shape),) + tuple(clip[1:])


def clip_edits(clip: Clip, count: int = 2, seed: int = 0) -> list[Clip]:
    """``count`` edits of ``clip``: the first object gets another colour and another shape (drawn with ``seed``
    and the object, so an evaluation's edits are fixed), distinct edits."""
    source = clip[0]
    taken = {o.colour for o in clip}
    options = [(c, s) for c in COLOURS for s in SHAPES if c not in taken and s != source.shape]
    key = [seed, list(COLOURS).index(source.colour), SHAPES.index(source.shape), list(POSITIONS).index(source.start), list(POSITIONS).index(source.end)]
    picks = np.random.default_rng(key).choice(len(options), size=count, replace=False)
    return [edit_clip(clip, *options[i]) for i in picks]
