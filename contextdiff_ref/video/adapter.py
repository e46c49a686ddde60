"""The video adapter of method doc §7: r_φ(x, c, t) over all frames of a video at once.

The image adapter's visual tokens of the F frames (plus a learned frame-position embedding) form one sequence of
F·h·w tokens; each block first lets the tokens attend to each other across frames (pre-norm self-attention whose
output projection is zero-initialised), then runs the image adapter's block (cross-attention to the text + MLP).
The output is projected back per frame. :meth:`VideoContextAdapter.from_image_adapter` copies a trained image
adapter's weights, so the fresh video adapter equals it frame by frame exactly (the new parts add 0).
Inputs are frames folded into the batch: sample (B·F, C, H, W), encoder_hidden_states (B·F, L, D) (every frame of a
video has the same text; frame 0's is used), timestep (B·F,).
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention_processor import Attention
from torch import nn

from contextdiff_ref.models.adapter import ContextAdapter
from runtime.errors import ConfigError, InvalidArgumentError


class FrameMixing(nn.Module):
    """tokens + self-attention(LayerNorm(tokens)) over all frames' tokens; zero-initialised output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, out_bias=True)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens + self.attn(self.norm(tokens))


class VideoContextAdapter(ContextAdapter):
    """r_φ for videos: (x (B·F, C, H, W), c (B·F, L, D), t (B·F,)) -> shift (B·F, C, H, W)."""

    @register_to_config
    def __init__(self, in_channels: int = 4, cross_attention_dim: int = 768, patch_size: int = 2, hidden_dim: int = 256, num_layers: int = 2,
                 num_heads: int = 4, mlp_ratio: int = 4, num_position_frequencies: int = 8, output_bound: float = 1.0, num_frames: int = 8) -> None:  # fmt: skip
        super().__init__(in_channels, cross_attention_dim, patch_size, hidden_dim, num_layers, num_heads, mlp_ratio, num_position_frequencies, output_bound)
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ConfigError(f"video adapter config: num_frames={num_frames!r} must be a positive integer")
        self.frame_embedding = nn.Parameter(torch.zeros(num_frames, hidden_dim))
        self.mixing = nn.ModuleList(FrameMixing(hidden_dim, num_heads) for _ in range(num_layers))

    @classmethod
    def from_image_adapter(cls, adapter: ContextAdapter, num_frames: int) -> VideoContextAdapter:
        """A video adapter holding ``adapter``'s weights (same dtype); the new parts start at zero output."""
        video = cls(**{k: v for k, v in adapter.config.items() if not k.startswith("_")}, num_frames=num_frames)
        missing, unexpected = video.load_state_dict(adapter.state_dict(), strict=False)
        if unexpected or any(not (k.startswith("mixing.") or k == "frame_embedding") for k in missing):
            raise ConfigError(f"image adapter weights do not fit the video adapter: missing {missing}, unexpected {unexpected}")
        return video if adapter.dtype == video.dtype else video.to(adapter.dtype)

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        f = self.config.num_frames
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self._check(sample, encoder_hidden_states, timestep)
            if sample.shape[0] % f:
                raise InvalidArgumentError("sample", f"a batch of {sample.shape[0]}", f"a multiple of num_frames={f} (B·F, frames folded into the batch)")
        tokens = self.embed(sample, timestep)  # (B·F, n, hidden)
        bf, n, hidden = tokens.shape
        tokens = (tokens.reshape(bf // f, f, n, hidden) + self.frame_embedding[None, :, None, :]).reshape(bf // f, f * n, hidden)
        text = self.text_proj(encoder_hidden_states[::f])  # (B, L, hidden): frame 0's text of each video
        for mixing, block in zip(self.mixing, self.blocks):
            tokens = block(mixing(tokens), text)
        return self.project(tokens.reshape(bf, n, hidden), sample.shape)
