"""The video base (contextdiff_ref.video.build_base): the moving-shapes image folder, the motion words, the resumable
build on a tiny model, the shipped base, and bad input named."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contextdiff_ref.data.imagefolder import METADATA, open_image_folder
from contextdiff_ref.models.defaults import default_video_base_dir
from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.training.loop import CHECKPOINT, read_checkpoint
from contextdiff_ref.video import build_base as base
from contextdiff_ref.video.data import MOTION_WORDS, clip_caption, clip_edits, evaluation_clips, random_clip, render_clip
from runtime.errors import InvalidArgumentError


def test_motion_folder_holds_clip_frames_with_their_captions_and_stills(tmp_path):
    path = base.write_motion_folder(tmp_path / "data", clips=2, two_object_clips=1, stills=3, seed=4)
    folder = open_image_folder(path, 32, strict=True)
    assert len(folder) == 3 * 8 + 3
    rng = np.random.default_rng([4, 1000])
    expected = [random_clip(rng, 1), random_clip(rng, 1), random_clip(rng, 2)]
    for i, clip in enumerate(expected):
        frames = render_clip(clip)
        for f in range(8):
            k = folder.files.index(f"clip{i:05d}-{f}.png")
            assert folder.captions[k] == clip_caption(clip)
            np.testing.assert_allclose((folder.image(k).transpose(1, 2, 0) + 1) / 2, frames[f], atol=1 / 255)
    assert sum(" at the " in c for c in folder.captions) == 3  # the stills keep the shapes captions
    assert not list(tmp_path.glob(".*"))  # nothing half-written left beside it


def test_motion_folder_holds_out_captions(tmp_path):
    rng = np.random.default_rng([4, 1000])
    first = clip_caption(random_clip(rng, 1))
    folder = open_image_folder(base.write_motion_folder(tmp_path / "data", clips=3, two_object_clips=0, stills=0, seed=4,
                                                        held_out=frozenset({first})), 32)  # fmt: skip
    assert len(folder) == 3 * 8 and first not in folder.captions


def test_base_clip_captions_are_the_folders_clip_captions(tmp_path):
    """base_clip_captions replays the folder's draw: the same captions as a written folder's clips (held-out skips
    included), and the embedded base's (defaults) leave out every caption of the evaluation's seed-0 clips and edits."""
    args = {"clips": 5, "two_object_clips": 2, "seed": 4, "held_out_clips": 3}
    folder = open_image_folder(base.write_motion_folder(tmp_path / "data", args["clips"], args["two_object_clips"], 0, args["seed"],
                                                        base.evaluation_captions(3)), 32)  # fmt: skip
    assert base.base_clip_captions(**args) == frozenset(folder.captions)
    shipped = base.base_clip_captions()
    assert len(shipped) > 100 and not shipped & base.evaluation_captions(24)


def test_evaluation_captions_cover_the_evaluation_sources_and_edits():
    held = base.evaluation_captions(3, 2)
    clips = evaluation_clips(3, 0)
    assert {clip_caption(c) for c in clips} <= held
    assert {clip_caption(e) for c in clips for e in clip_edits(c, 2)} <= held and len(held) <= 9


@pytest.mark.parametrize("kw", [{"clips": -1}, {"stills": 1.5}, {"clips": 0, "two_object_clips": 0, "stills": 0}])
def test_motion_folder_bad_counts_are_named(tmp_path, kw):
    args = {"clips": 1, "two_object_clips": 0, "stills": 0} | kw
    with pytest.raises(InvalidArgumentError, match=next(iter(kw))):
        base.write_motion_folder(tmp_path / "data", **args)
    assert not (tmp_path / "data").exists()


def test_build_video_base_adds_the_words_fine_tunes_and_resumes(pixel_model_dir, tmp_path):
    out = tmp_path / "base"
    model = base.build_video_base(out, pixel_model_dir, steps=2, clips=1, two_object_clips=1, stills=2, batch_size=4, learning_rate=1e-3,
                                  held_out_clips=2)
    tokenizer = load_model_dir(model).tokenizer
    assert all(len(tokenizer.tokenize(w)) == 1 for w in MOTION_WORDS)
    before, after = load_model_dir(pixel_model_dir), load_model_dir(model)
    assert not torch.equal(before.unet.conv_in.weight, after.unet.conv_in.weight)  # the UNet was trained
    assert read_checkpoint(out / "run" / CHECKPOINT, "cpu")["step"] == 2
    stamp = (model / "model_index.json").stat().st_mtime_ns
    assert base.build_video_base(out, pixel_model_dir, steps=2, clips=1, two_object_clips=1, stills=2, batch_size=4, learning_rate=1e-3) == model
    assert (model / "model_index.json").stat().st_mtime_ns == stamp  # done: nothing redone
    assert (out / "data" / METADATA).is_file()


def test_the_shipped_video_base_reads_the_motion_words():
    tokenizer = load_model_dir(default_video_base_dir()).tokenizer
    tokens = tokenizer.tokenize("a red circle moving from the top left to the top right")
    assert len(tokens) == 12 and tokenizer.unk_token_id not in tokenizer.convert_tokens_to_ids(tokens)
    assert all(len(tokenizer.tokenize(w)) == 1 for w in MOTION_WORDS)


def test_cli_names_a_missing_model(tmp_path, capsys):
    assert base.main(["--out", str(tmp_path / "o"), "--model", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
