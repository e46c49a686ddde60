"""The video-editing evaluation (benchmarks.video_evaluation): scoring and report on known frames, a resumable
run on the tiny pixel model, bad settings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from benchmarks import video_evaluation as evaluate
from benchmarks.video_evaluation import METHODS, EditSettings, markdown_table, run_edits, score_edits
from contextdiff_ref.video.data import MovingObject, clip_caption, clip_edits, evaluation_clips, render_clip
from runtime.errors import ContextDiffError, InvalidArgumentError
from runtime.video_io import dilate, read_video


def test_report_on_known_frames():
    """Frames that are exactly the edited clips score 100%; the unedited source keeps the structure and edits
    nothing; the paired difference and its interval follow."""
    settings = EditSettings(clips=3, edits=2)
    clips = evaluation_clips(3)
    perfect = np.stack([[render_clip(e) for e in clip_edits(c, 2)] for c in clips])
    source = np.stack([[render_clip(c)] * 2 for c in clips])
    report = score_edits({"contextdiff": perfect, "baseline": source}, settings)
    assert report["pairs"] == 6 and report["methods"]["contextdiff"]["frames"] == 48
    assert report["methods"]["contextdiff"]["edit_accuracy"] == 1.0 and report["methods"]["contextdiff"]["structure_kept"] == 1.0
    assert report["methods"]["baseline"]["edit_accuracy"] == 0.0 and report["methods"]["baseline"]["structure_kept"] == 1.0
    d = report["difference"]
    assert d["edit_accuracy"] == {"difference": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert d["structure_kept"]["difference"] == 0.0
    assert report["source_temporal_change"] == pytest.approx(report["methods"]["baseline"]["temporal_change"])  # baseline = the sources
    table = markdown_table(report)
    assert "| contextdiff | 6 | 48 | 100.0% | 100.0% |" in table and "+100.0% [+100.0%, +100.0%]" in table
    json.dumps(report)


@pytest.mark.slow
def test_a_run_resumes_from_its_stored_edits(pixel_model_dir, tmp_path, monkeypatch):
    settings = EditSettings(clips=1, edits=1, tune_steps=1, num_inference_steps=2, strength=1.0, guidance_scale=2.0)
    run = tmp_path / "run"
    frames = run_edits(pixel_model_dir, run, settings)
    assert set(frames) == set(METHODS) and frames["contextdiff"].shape == (1, 1, 8, 32, 32, 3)
    assert sorted(p.name for p in (run / "edits").iterdir()) == ["00-baseline.npz", "00-contextdiff.npz"]
    assert not any((run / "tune").iterdir())  # tuning runs are removed once their edits are stored
    assert not np.array_equal(frames["contextdiff"], frames["baseline"])  # the adapter is used by one of them only

    def must_not_run(*args, **kwargs):
        raise AssertionError("a stored (clip, method) was edited again")

    monkeypatch.setattr(evaluate, "edit_clip_with", must_not_run)
    again = run_edits(pixel_model_dir, run, settings)
    for m in METHODS:
        np.testing.assert_array_equal(again[m], frames[m])
    assert evaluation_clips(2)[0] == evaluation_clips(1)[0]  # a prefix-stable draw: more clips extend a run
    with pytest.raises(AssertionError, match="edited again"):
        run_edits(pixel_model_dir, run, EditSettings(clips=2, edits=1, tune_steps=1, num_inference_steps=2, strength=1.0, guidance_scale=2.0))
    with pytest.raises(ContextDiffError, match="other settings .*guidance_scale"):
        run_edits(pixel_model_dir, run, EditSettings(clips=1, edits=1, tune_steps=1, num_inference_steps=2, strength=1.0, guidance_scale=3.0))
    with pytest.raises(ContextDiffError, match="other settings .*engine"):  # a run holds one engine's edits
        run_edits(pixel_model_dir, run, dataclasses.replace(settings, engine="runtime"))
    with pytest.raises(ContextDiffError, match="other settings .*blend_dilation"):  # runs before local blending read as without it
        run_edits(pixel_model_dir, run, dataclasses.replace(settings, blend_dilation=2))
    with pytest.raises(ContextDiffError, match="other settings .*blend_region"):  # a box run is a run of its own
        run_edits(pixel_model_dir, run, dataclasses.replace(settings, blend_dilation=0, blend_region="box"))
    with pytest.raises(ContextDiffError, match="other settings .*region_noise"):  # runs before it read as region_noise 0
        run_edits(pixel_model_dir, run, dataclasses.replace(settings, blend_dilation=0, region_noise=1.0))
    evaluate.write_strip(frames, settings, tmp_path / "strip.gif", scale=1)
    assert read_video(tmp_path / "strip.gif").shape == (8, 32, 32 * 3 + 2, 3)  # source | ContextDiff | baseline


@pytest.mark.slow
def test_local_blending_keeps_the_source_outside_its_region(pixel_model_dir, tmp_path):
    """--blend-dilation d: an edit changes only the source clip's foreground grown by d pixels (ContextDiff's edit, as
    run_edits makes it per method; the baseline's goes through the same blending, and run_edits' storage is the resume
    test's)."""
    settings = EditSettings(clips=1, edits=1, tune_steps=1, num_inference_steps=3, strength=1.0, guidance_scale=2.0, blend_dilation=1)
    clip = evaluation_clips(1)[0]
    edited = evaluate.edit_clip_with(pixel_model_dir, clip, clip_edits(clip, 1), "contextdiff", settings, tmp_path / "work")[0]
    source = render_clip(clip)
    region = evaluate.source_region(source, 1)
    assert region.sum() > (source.max(axis=-1) > 0.5).sum() > 0  # grown, not empty
    np.testing.assert_allclose(edited[~region], source[~region], rtol=0, atol=1e-6)
    assert not np.allclose(edited[region], source[region], atol=1e-3)


