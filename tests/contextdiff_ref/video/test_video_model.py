"""The video model directory, VideoEditPipeline, video files and one-shot tuning, on the tiny pixel model (4 frames)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer

from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.models.text import tokenize
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from contextdiff_ref.training.loop import CHECKPOINT
from contextdiff_ref.video.model_dir import inflate, load_video_model_dir, save_video_model_dir
from contextdiff_ref.video.pipeline import VideoEditPipeline
from contextdiff_ref.video.tune import TuneConfig, VideoTuner
from runtime.errors import ContextDiffError, InvalidArgumentError, ModelDirectoryError
from runtime.video_io import read_video, write_video

F = 4
PROMPT = "a red circle moving from the top left to the top right"


def _video(seed=0, still=False):
    frames = np.random.default_rng(seed).random((1 if still else F, 32, 32, 3), dtype=np.float32)
    return np.repeat(frames, F, axis=0) if still else frames


@pytest.fixture(scope="module")
def video_dir(pixel_model_dir, tmp_path_factory):
    video = inflate(load_model_dir(pixel_model_dir), F, words=["moving", "from", "to"], seed=1)
    return save_video_model_dir(video, tmp_path_factory.mktemp("video") / "tiny-video")


def test_directory_round_trip_and_words(video_dir, pixel_model_dir):
    index = json.loads((video_dir / "model_index.json").read_text())
    assert index["num_frames"] == F and index["contextual"] is True and (video_dir / "temporal").is_dir()
    video = load_video_model_dir(video_dir)
    ids = tokenize(video.components, [PROMPT])[0].tolist()
    assert len([i for i in ids if i != video.components.tokenizer.eos_token_id]) == 13  # BOS + 12 one-token words
    assert Tokenizer.from_file(str(video_dir / "tokenizer" / "tokenizer.json")).encode(PROMPT).ids == ids[:14]  # the runtime's tokenizer
    fresh = inflate(load_model_dir(pixel_model_dir), F, words=["moving", "from", "to"], seed=1)
    x, text = torch.randn(2 * F, 3, 32, 32), torch.randn(2 * F, 16, 32)
    with torch.no_grad():
        torch.testing.assert_close(video.components.predict(x, 400, text), fresh.components.predict(x, 400, text), atol=0, rtol=0)
    assert ContextDiffPipeline.from_pretrained(video_dir).limits.default_height == 32  # still an image model directory


def test_inflation_is_seeded_whatever_the_global_generator(pixel_model_dir):
    """The added words' embedding rows (drawn by transformers from torch's global generator) and the new layers
    depend on ``seed`` only."""
    embeddings = []
    for global_seed in (0, 123):
        torch.manual_seed(global_seed)
        video = inflate(load_model_dir(pixel_model_dir), F, words=["moving", "from", "to"], seed=1)
        embeddings.append(video.components.text_encoder.get_input_embeddings().weight.detach().clone())
    torch.testing.assert_close(embeddings[0], embeddings[1], atol=0, rtol=0)


def test_directory_errors(video_dir, pixel_model_dir, tmp_path):
    with pytest.raises(ModelDirectoryError, match="no temporal weights.*image model directory"):
        load_video_model_dir(pixel_model_dir)
    with pytest.raises(ModelDirectoryError, match="image model directory"):
        VideoEditPipeline.from_pretrained(pixel_model_dir)
    broken = shutil.copytree(video_dir, tmp_path / "broken")
    index = json.loads((broken / "model_index.json").read_text())
    (broken / "model_index.json").write_text(json.dumps({**index, "num_frames": 6}))
    with pytest.raises(ModelDirectoryError, match="num_frames=6"):
        load_video_model_dir(broken)
    with pytest.raises(InvalidArgumentError, match="num_frames"):
        inflate(load_model_dir(pixel_model_dir), 1)


@torch.no_grad()
def test_baseline_has_no_context_shift(pixel_model_dir):
    video = inflate(load_model_dir(pixel_model_dir), F, contextual=False)
    x, text = torch.randn(F, 3, 32, 32), torch.randn(F, 16, 32)
    assert torch.equal(video.video_adapter(x, text, torch.full((F,), 900)), torch.zeros_like(x))
    assert not any(p is q for p in video.tuned_parameters() for q in video.video_adapter.parameters())


@pytest.mark.slow
def test_still_video_edit_is_the_image_pipeline_frame_by_frame(video_dir, pixel_model_dir):
    """Freshly inflated, a still video goes through exactly what the image pipeline does to each frame
    (inversion with the source prompt, then guided contextual DDIM with the edit)."""
    frames = _video(still=True)
    pipe = VideoEditPipeline.from_pretrained(video_dir, clip_sample=None)  # the model's clipping, as the image pipeline
    image = ContextDiffPipeline.from_pretrained(pixel_model_dir)
    edits = {}
    for strength in (1.0, 0.5):  # 0.5: inversion and sampling both stop half way (3 of 6 steps)
        got = edits[strength] = pipe.edit(frames, "a red circle", "a blue square", num_inference_steps=6, guidance_scale=3.0, strength=strength, progress=False)
        x_t = image.invert(image.encode(frames[:1]), "a red circle", 6, strength=strength, progress=False)
        want = image("a blue square", None, 6, 3.0, latents=x_t, strength=strength, progress=False).images
        assert got.shape == (F, 32, 32, 3)
        np.testing.assert_allclose(got, np.repeat(want, F, axis=0), atol=2e-5, rtol=0, err_msg=f"strength={strength}")
    assert np.abs(edits[0.5] - edits[1.0]).max() > 1e-3  # strength is used, not ignored


def test_edit_bad_input(video_dir):
    pipe = VideoEditPipeline.from_pretrained(video_dir)
    frames = _video()
    for bad, match in ((frames[:3], "4 frames of H x W x 3"), (np.zeros((F, 31, 32, 3), np.float32), "multiples of 2"),
                       (frames * 2, "values in ["), ([1, 2], "list")):  # fmt: skip
        with pytest.raises(InvalidArgumentError, match="video") as info:
            pipe.edit(bad, "a", "b", 2, progress=False)
        assert match in str(info.value) or match == "list"
    for source, prompt, name in (("", "b", "source_prompt"), ("a", " ", "prompt"), ("a", None, "prompt")):
        with pytest.raises(InvalidArgumentError, match=name):
            pipe.edit(frames, source, prompt, 2, progress=False)
    with pytest.raises(InvalidArgumentError, match="strength"):
        pipe.edit(frames, "a", "b", 2, strength=0.2, progress=False)
    with pytest.raises(InvalidArgumentError, match="clip_sample"):
        VideoEditPipeline.from_pretrained(video_dir, clip_sample="no")


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_files_round_trip(tmp_path, suffix):
    from contextdiff_ref.video.data import evaluation_clips, render_clip

    frames = render_clip(evaluation_clips(1)[0])
    path = write_video(tmp_path / f"clip{suffix}", frames)
    assert read_video(path).shape == frames.shape and np.abs(read_video(path) - frames).max() <= 1 / 255
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InvalidArgumentError, match="video.*readable"):
        read_video(tmp_path / "bad.mp4")
    with pytest.raises(InvalidArgumentError, match="existing video file"):
        read_video(tmp_path / "missing.gif")
    with pytest.raises(InvalidArgumentError, match="output"):
        write_video(tmp_path / "clip.txt", frames)


@pytest.mark.slow
def test_tuning_trains_only_what_section_7_says_and_resumes(pixel_model_dir, tmp_path):
    frames = _video(seed=2)
    config = TuneConfig(steps=2, videos_per_step=1, seed=5)
    a = VideoTuner(config, pixel_model_dir, frames, PROMPT, tmp_path / "a")
    before = {k: v.clone() for k, v in a.video.video_unet.state_dict().items()}
    text_before = {k: v.clone() for k, v in a.video.components.text_encoder.state_dict().items()}
    model = a.run(checkpoint_every=1, log_every=1)
    after = a.video.video_unet.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("temporal.") or k.endswith("to_q.weight") for k in changed)
    assert all(torch.equal(v, a.video.components.text_encoder.state_dict()[k]) for k, v in text_before.items())
    # resumed to 4 steps == 4 steps straight
    VideoTuner(TuneConfig(steps=4, videos_per_step=1, seed=5), pixel_model_dir, frames, PROMPT, tmp_path / "a").run(checkpoint_every=1, log_every=1)
    straight = VideoTuner(TuneConfig(steps=4, videos_per_step=1, seed=5), pixel_model_dir, frames, PROMPT, tmp_path / "b")
    straight.run(checkpoint_every=10)
    resumed = load_video_model_dir(model)
    for k, v in straight.video.video_unet.state_dict().items():
        torch.testing.assert_close(resumed.video_unet.state_dict()[k], v, atol=1e-6, rtol=0)
    assert [json.loads(line)["step"] for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    with pytest.raises(ContextDiffError, match="other settings.*prompt"):
        VideoTuner(TuneConfig(steps=6, videos_per_step=1, seed=5), pixel_model_dir, frames, "another prompt", tmp_path / "a")
    with pytest.raises(ContextDiffError, match="with --baseline|without --baseline"):
        VideoTuner(TuneConfig(steps=1, baseline=True), model, frames, PROMPT, tmp_path / "c")
    with pytest.raises(InvalidArgumentError, match="video"):
        VideoTuner(config, model, frames[:3], PROMPT, tmp_path / "d")
    with pytest.raises(InvalidArgumentError, match="prompt"):
        VideoTuner(config, pixel_model_dir, frames, "", tmp_path / "e")
    assert not (tmp_path / "c").exists() and (tmp_path / "a" / CHECKPOINT).is_file()


@pytest.mark.slow
def test_command_lines(pixel_model_dir, tmp_path, capsys):
    from contextdiff_ref import edit_video, tune_video

    source = write_video(tmp_path / "source.gif", _video(seed=4))
    run = tmp_path / "run"
    args = ["--model", str(pixel_model_dir), "--video", str(source), "--prompt", PROMPT, "--out", str(run), "--steps", "1", "--videos-per-step", "1"]
    assert tune_video.main(args) == 0 and (run / "model" / "temporal").is_dir()
    out = tmp_path / "edited.mp4"
    edit = [str(source), "--model", str(run / "model"), "--source-prompt", PROMPT, "--prompt", "a blue square", "-o", str(out), "--steps", "2"]
    assert edit_video.main(edit) == 0 and read_video(out).shape == (F, 32, 32, 3)
    assert edit_video.main(edit + ["--strength", "0.5", "--negative-prompt", PROMPT]) == 0
    capsys.readouterr()
    assert edit_video.main(edit + ["--strength", "0.1"]) == 2 and "strength" in capsys.readouterr().err
    region = np.zeros((F, 32, 32, 3), np.float32)
    region[:, 8:24, 8:24] = 1.0  # a mask video: white where the edit may change the frames (as a GIF: one frame, for all)
    masked = tmp_path / "masked.mp4"
    edit_masked = edit[:-4] + ["-o", str(masked)] + edit[-2:] + ["--mask", str(write_video(tmp_path / "mask.gif", region)), "--mask-dilation", "1"]
    assert edit_video.main(edit_masked) == 0
    outside = np.ones((F, 32, 32), bool)
    outside[:, 7:25, 7:25] = False  # the square grown by 1 px is a diamond inside this box
    assert np.abs(read_video(masked) - read_video(source))[outside].max() <= 2 / 255 + 1e-6  # mp4 (yuv444p, crf 0): 8-bit rounding, measured 2/255
    noised = [str(tmp_path / "noised.mp4") if a == str(masked) else a for a in edit_masked] + ["--region-noise", "1", "--seed", "3"]
    assert edit_video.main(noised) == 0  # fresh noise inside the region only
    assert np.abs(read_video(tmp_path / "noised.mp4") - read_video(source))[outside].max() <= 2 / 255 + 1e-6
    assert np.abs(read_video(tmp_path / "noised.mp4") - read_video(masked))[~outside].max() > 0.05
    assert edit_video.main(edit + ["--region-noise", "0.5"]) == 2 and "region_noise=0.5: 0 without a region" in capsys.readouterr().err
    assert edit_video.main(edit_masked[:-1] + ["-1"]) == 2 and "mask_dilation=-1" in capsys.readouterr().err
    assert edit_video.main(edit_masked[:-3] + [str(source.with_name("x.gif"))]) == 2 and "x.gif" in capsys.readouterr().err
    for argv, message in ((["x.mp4"] + edit[1:], "existing video file"), (edit[:2] + [str(pixel_model_dir)] + edit[3:], "no temporal weights"),
                          (edit[:6] + [""] + edit[7:], "prompt")):  # fmt: skip
        assert edit_video.main(argv) == 2
        assert message in capsys.readouterr().err
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    assert tune_video.main(args[:2] + ["--video", str(tmp_path / "broken.mp4")] + args[4:]) == 2
    assert "readable video" in capsys.readouterr().err
