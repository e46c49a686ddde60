"""Image edits in the reference pipeline (runtime.image_editing, shared with runtime.Generator): image-to-image is
diffusers' StableDiffusionImg2ImgPipeline with DDIM at r ≡ 0, the contextual forward process is method doc §3, a mask
keeps the image outside it, and bad input fails naming the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from runtime.errors import InvalidArgumentError
from runtime.metrics import relative_l2
from runtime.noise import draw_noise
from tests.contextdiff_ref.pipelines.test_pipeline import zero_adapter_pipe

PROMPT = "a blue square at the bottom right"


def _image(size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3), dtype=np.float32)


@pytest.mark.slow
def test_img2img_without_adapter_is_diffusers_img2img(latent_model_dir, monkeypatch):
    """r ≡ 0: the edit's final latents equal diffusers' StableDiffusionImg2ImgPipeline with DDIM, given the same x_0
    (as latents), text states and noise ε (the seed's initial-noise draw)."""
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as img2img

    pipe = zero_adapter_pipe(latent_model_dir)
    image, kwargs = _image(), dict(strength=0.6, num_inference_steps=20, guidance_scale=5.0)
    ours = pipe.edit(image, PROMPT, seed=3, output_type="latent", clip_sample=None, progress=False, **kwargs).images  # diffusers: the config's
    x_0 = pipe.encode_images(image[None])
    noise, _ = draw_noise(3, x_0.shape, 0, 0.0)
    monkeypatch.setattr(img2img, "randn_tensor", lambda *a, **k: torch.from_numpy(noise))
    c = pipe.components
    sd = StableDiffusionImg2ImgPipeline(vae=c.vae, text_encoder=c.text_encoder, tokenizer=c.tokenizer, unet=c.unet, safety_checker=None,
                                        scheduler=DDIMScheduler.from_config(c.scheduler_config.to_dict()), feature_extractor=None,
                                        requires_safety_checker=False)  # fmt: skip
    sd.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs = sd(prompt_embeds=pipe.encode_prompt([PROMPT]), negative_prompt_embeds=pipe.encode_prompt([""]), image=torch.from_numpy(x_0),
                    output_type="latent", **kwargs).images.numpy()  # fmt: skip
    assert relative_l2(ours, theirs) <= 1e-4  # diffusers' float32 tables; measured 5.5e-7


def test_contextual_forward_is_the_method_doc_formula(pixel_pipe):
    """x_t = √ᾱ_t x_0 + k_t r_φ(x_0, c, t) + √(1 − ᾱ_t) ε (method doc §3), the adapter non-zero."""
    x_0 = pixel_pipe.encode_images(_image()[None])
    noise, _ = draw_noise(1, x_0.shape, 0, 0.0)
    got = pixel_pipe.contextual_forward(x_0, PROMPT, [801, 401, 1], noise)
    text = pixel_pipe.encode_prompt([PROMPT])
    for t, x_t in zip([801, 401, 1], got):
        r = pixel_pipe.components.adapter(torch.from_numpy(x_0), text, torch.tensor([t])).numpy()
        ab, k = pixel_pipe.schedule.alphas_cumprod[t], pixel_pipe.schedule.shifts[t]
        assert t < 100 or k * np.abs(r).max() > 1e-3  # the shift is there
        np.testing.assert_allclose(x_t, np.sqrt(ab) * x_0 + k * r + np.sqrt(1 - ab) * noise, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["img2img", "invert"])
def test_a_mask_keeps_the_image_outside_it(pixel_pipe, mode):
    image, mask = _image(), np.zeros((32, 32), np.float32)
    mask[4:20, 8:24] = 1.0
    source = {"source_prompt": "a red circle"} if mode == "invert" else {}
    kwargs = dict(mode=mode, num_inference_steps=3, guidance_scale=3.0, seed=2, progress=False, **source)
    free = pixel_pipe.edit(image, PROMPT, **kwargs).images[0]
    for region_noise in (0.0, 1.0):
        masked = pixel_pipe.edit(image, PROMPT, mask=mask, region_noise=region_noise, **kwargs).images[0]
        np.testing.assert_array_equal(masked[mask == 0], image[mask == 0])  # bitwise: composited in pixels
        assert np.abs(masked - image)[mask == 1].mean() > 1e-3  # edited inside
    assert np.abs(free - image)[mask == 0].mean() > 1e-3  # without the mask the edit reaches there
    pil = pixel_pipe.edit(Image.fromarray((image * 255).round().astype(np.uint8)), PROMPT, mask=Image.fromarray((mask * 255).astype(np.uint8)),
                          output_type="pil", **kwargs).images[0]  # fmt: skip
    assert pil.size == (32, 32) and pil.mode == "RGB"


def test_bad_input_names_the_argument(pixel_pipe):
    image = _image()
    edit = lambda *a, **k: pixel_pipe.edit(*a, num_inference_steps=4, progress=False, **k)  # noqa: E731
    cases = [
        ((Image.new("RGBA", (32, 32)), PROMPT), {}, "image", "a RGBA image"),
        ((image[:, :, 0], PROMPT), {}, "image", r"array of shape \(32, 32\)"),
        ((np.zeros((31, 32, 3), np.float32), PROMPT), {}, "image", "an image of 32x31.*multiple of"),
        ((image, PROMPT), {"mask": np.zeros((16, 16))}, "mask", "single-channel 32x32"),
        ((image, PROMPT), {"mask": Image.new("RGB", (32, 32))}, "mask", "not single-channel"),
        ((image, PROMPT), {"mask": np.zeros((32, 32, 3))}, "mask", r"shape \(32, 32, 3\)"),
        ((image, PROMPT), {"strength": 0.0}, "strength", ""),
        ((image, PROMPT), {"strength": 1.5}, "strength", ""),
        ((image, PROMPT), {"mode": "invert"}, "source_prompt", ""),
        ((image, PROMPT), {"mode": "inpaint"}, "mode", "'img2img', 'invert'"),
        ((image, PROMPT), {"region_noise": 0.5}, "region_noise", "mask"),
    ]
    for args, kwargs, name, match in cases:
        with pytest.raises(InvalidArgumentError, match=match) as info:
            edit(*args, **kwargs)
        assert info.value.name == name, (name, str(info.value))
