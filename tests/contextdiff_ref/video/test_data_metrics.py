"""The moving-shapes video set and the video-editing measures (contextdiff_ref/video/data.py, metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest

from contextdiff_ref.data.alignment import read_patch, read_quadrant
from contextdiff_ref.data.shapes import POSITIONS, evaluation_sets, render
from contextdiff_ref.video.data import (
    PAIRED_MOVES,
    MovingObject,
    clip_caption,
    clip_edits,
    edit_clip,
    evaluation_clips,
    random_clip,
    render_clip,  # fmt: skip
)
from contextdiff_ref.video.metrics import STRUCTURE_TOLERANCE, object_windows, paired_clip_difference, score_clip, summarize_clips
from runtime.errors import InvalidArgumentError


def test_objects_move_rigidly_between_quadrant_centres():
    clips = evaluation_clips(24) + [random_clip(np.random.default_rng(k), 2) for k in range(8)]
    for clip in clips:
        frames = render_clip(clip)
        assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.float32
        for obj in clip:
            centres = obj.centres()
            assert tuple(centres[0]) == POSITIONS[obj.start] and tuple(centres[-1]) == POSITIONS[obj.end]
            assert np.all(np.abs(np.diff(centres, axis=0)) <= 3)  # at most 16 / 7 rounded up per frame
        score = score_clip(frames, clip)
        assert score.edited.all() and score.kept.all() and np.all(score.change == 0.0)
        if len(clip) == 2:  # the two objects' windows never overlap
            a, b = clip[0].centres(), clip[1].centres()
            assert np.all(np.abs(a - b).max(axis=1) >= 16)


def test_captions_and_edits():
    one = (MovingObject("red", "circle", "top left", "top right"),)
    assert clip_caption(one) == "a red circle moving from the top left to the top right"
    (s1, e1), (s2, e2) = PAIRED_MOVES[("left", "right")]
    two = (MovingObject("red", "circle", s1, e1), MovingObject("blue", "square", s2, e2))
    assert clip_caption(two) == "a red circle and a blue square moving from the left to the right"
    with pytest.raises(InvalidArgumentError, match="clip"):
        clip_caption((one[0], MovingObject("blue", "square", "bottom left", "top right")))
    assert clip_caption(edit_clip(one, "blue", "square")) == "a blue square moving from the top left to the top right"
    for clip in evaluation_clips(24):
        edits = clip_edits(clip)
        assert len({e[0] for e in edits}) == 2 and edits == clip_edits(clip)
        for e in edits:
            assert e[0].colour != clip[0].colour and e[0].shape != clip[0].shape
            assert (e[0].start, e[0].end, e[0].size) == (clip[0].start, clip[0].end, clip[0].size)
    with pytest.raises(InvalidArgumentError, match="end"):
        MovingObject("red", "circle", "top left", "top left")
    with pytest.raises(InvalidArgumentError, match="colour"):
        MovingObject("white", "circle", "top left", "top right")


def test_read_patch_is_the_quadrant_reader():
    for scene in evaluation_sets()["two_object"][:24]:
        image = render(scene)
        for position in POSITIONS:
            rows, cols = slice(0, 16) if "top" in position else slice(16, 32), slice(0, 16) if "left" in position else slice(16, 32)
            assert read_patch(image[rows, cols]) == read_quadrant(image, position)


def test_measures_fail_when_they_should():
    clip = evaluation_clips(1)[0]
    frames = render_clip(clip)
    edited = clip_edits(clip)[0]
    assert not score_clip(frames, edited).edited.any()  # the source colour and shape are not the edit
    assert score_clip(render_clip(edited), edited).edited.all()
    obj = clip[0]
    (x, y) = obj.centres()[3]
    for shift, kept in ((2, True), (3, False)):  # the object moved off its path on frame 3
        moved = frames.copy()
        moved[3] = np.roll(frames[3], shift, axis=1 if x <= 16 else 0)
        assert score_clip(moved, clip).kept[3] == (shift <= STRUCTURE_TOLERANCE) == kept
    empty = frames.copy()
    empty[5] = 0.0
    score = score_clip(empty, clip)
    assert not score.edited[5] and not score.kept[5] and score.change[4] > 0 and score.change[5] > 0
    summary = summarize_clips([score, score_clip(frames, clip)])
    assert summary["frames"] == 16 and summary["edit_accuracy"] == 15 / 16
    diff = paired_clip_difference([score_clip(frames, clip)] * 3, [score, score, score_clip(frames, clip)])
    assert diff["edit_accuracy"]["difference"] == pytest.approx(2 / 3 * 1 / 8)
    assert diff["edit_accuracy"]["ci_low"] < diff["edit_accuracy"]["difference"] < diff["edit_accuracy"]["ci_high"]
    with pytest.raises(InvalidArgumentError, match="frames"):
        object_windows(frames[:, :16], clip)
