"""Training objective (method doc §3–4): contextual forward process, joint gradients, baseline, text dropout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from contextdiff_ref.models.tiny import build_tiny_components
from contextdiff_ref.training.objective import ContextDiffObjective, LossConfig
from runtime.errors import InvalidArgumentError

PROMPTS = ["a red circle at the top left", "a blue square at the bottom right"] * 2


def batch(seed=0):
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_gradients_reach_adapter_unet_and_text_encoder(prediction):
    objective = ContextDiffObjective(build_tiny_components(prediction_type=prediction), LossConfig(text_dropout=0.0))
    objective.train()
    out = objective(batch(), PROMPTS, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.loss.ndim == 0
    out.loss.backward()
    c = objective.components
    for module in (c.adapter, c.unet, c.text_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), type(module).__name__
    assert out.shift.abs().sum() > 0


def test_baseline_is_plain_ddpm():
    objective = ContextDiffObjective(build_tiny_components(), LossConfig(use_adapter=False, text_dropout=0.0))
    objective.train()
    x0 = batch()
    out = objective(x0, PROMPTS, torch.Generator().manual_seed(1))
    out.loss.backward()
    assert all(p.grad is None for p in objective.components.adapter.parameters())
    assert torch.count_nonzero(out.shift) == 0
    # Same draws as the objective (t, then ε): x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε
    g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ab = torch.as_tensor(objective.schedule.alphas_cumprod[t.numpy()], dtype=torch.float32).view(4, 1, 1, 1)
    torch.testing.assert_close(out.x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * eps, rtol=1e-5, atol=1e-6)


def test_contextual_forward_process_adds_the_shift():
    objective = ContextDiffObjective(build_tiny_components(), LossConfig(text_dropout=0.0))
    x0 = batch()
    with torch.no_grad():
        out = objective(x0, PROMPTS, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    t = torch.randint(0, 1000, (4,), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    f = objective.schedule.forward_coefficients(t.numpy())
    col = lambda a: torch.as_tensor(a, dtype=torch.float32).view(4, 1, 1, 1)  # noqa: E731
    expected = col(f.sqrt_alpha_bar) * x0 + col(f.shift) * out.shift + col(f.sqrt_one_minus_alpha_bar) * eps
    torch.testing.assert_close(out.x_t, expected, rtol=1e-5, atol=1e-6)


def test_text_dropout_rate():
    objective = ContextDiffObjective(build_tiny_components(), LossConfig(text_dropout=0.3))
    x0 = torch.zeros(400, 3, 8, 8)
    with torch.no_grad():
        out = objective(x0, ["a red circle"] * 400, torch.Generator().manual_seed(3))
    assert 0.22 < out.dropped.float().mean().item() < 0.38  # 0.3 ± 3.5 standard errors
    with pytest.raises(InvalidArgumentError, match="text_dropout"):
        LossConfig(text_dropout=1.0)


@pytest.mark.slow
def test_high_noise_fraction_draws_that_share_of_the_batch_from_the_last_timesteps():
    from contextdiff_ref.training.objective import HIGH_NOISE_PORTION

    components = build_tiny_components()
    low = round((1 - HIGH_NOISE_PORTION) * 1000)  # tiny models have T = 1000

    def timesteps(fraction: float):  # the draws of a batch of 2000 (no UNet call: the loss takes t from these draws)
        return ContextDiffObjective(components, LossConfig(high_noise_fraction=fraction)).draw((2000, 3, 8, 8), torch.Generator().manual_seed(5)).timesteps

    plain, all_high, mixed = timesteps(0.0), timesteps(1.0), timesteps(0.25)
    with torch.no_grad():  # and the loss trains on the t it draws
        small = ContextDiffObjective(components, LossConfig(high_noise_fraction=0.25))
        out = small(torch.zeros(4, 3, 8, 8), ["a red circle"] * 4, torch.Generator().manual_seed(6))
    assert torch.equal(out.timesteps, small.draw((4, 3, 8, 8), torch.Generator().manual_seed(6)).timesteps)
    assert all_high.min() >= low and all_high.max() == 999 and len(all_high.unique()) > 40
    assert 0.02 < (plain >= low).float().mean() < 0.08  # uniform: 5%
    assert 0.25 < (mixed >= low).float().mean() < 0.33  # 0.25 + 0.75 * 0.05 = 0.2875
    with pytest.raises(InvalidArgumentError, match="high_noise_fraction"):
        LossConfig(high_noise_fraction=1.5)


@pytest.mark.slow
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch():
    objective = ContextDiffObjective(build_tiny_components(), LossConfig(text_dropout=0.0))
    objective.train()
    optimizer = torch.optim.Adam(objective.parameters(), lr=1e-3)
    x0, losses = batch(), []
    for _ in range(15):
        loss = objective(x0, PROMPTS, torch.Generator().manual_seed(4)).loss  # same t and ε every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all() and losses[-1] < 0.7 * losses[0]
