"""ContextAdapter (method doc §6): zero at init, shape-preserving at any size divisible by the patch, bounded."""

from __future__ import annotations

import copy

import pytest
import torch

from contextdiff_ref.models.adapter import ContextAdapter
from runtime.errors import ConfigError, InvalidArgumentError


def inputs(b=2, c=4, h=8, w=8, length=7, d=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, h, w, generator=g), torch.randn(b, length, d, generator=g), torch.randint(0, 1000, (b,), generator=g)


def small(**kw) -> ContextAdapter:
    torch.manual_seed(0)
    return ContextAdapter(**{**dict(in_channels=4, cross_attention_dim=32, hidden_dim=32, num_layers=2, num_heads=2), **kw}).eval()


@pytest.mark.parametrize("size", [(8, 8), (16, 24), (6, 10), (64, 64)])
def test_zero_at_init_and_keeps_shape(size):
    adapter = small()
    x, c, t = inputs(h=size[0], w=size[1])
    with torch.no_grad():
        out = adapter(x, c, t)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0


def test_bounded_output_and_depends_on_text_position_and_time():
    adapter = small(output_bound=0.5)
    torch.nn.init.normal_(adapter.proj_out.weight, std=10.0)  # saturate: the bound must still hold
    x, c, t = inputs()
    with torch.no_grad():
        out = adapter(x, c, t)
        assert out.abs().max() <= 0.5 and out.abs().max() > 0.4
        torch.nn.init.normal_(adapter.proj_out.weight, std=0.05)
        base = adapter(x, c, t)
        assert not torch.allclose(base, adapter(x, c.flip(0), t))  # text matters
        assert not torch.allclose(base, adapter(x, c, t + 100))  # timestep matters
        flat = torch.zeros_like(x)  # identical patches everywhere: only position features can tell them apart
        r = adapter(flat, c, t)
        assert not torch.allclose(r[..., :4, :4], r[..., 4:, 4:])


def test_much_smaller_than_an_sd15_unet():
    """The default adapter (4 x 64 x 64 latents, 768-d text) next to an SD-1.5-shaped UNet (built on the meta device)."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280))
        adapter = ContextAdapter()
    unet_params = sum(p.numel() for p in unet.parameters())
    assert 8.0e8 < unet_params < 9.0e8  # the 860M UNet
    assert sum(p.numel() for p in adapter.parameters()) < 0.01 * unet_params


def test_bad_shapes_are_clear_errors():
    adapter = small()
    x, c, t = inputs(h=9, w=8)
    with pytest.raises(InvalidArgumentError, match="patch_size=2"):
        adapter(x, c, t)
    x, c, t = inputs()
    with pytest.raises(InvalidArgumentError, match="encoder_hidden_states"):
        adapter(x, c[:, :, :16], t)
    with pytest.raises(InvalidArgumentError, match="timestep"):
        adapter(x, c, t[:1])


@pytest.mark.parametrize("bad", [dict(hidden_dim=30, num_heads=4), dict(patch_size=0), dict(output_bound=float("inf"))])
def test_bad_config_is_a_clear_error(bad):
    with pytest.raises(ConfigError):
        ContextAdapter(**bad)


def test_save_load_roundtrip(tmp_path):
    adapter = small(patch_size=4)
    torch.nn.init.normal_(adapter.proj_out.weight, std=0.05)
    adapter.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    loaded = ContextAdapter.from_pretrained(tmp_path, use_safetensors=True).eval()
    assert loaded.config.patch_size == 4
    x, c, t = inputs()
    with torch.no_grad():
        assert torch.equal(adapter(x, c, t), loaded(x, c, t))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_position_sinusoids_stay_fp32_in_a_half_precision_module(dtype):
    """The Torch fp16 paths (Torch backend, reference on a GPU) compute the position sinusoids in fp32, as the fp16
    ONNX export does (export/onnx_export.py keeps every Sin/Cos cone fp32): arguments reach π·2^7 ≈ 402 rad."""
    fp32 = ContextAdapter(in_channels=4, hidden_dim=32, num_layers=1, cross_attention_dim=16, num_heads=2, patch_size=2)
    half = copy.deepcopy(fp32).to(dtype)
    assert half.frequencies.dtype == torch.float32 and torch.equal(half.frequencies, fp32.frequencies)
    grid = torch.zeros(32, 16, 12)
    expected = fp32._position_sinusoids(grid)
    got = half._position_sinusoids(grid.to(dtype))
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    features = half._position_features(grid.to(dtype))
    assert features.dtype == dtype and torch.equal(features, half.position_proj(expected.to(dtype)))
