"""benchmarks/image_edits.py's edits and scoring (no engines): the reader scores the edited object and the rest."""

from __future__ import annotations

import numpy as np
import pytest

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


def test_the_strip_shows_each_source_and_its_edits_enlarged(tmp_path):
    from benchmarks.image_edits import parse_args, strip_image

    scenes = two_object_scenes(2, seed=0)
    rows = [(render(s), "a caption", [render(edited_scene(s, i)), np.zeros((32, 32, 3), np.float32)]) for i, s in enumerate(scenes)]
    sheet = strip_image(rows, ["img2img", "invert"], scale=2)
    assert sheet.dtype == np.float32 and sheet.shape[2] == 3 and 0.0 <= sheet.min() and sheet.max() <= 1.0
    first = sheet[22 : 22 + 64, 4 : 4 + 64]  # below the 18-pixel header and a 4-pixel gap: row 0's source, nearest x2
    np.testing.assert_allclose(first[::2, ::2], np.round(render(scenes[0]) * 255) / 255, atol=1e-6)
    right = sheet[22 : 22 + 64, -4 - 64 : -4]  # the last column: the second mode's edit (black)
    assert right.max() == 0.0 and sheet.shape[0] == 22 + 2 * 68
    with pytest.raises(SystemExit):
        parse_args(["--engines", "e", "--model", "m", "--out", "o.json", "--strip", str(tmp_path / "strip.gif")])


@pytest.mark.parametrize("negative", ["source", "empty"])
def test_negative_picks_guidances_unconditional_prompt(negative, tmp_path):
    """--negative source: each edit's unconditional prompt is its source caption; --negative empty: none (the empty
    prompt). Every mode and method gets the same."""
    from types import SimpleNamespace

    from benchmarks.image_edits import edit_scenes, parse_args
    from contextdiff_ref.data.shapes import caption, two_object_scenes

    seen = []

    def edit(image, prompt, **kwargs):
        seen.append(kwargs["negative_prompt"])
        return SimpleNamespace(images=image[None])

    args = parse_args(["--engines", "e", "--model", "m", "--out", str(tmp_path / "r.json"), "--images", "2", "--negative", negative])
    edit_scenes(args, {m: SimpleNamespace(edit=edit) for m in ("contextdiff", "baseline")})
    captions = [caption(s) for s in two_object_scenes(2, seed=0)]
    assert seen == [c if negative == "source" else None for c in captions for _ in range(4 * 2)]
