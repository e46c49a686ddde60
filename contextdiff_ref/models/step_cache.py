"""Step caching for the reference UNet (DeepCache, Ma et al. 2023, arXiv 2312.00858; issue 34), over the diffusers
``UNet2DConditionModel``'s own blocks: no UNet code is copied, only the order in which its blocks are called.

The UNet is split at a skip branch: with ``branch`` b, the *shallow* part is ``conv_in``, the first b down-blocks,
the last b up-blocks and the output layers; the *deep* part is everything between. Then:

1. a **full** step runs the UNet as it always does and also returns the feature entering up-block ``-b`` (the deep
   part's output, taken by a forward pre-hook, so the prediction is bitwise today's);
2. a **shallow** step recomputes the time embedding, ``conv_in`` and the first b down-blocks (their skip outputs feed
   the last b up-blocks), and runs the last b up-blocks on the cached feature instead of the deep part.

With the feature of the same step a shallow step gives the full step's prediction (tested); with the feature of an
earlier step it approximates it — DeepCache's bet that the deep features change slowly between adjacent steps.
Which steps are full: :func:`runtime.step_cache.full_step_plan`.

A video model's :class:`~contextdiff_ref.video.unet.VideoUNet` (method doc §7) is split through the 2-D UNet it
inflated in place: its sparse-causal attention processors and temporal layers (forward hooks on the transformer
blocks) live inside those blocks, so the same block calls compute the inflated model's full and shallow steps on
frames folded into the batch (B·F, C, H, W).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UNet2DConditionModel

from contextdiff_ref.models.coordinates import coordinate_planes
from runtime.errors import ConfigError, InvalidArgumentError


def split_unet(unet: torch.nn.Module) -> torch.nn.Module:
    """The diffusers UNet whose blocks step caching calls: ``unet`` itself, or the 2-D UNet a video model's
    ``VideoUNet`` (:mod:`contextdiff_ref.video.unet`) inflated in place and holds as ``.unet`` (its blocks compute the
    inflated model's steps). Read by that attribute, so the model layer does not import the video layer above it."""
    inner = getattr(unet, "unet", None)
    return inner if not isinstance(unet, UNet2DConditionModel) and isinstance(inner, UNet2DConditionModel) else unet


class CachedUNet:
    """``full(...)`` -> (prediction, feature) and ``shallow(..., feature)`` -> prediction for one diffusers UNet, or a
    video model's inflated one (``VideoUNet``: frames folded into the batch, B = N·F).

    Samples (B, C, H, W), timesteps an int or (B,), text states (B, L, D); with ``coordinates`` the two coordinate
    planes are appended to the UNet's input first (:mod:`contextdiff_ref.models.coordinates`)."""

    def __init__(self, unet: torch.nn.Module, *, coordinates: bool = False, branch: int = 1) -> None:
        unet = split_unet(unet)
        if not isinstance(unet, UNet2DConditionModel):
            raise ConfigError(f"step caching splits a diffusers UNet2DConditionModel; got {type(unet).__name__}")
        config = unet.config
        unsupported = [name for name, on in (("center_input_sample", config.center_input_sample),
                                             ("class_embed_type", unet.class_embedding is not None),
                                             ("addition_embed_type", config.addition_embed_type is not None),
                                             ("encoder_hid_dim_type", unet.encoder_hid_proj is not None),
                                             ("attention_type gligen", getattr(unet, "position_net", None) is not None)) if on]  # fmt: skip
        if unsupported:
            raise ConfigError(f"step caching supports the text-conditioned UNet of Stable Diffusion 1.x/2.x; this one sets {', '.join(unsupported)}")
        blocks = len(unet.down_blocks)
        if isinstance(branch, bool) or not isinstance(branch, int) or not 1 <= branch < blocks:
            raise InvalidArgumentError("branch", branch, f"an integer in [1, {blocks - 1}] (the UNet has {blocks} down-blocks)")
        self.unet, self.coordinates, self.branch = unet, coordinates, branch
        self._outer_up = list(unet.up_blocks)[-branch:]
        self._skips = sum(len(block.resnets) for block in self._outer_up)  # skip outputs the outer up-blocks take

    def _input(self, sample: torch.Tensor) -> torch.Tensor:
        return torch.cat([sample, coordinate_planes(sample)], dim=1) if self.coordinates else sample

    def full(self, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 1: the UNet's prediction (B, C, H, W), bitwise its usual one, and the deep feature (B, C', H', W')."""
        captured: list[torch.Tensor] = []
        hook = self._outer_up[0].register_forward_pre_hook(lambda _m, args, kwargs: captured.append(kwargs["hidden_states"]), with_kwargs=True)
        try:
            prediction = self.unet(self._input(sample), timestep, encoder_hidden_states=text, return_dict=False)[0]
        finally:
            hook.remove()
        return prediction, captured[0]

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor | int, text: torch.Tensor, feature: torch.Tensor) -> torch.Tensor:
        """Step 2: the prediction (B, C, H, W) from the outer blocks on ``feature`` (a full step's, same batch)."""
        unet, x = self.unet, self._input(sample)
        emb = unet.time_embedding(unet.get_time_embed(sample=x, timestep=timestep), None)
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        h = unet.conv_in(x)
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in list(unet.down_blocks)[: self.branch]:
            h, res = block(hidden_states=h, temb=emb, **_text_kwargs(block, text))
            skips += res
        skips = skips[: self._skips]  # a down-block's last output (its downsampler's) feeds the deep part only
        h = feature
        sizes = _upsample_sizes(unet, x, skips, self._outer_up)
        for block, size in zip(self._outer_up, sizes):
            res, skips = skips[-len(block.resnets):], skips[: -len(block.resnets)]
            h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=size, **_text_kwargs(block, text))
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)


def _text_kwargs(block: torch.nn.Module, text: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"encoder_hidden_states": text} if getattr(block, "has_cross_attention", False) else {}


def _upsample_sizes(unet: UNet2DConditionModel, x: torch.Tensor, skips: Sequence[torch.Tensor], blocks: list[torch.nn.Module]) -> list[tuple[int, ...] | None]:
    """The ``upsample_size`` the UNet's forward passes each of ``blocks``: only for inputs that are not a multiple
    of its overall up factor, as diffusers does."""
    factor = 2**unet.num_upsamplers
    if all(dim % factor == 0 for dim in x.shape[-2:]):
        return [None] * len(blocks)
    sizes, remaining = [], list(skips)
    for i, block in enumerate(blocks):
        remaining = remaining[: -len(block.resnets)]
        sizes.append(remaining[-1].shape[2:] if i < len(blocks) - 1 else None)
    return sizes