@pytest.mark.parametrize("shape", ["triangle", "circle", "square"])
def test_box_region_is_each_objects_bounding_box(shape):
    """--blend-region box: each object on each frame grows to its own bounding box (drawn alone here, so no labelling
    is shared with the code under test); two objects apart get a box each, not one around both; dilation grows it."""

    def boxes(clip):  # (F, 32, 32) bool: each object's bounding box, from the object rendered alone
        out = np.zeros((8, 32, 32), dtype=bool)
        for obj in clip:
            for f, fg in enumerate(render_clip((obj,)).max(axis=-1) > 0.5):
                ys, xs = np.nonzero(fg)
                out[f, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        return out

    one = (MovingObject("blue", shape, "top left", "bottom left"),)
    two = one + (MovingObject("red", "triangle", "top right", "bottom right", size=8),)
    for clip in (one, two):
        region = evaluate.source_region(render_clip(clip), 0, "box")
        np.testing.assert_array_equal(region, boxes(clip))
        if any(o.shape != "square" for o in clip):
            assert region.sum() > (render_clip(clip).max(axis=-1) > 0.5).sum()  # wider than the foreground
    if shape == "square":
        np.testing.assert_array_equal(evaluate.source_region(render_clip(one), 0, "box"), render_clip(one).max(axis=-1) > 0.5)
    np.testing.assert_array_equal(evaluate.source_region(render_clip(one), 2, "box"), dilate(boxes(one), 2))
    with pytest.raises(InvalidArgumentError, match="region"):
        evaluate.source_region(render_clip(one), 0, "ellipse")


@pytest.mark.slow
def test_local_blending_in_boxes(pixel_model_dir, tmp_path):
    """blend_region='box' edits inside the source objects' boxes only; region noise stays inside the region and changes
    the edit there (ContextDiff's edits, edit_clip_with; that such settings make a run of their own: the resume test)."""
    settings = EditSettings(clips=1, edits=1, tune_steps=1, num_inference_steps=3, strength=1.0, guidance_scale=2.0, blend_dilation=0,
                            blend_region="box")  # fmt: skip
    clip = evaluation_clips(1)[0]
    source = render_clip(clip)
    region = evaluate.source_region(source, 0, "box")
    boxed = evaluate.edit_clip_with(pixel_model_dir, clip, clip_edits(clip, 1), "contextdiff", settings, tmp_path / "box")[0]
    np.testing.assert_allclose(boxed[~region], source[~region], rtol=0, atol=1e-6)
    noised = dataclasses.replace(settings, region_noise=1.0)
    again = evaluate.edit_clip_with(pixel_model_dir, clip, clip_edits(clip, 1), "contextdiff", noised, tmp_path / "noised")[0]
    np.testing.assert_allclose(again[~region], source[~region], rtol=0, atol=1e-6)  # the noise stays inside the region
    assert np.abs(again - boxed)[region].max() > 0.1  # and changes the edit there


@pytest.mark.parametrize(
    "field, value",
    [("clips", 0), ("edits", 1.5), ("tune_steps", -1), ("num_inference_steps", True), ("strength", 0.0), ("strength", 0.01),
     ("strength", 1.5), ("guidance_scale", -1.0), ("learning_rate", 0.0), ("negative", "target"),
     ("engine", "tensorrt"), ("blend_dilation", -1), ("blend_dilation", True), ("blend_dilation", 1.5),
     ("blend_region", "mask"), ("clip_seed", -1), ("clip_seed", 0.5), ("region_noise", 0.5), ("region_noise", -0.1),
     ("clip_set", "seen")],
)  # fmt: skip
def test_bad_settings(field, value):
    with pytest.raises(InvalidArgumentError, match=field):
        EditSettings(**{field: value})


def test_unseen_clip_set(monkeypatch):
    """clip_set='unseen': seed 0's clips are all unseen by the embedded base (it was built holding them out); another
    seed's set skips the clips it trained on, keeps the draw's order, and is prefix-stable; too few is a clear error."""
    from contextdiff_ref.video import build_base as base

    assert evaluate.source_clips(EditSettings(clip_set="unseen")) == evaluation_clips(24, 0)
    seen = base.base_clip_captions()
    chosen = evaluate.source_clips(EditSettings(clip_set="unseen", clip_seed=1))
    drawn = evaluation_clips(2400, 1)
    assert len(chosen) == 24 and chosen != drawn[:24]
    taken = iter(chosen)  # in the draw's order: every clip of the draw up to the last one taken is taken or was seen
    want = next(taken)
    for clip in drawn:
        is_seen = bool({clip_caption(c) for c in (clip, *clip_edits(clip, 2))} & seen)
        assert is_seen != (clip == want)
        if clip == want and (want := next(taken, None)) is None:
            break
    assert want is None
    assert evaluate.source_clips(EditSettings(clips=5, clip_set="unseen", clip_seed=1)) == chosen[:5]
    monkeypatch.setattr(base, "base_clip_captions", lambda: frozenset(clip_caption(c) for c in evaluation_clips(2400, 1)))
    with pytest.raises(InvalidArgumentError, match=r"clips=24: at most 0 with clip_set='unseen'"):
        evaluate.source_clips(EditSettings(clip_set="unseen", clip_seed=1))


def test_region_noise_needs_a_region():
    with pytest.raises(InvalidArgumentError, match=r"region_noise=1.5: a number in \[0, 1\]"):
        EditSettings(blend_dilation=1, region_noise=1.5)
    with pytest.raises(InvalidArgumentError, match=r"region_noise=0.5: 0 without a region .*blend_dilation"):  # noise needs a region
        EditSettings(region_noise=0.5)


def test_command_line_errors(tmp_path, capsys):
    assert evaluate.main(["--out", str(tmp_path / "r"), "--strength", "2"]) == 2
    assert "strength" in capsys.readouterr().err
    assert evaluate.main(["--out", str(tmp_path / "r"), "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
