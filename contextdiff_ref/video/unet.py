"""The inflated UNet of method doc §7: a trained 2-D ``UNet2DConditionModel`` run on videos with frames folded into
the batch, (B·F, C, h, w), through diffusers' attention-processor API and small modules of ours (no UNet fork).

- Every transformer block's self-attention (``attn1``) gets :class:`SparseCausalAttnProcessor`: frame i's queries
  attend to the keys/values of frame 0 and frame max(i − 1, 0) (the block's own projections, unchanged weights).
- After every transformer block, a :class:`TemporalAttention` layer (held in :class:`TemporalLayers`, saved on its
  own) lets each spatial position attend over the F frames, with a frame-position embedding; its output projection
  is zero-initialised, so at inflation it adds exactly 0.

What "starts as the image model applied frame by frame" means exactly: frame 0 attends to itself (twice), so frame 0
of any video equals the 2-D model's output; frame i > 0 attends to frames 0 and i − 1 instead of itself, so it
equals the 2-D model's output when those frames equal frame i — e.g. on a still video. For a moving video the two
differ by design of the method (§7), before any tuning (tests/contextdiff_ref/test_video_unet.py).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from torch import nn

from runtime.errors import ConfigError, InvalidArgumentError


def _check_frames(batch: int, num_frames: int, name: str = "sample") -> int:
    if batch % num_frames:
        raise InvalidArgumentError(name, f"a batch of {batch}", f"a multiple of num_frames={num_frames} (B·F, frames folded into the batch)")
    return batch // num_frames


def sparse_causal_context(x: torch.Tensor, num_frames: int) -> torch.Tensor:
    """(B·F, N, C) -> (B·F, 2N, C): for frame i, the tokens of frame 0 followed by those of frame max(i − 1, 0)."""
    bf, n, c = x.shape
    frames = x.reshape(bf // num_frames, num_frames, n, c)
    first = frames[:, :1].expand_as(frames)
    previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    return torch.cat([first, previous], dim=2).reshape(bf, 2 * n, c)


class SparseCausalAttnProcessor:
    """Self-attention processor: queries of frame i, keys/values of frames 0 and max(i − 1, 0) (method doc §7).
    For the plain self-attention of diffusers' transformer blocks (no norms inside, no residual, no mask).

    The key and value projections are per token, so they are computed once per frame and then gathered (the same
    result as projecting the gathered tokens, half the work). ``attend`` is the attention itself, the one step an
    export may replace (``export.attention``)."""

    def __init__(self, num_frames: int) -> None:
        self.num_frames = num_frames

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:  # fmt: skip
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise InvalidArgumentError("hidden_states", "cross-attention, a mask or 4-D input", "self-attention over (B·F, N, C) tokens")
        _check_frames(hidden_states.shape[0], self.num_frames, "hidden_states")
        key = sparse_causal_context(attn.to_k(hidden_states), self.num_frames)
        value = sparse_causal_context(attn.to_v(hidden_states), self.num_frames)
        out = self.attend(attn, attn.to_q(hidden_states), key, value).to(hidden_states.dtype)
        return attn.to_out[1](attn.to_out[0](out)) / attn.rescale_output_factor

    def attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """(B·F, N, H·d), (B·F, 2N, H·d) × 2 -> (B·F, N, H·d): softmax(q kᵀ · attn.scale) v per head."""
        b, heads = query.shape[0], attn.heads
        split = lambda x: x.view(b, x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731  (B·F, heads, tokens, head_dim)
        out = F.scaled_dot_product_attention(split(query), split(key), split(value), scale=attn.scale)
        return out.transpose(1, 2).reshape(b, -1, out.shape[1] * out.shape[3])


def _check_plain_self_attention(name: str, attn: Attention) -> None:
    odd = [what for what, present in (("spatial_norm", attn.spatial_norm is not None), ("group_norm", attn.group_norm is not None),
                                      ("norm_q/norm_k", attn.norm_q is not None or attn.norm_k is not None),
                                      ("residual_connection", attn.residual_connection), ("cross-attention", attn.is_cross_attention)) if present]  # fmt: skip
    if odd:
        raise ConfigError(f"cannot inflate {name}: sparse-causal attention supports plain self-attention, this one has {', '.join(odd)}")


def frame_position_embedding(num_frames: int, dim: int) -> torch.Tensor:
    """(F, dim) sinusoidal embedding of the frame index (the initial value of the learned one)."""
    half = dim // 2
    frequencies = torch.exp(-math.log(10_000.0) * torch.arange(half, dtype=torch.float32) / max(half, 1))
    angles = torch.arange(num_frames, dtype=torch.float32)[:, None] * frequencies[None]
    embedding = torch.cat([angles.sin(), angles.cos()], dim=1)
    return F.pad(embedding, (0, dim - embedding.shape[1]))


class TemporalAttention(nn.Module):
    """x + attention over frames of (LayerNorm(x) + frame-position embedding), per spatial position; output
    projection zero-initialised. Input and output (B·F, N, C)."""

    def __init__(self, dim: int, num_heads: int, num_frames: int) -> None:
        super().__init__()
        self.num_frames = num_frames
        self.norm = nn.LayerNorm(dim)
        self.frame_embedding = nn.Parameter(frame_position_embedding(num_frames, dim))
        self.attn = Attention(query_dim=dim, heads=num_heads, dim_head=dim // num_heads, out_bias=True)
        nn.init.zeros_(self.attn.to_out[0].weight)
        nn.init.zeros_(self.attn.to_out[0].bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        bf, n, c = hidden_states.shape
        b, f = _check_frames(bf, self.num_frames, "hidden_states"), self.num_frames
        x = hidden_states.reshape(b, f, n, c).transpose(1, 2).reshape(b * n, f, c)  # (B·N, F, C)
        x = x + self.attn(self.norm(x) + self.frame_embedding)
        return x.reshape(b, n, f, c).transpose(1, 2).reshape(bf, n, c)

    def after_block(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook for the spatial transformer block this layer follows."""
        return self(output)


