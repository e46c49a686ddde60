"""Contextual DDIM inversion (method doc §7): the schedule's inversion plan and runtime.sampling.invert, against
diffusers' DDIMInverseScheduler (r ≡ 0) and against the §7 formulas computed independently in float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

from runtime.errors import InvalidArgumentError
from runtime.sampling import invert, sample
from runtime.schedule import Schedule, SchedulerConfig, shift_coefficient

SHAPE = (2, 3, 4, 4)
W = np.random.default_rng(0).standard_normal(SHAPE[1:])  # fixed weights of the toy model and adapter


def toy_model(x, t):
    """A deterministic stand-in for the UNet: works on NumPy and torch arrays alike."""
    lib = torch if isinstance(x, torch.Tensor) else np
    w = lib.as_tensor(W, dtype=x.dtype) if lib is torch else W.astype(x.dtype)
    return lib.tanh(x * w + (t / 1000.0)) * 0.8


def toy_adapter(x0, t, s):
    """r_φ(x̂_0, c, t) and r_φ(x̂_0, c, s): bounded, depending on the sample and the timestep."""
    r = lambda u: np.sin(x0 * W.astype(x0.dtype) + u / 250.0) * 0.3  # noqa: E731
    return r(t), r(s)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("clip", [True, False])
@pytest.mark.parametrize("offset", [0, 1])
def test_without_adapter_it_is_diffusers_ddim_inverse_scheduler(spacing, prediction, clip, offset):
    config = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing=spacing, prediction_type=prediction,
                  clip_sample=clip, steps_offset=offset if spacing == "leading" else 0)  # fmt: skip
    schedule, theirs = Schedule(SchedulerConfig(**config)), DDIMInverseScheduler(**config)
    x_0 = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32) * 0.7
    for n in (1, 7, 50):
        plan = schedule.inversion_plan(n)
        theirs.set_timesteps(n)
        np.testing.assert_array_equal(plan.timesteps, theirs.timesteps.numpy())
        latents = torch.from_numpy(x_0.copy())
        for t in theirs.timesteps:  # as its pipelines drive it
            latents = theirs.step(toy_model(latents, int(t)), t, latents).prev_sample
        ours = invert(toy_model, None, x_0, plan)
        assert ours.dtype == np.float32
        np.testing.assert_allclose(ours, latents.numpy(), rtol=1e-4, atol=2e-5, err_msg=f"n={n}")


def _alpha_bar(table, t, final):
    return float(table[t]) if t >= 0 else final


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("alpha_to_one", [True, False])
def test_with_an_adapter_it_follows_the_method_doc_formulas(spacing, prediction, alpha_to_one):
    """§7 steps 1–4 written out here in float64 from the tables, independently of the plan's coefficients."""
    config = SchedulerConfig(timestep_spacing=spacing, prediction_type=prediction, set_alpha_to_one=alpha_to_one, clip_sample=True,
                             shift_schedule="quadratic", beta_schedule="squaredcos_cap_v2")  # fmt: skip
    schedule = Schedule(config)
    ab_table, final = schedule.alphas_cumprod, 1.0 if alpha_to_one else float(schedule.alphas_cumprod[0])
    k = lambda ab: float(shift_coefficient(np.float64(ab), config.shift_schedule))  # noqa: E731
    x_0 = np.random.default_rng(2).standard_normal(SHAPE) * 0.7
    n = 10
    ts = schedule.timesteps(n)
    prev = schedule.previous_timesteps(ts)
    x = x_0.copy()
    for t, s in zip(ts[::-1], prev[::-1]):
        ab_s, ab_t = _alpha_bar(ab_table, int(s), final), _alpha_bar(ab_table, int(t), final)
        o = toy_model(x, int(t))  # 1. model at the target timestep
        if prediction == "epsilon":
            x0, eps_total = (x - math.sqrt(1 - ab_s) * o) / math.sqrt(ab_s), o
        else:
            x0, eps_total = math.sqrt(ab_s) * x - math.sqrt(1 - ab_s) * o, math.sqrt(ab_s) * o + math.sqrt(1 - ab_s) * x
        x0 = np.clip(x0, -1, 1)
        r_s, r_t = toy_adapter(x0, max(int(s), 0), int(t))  # 2.
        eps = eps_total - (k(ab_s) * r_s / math.sqrt(1 - ab_s) if ab_s < 1 else 0.0)  # 3.
        x = math.sqrt(ab_t) * x0 + k(ab_t) * r_t + math.sqrt(1 - ab_t) * eps  # 4.
    ours = invert(toy_model, toy_adapter, x_0, schedule.inversion_plan(n))
    assert ours.dtype == np.float64 and np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, x, rtol=1e-12, atol=1e-12)
    assert np.abs(ours - invert(toy_model, None, x_0, schedule.inversion_plan(n))).max() > 1e-3  # the adapter mattered


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_inversion_is_the_sampler_run_backwards(spacing):
    """Each inversion step is the deterministic sampler step with s and t exchanged: for a model whose output does
    not depend on the sample (ε-prediction: both directions then use the same ε̂ at each t) and r ≡ 0, sampling from
    the inverted x_T returns x_0 to float64 rounding, at every step count."""
    schedule = Schedule(SchedulerConfig(timestep_spacing=spacing, prediction_type="epsilon", clip_sample=False))
    x_0 = np.random.default_rng(3).standard_normal(SHAPE) * 0.5
    model = lambda x, t: np.broadcast_to(W * math.cos(t / 300.0), x.shape)  # noqa: E731
    for n in (1, 10, 100):
        x_T = invert(model, None, x_0, schedule.inversion_plan(n))
        np.testing.assert_allclose(sample(model, None, x_T, schedule.plan(n)), x_0, rtol=0, atol=1e-9, err_msg=f"n={n}")


