"""The architecture of the embedded default model (pixel space, 3 x 32 x 32, trained on the shapes dataset).

Sized for training on a few CPU cores: a 3-level UNet (16/32/64 channels) with cross-attention at 16 x 16 and
8 x 8 and in the mid block, fed x/y coordinate planes besides the sample (contextdiff_ref/models/coordinates.py) so that
"top left" can be bound to a place, a 3-layer CLIP text transformer (width 64) trained jointly from scratch, and an
adapter over 4 x 4 patches. The schedule is cosine betas with v prediction and x̂_0 clipping, sampled with trailing
timesteps (the first step starts at t = T − 1).
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from contextdiff_ref.data.shapes import SIZE, vocabulary
from contextdiff_ref.models.adapter import ContextAdapter
from contextdiff_ref.models.coordinates import COORDINATE_CHANNELS
from contextdiff_ref.models.model_dir import ModelComponents
from contextdiff_ref.models.tiny import make_clip_tokenizer
from runtime.schedule import SchedulerConfig

TEXT_LENGTH = 20  # BOS + 15 words of a two-object caption + EOS, with room to spare
TEXT_DIM = 64


def shapes_scheduler_config() -> SchedulerConfig:
    return SchedulerConfig(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", clip_sample=True,
                           set_alpha_to_one=True, timestep_spacing="trailing")  # fmt: skip


def build_shapes_components(seed: int = 0) -> ModelComponents:
    """Freshly initialised (seeded) shapes model, in train mode with gradients on; the global RNG is untouched."""
    tokenizer = make_clip_tokenizer(vocabulary(), max_length=TEXT_LENGTH)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM, num_hidden_layers=3,
            num_attention_heads=4, max_position_embeddings=TEXT_LENGTH, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))  # fmt: skip
        unet = UNet2DConditionModel(
            sample_size=SIZE, in_channels=3 + COORDINATE_CHANNELS, out_channels=3, layers_per_block=1, block_out_channels=(16, 32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=8,
        )  # fmt: skip
        adapter = ContextAdapter(in_channels=3, cross_attention_dim=TEXT_DIM, patch_size=4, hidden_dim=64, num_layers=2,
                                 num_heads=4, mlp_ratio=2)  # fmt: skip
    return ModelComponents(tokenizer, text_encoder, unet, adapter, shapes_scheduler_config(), None,
                           recommended_guidance_scale=None, unet_coordinate_channels=True)
