"""Models to benchmark, built from configs with seeded random weights (nothing is downloaded).

- the embedded default (tiny) model;
- an SD-1.5-shaped ContextDiff: the 860M-parameter UNet of Stable Diffusion 1.5, a CLIP ViT-L/14-shaped text
  encoder (12 layers, 768 wide, 77 tokens), the SD VAE, and an adapter sized for 4 x 64 x 64 latents.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from contextdiff_ref.adapter import ContextAdapter
from contextdiff_ref.model_dir import ModelComponents, save_model_dir
from contextdiff_ref.tiny import make_clip_tokenizer
from runtime.schedule import SchedulerConfig

SD15_UNET = dict(sample_size=64, cross_attention_dim=768, block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8)
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), latent_channels=4, layers_per_block=2, sample_size=512,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 max_position_embeddings=77, hidden_act="quick_gelu")  # fmt: skip


def sd15_shaped_components(seed: int = 0) -> ModelComponents:
    """Random-weight ContextDiff with Stable Diffusion 1.5's shapes (about 1.07B parameters with the VAE)."""
    tokenizer = make_clip_tokenizer(max_length=77)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                                    pad_token_id=tokenizer.pad_token_id))  # fmt: skip
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        adapter = ContextAdapter(in_channels=4, cross_attention_dim=768, patch_size=2, hidden_dim=256, num_layers=2, num_heads=4)
        torch.nn.init.normal_(adapter.proj_out.weight, std=0.02)  # exercise the contextual path
    scheduler = SchedulerConfig(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    for module in (text_encoder, unet, adapter, vae):
        module.eval().requires_grad_(False)
    return ModelComponents(tokenizer, text_encoder, unet, adapter, scheduler, vae, recommended_guidance_scale=7.5)


def write_sd15_shaped_model_dir(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """About 4.3 GB of fp32 safetensors."""
    return save_model_dir(sd15_shaped_components(seed), path)


def unet_flops(components: ModelComponents, batch: int, height: int, width: int) -> int:
    """FLOPs of one UNet call on a (batch, C, height, width) sample (torch's FLOP counter, on the meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    unet = components.unet
    with torch.device("meta"):
        meta = UNet2DConditionModel.from_config(unet.config)
        sample = torch.zeros(batch, unet.config.in_channels, height, width)
        states = torch.zeros(batch, components.text_encoder.config.max_position_embeddings, unet.config.cross_attention_dim)
        counter = FlopCounterMode(display=False)
        with counter:
            meta(sample, torch.zeros(batch, dtype=torch.long), encoder_hidden_states=states)
    return int(counter.get_total_flops())
