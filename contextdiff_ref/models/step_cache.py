"""Step caching for the reference UNet (DeepCache, Ma et al. 2023, arXiv 2312.00858; issue 34), over the diffusers
``UNet2DConditionModel``'s own blocks and layers: no UNet code is copied, only the order in which its blocks' layers
(ResNet, transformer, down- and upsampler modules) are called.

The UNet is split at a *skip branch*, as DeepCache does. Number the skip connections from the outermost: branch 0
is ``conv_in``'s output, which the UNet's last layer (last up-block, last ResNet) takes; branch k is the output of
the k-th down layer (a ResNet with its transformer, or a downsampler), which the (k+1)-th layer from the end takes.
With ``branch`` b the *shallow* part is the time embedding, ``conv_in``, the first b down layers, the last b + 1 up
layers and the output layers; the *deep* part is everything between. Then:

1. a **full** step runs the UNet as it always does and also returns the feature entering the up layer that takes
   branch b (before it is joined with the skip; taken by hooks, so the prediction is bitwise today's);
2. a **shallow** step recomputes the shallow part's down side (its skips feed the last b + 1 up layers) and runs
   those up layers on the cached feature instead of the deep part.

DeepCache's setting for Stable Diffusion 1.5 is branch 1 (``cache_layer_id=0, cache_block_id=0``: ``conv_in`` and
the first down layer; the last two up layers), the default here. On the shipped shapes models (one layer per block)
branch 1 is also the whole outermost down- and up-block.

With the feature of the same step a shallow step gives the full step's prediction (tested); with the feature of an
earlier step it approximates it — DeepCache's bet that the deep features change slowly between adjacent steps.
Which steps are full: :func:`runtime.step_cache.full_step_plan`.

A video model's :class:`~contextdiff_ref.video.unet.VideoUNet` (method doc §7) is split through the 2-D UNet it
inflated in place: its sparse-causal attention processors and temporal layers (forward hooks on the transformer
blocks) live inside those layers, so the same calls compute the inflated model's full and shallow steps on frames
folded into the batch (B·F, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel

from contextdiff_ref.models.coordinates import coordinate_planes
from runtime.errors import ConfigError, InvalidArgumentError
from runtime.step_cache import DEFAULT_BRANCH


def split_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The diffusers UNet whose blocks step caching calls: ``unet`` itself, or the 2-D UNet a video model's
    ``VideoUNet`` (:mod:`contextdiff_ref.video.unet`) inflated in place and holds as ``.unet`` (its blocks compute the
    inflated model's steps). Read by that attribute, so the model layer does not import the video layer above it."""
    inner = getattr(unet, "unet", None)
    return inner if not isinstance(unet, UNet2DConditionModel) and isinstance(inner, UNet2DConditionModel) else unet


@dataclass(frozen=True)
class _Layer:
    """One down or up layer: a ResNet with the transformer after it (if its block has attentions), or a sampler."""

    block: torch.nn.Module
    index: int  # position in block.resnets; -1: the block's down- or upsampler


def _down_layers(unet: UNet2DConditionModel) -> list[_Layer]:
    """The layers whose outputs are the UNet's skip branches 1, 2, ... (branch 0 is conv_in's output)."""
    layers = []
    for block in unet.down_blocks:
        layers += [_Layer(block, i) for i in range(len(block.resnets))]
        if getattr(block, "downsamplers", None):
            layers.append(_Layer(block, -1))
    return layers


def _up_layers(unet: UNet2DConditionModel) -> list[_Layer]:
    """The up-blocks' ResNet layers in call order; the last one takes branch 0."""
    return [_Layer(block, i) for block in unet.up_blocks for i in range(len(block.resnets))]


def full_size_branches(unet: torch.nn.Module) -> int:
    """How many skip branches the UNet's last up-block takes (a video model's: its inflated 2-D UNet's): branches 0 to
    n - 1 give a feature of the sampled tensor's own size, what the exported graphs' specs say; 0 for a UNet with
    fewer than two up-blocks."""
    ups = list(getattr(split_unet(unet), "up_blocks", []))
    return len(ups[-1].resnets) if len(ups) > 1 else 0


