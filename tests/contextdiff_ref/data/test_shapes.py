"""The shapes dataset (shared/docs/shapes-dataset.md): exact rendering, captions, determinism, evaluation sets."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from contextdiff_ref.data import shapes
from contextdiff_ref.data.shapes import ShapeObject, caption, render, sample_scenes, shape_mask, training_batch
from runtime.errors import InvalidArgumentError


def test_square_is_exactly_d_by_d_with_half_open_edges():
    for size in shapes.SIZES:
        mask = shape_mask("square", size, 8, 8)
        rows, cols = np.nonzero(mask)
        assert mask.sum() == size * size
        assert rows.min() == cols.min() == int(np.floor(8 - size / 2 + 0.5 - 1e-9))  # first centre >= 8 − d/2
        assert rows.max() - rows.min() + 1 == size


def test_disc_pixel_counts_match_the_doc():
    # "a 9-pixel disc fills 94% of its box": 60 pixels in an 8 x 8 bounding box
    mask = shape_mask("circle", 9, 8, 8)
    rows, cols = np.nonzero(mask)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert (mask.sum(), box) == (60, 64)
    assert [int(shape_mask("circle", d, 8, 8).sum()) for d in shapes.SIZES] == [52, 60, 80, 88, 112]


def test_triangle_points_up_with_base_on_the_bottom_edge():
    mask = shape_mask("triangle", 8, 8, 8)  # box rows/cols 4..11
    widths = mask.sum(axis=1)[4:12]
    assert list(widths) == [0, 2, 2, 4, 4, 6, 6, 8]  # apex at the top centre, base d on the bottom row
    assert mask[11, 4:12].all() and not mask[12].any() and not mask[:, 12:].any()
    assert [int(shape_mask("triangle", d, 8, 8).sum()) for d in shapes.SIZES] == [32, 40, 50, 60, 72]


def test_render_colours_background_and_layering():
    scene = (ShapeObject("yellow", "square", "top right", size=8), ShapeObject("cyan", "circle", "bottom left", size=12, dx=1, dy=-1))
    image = render(scene)
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert tuple(image[8, 24]) == (1.0, 1.0, 0.0) and tuple(image[23, 9]) == (0.0, 1.0, 1.0)
    assert tuple(image[0, 0]) == (0.0, 0.0, 0.0) and tuple(image[8, 8]) == (0.0, 0.0, 0.0)
    assert set(np.unique(image)) <= {0.0, 1.0}
    assert caption(scene) == "a yellow square at the top right and a cyan circle at the bottom left"


def test_every_object_stays_inside_its_quadrant():
    for scene in sample_scenes(3, 0, 300):
        for obj in scene:
            mask = shape_mask(obj.shape, obj.size, *obj.centre)
            rows, cols = shapes.quadrant_of(obj.position)
            assert mask[rows, cols].sum() == mask.sum() > 0


def test_training_stream_is_deterministic_and_pinned():
    scenes = sample_scenes(0, 0, 3)
    assert [caption(s) for s in scenes] == [
        "a green square at the bottom left and a magenta circle at the top right",
        "a yellow triangle at the bottom left and a red circle at the bottom right",
        "a red triangle at the bottom right and a green circle at the bottom left",
    ]
    assert scenes[0][0] == ShapeObject("green", "square", "bottom left", size=8, dx=-1, dy=-1)
    images, prompts = training_batch(0, 7, 4)
    assert images.shape == (4, 3, 32, 32) and images.dtype == np.float32 and set(np.unique(images)) == {-1.0, 1.0}
    assert hashlib.sha256(images.tobytes()).hexdigest() == "61aaf9082a86dd592a73fc562d99d8867c9657cfead7b7a2f742ef37ca6c96d2"
    assert prompts[3] == "a blue circle at the bottom right"
    again, _ = training_batch(0, 7, 4)
    other, _ = training_batch(0, 8, 4)
    assert np.array_equal(images, again) and not np.array_equal(images, other)


def test_one_and_two_object_scenes_half_and_half():
    counts = np.bincount([len(s) for s in sample_scenes(1, 0, 2000)])
    assert counts[0] == 0 and abs(counts[1] - 1000) < 100 and abs(counts[2] - 1000) < 100
    assert all(len({o.position for o in s}) == len(s) for s in sample_scenes(1, 0, 2000))


def test_evaluation_sets():
    sets = shapes.evaluation_sets()
    one, two = sets["one_object"], sets["two_object"]
    assert len(one) == 72 and len({caption(s) for s in one}) == 72
    assert len(two) == 72 and all(len(s) == 2 and s[0].position != s[1].position for s in two)
    assert caption(two[0]) == "a green square at the bottom left and a green triangle at the bottom right"
    assert [caption(s) for s in shapes.two_object_scenes()] == [caption(s) for s in two]  # seeded


@pytest.mark.parametrize("field,value", [("colour", "purple"), ("shape", "star"), ("position", "middle"), ("size", 7), ("dx", 2)])
def test_bad_objects_are_rejected(field, value):
    kwargs = dict(colour="red", shape="circle", position="top left") | {field: value}
    with pytest.raises(InvalidArgumentError, match=field):
        ShapeObject(**kwargs)


def test_tokenizer_has_one_token_per_caption_word_and_fits_two_object_captions():
    from contextdiff_ref.models.shapes_model import TEXT_LENGTH
    from contextdiff_ref.models.tiny import make_clip_tokenizer

    tokenizer = make_clip_tokenizer(shapes.vocabulary(), max_length=TEXT_LENGTH)
    for word in shapes.vocabulary():
        assert len(tokenizer.tokenize(word)) == 1, word
    longest = max((caption(s) for s in sample_scenes(0, 0, 500)), key=lambda c: len(c.split()))
    ids = tokenizer(longest).input_ids
    assert len(ids) == len(longest.split()) + 2 <= TEXT_LENGTH


def test_captions_parse_back_and_compositions_ignore_order():
    from contextdiff_ref.data.shapes import composition, parse_caption, seen_two_object_scenes

    for scene in sample_scenes(4, 0, 50):
        parsed = parse_caption(caption(scene))
        assert [(o.colour, o.shape, o.position) for o in parsed] == [(o.colour, o.shape, o.position) for o in scene]
    a, b = "a red circle at the top left", "a blue square at the bottom right"
    assert composition(f"{a} and {b}") == composition(f"{b} and {a}") != composition(f"{a} and a blue square at the top right")
    for bad in ["a red circle", "a red circle at the top left and", "a pink circle at the top left", f"{a} and {a}", f"{a} and {b} and {b}", 7]:
        with pytest.raises(InvalidArgumentError, match="caption"):
            parse_caption(bad)
    texts = [a, f"{a} and {b}", f"{b} and {a}", f"{b} and a red circle at the top right"]
    assert [caption(s) for s in seen_two_object_scenes(texts, count=2)] == [f"{a} and {b}", f"{b} and a red circle at the top right"]
    with pytest.raises(InvalidArgumentError, match="at least 3"):
        seen_two_object_scenes(texts, count=3)
