"""Video-editing measures on moving-shapes clips (method doc §7, "Measures"), per frame, with the shapes dataset's
own reader (:func:`contextdiff_ref.data.alignment.read_patch`). NumPy only.

For each frame f and the edited object (the clip's first), the 16 x 16 window centred on the object's *source*
centre on that frame (:meth:`MovingObject.centres`) is read:
1. edit accuracy: the window reads as the edited colour and the edited shape;
2. structure kept: the window holds an object (>= 20 foreground pixels) whose centre — the middle of the bounding
   box of its foreground pixels — lies within 2 px (Euclidean) of the source centre;
3. temporal change: the mean absolute difference between the object's windows on frames f − 1 and f (each
   centred on its own frame's centre, so an object that moves rigidly, as in every source clip, changes by 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from contextdiff_ref.data.alignment import MIN_PIXELS, THRESHOLD, paired_interval, read_patch
from contextdiff_ref.video.data import Clip
from runtime.errors import InvalidArgumentError

WINDOW = 16
STRUCTURE_TOLERANCE = 2.0  # pixels
METRICS = ("edit_accuracy", "structure_kept", "temporal_change")


def object_windows(frames: np.ndarray, clip: Clip) -> np.ndarray:
    """(F, 16, 16, 3): the first object's window on each frame (centred on its source centre there)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[1:] != (32, 32, 3):
        raise InvalidArgumentError("frames", f"array of shape {frames.shape}", "shape (F, 32, 32, 3) with values in [0, 1]")
    half = WINDOW // 2
    return np.stack([frame[cy - half : cy + half, cx - half : cx + half] for frame, (cx, cy) in zip(frames, clip[0].centres(len(frames)))])


@dataclass(frozen=True)
class ClipScore:
    edited: np.ndarray  # (F,) bool: the edited colour and shape read on the frame
    kept: np.ndarray  # (F,) bool: the object's centre within STRUCTURE_TOLERANCE of the source's
    change: np.ndarray  # (F − 1,) float64: mean |window_f − window_{f−1}|

    def summary(self) -> dict[str, float]:
        return {"edit_accuracy": float(self.edited.mean()), "structure_kept": float(self.kept.mean()), "temporal_change": float(self.change.mean())}


def score_clip(frames: np.ndarray, target: Clip) -> ClipScore:
    """Score generated frames (F, 32, 32, 3) in [0, 1] against ``target``: the clip the edited prompt describes
    (its first object's motion is the source's)."""
    windows = object_windows(frames, target)
    obj = target[0]
    edited, kept = [], []
    centre = np.array([WINDOW / 2, WINDOW / 2])
    for window in windows:
        reading = read_patch(window)
        edited.append(reading.occupied and reading.colour == obj.colour and reading.shape == obj.shape)
        ys, xs = np.nonzero(window.max(axis=-1) > THRESHOLD)
        if len(ys) < MIN_PIXELS:
            kept.append(False)
            continue
        box = np.array([(xs.min() + xs.max() + 1) / 2, (ys.min() + ys.max() + 1) / 2])  # pixel edges: [min, max + 1)
        kept.append(bool(math.dist(box, centre) <= STRUCTURE_TOLERANCE))
    change = np.abs(np.diff(windows.astype(np.float64), axis=0)).mean(axis=(1, 2, 3))
    return ClipScore(np.array(edited), np.array(kept), change)


def summarize_clips(scores: Sequence[ClipScore]) -> dict[str, float | int]:
    """Frame-weighted edit accuracy and structure kept, mean temporal change, over clips."""
    if not scores:
        raise InvalidArgumentError("scores", "an empty list", "at least one scored clip")
    return {
        "clips": len(scores),
        "frames": int(sum(len(s.edited) for s in scores)),
        "edit_accuracy": float(np.concatenate([s.edited for s in scores]).mean()),
        "structure_kept": float(np.concatenate([s.kept for s in scores]).mean()),
        "temporal_change": float(np.mean([s.change.mean() for s in scores])),
    }


def paired_clip_difference(a: Sequence[ClipScore], b: Sequence[ClipScore], z: float = 1.96) -> dict[str, dict[str, float]]:
    """Per-clip paired differences a − b of each measure (same source clips and edits) with their intervals."""
    if len(a) != len(b) or not a:
        raise InvalidArgumentError("scores", f"{len(a)} and {len(b)} clips", "two equal, non-empty lists (same clips and edits)")
    per = lambda scores, name: np.array([s.summary()[name] for s in scores])  # noqa: E731
    return {name: paired_interval(per(a, name), per(b, name), z) for name in METRICS}
