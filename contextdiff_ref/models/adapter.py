"""ContextAdapter: the relational network r_φ(x, c, t) of method doc §6.

patchify x (conv, patch p) -> visual tokens + Fourier features of normalised patch coordinates (so any H, W
divisible by p works) -> + timestep embedding -> blocks of [pre-norm cross-attention to the projected text
tokens + pre-norm MLP, residual] -> zero-initialised projection to C·p² per token -> unpatchify ->
``output_bound · tanh`` (bounded, so k_T · r is negligible at the start of sampling).

Saved and loaded like a diffusers model (``config.json`` + ``diffusion_pytorch_model.safetensors``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from runtime.errors import ConfigError, InvalidArgumentError


class AdapterBlock(nn.Module):
    """Pre-norm residual block: cross-attention (queries: visual tokens; keys/values: text) + MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, cross_attention_dim=dim, heads=num_heads, dim_head=dim // num_heads, out_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, mult=mlp_ratio, activation_fn="gelu")

    def forward(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attn(self.norm1(tokens), encoder_hidden_states=text)
        return tokens + self.ff(self.norm2(tokens))


class ContextAdapter(ModelMixin, ConfigMixin):
    """r_φ: (x (B, C, H, W), c (B, L, D), t (B,)) -> shift (B, C, H, W), |shift| < output_bound."""

    config_name = "config.json"

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        cross_attention_dim: int = 768,
        patch_size: int = 2,
        hidden_dim: int = 256,
        num_layers: int = 2,
        num_heads: int = 4,
        mlp_ratio: int = 4,
        num_position_frequencies: int = 8,
        output_bound: float = 1.0,
    ) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("cross_attention_dim", cross_attention_dim), ("patch_size", patch_size),
                            ("hidden_dim", hidden_dim), ("num_layers", num_layers), ("num_heads", num_heads),
                            ("mlp_ratio", mlp_ratio), ("num_position_frequencies", num_position_frequencies)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"adapter config: {name}={value!r} must be a positive integer")
        if hidden_dim % num_heads:
            raise ConfigError(f"adapter config: hidden_dim={hidden_dim} must be divisible by num_heads={num_heads}")
        if not isinstance(output_bound, (int, float)) or not math.isfinite(output_bound) or output_bound <= 0:
            raise ConfigError(f"adapter config: output_bound={output_bound!r} must be a positive finite number")
        self.patch_embed = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(num_position_frequencies, dtype=torch.float32), persistent=False)
        self.position_proj = nn.Linear(4 * num_position_frequencies, hidden_dim)
        self.time_proj = Timesteps(hidden_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(hidden_dim, hidden_dim)
        self.text_proj = nn.Linear(cross_attention_dim, hidden_dim)
        self.blocks = nn.ModuleList(AdapterBlock(hidden_dim, num_heads, mlp_ratio) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, in_channels * patch_size**2)
        nn.init.zeros_(self.proj_out.weight)  # starts as the baseline: r ≡ 0
        nn.init.zeros_(self.proj_out.bias)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        """``.half()``/``.to(dtype)`` leave ``frequencies`` in fp32 (π·2^k: 402.12 would become 402.0 in fp16); it
        still follows the module's device."""
        frequencies = self.frequencies
        super()._apply(fn, recurse)
        self.frequencies = frequencies.to(self.frequencies.device)
        return self

    def _position_sinusoids(self, grid: torch.Tensor) -> torch.Tensor:
        """(h·w, 4F) sinusoids of the patch centres in [0, 1]² for a (hidden, h, w) grid, always computed in fp32
        (arguments up to ~400 rad: fp16 would lose them), whatever the grid's dtype. Built from cumulative sums of ones
        rather than arange(h) / h, so the exported graph has no int->float casts (they trip fp16 conversion) and no
        Range."""
        ones = torch.ones_like(grid[0], dtype=torch.float32)  # (h, w)
        ys = (ones.cumsum(0) - 0.5) / ones.sum(0, keepdim=True)  # (h, w): (i + 0.5) / h
        xs = (ones.cumsum(1) - 0.5) / ones.sum(1, keepdim=True)  # (h, w): (j + 0.5) / w
        fy, fx = ys[..., None] * self.frequencies, xs[..., None] * self.frequencies  # (h, w, F)
        return torch.cat([fy.sin(), fy.cos(), fx.sin(), fx.cos()], dim=-1).flatten(0, 1)

    def _position_features(self, grid: torch.Tensor) -> torch.Tensor:
        """(h·w, hidden) embedding of the patch centres: the same place in the image gets the same features at any
        size. The sinusoids are fp32; the projection runs in the module's dtype."""
        return self.position_proj(self._position_sinusoids(grid).to(self.position_proj.weight.dtype))

    def _check(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor) -> None:
        c, p = self.config.in_channels, self.config.patch_size
        if sample.ndim != 4 or sample.shape[1] != c or sample.shape[2] % p or sample.shape[3] % p:
            raise InvalidArgumentError("sample", f"tensor of shape {tuple(sample.shape)}", f"shape (B, {c}, H, W) with H, W multiples of patch_size={p}")
        d = self.config.cross_attention_dim
        if encoder_hidden_states.ndim != 3 or encoder_hidden_states.shape[0] != sample.shape[0] or encoder_hidden_states.shape[2] != d:
            raise InvalidArgumentError("encoder_hidden_states", f"tensor of shape {tuple(encoder_hidden_states.shape)}", f"shape ({sample.shape[0]}, L, {d})")
        if timestep.ndim != 1 or timestep.shape[0] != sample.shape[0]:
            raise InvalidArgumentError("timestep", f"tensor of shape {tuple(timestep.shape)}", f"shape ({sample.shape[0]},)")

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """sample (B, C, H, W) float, encoder_hidden_states (B, L, D) float, timestep (B,) -> (B, C, H, W)."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check(sample, encoder_hidden_states, timestep)
        tokens = self.embed(sample, timestep)
        text = self.text_proj(encoder_hidden_states)
        for block in self.blocks:
            tokens = block(tokens, text)
        return self.project(tokens, sample.shape)

    def embed(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W), (B,) -> visual tokens (B, h·w, hidden): patches + position + timestep embeddings."""
        grid = self.patch_embed(sample)  # (B, hidden, h, w)
        tokens = grid.flatten(2).transpose(1, 2) + self._position_features(grid[0])[None]  # (B, h·w, hidden)
        t_emb = self.time_embed(self.time_proj(timestep).to(tokens.dtype))  # (B, hidden)
        return tokens + t_emb[:, None, :]

    def project(self, tokens: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Tokens (B, h·w, hidden) -> the bounded shift (B, C, H, W) of a sample of ``shape``."""
        b, _, height, width = shape
        p = self.config.patch_size
        out = self.proj_out(self.norm_out(tokens))  # (B, h·w, C·p²)
        out = F.pixel_shuffle(out.transpose(1, 2).reshape(b, -1, height // p, width // p), p)  # (B, C, H, W)
        return self.config.output_bound * torch.tanh(out)
