"""The shipped default model: complete, its tokenizer usable by `tokenizers` alone, and it draws what it is told."""

from __future__ import annotations

from tokenizers import Tokenizer

from contextdiff_ref.data.alignment import score_image, summarize
from contextdiff_ref.data.shapes import caption, one_object_scenes, sample_scenes, two_object_scenes
from contextdiff_ref.models.defaults import default_model_dir, latent_model_dir
from contextdiff_ref.models.model_dir import load_model_dir
from contextdiff_ref.pipelines.text_to_image import ContextDiffPipeline
from tests.parity import record


def test_shipped_model_loads_with_a_recommended_guidance_and_a_standalone_tokenizer():
    for path in (default_model_dir(),):
        components = load_model_dir(path)
        assert components.recommended_guidance_scale is not None and components.recommended_guidance_scale >= 1
        assert components.unet.config.sample_size == 32 and components.vae is None
        standalone = Tokenizer.from_file(str(path / "tokenizer" / "tokenizer.json"))
        for scene in sample_scenes(0, 0, 20):
            text = caption(scene)
            assert standalone.encode(text).ids == components.tokenizer(text).input_ids
    assert any(p.abs().sum() > 0 for p in load_model_dir(default_model_dir()).adapter.proj_out.parameters())  # a trained adapter


def _read_back(model_dir, scenes, steps: int) -> dict:
    """The alignment reader's summary of what the model draws for the scenes' captions (seed 0, its own guidance)."""
    images = ContextDiffPipeline.from_pretrained(model_dir)([caption(s) for s in scenes], num_inference_steps=steps, seed=0, progress=False).images
    result = summarize([score_image(image, scene) for image, scene in zip(images, scenes)])
    record(**result)
    return result


def test_quick_sample_puts_the_named_colour_in_the_named_quadrant():
    """Issue 6's quick check, with the model's own recommended guidance (the runtime's default): 15 one-object prompts
    (every colour, shape and position), 20 steps: colour-position accuracy at least 14 of 15 (measured: 15 of 15)."""
    result = _read_back(default_model_dir(), one_object_scenes()[::5], 20)
    assert result["colour_position_accuracy"] >= 14 / 15, result


def test_shipped_latent_model_carries_the_fine_tuning_recipe():
    """The latent model "Train your own" produced (benchmarks.finetune_shapes --ship): a VAE, the zero-terminal-SNR
    schedule fine-tuning uses by default, guidance 3 recommended, a trained adapter (its output layer is not zero)."""
    c = load_model_dir(latent_model_dir())
    config = c.scheduler_config
    assert c.vae is not None and c.recommended_guidance_scale == 3.0 and c.unet.config.in_channels == 4
    assert (config.rescale_betas_zero_snr, config.timestep_spacing.value, config.prediction_type.value) == (True, "trailing", "v_prediction")
    assert any(p.abs().sum() > 0 for p in c.adapter.proj_out.parameters())


def test_shipped_latent_model_draws_compositions_it_never_saw():
    """Half of the held-out two-object prompts (no composition of them is in its training folder), 10 steps, the model's
    guidance: full accuracy at least 70 of 72 objects (measured: 72 of 72 at 10 steps; 99.3% on all 72 prompts, 4 images
    each, 50 steps)."""
    result = _read_back(latent_model_dir(), two_object_scenes()[::2], 10)
    assert result["full_accuracy"] >= 70 / 72, result
