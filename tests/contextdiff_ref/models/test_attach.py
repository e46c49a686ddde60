"""Attaching a fresh adapter to a Stable Diffusion directory: untrained, the result generates what diffusers'
StableDiffusionPipeline with DDIM generates from the same latents."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, PNDMScheduler, StableDiffusionPipeline

from contextdiff_ref.models.attach import adapter_config_for, attach_adapter, main
from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.models.sd15 import SD15_ADAPTER, SD15_UNET
from contextdiff_ref.models.tiny import build_tiny_components
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from runtime.errors import InvalidArgumentError, ModelDirectoryError

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                    set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None)  # fmt: skip


def write_sd_dir(path, prediction_type="epsilon"):
    """A tiny Stable Diffusion directory written by diffusers itself (PNDM scheduler, as SD 1.5 ships)."""
    c = build_tiny_components(latent=True, seed=3)
    with torch.no_grad():
        c.unet.conv_out.weight.mul_(50)  # undo the tiny model's damping: a UNet whose output matters
    pipe = StableDiffusionPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet,
                                   scheduler=PNDMScheduler(**SD_SCHEDULER, prediction_type=prediction_type), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)  # fmt: skip
    pipe.save_pretrained(path, safe_serialization=True)
    return path


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_untrained_attachment_generates_what_stable_diffusion_does(tmp_path, prediction_type):
    base = write_sd_dir(tmp_path / "sd", prediction_type)
    out = attach_adapter(base, tmp_path / "cd")
    components = load_model_dir(out)
    assert all(torch.count_nonzero(p) == 0 for p in components.adapter.proj_out.parameters())  # r ≡ 0
    assert components.adapter.config.in_channels == 4 and components.adapter.config.cross_attention_dim == 32
    ours = ContextDiffPipeline(components)
    latents = np.random.default_rng(0).standard_normal((2, 4, 16, 16)).astype(np.float32)
    prompts = ["a red circle at the top left", "a blue square at the bottom right"]
    mine = ours(prompts, num_inference_steps=10, guidance_scale=7.5, latents=latents, progress=False).images
    sd = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    sd.scheduler = DDIMScheduler.from_config(sd.scheduler.config)
    sd.set_progress_bar_config(disable=True)
    theirs = sd(prompts, num_inference_steps=10, guidance_scale=7.5, latents=torch.from_numpy(latents), output_type="np").images
    assert mine.shape == theirs.shape == (2, 32, 32, 3)
    np.testing.assert_allclose(mine, theirs, atol=1e-3)  # float32 rounding (diffusers keeps its schedule in float32, we in float64)
    # and the result is not trivially the same for any input: another seed's latents differ
    other = ours(prompts, num_inference_steps=10, guidance_scale=7.5, seed=1, progress=False).images
    assert np.abs(other - theirs).max() > 0.05


def test_files_are_linked_and_the_scheduler_rewritten(tmp_path):
    base = write_sd_dir(tmp_path / "sd")
    out = attach_adapter(base, tmp_path / "cd", hidden_dim=64, num_layers=1)
    assert not (out / "safety_checker").exists() and not (out / "feature_extractor").exists()
    unet = next((out / "unet").glob("*.safetensors"))
    assert unet.read_bytes() == next((base / "unet").glob("*.safetensors")).read_bytes()
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert "skip_prk_steps" not in scheduler and scheduler["steps_offset"] == 1 and "shift_schedule" in scheduler
    config = json.loads((out / "adapter" / "config.json").read_text())
    assert (config["hidden_dim"], config["num_layers"], config["num_heads"]) == (64, 1, 1)
    assert not list(tmp_path.glob(".cd.tmp-*"))


def test_sd15_sizing_is_the_sd15_adapter():
    assert adapter_config_for({**SD15_UNET, "out_channels": 4}, 768) == SD15_ADAPTER


def test_bad_input_is_named(tmp_path, capsys):
    base = write_sd_dir(tmp_path / "sd")
    with pytest.raises(ModelDirectoryError, match="not found"):
        attach_adapter(tmp_path / "missing", tmp_path / "x")
    with pytest.raises(InvalidArgumentError, match="num_heads"):
        attach_adapter(base, tmp_path / "x", hidden_dim=64, num_heads=3)
    with pytest.raises(InvalidArgumentError, match="out"):
        attach_adapter(base, base)
    attach_adapter(base, tmp_path / "cd")
    with pytest.raises(ModelDirectoryError, match="already has an adapter"):
        attach_adapter(tmp_path / "cd", tmp_path / "y")
    for weights in (base / "vae").glob("*.safetensors"):  # a latent model without its VAE
        weights.unlink()
    with pytest.raises(ModelDirectoryError, match="vae"):
        attach_adapter(base, tmp_path / "z")
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
    assert main(["--base", str(tmp_path / "missing"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err  # says what the base must be: a local diffusers folder, never a hub name to download
    assert "not found" in err and "already on this disk in diffusers format" in err and "nothing is downloaded" in err