class TemporalLayers(ModelMixin, ConfigMixin):
    """The temporal attention layers of an inflated UNet, one per transformer block in module order; saved and
    loaded like a diffusers model (``temporal/``: config.json + diffusion_pytorch_model.safetensors)."""

    config_name = "config.json"

    @register_to_config
    def __init__(self, num_frames: int = 8, channels: Sequence[int] = (), num_heads: Sequence[int] = ()) -> None:
        super().__init__()
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
            raise ConfigError(f"temporal config: num_frames={num_frames!r} must be a positive integer")
        if len(channels) != len(num_heads) or any(c % h for c, h in zip(channels, num_heads)):
            raise ConfigError(f"temporal config: channels={list(channels)} and num_heads={list(num_heads)} must pair up (channels divisible by heads)")
        self.layers = nn.ModuleList(TemporalAttention(c, h, num_frames) for c, h in zip(channels, num_heads))

    @classmethod
    def for_unet(cls, unet: UNet2DConditionModel, num_frames: int) -> TemporalLayers:
        """Fresh layers sized for ``unet``'s transformer blocks (the global RNG is used for the attention's
        query/key/value projections; the output projections are zero)."""
        blocks = transformer_blocks(unet)
        return cls(num_frames=num_frames, channels=[b.attn1.query_dim for b in blocks], num_heads=[b.attn1.heads for b in blocks])


def transformer_blocks(unet: UNet2DConditionModel) -> list[BasicTransformerBlock]:
    return [m for m in unet.modules() if isinstance(m, BasicTransformerBlock)]


class VideoUNet(nn.Module):
    """A 2-D UNet inflated in place (processors and hooks installed on it) with its temporal layers; called like the
    UNet on frames folded into the batch: (B·F, C, h, w), timestep, encoder_hidden_states (B·F, L, D)."""

    def __init__(self, unet: UNet2DConditionModel, temporal: TemporalLayers) -> None:
        super().__init__()
        blocks = transformer_blocks(unet)
        expected = [(b.attn1.query_dim, b.attn1.heads) for b in blocks]
        got = list(zip(temporal.config.channels, temporal.config.num_heads))
        if expected != got:
            raise ConfigError(f"temporal layers (channels, heads) {got} do not match the UNet's transformer blocks {expected}")
        self.unet, self.temporal = unet, temporal
        self.num_frames = temporal.config.num_frames
        processors = {}
        for name, processor in unet.attn_processors.items():
            if name.endswith("attn1.processor"):
                _check_plain_self_attention(name, unet.get_submodule(name.rsplit(".", 1)[0]))
                processor = SparseCausalAttnProcessor(self.num_frames)
            processors[name] = processor
        unet.set_attn_processor(processors)
        for block, layer in zip(blocks, temporal.layers):
            block.register_forward_hook(layer.after_block)

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | int, encoder_hidden_states: torch.Tensor, return_dict: bool = False) -> Any:
        _check_frames(sample.shape[0], self.num_frames)
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=return_dict)

    def tuned_parameters(self) -> list[nn.Parameter]:
        """What one-shot tuning trains in the UNet (§7): the temporal layers and the attention query projections."""
        queries = [p for b in transformer_blocks(self.unet) for attn in (b.attn1, b.attn2) if attn is not None for p in attn.to_q.parameters()]
        return list(self.temporal.parameters()) + queries
