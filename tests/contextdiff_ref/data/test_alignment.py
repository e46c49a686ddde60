"""Alignment metrics: rendered ground truth scores perfectly, each kind of mistake is caught by the right metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contextdiff_ref.data.alignment import paired_difference, paired_interval, read_quadrant, score_image, summarize
from contextdiff_ref.data.shapes import ShapeObject, evaluation_sets, render, sample_scenes
from runtime.errors import InvalidArgumentError

RED_CIRCLE = (ShapeObject("red", "circle", "top left"),)


def test_ground_truth_scores_perfectly_on_every_set_and_every_size():
    for scenes in list(evaluation_sets().values()) + [sample_scenes(5, 0, 500)]:
        result = summarize([score_image(render(s), s) for s in scenes])
        assert result["colour_position_accuracy"] == result["full_accuracy"] == result["exact_prompt_rate"] == 1.0


def test_shapes_are_read_for_every_size_and_jitter():
    for shape in ("square", "circle", "triangle"):
        for size in range(8, 13):
            for dx in (-1, 0, 1):
                obj = ShapeObject("blue", shape, "bottom right", size=size, dx=dx, dy=-dx)
                assert read_quadrant(render((obj,)), "bottom right").shape == shape


def test_wrong_colour_wrong_shape_stray_object_and_empty():
    wrong_colour = score_image(render((ShapeObject("green", "circle", "top left"),)), RED_CIRCLE)
    assert (wrong_colour.colour_position, wrong_colour.full, wrong_colour.exact) == (0, 0, False)
    wrong_shape = score_image(render((ShapeObject("red", "square", "top left"),)), RED_CIRCLE)
    assert (wrong_shape.colour_position, wrong_shape.full, wrong_shape.exact) == (1, 0, False)
    stray = score_image(render(RED_CIRCLE + (ShapeObject("blue", "square", "bottom right"),)), RED_CIRCLE)
    assert (stray.colour_position, stray.full, stray.exact) == (1, 1, False)
    wrong_place = score_image(render((ShapeObject("red", "circle", "top right"),)), RED_CIRCLE)
    assert (wrong_place.colour_position, wrong_place.exact) == (0, False)
    empty = score_image(np.zeros((32, 32, 3), np.float32), RED_CIRCLE)
    assert (empty.colour_position, empty.full, empty.exact) == (0, 0, False)


def test_thresholds_small_blobs_and_off_palette_colours():
    image = render(RED_CIRCLE)
    faint = image * 0.5  # no channel exceeds 0.5: empty
    assert not read_quadrant(faint, "top left").occupied
    tiny = np.zeros_like(image)
    tiny[6:10, 6:10] = (1, 0, 0)  # 16 pixels < 20: empty
    assert not read_quadrant(tiny, "top left").occupied
    white = np.where(image > 0, 1.0, 0.0).max(axis=-1, keepdims=True).repeat(3, axis=-1)
    reading = read_quadrant(white, "top left")
    assert reading.occupied and reading.colour is None
    noisy = np.clip(image + np.random.default_rng(0).normal(0, 0.15, image.shape), 0, 1)
    assert score_image(noisy, RED_CIRCLE).exact


def test_paired_difference_and_errors():
    good = [score_image(render(s), s) for s in evaluation_sets()["one_object"][:10]]
    bad = [score_image(np.zeros((32, 32, 3)), s) for s in evaluation_sets()["one_object"][:10]]
    d = paired_difference(good, bad)["full_accuracy"]
    assert d == {"difference": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    mixed = good[:5] + bad[5:]
    d = paired_difference(mixed, bad)["exact_prompt_rate"]
    assert d["difference"] == 0.5 and d["ci_low"] < 0.5 < d["ci_high"]
    with pytest.raises(InvalidArgumentError, match="scores"):
        paired_difference(good, bad[:3])


def test_the_interval_over_prompts_with_several_images_each():
    """Two images per prompt: beside the images' interval (six differences, variance 0.3), the one over the three
    prompts' mean differences (1, 0, 0.5: mean 0.5, sample standard deviation 0.5)."""
    d, zero = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0]), np.zeros(6)
    got = paired_interval(d, zero, groups=[0, 0, 1, 1, 2, 2])
    images, prompts = 1.96 * math.sqrt(0.3) / math.sqrt(6), 1.96 * 0.5 / math.sqrt(3)
    assert got == pytest.approx({"difference": 0.5, "ci_low": 0.5 - images, "ci_high": 0.5 + images,
                                 "prompt_ci_low": 0.5 - prompts, "prompt_ci_high": 0.5 + prompts})  # fmt: skip
    assert paired_interval(d, zero) == pytest.approx({"difference": 0.5, "ci_low": 0.5 - images, "ci_high": 0.5 + images})
    with pytest.raises(InvalidArgumentError, match="groups"):
        paired_interval(d, zero, groups=[0, 1])
