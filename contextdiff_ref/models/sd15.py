"""A Stable-Diffusion-1.5-class ContextDiff model directory with seeded random weights (nothing is downloaded).

The configurations are Stable Diffusion 1.5's own (the ``config.json`` files of its diffusers repository): the
859.5 M-parameter UNet, the CLIP ViT-L/14 text encoder (123 M, 77 tokens), the VAE (83.7 M) and its DDIM
scheduler settings. The tokenizer is a CLIP byte-level BPE tokenizer built here (``tiny.make_clip_tokenizer``,
77 tokens: every byte is a token, the shapes vocabulary is merged) — SD's own 49,408-token vocabulary cannot be
fetched, and any prompt still encodes. The adapter is sized for 4 × 64 × 64 latents: 4 blocks of width 512 over
2 × 2 patches, 13.6 M parameters, 2.8% of the UNet's FLOPs per call (``tests/contextdiff_ref/test_sd15.py``).

    python -m contextdiff_ref.models.sd15 --out models/sd15-contextdiff      # 4.3 GB of fp32 safetensors, about a minute
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.model_dir import ModelComponents, save_model_dir
from contextdiff_ref.models.tiny import make_clip_tokenizer
from runtime.cli import CLI_ERRORS, PLAIN, Parser, error_exit, setup_logging
from runtime.schedule import SchedulerConfig

logger = logging.getLogger(__name__)

# Stable Diffusion 1.5's unet/config.json, vae/config.json and text_encoder/config.json (the fields that matter).
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True, freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1, mid_block_scale_factor=1,
    act_fn="silu", norm_num_groups=32, norm_eps=1e-5, cross_attention_dim=768, attention_head_dim=8,
)  # fmt: skip
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, act_fn="silu",
    norm_num_groups=32, sample_size=512, scaling_factor=0.18215,
)  # fmt: skip
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)  # fmt: skip
# Stable Diffusion 1.5's scheduler_config.json as the DDIMScheduler reads it (its PNDM-only key dropped).
SD15_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", set_alpha_to_one=False,
    steps_offset=1, clip_sample=False, prediction_type="epsilon", timestep_spacing="leading",
)  # fmt: skip
SD15_ADAPTER = dict(in_channels=4, cross_attention_dim=768, patch_size=2, hidden_dim=512, num_layers=4, num_heads=8, mlp_ratio=4)
TEXT_LENGTH = 77


def sd15_components(seed: int = 0) -> ModelComponents:
    """Random-weight ContextDiff with Stable Diffusion 1.5's configurations (1.08 B parameters with the VAE).

    The adapter's output projection gets small random weights instead of its zero init, so the contextual path is
    exercised (a zero adapter would make every parity check blind to it). The global torch RNG is left untouched."""
    tokenizer = make_clip_tokenizer(max_length=TEXT_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT, bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))  # fmt: skip
        unet = UNet2DConditionModel(**SD15_UNET)
        vae = AutoencoderKL(**SD15_VAE)
        adapter = ContextAdapter(**SD15_ADAPTER)
        torch.nn.init.normal_(adapter.proj_out.weight, std=0.02)
    for module in (text_encoder, unet, adapter, vae):
        module.eval().requires_grad_(False)
    return ModelComponents(tokenizer, text_encoder, unet, adapter, SchedulerConfig(**SD15_SCHEDULER), vae, recommended_guidance_scale=7.5)


def write_sd15_model_dir(path: str | os.PathLike[str], seed: int = 0) -> Path:
    """Write the model directory (atomically, about 4.3 GB of fp32 safetensors)."""
    return save_model_dir(sd15_components(seed), path)


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="python -m contextdiff_ref.models.sd15", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="model directory to write (replaced atomically if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="weight seed (default: %(default)s)")
    args = parser.parse_args(argv)
    setup_logging(PLAIN)
    try:
        path = write_sd15_model_dir(args.out, args.seed)
    except CLI_ERRORS as exc:
        return error_exit(exc)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