class CachedUNet:
    """``full(...)`` -> (prediction, feature) and ``shallow(..., feature)`` -> prediction for one diffusers UNet, or a
    video model's inflated one (``VideoUNet``: frames folded into the batch, B = N·F), split at skip ``branch``.

    Samples (B, C, H, W), timesteps an int or (B,), text states (B, L, D); with ``coordinates`` the two coordinate
    planes are appended to the UNet's input first (:mod:`contextdiff_ref.models.coordinates`)."""

    def __init__(self, unet: torch.nn.Module, *, coordinates: bool = False, branch: int = DEFAULT_BRANCH) -> None:
        unet = split_unet(unet)
        if not isinstance(unet, UNet2DConditionModel):
            raise ConfigError(f"step caching splits a diffusers UNet2DConditionModel; got {type(unet).__name__}")
        config = unet.config
        unsupported = [name for name, on in (("center_input_sample", config.center_input_sample),
                                             ("class_embed_type", unet.class_embedding is not None),
                                             ("addition_embed_type", config.addition_embed_type is not None),
                                             ("encoder_hid_dim_type", unet.encoder_hid_proj is not None),
                                             ("attention_type gligen", getattr(unet, "position_net", None) is not None),
                                             ("FreeU", any(getattr(b, "b1", None) is not None for b in unet.up_blocks))) if on]  # fmt: skip
        if unsupported:
            raise ConfigError(f"step caching supports the text-conditioned UNet of Stable Diffusion 1.x/2.x; this one sets {', '.join(unsupported)}")
        ups = _up_layers(unet)
        if isinstance(branch, bool) or not isinstance(branch, int) or not 0 <= branch < len(ups) - 1:
            raise InvalidArgumentError("branch", branch, f"an integer in [0, {len(ups) - 2}] (the UNet has {len(ups)} skip branches; the last is not a split)")
        self.unet, self.coordinates, self.branch = unet, coordinates, branch
        self._down = _down_layers(unet)[:branch]
        self._up = ups[len(ups) - 1 - branch :]

    @property
    def feature_channels(self) -> int:
        """Channels of the feature: the previous up-block's output for a block's first layer, else its previous
        ResNet's (a transformer keeps its channels)."""
        first, blocks = self._up[0], list(self.unet.up_blocks)
        if first.index > 0:
            return int(first.block.resnets[first.index - 1].out_channels)
        block = blocks[blocks.index(first.block) - 1]
        return int(block.upsamplers[0].channels if getattr(block, "upsamplers", None) else block.resnets[-1].out_channels)

    @property
    def full_size_feature(self) -> bool:
        """Whether the feature has the sampled tensor's own size: the branch is taken by the last up-block (whose
        input the up-block before it has upsampled to that size)."""
        return self.branch < full_size_branches(self.unet)

    def _input(self, sample: torch.Tensor) -> torch.Tensor:
        return torch.cat([sample, coordinate_planes(sample)], dim=1) if self.coordinates else sample

    def full(self, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: the UNet's prediction (B, C, H, W), bitwise its usual one, and the deep feature (B, C', H', W'): what
        enters the up layer taking the branch — the up-block's input for its first layer, else the previous layer's
        output."""
        captured: list[torch.Tensor] = []
        first = self._up[0]
        if first.index == 0:
            hook = first.block.register_forward_pre_hook(lambda _m, args, kwargs: captured.append(kwargs["hidden_states"]), with_kwargs=True)
        else:
            attentions = getattr(first.block, "attentions", None)
            before = attentions[first.index - 1] if attentions else first.block.resnets[first.index - 1]
            hook = before.register_forward_hook(lambda _m, _args, output: captured.append(output[0] if isinstance(output, tuple) else output))
        try:
            prediction = self.unet(self._input(sample), timestep, encoder_hidden_states=text, return_dict=False)[0]
        finally:
            hook.remove()
        return prediction, captured[0]

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Step 2: the prediction (B, C, H, W) from the shallow part on ``feature`` (a full step's, same batch)."""
        unet, x = self.unet, self._input(sample)
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        h = unet.conv_in(x)
        skips = [h]
        for layer in self._down:
            h = _run_layer(layer, h, emb, text) if layer.index >= 0 else layer.block.downsamplers[0](h)
            skips.append(h)
        forward_size = _forwards_upsample_size(unet, x)
        h = feature
        for layer in self._up:
            h = _run_layer(layer, torch.cat([h, skips.pop()], dim=1), emb, text)
            upsamplers = getattr(layer.block, "upsamplers", None)
            if upsamplers and layer.index == len(layer.block.resnets) - 1:
                h = upsamplers[0](h, skips[-1].shape[2:] if forward_size else None)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)


def _run_layer(layer: _Layer, h: torch.Tensor, emb: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """A ResNet layer as its block calls it: the ResNet on (h, time embedding), then its transformer, if any."""
    h = layer.block.resnets[layer.index](h, emb)
    attentions = getattr(layer.block, "attentions", None)
    return attentions[layer.index](h, encoder_hidden_states=text, return_dict=False)[0] if attentions else h


def _forwards_upsample_size(unet: UNet2DConditionModel, x: torch.Tensor) -> bool:
    """Whether diffusers passes the upsamplers an output size: only for inputs that are not a multiple of the UNet's
    overall up factor (the size is then that of the skip branch the next up layer takes)."""
    return any(dim % 2**unet.num_upsamplers for dim in x.shape[-2:])
