"""runtime/schedule.py against diffusers' DDIMScheduler and against the closed forms of the method doc."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from runtime.errors import ConfigError, InvalidArgumentError
from runtime.metrics import relative_l2
from runtime.noise import draw_noise
from runtime.schedule import (
    PredictionType,
    Schedule,
    SchedulerConfig,
    contextual_ddim_step,
    forward_sample,
    predict_x0,
    shift_coefficient,
    training_target,
)

BETA_SCHEDULES = [
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="squaredcos_cap_v2"),
]


@pytest.mark.parametrize("betas", BETA_SCHEDULES, ids=lambda d: d["beta_schedule"])
def test_tables_match_diffusers(betas):
    ours = Schedule(SchedulerConfig(**betas))
    theirs = DDIMScheduler(**betas)
    assert ours.alphas_cumprod.dtype == np.float64
    assert relative_l2(ours.betas, theirs.betas.numpy()) < 1e-6
    # diffusers' tables are float32: where β is capped at 0.999 (squaredcos), float32 1 − β alone is off by 1.3e-5.
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=5e-5, atol=0)
    assert not ours.alphas_cumprod.flags.writeable


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_match_diffusers(spacing, offset):
    config = dict(timestep_spacing=spacing, steps_offset=offset)
    ours, theirs = Schedule(SchedulerConfig(**config)), DDIMScheduler(**config)
    for n in [1, 3, 7, 20, 50, 999, 1000]:
        theirs.set_timesteps(n)
        np.testing.assert_array_equal(ours.timesteps(n), theirs.timesteps.numpy(), err_msg=f"n={n}")
        assert len(ours.timesteps(n)) == n


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_every_step_count_gives_that_many_valid_timesteps(spacing):
    """diffusers' trailing spacing yields n + 1 timesteps for 62 step counts up to 1000 (61, 103, ...), the last t = -1:
    found by fuzzing the HTTP API (a 500 at 61 steps). Ours: exactly n, descending, in [0, T), finite coefficients; where
    diffusers gives n timesteps, the same ones."""
    ours, theirs = Schedule(SchedulerConfig(timestep_spacing=spacing)), DDIMScheduler(timestep_spacing=spacing)
    for n in range(1, 1001):
        ts = ours.timesteps(n)
        assert len(ts) == n and ts[-1] >= 0 and ts[0] < 1000 and np.all(np.diff(ts) < 0), n
        theirs.set_timesteps(n)
        if len(theirs.timesteps) == n:
            np.testing.assert_array_equal(ts, theirs.timesteps.numpy(), err_msg=f"n={n}")
        else:
            assert spacing == "trailing" and theirs.timesteps[-1] == -1 and np.array_equal(ts, theirs.timesteps.numpy()[:n]), n
    for n in (61, 103, 769):
        assert all(math.isfinite(c.sigma) for c in ours.plan(n, eta=1.0).steps)


def test_previous_timesteps():
    leading = Schedule(SchedulerConfig(timestep_spacing="leading"))
    ts = leading.timesteps(50)
    np.testing.assert_array_equal(leading.previous_timesteps(ts), np.maximum(ts - 20, -1))
    assert leading.previous_timesteps(ts)[-1] == -1
    linspace = Schedule(SchedulerConfig(timestep_spacing="linspace"))
    ts = linspace.timesteps(7)  # the next *sampled* timestep, then −1 (method doc §5)
    np.testing.assert_array_equal(linspace.previous_timesteps(ts), np.append(ts[1:], -1))


def test_shift_coefficient_forms():
    ab = np.array([0.0, 0.25, 1.0])
    np.testing.assert_allclose(shift_coefficient(ab, SchedulerConfig(shift_schedule="quadratic").shift_schedule), [0.0, 0.25, 0.0])
    np.testing.assert_allclose(shift_coefficient(ab, SchedulerConfig(shift_schedule="linear").shift_schedule), [1.0, 0.5, 0.0])
    np.testing.assert_allclose(shift_coefficient(ab, SchedulerConfig(shift_schedule="none").shift_schedule), [0.0, 0.0, 0.0])


STEP_GRID = list(itertools.product(
    ["epsilon", "sample", "v_prediction"], [0.0, 0.5, 1.0], ["leading", "trailing", "linspace"], [True, False], [True, False]
))  # fmt: skip


def _worst_step_error(config: dict, eta: float, float64_tables: bool) -> float:
    n = 10
    theirs = DDIMScheduler(**config)
    theirs.set_timesteps(n)
    ours = Schedule(SchedulerConfig(**config))
    if float64_tables:  # diffusers' step algorithm, fed our float64 tables instead of its float32 ones
        theirs.alphas_cumprod = torch.tensor(ours.alphas_cumprod)
        theirs.final_alpha_cumprod = torch.tensor(ours.final_alpha_cumprod, dtype=torch.float64)
    plan = ours.plan(n, eta)
    rng = np.random.default_rng(0)
    T = ours.num_train_timesteps
    worst = 0.0
    for t in [int(x) for x in theirs.timesteps]:
        x_t, output, z = (rng.standard_normal((2, 4, 8, 8), dtype=np.float32) for _ in range(3))
        as_torch = (lambda a: torch.from_numpy(a).double()) if float64_tables else torch.from_numpy
        expected = theirs.step(as_torch(output), t, as_torch(x_t), eta=eta, variance_noise=as_torch(z)).prev_sample.numpy()
        c = ours.step_coefficients(t, t - T // n, eta)  # diffusers always steps to t − T/n
        x0, eps = predict_x0(output, x_t, c, plan)
        got = contextual_ddim_step(x_t, x0, eps, None, None, c, z)
        assert got.dtype == np.float32
        worst = max(worst, relative_l2(got, expected))
    return worst


@pytest.mark.parametrize("prediction,eta,spacing,alpha_one,clip", STEP_GRID)
def test_zero_adapter_step_equals_diffusers(prediction, eta, spacing, alpha_one, clip):
    """r ≡ 0: the contextual step from t to t − T/n is diffusers' DDIMScheduler.step.

    Against diffusers' step on the same float64 tables: relative error ≤ 1e-5 (our arrays are float32).
    Against diffusers as shipped (float32 tables): ≤ 1e-4 — its float32 1 − ᾱ_t near t = 0 alone is off by ~3e-5.
    """
    config = dict(prediction_type=prediction, timestep_spacing=spacing, set_alpha_to_one=alpha_one, clip_sample=clip,
                  beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1 if spacing == "leading" else 0)
    assert _worst_step_error(config, eta, float64_tables=True) <= 1e-5
    assert _worst_step_error(config, eta, float64_tables=False) <= 1e-4


def test_contextual_step_is_ddpm_posterior_for_eta_one():
    """η = 1 over every train timestep: mean and variance of the contextual DDPM posterior (method doc §5)."""
    config = SchedulerConfig(num_train_timesteps=1000, prediction_type="sample", clip_sample=False, set_alpha_to_one=False)
    schedule = Schedule(config)
    plan = schedule.plan(1000, eta=1.0)
    rng = np.random.default_rng(1)
    shift = lambda x0, t: np.tanh(x0 + 0.001 * t)  # noqa: E731 — any deterministic r_φ(x̂_0, c, t)
    assert [c.timestep for c in plan.steps] == list(range(999, -1, -1))
    for c in plan.steps:
        t, s = c.timestep, c.prev_timestep
        x_t, x0 = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
        out_x0, eps = predict_x0(x0, x_t, c, plan)
        r_t, r_s = shift(out_x0, t), shift(out_x0, max(s, 0))
        mean = contextual_ddim_step(x_t, out_x0, eps, r_t, r_s, c, np.zeros_like(x_t))
        ab_t, ab_s = schedule.alpha_bar(t), schedule.alpha_bar(s)
        alpha_t = ab_t / ab_s
        beta_t = 1 - alpha_t
        b_t, b_s = schedule.shift(t) * r_t, schedule.shift(s) * r_s
        posterior = b_s + math.sqrt(ab_s) * beta_t / (1 - ab_t) * x0 + math.sqrt(alpha_t) * (1 - ab_s) / (1 - ab_t) * (x_t - b_t)
        np.testing.assert_allclose(mean, posterior, rtol=1e-9, atol=1e-9, err_msg=f"t={t}")
        assert math.isclose(c.sigma**2, (1 - ab_s) * beta_t / (1 - ab_t), rel_tol=1e-9, abs_tol=1e-15)


def test_forward_sample_mean_and_variance():
    """q(x_t | x_0, c) = N(√ᾱ_t x_0 + k_t r, (1 − ᾱ_t) I) (method doc §3), checked by Monte Carlo."""
    schedule = Schedule(SchedulerConfig())
    rng = np.random.default_rng(2)
    x0, r = rng.uniform(-1, 1, size=(8,)), rng.uniform(-1, 1, size=(8,))
    n = 200_000
    for t in [0, 250, 600, 999]:
        coeffs = schedule.forward_coefficients(np.array([t]))
        a, k, s = coeffs.sqrt_alpha_bar[0], coeffs.shift[0], coeffs.sqrt_one_minus_alpha_bar[0]
        samples = forward_sample(x0, r, rng.standard_normal((n, 8)), a, k, s)
        std_err = s / math.sqrt(n)
        np.testing.assert_array_less(np.abs(samples.mean(0) - (a * x0 + k * r)), 5 * std_err + 1e-12)
        np.testing.assert_allclose(samples.var(0), 1 - schedule.alphas_cumprod[t], rtol=0.02)
        assert k == pytest.approx(math.sqrt(schedule.alphas_cumprod[t]) * (1 - math.sqrt(schedule.alphas_cumprod[t])))


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_training_target_inverts_to_x0(prediction):
    """A perfect denoiser (output = target) recovers x_0 exactly through predict_x0, at every t."""
    schedule = Schedule(SchedulerConfig(prediction_type=prediction, clip_sample=False))
    plan = schedule.plan(1)
    rng = np.random.default_rng(3)
    x0, r, eps = rng.uniform(-1, 1, (4,)), rng.uniform(-1, 1, (4,)), rng.standard_normal(4)
    for t in [1, 500, 999]:
        f = schedule.forward_coefficients(np.array([t]))
        x_t = forward_sample(x0, r, eps, f.sqrt_alpha_bar[0], f.shift[0], f.sqrt_one_minus_alpha_bar[0])
        target = training_target(PredictionType(prediction), x0, x_t, f.sqrt_alpha_bar[0], f.sqrt_one_minus_alpha_bar[0])
        x0_hat, eps_total = predict_x0(target, x_t, schedule.step_coefficients(t, -1, 0.0), plan)
        np.testing.assert_allclose(x0_hat, x0, atol=1e-8)
        np.testing.assert_allclose(eps_total, eps + f.shift[0] * r / f.sqrt_one_minus_alpha_bar[0], atol=1e-8)


def test_stable_diffusion_scheduler_config_loads_unchanged():
    sd15 = json.loads("""{"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
        "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": false,
        "skip_prk_steps": true, "steps_offset": 1, "trained_betas": null, "clip_sample": false}""")
    config = SchedulerConfig.from_dict(sd15)
    assert config.beta_schedule.value == "scaled_linear" and config.steps_offset == 1 and config.shift_schedule.value == "quadratic"
    again = SchedulerConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    DDIMScheduler.from_config(config.to_dict())  # diffusers can read what we write


@pytest.mark.parametrize("bad,match", [
    ({"beta_schedule": "cosine"}, "beta_schedule='cosine'"),
    ({"prediction_type": "flow"}, "prediction_type='flow'"),
    ({"timestep_spacing": "karras"}, "timestep_spacing"),
    ({"shift_schedule": "cubic"}, "shift_schedule='cubic'"),
    ({"thresholding": True}, "thresholding"),
    ({"num_train_timesteps": 0}, "num_train_timesteps"),
    ({"beta_start": -1.0}, "beta_start"),
    ({"trained_betas": [0.1, 0.2]}, "trained_betas"),
])  # fmt: skip
def test_bad_scheduler_config_is_a_clear_error(bad, match):
    with pytest.raises(ConfigError, match=match):
        SchedulerConfig.from_dict(bad)


def test_plan_rejects_bad_arguments():
    schedule = Schedule(SchedulerConfig(num_train_timesteps=100))
    for steps in [0, 101, 2.5, True]:
        with pytest.raises(InvalidArgumentError, match="num_inference_steps"):
            schedule.plan(steps)
    for eta in [-0.1, 1.5, float("nan")]:
        with pytest.raises(InvalidArgumentError, match="eta"):
            schedule.plan(10, eta)


def test_step_noise_is_required_when_sigma_positive():
    schedule = Schedule(SchedulerConfig())
    c = schedule.step_coefficients(500, 480, 1.0)
    x = np.zeros((1, 3, 2, 2), np.float32)
    with pytest.raises(InvalidArgumentError, match="noise"):
        contextual_ddim_step(x, x, x, None, None, c, None)


def test_noise_order_is_documented_and_chunk_independent():
    shape = (2, 3, 4, 4)
    initial, steps = draw_noise(7, shape, num_steps=5, eta=1.0)
    rng = np.random.Generator(np.random.PCG64(7))
    np.testing.assert_array_equal(initial, rng.standard_normal(shape, dtype=np.float32))
    for i in range(5):  # per-step draws give the same numbers as the single draw
        np.testing.assert_array_equal(steps[i], rng.standard_normal(shape, dtype=np.float32))
    initial0, none = draw_noise(7, shape, num_steps=5, eta=0.0)
    assert none is None and np.array_equal(initial0, initial)


# -- zero terminal SNR (method doc §5, "Terminal signal") ------------------------------------------------------------
SD_BETAS = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1)


@pytest.mark.parametrize("betas", BETA_SCHEDULES, ids=lambda d: d["beta_schedule"])
def test_zero_terminal_snr_tables_match_diffusers(betas):
    config = dict(betas, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")
    ours, theirs = Schedule(SchedulerConfig(**config)), DDIMScheduler(**config)
    assert ours.alphas_cumprod[-1] == 0.0 and ours.betas[-1] == 1.0  # zero signal at T − 1, exactly
    assert ours.alphas_cumprod[0] == pytest.approx(Schedule(SchedulerConfig(**betas)).alphas_cumprod[0], rel=1e-12)  # ᾱ_0 kept
    np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=2e-4, atol=1e-7)  # diffusers: float32
    theirs.set_timesteps(50)
    np.testing.assert_array_equal(ours.timesteps(50), theirs.timesteps.numpy())
    assert ours.timesteps(50)[0] == 999 and ours.shift(999) == 0.0  # sampling starts where training has no signal and no shift


def test_zero_terminal_snr_step_equals_diffusers():
    """The first trailing step from ᾱ = 0 (x̂_0 = −v) and the rest, r ≡ 0, against diffusers' DDIMScheduler.step."""
    config = dict(SD_BETAS, steps_offset=0, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing", clip_sample=False)
    assert _worst_step_error(config, 0.0, float64_tables=True) <= 1e-5
    assert _worst_step_error(config, 0.0, float64_tables=False) <= 1e-4


def test_with_zero_terminal_snr_turns_stable_diffusion_into_a_zero_snr_v_model():
    sd = SchedulerConfig(**SD_BETAS)  # ε-prediction, leading spacing
    zero = sd.with_zero_terminal_snr()
    assert (zero.rescale_betas_zero_snr, zero.timestep_spacing.value, zero.prediction_type.value) == (True, "trailing", "v_prediction")
    assert (zero.beta_schedule, zero.beta_start, zero.beta_end, zero.set_alpha_to_one) == (sd.beta_schedule, sd.beta_start, sd.beta_end, False)
    assert SchedulerConfig(**SD_BETAS, prediction_type="sample").with_zero_terminal_snr().prediction_type.value == "sample"
    assert zero.with_zero_terminal_snr() == zero
    assert SchedulerConfig.from_dict(json.loads(json.dumps(zero.to_dict()))) == zero
    DDIMScheduler.from_config(zero.to_dict())


def test_zero_terminal_snr_refusals_name_the_option():
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr=true with prediction_type='epsilon'"):
        SchedulerConfig.from_dict({"rescale_betas_zero_snr": True})
    with pytest.raises(ConfigError, match="rescale_betas_zero_snr"):
        SchedulerConfig.from_dict({"rescale_betas_zero_snr": "yes", "prediction_type": "v_prediction"})
    single = SchedulerConfig(num_train_timesteps=1, prediction_type="v_prediction")  # one timestep: no signal to fall from
    with pytest.raises(InvalidArgumentError, match="zero_terminal_snr=True.*betas can be rescaled"):
        single.with_zero_terminal_snr()


def test_contextual_guidance_is_a_scheduler_setting():
    assert SchedulerConfig().contextual_guidance.value == "conditional"  # configs written before the setting existed
    guided = SchedulerConfig.from_dict({"contextual_guidance": "guided"})
    assert guided.contextual_guidance.value == "guided" and SchedulerConfig.from_dict(guided.to_dict()) == guided
    with pytest.raises(ConfigError, match="contextual_guidance='both'"):
        SchedulerConfig.from_dict({"contextual_guidance": "both"})
