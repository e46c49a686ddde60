"""FLOP counting for the benchmarks (torch's FLOP counter, on the meta device: no weights, no time). The models
benchmarked: the embedded default, and the SD-1.5-class model with seeded random weights of ``contextdiff_ref.models.sd15``."""

from __future__ import annotations

from typing import Callable

import torch
from diffusers import UNet2DConditionModel

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import ModelComponents


def _count(run: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def unet_flops(components: ModelComponents, batch: int, height: int, width: int) -> int:
    """FLOPs of one UNet call on a (batch, C, height, width) sample."""
    unet = components.unet
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(unet.config)
        sample = torch.zeros(batch, unet.config.in_channels, height, width)
        states = torch.zeros(batch, components.text_encoder.config.max_position_embeddings, unet.config.cross_attention_dim)
        return _count(lambda: meta(sample, torch.zeros(batch, dtype=torch.long), encoder_hidden_states=states))


def adapter_flops(components: ModelComponents, batch: int, height: int, width: int) -> int:
    """FLOPs of one adapter call on a (batch, C, height, width) sample (a step makes one, of batch 2N: r_t and r_s)."""
    config = components.adapter.config
    with torch.device("meta"):
        meta = ContextAdapter.from_config(config)
        sample = torch.zeros(batch, config.in_channels, height, width)
        states = torch.zeros(batch, components.text_encoder.config.max_position_embeddings, config.cross_attention_dim)
        return _count(lambda: meta(sample, states, torch.zeros(batch, dtype=torch.long)))