def test_the_reference_pipeline_inverts_through_the_same_loop(pixel_pipe):
    """ContextDiffPipeline.invert is runtime.sampling.invert over the pipeline's own denoiser (guidance 1) and
    adapter (part way with strength < 1); its bad input is an error naming the argument."""
    from runtime.validation import validate_request

    x_0 = np.random.default_rng(4).uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32)
    prompts = ["a red circle", "a blue square"]
    x_T = pixel_pipe.invert(x_0, prompts, num_inference_steps=4, progress=False)
    assert x_T.shape == x_0.shape and x_T.dtype == np.float32 and np.all(np.isfinite(x_T))
    request = validate_request(pixel_pipe.limits, prompt=prompts, num_inference_steps=4, guidance_scale=1.0)
    with torch.no_grad():
        text = pixel_pipe.encode_prompt(prompts)
        direct = invert(pixel_pipe._denoiser(text, request), pixel_pipe._context_shift(text), torch.from_numpy(x_0),
                        pixel_pipe.schedule.inversion_plan(4))  # fmt: skip
    np.testing.assert_array_equal(x_T, direct.numpy())
    x_t = pixel_pipe.invert(x_0, prompts, num_inference_steps=4, strength=0.5, progress=False)
    with torch.no_grad():
        direct = invert(pixel_pipe._denoiser(text, request), pixel_pipe._context_shift(text), torch.from_numpy(x_0),
                        pixel_pipe.schedule.inversion_plan(4, strength=0.5))  # fmt: skip
    np.testing.assert_array_equal(x_t, direct.numpy())
    with pytest.raises(InvalidArgumentError, match="strength=0.5: 1.0 without latents"):
        pixel_pipe(prompts, num_inference_steps=4, strength=0.5, progress=False)
    with pytest.raises(InvalidArgumentError, match="strength"):
        pixel_pipe.invert(x_0, prompts, num_inference_steps=4, strength=0.1, progress=False)
    for bad, name in [(x_0[0], "sample"), (x_0.astype(np.float64), "sample"), (x_0[:1], "sample"), (x_0[:, :, :31], "sample")]:
        with pytest.raises(InvalidArgumentError, match=name):
            pixel_pipe.invert(bad, prompts, num_inference_steps=4, progress=False)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_strength_takes_diffusers_image_to_image_steps(spacing):
    """strength < 1: sampling runs the timesteps diffusers' image-to-image pipelines keep
    (``timesteps[n - min(int(n * strength), n):]``), inversion the first that many in reverse, ending at the timestep
    sampling starts from; invert-then-sample at the same strength returns x_0 (the model of the test above)."""
    from diffusers import DDIMScheduler

    config = dict(timestep_spacing=spacing, prediction_type="epsilon", clip_sample=False)
    schedule, theirs = Schedule(SchedulerConfig(**config)), DDIMScheduler(**config)
    model = lambda x, t: np.broadcast_to(W * math.cos(t / 300.0), x.shape)  # noqa: E731
    x_0 = np.random.default_rng(5).standard_normal(SHAPE) * 0.5
    for n, strength in ((50, 0.96), (50, 0.5), (7, 0.3), (10, 1.0), (3, 1 / 3)):
        theirs.set_timesteps(n)
        kept = theirs.timesteps.numpy()[n - min(int(n * strength), n) :]
        plan, inversion = schedule.plan(n, strength=strength), schedule.inversion_plan(n, strength=strength)
        np.testing.assert_array_equal(plan.timesteps, kept)
        np.testing.assert_array_equal(inversion.timesteps, kept[::-1])
        assert inversion.steps[-1].next_timestep == plan.steps[0].timestep and len(plan.steps) == schedule.strength_steps(n, strength)
        assert schedule.plan(n).steps[n - len(kept) :] == plan.steps  # the same steps, not new ones
        x_t = invert(model, None, x_0, inversion)
        np.testing.assert_allclose(sample(model, None, x_t, plan), x_0, rtol=0, atol=1e-9, err_msg=f"n={n} strength={strength}")
    for bad in (0.0, -0.5, 1.5, 0.01, "0.5", True, float("nan")):
        with pytest.raises(InvalidArgumentError, match="strength"):
            schedule.plan(50, strength=bad)
        with pytest.raises(InvalidArgumentError, match="strength"):
            schedule.inversion_plan(50, strength=bad)
