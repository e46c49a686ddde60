"""benchmarks/image_edits.py's edits and scoring (no engines): the reader scores the edited object and the rest."""

from __future__ import annotations

import numpy as np

from benchmarks.image_edits import edited_scene, region, score_edit
from contextdiff_ref.data.shapes import render, two_object_scenes


def test_edits_change_one_attribute_of_the_first_object_and_score_as_expected():
    for i, scene in enumerate(two_object_scenes(6, seed=0)):
        target = edited_scene(scene, i)
        changed = [f for f in ("colour", "shape") if getattr(target[0], f) != getattr(scene[0], f)]
        assert changed == ["colour" if i % 2 == 0 else "shape"] and target[1:] == scene[1:]
        assert score_edit(render(target), scene, target) == (True, True)  # the edit made, the rest kept
        assert score_edit(render(scene), scene, target) == (False, True)  # nothing edited
        assert score_edit(np.zeros((32, 32, 3), np.float32), scene, target) == (False, False)  # the other object lost
        mask = region(scene)
        assert mask.sum() == 16 * 16 and mask[render(scene)[..., :].max(-1) > 0.5].sum() > 0
