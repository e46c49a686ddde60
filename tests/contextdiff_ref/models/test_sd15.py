"""The SD-1.5-class model: Stable Diffusion 1.5's configurations (checked by their parameter counts) and an adapter
whose cost per step is at most 5% of the UNet's. Built on the meta device: no weights, no time."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from benchmarks.models import adapter_flops, unet_flops
from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import ModelComponents
from contextdiff_ref.models.sd15 import SD15_ADAPTER, SD15_SCHEDULER, SD15_TEXT, SD15_UNET, SD15_VAE, TEXT_LENGTH
from contextdiff_ref.models.tiny import make_clip_tokenizer
from runtime.schedule import SchedulerConfig


def meta_components() -> ModelComponents:
    with torch.device("meta"):
        return ModelComponents(make_clip_tokenizer(max_length=TEXT_LENGTH), CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
                               UNet2DConditionModel(**SD15_UNET), ContextAdapter(**SD15_ADAPTER), SchedulerConfig(**SD15_SCHEDULER),
                               AutoencoderKL(**SD15_VAE))  # fmt: skip


def parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_configurations_are_stable_diffusion_1_5s():
    c = meta_components()
    # Stable Diffusion 1.5's published parameter counts: UNet 859,520,964; CLIP ViT-L/14 text encoder 123,060,480; VAE 83,653,863
    assert (parameters(c.unet), parameters(c.text_encoder), parameters(c.vae)) == (859_520_964, 123_060_480, 83_653_863)
    assert c.tokenizer.model_max_length == 77 and c.text_encoder.config.max_position_embeddings == 77
    assert c.scheduler_config.beta_schedule.value == "scaled_linear" and c.scheduler_config.steps_offset == 1


def test_the_adapter_costs_at_most_5_percent_of_the_unet_per_step():
    c = meta_components()
    for latent in (32, 64):  # 256 and 512 px; a guided step: UNet on [uncond; cond], adapter on [r_t; r_s], both batch 2
        ratio = adapter_flops(c, 2, latent, latent) / unet_flops(c, 2, latent, latent)
        assert 0.01 < ratio <= 0.05, (latent, ratio)
