"""A Stable Diffusion 1.x directory in diffusers format plus an adapter/ folder is a valid model directory."""

from __future__ import annotations

import json

import numpy as np

from contextdiff_ref.models.tiny import build_tiny_components
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline

SD15_SCHEDULER = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
    "steps_offset": 1, "trained_betas": None, "clip_sample": False,
}  # fmt: skip


def write_sd_style_dir(root):
    """Files laid out as in the SD 1.5 repository: slow-tokenizer files, PNDM scheduler, safety checker folders."""
    c = build_tiny_components(latent=True, seed=4)
    tokenizer_json = json.loads(c.tokenizer.backend_tokenizer.to_str())
    (root / "tokenizer").mkdir(parents=True)
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(tokenizer_json["model"]["vocab"]))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (root / "tokenizer" / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer", "model_max_length": 16}))
    (root / "tokenizer" / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    c.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    for name in ("unet", "vae", "adapter"):
        getattr(c, name).save_pretrained(root / name, safe_serialization=True)
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER))
    (root / "feature_extractor").mkdir()
    (root / "feature_extractor" / "preprocessor_config.json").write_text("{}")
    (root / "safety_checker").mkdir()
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"], "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }))  # fmt: skip
    return c


def test_stable_diffusion_layout_loads_and_generates(tmp_path):
    original = write_sd_style_dir(tmp_path / "sd")
    pipe = ContextDiffPipeline.from_pretrained(tmp_path / "sd")
    assert pipe.components.vae is not None and pipe.limits.vae_scale_factor == 2
    assert pipe.schedule.config.steps_offset == 1 and not pipe.schedule.config.set_alpha_to_one
    prompt = "a red circle at the top left"
    np.testing.assert_array_equal(pipe.components.tokenizer(prompt).input_ids, original.tokenizer(prompt).input_ids)
    images = pipe(prompt, num_inference_steps=3, seed=0, progress=False).images
    assert images.shape == (1, 32, 32, 3) and np.all(np.isfinite(images))
