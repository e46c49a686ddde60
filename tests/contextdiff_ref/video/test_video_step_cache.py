"""Step caching for video edits in the reference (issue 34): ``CachedUNet`` on the default video model's inflated UNet
(sparse-causal attention and temporal layers inside its blocks) splits it as it splits an image UNet, and
``VideoEditPipeline.edit(..., cache_interval=k)`` runs the sampling pass on the plan (the inversion in full)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contextdiff_ref.models.defaults import default_video_model_dir
from contextdiff_ref.models.step_cache import CachedUNet
from contextdiff_ref.video.pipeline import VideoEditPipeline
from runtime.errors import InvalidArgumentError
from runtime.video_io import read_video

EDIT = "a magenta circle moving from the top right to the bottom right"


@pytest.fixture(scope="module")
def pipe():
    return VideoEditPipeline.from_pretrained(default_video_model_dir())


def test_a_video_shallow_step_on_its_own_feature_is_the_full_step(pipe):
    """Full step: the inflated UNet's prediction, bitwise; shallow step on that step's own feature: the same prediction
    (measured bitwise, max |difference| 0.0 on 2 × 8 frames, so asserted exactly); on another step's feature it is not."""
    components, f = pipe.video.components, pipe.num_frames
    sample = torch.randn(2 * f, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t, text = torch.tensor([901] * f + [17] * f), pipe.pipe.encode_prompt([EDIT] * f + [""] * f)
    cached = CachedUNet(components.unet, coordinates=components.unet_coordinate_channels)
    assert cached.unet is components.unet.unet  # the 2-D UNet the VideoUNet inflated in place
    with torch.no_grad():
        exact = components.predict(sample, t, text)
        full, feature = cached.full(sample, t, text)
        shallow = cached.shallow(sample, t, text, feature)
        stale = cached.shallow(sample, t, text, cached.full(sample * 0.5, t.flip(0), text)[1])
    assert torch.equal(full, exact) and torch.equal(shallow, exact)
    assert feature.shape == (2 * f, components.unet.unet.config.block_out_channels[1], 32, 32)
    assert not torch.allclose(stale, exact, atol=1e-3)


def test_edit_cache_interval(pipe):
    """Interval 1 is today's edit, bitwise; interval 3 runs the deep part (the mid block) on every inversion step and on
    sampling steps 0 and 3 only; a bad interval is refused before the inversion runs."""
    root = default_video_model_dir()
    video, source = read_video(root / "source.gif"), (root / "source.txt").read_text(encoding="utf-8").strip()
    calls = []
    hook = pipe.video.components.unet.unet.mid_block.register_forward_hook(lambda *a: calls.append(1))
    kw = dict(num_inference_steps=5, guidance_scale=15.0, negative_prompt=source, progress=False)
    try:
        exact = pipe.edit(video, source, EDIT, **kw)
        assert len(calls) == 10
        calls.clear()
        one = pipe.edit(video, source, EDIT, cache_interval=1, **kw)
        calls.clear()
        cached = pipe.edit(video, source, EDIT, cache_interval=3, **kw)
        assert len(calls) == 5 + 2
        calls.clear()
        for bad in (0, 2.5, True):
            with pytest.raises(InvalidArgumentError, match=r"cache_interval=.*an integer >= 1"):
                pipe.edit(video, source, EDIT, cache_interval=bad, **kw)
        assert not calls
    finally:
        hook.remove()
    np.testing.assert_array_equal(one, exact)
    assert np.abs(cached - exact).max() > 1e-3
