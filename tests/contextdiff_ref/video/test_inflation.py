"""The inflated UNet and the video adapter (method doc §7) on the tiny pixel model: what "starts as the image model"
means exactly, the sparse-causal attention against its formula, and that the new parts are wired in."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from contextdiff_ref.models.tiny import build_tiny_components
from contextdiff_ref.video.adapter import VideoContextAdapter
from contextdiff_ref.video.unet import SparseCausalAttnProcessor, TemporalLayers, VideoUNet, sparse_causal_context, transformer_blocks
from runtime.errors import ConfigError, InvalidArgumentError

F = 4
ATOL = 1e-5


@pytest.fixture(scope="module")
def image():
    components = build_tiny_components(latent=False, seed=3)
    with torch.no_grad():
        components.unet.conv_out.weight.mul_(50.0)  # undo the tiny model's output damping: outputs of order 1
    return components


def _inflated(image, seed=0):
    unet = copy.deepcopy(image.unet)
    torch.manual_seed(seed)
    return VideoUNet(unet, TemporalLayers.for_unet(unet, F)).eval()


def _inputs(b=2, still=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1 if still else F, 3, 32, 32, generator=g).expand(b, F, 3, 32, 32).reshape(b * F, 3, 32, 32)
    text = torch.randn(b, 1, 16, 32, generator=g).expand(b, F, 16, 32).reshape(b * F, 16, 32)
    return x, text


def test_sparse_causal_context_picks_frame_0_and_the_previous_frame():
    x = torch.arange(2 * F, dtype=torch.float32).view(2 * F, 1, 1).expand(2 * F, 3, 2)
    ctx = sparse_causal_context(x, F)  # (B·F, 2N, C): video b frame i holds value b·F + i
    for b in range(2):
        for i in range(F):
            assert torch.all(ctx[b * F + i, :3] == b * F) and torch.all(ctx[b * F + i, 3:] == b * F + max(i - 1, 0))


def test_sparse_causal_processor_is_its_formula(image):
    attn = transformer_blocks(image.unet)[0].attn1
    h = torch.randn(2 * F, 10, attn.query_dim)
    got = SparseCausalAttnProcessor(F)(attn, h)
    q, ctx = attn.to_q(h), sparse_causal_context(h, F)
    k, v, heads = attn.to_k(ctx), attn.to_v(ctx), attn.heads
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
    weights = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // heads), dim=-1)
    want = attn.to_out[0]((weights @ split(v)).transpose(1, 2).reshape(h.shape[0], 10, -1))
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@torch.no_grad()
def test_freshly_inflated_unet_is_the_image_model_where_the_method_says(image):
    video = _inflated(image)
    frame_by_frame = lambda x, text: image.unet(x, 500, encoder_hidden_states=text).sample  # noqa: E731
    x, text = _inputs(still=True)
    torch.testing.assert_close(video(x, 500, text)[0], frame_by_frame(x, text), atol=ATOL, rtol=0)  # a still video: every frame
    x, text = _inputs(still=False)
    got, want = video(x, 500, text)[0].view(2, F, 3, 32, 32), frame_by_frame(x, text).view(2, F, 3, 32, 32)
    torch.testing.assert_close(got[:, 0], want[:, 0], atol=ATOL, rtol=0)  # frame 0 of any video
    assert (got[:, 1:] - want[:, 1:]).abs().max() > 1e-2  # later frames see frames 0 and i − 1, not themselves (§7)


@torch.no_grad()
def test_temporal_layers_are_wired_in_and_start_at_zero(image):
    video = _inflated(image)
    x, text = _inputs(still=False)
    before = video(x, 500, text)[0]
    for layer in video.temporal.layers:
        assert torch.all(layer.attn.to_out[0].weight == 0) and torch.all(layer.attn.to_out[0].bias == 0)
        torch.nn.init.normal_(layer.attn.to_out[0].weight, std=0.1)
    after = video(x, 500, text)[0].view(2, F, 3, 32, 32)
    assert (after.view_as(before) - before).abs().max() > 1e-3
    x2 = x.view(2, F, 3, 32, 32).clone()
    x2[:, F - 1] += 1.0  # the last frame changes: with temporal attention frame 0 sees it
    assert (video(x2.view(-1, 3, 32, 32), 500, text)[0].view(2, F, 3, 32, 32)[:, 0] - after[:, 0]).abs().max() > 1e-4


def test_tuned_parameters_and_bad_input(image):
    video = _inflated(image)
    tuned = {id(p) for p in video.tuned_parameters()}
    names = {n for n, p in video.named_parameters() if id(p) in tuned}
    assert names and all(n.startswith("temporal.") or n.endswith(("attn1.to_q.weight", "attn2.to_q.weight")) for n in names)
    assert any(n.startswith("temporal.") for n in names) and any("attn2.to_q" in n for n in names)
    with pytest.raises(InvalidArgumentError, match="multiple of num_frames=4"):
        video(torch.zeros(3, 3, 32, 32), 1, torch.zeros(3, 16, 32))
    with pytest.raises(ConfigError, match="do not match"):
        VideoUNet(copy.deepcopy(image.unet), TemporalLayers(num_frames=F, channels=[32], num_heads=[4]))


@torch.no_grad()
def test_video_adapter_starts_as_the_image_adapter_and_then_mixes_frames(image, tmp_path):
    adapter = VideoContextAdapter.from_image_adapter(image.adapter, F).eval()
    x, text = _inputs()
    t = torch.tensor([10, 10, 10, 10, 700, 700, 700, 700])
    torch.testing.assert_close(adapter(x, text, t), image.adapter(x, text, t), atol=ATOL, rtol=0)
    for mixing in adapter.mixing:
        torch.nn.init.normal_(mixing.attn.to_out[0].weight, std=0.2)
    base = adapter(x, text, t)
    x2 = x.view(2, F, 3, 32, 32).clone()
    x2[0, F - 1] += 1.0  # video 0's last frame changes: its frame 0 shift changes, video 1 does not
    changed = adapter(x2.view(-1, 3, 32, 32), text, t)
    assert (changed[0] - base[0]).abs().max() > 1e-5 and torch.equal(changed[F:], base[F:])
    adapter.save_pretrained(tmp_path / "video_adapter")
    loaded = VideoContextAdapter.from_pretrained(tmp_path / "video_adapter").eval()
    assert loaded.config.num_frames == F
    torch.testing.assert_close(loaded(x, text, t), base, atol=0, rtol=0)
    with pytest.raises(InvalidArgumentError, match="multiple of num_frames=4"):
        adapter(x[:6], text[:6], t[:6])
