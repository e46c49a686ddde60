"""Training objective of ContextDiff (method doc §3–4): joint UNet + text encoder + adapter, and the baseline.

The baseline (``use_adapter=False``) is the same training with r ≡ 0, i.e. plain DDPM. The forward sample and
the regression target come from :mod:`runtime.schedule` (the one implementation), applied to torch tensors so
gradients reach the adapter through both x_t and the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from contextdiff_ref.models.model_dir import ModelComponents
from contextdiff_ref.models.text import tokenize
from runtime.errors import InvalidArgumentError
from runtime.schedule import Schedule, forward_sample, training_target

HIGH_NOISE_PORTION = 0.05  # the last 5% of the timesteps (t >= 950 of 1000): x_t holds almost no image, only the text


@dataclass(frozen=True)
class LossConfig:
    use_adapter: bool = True  # False: the baseline, r ≡ 0 (plain DDPM)
    text_dropout: float = 0.1  # fraction of samples trained with the empty prompt (for classifier-free guidance)
    snr_gamma: float | None = None  # Min-SNR-γ loss weighting (Hang et al. 2023); None: plain mean squared error
    high_noise_fraction: float = 0.0  # fraction of each batch whose t is drawn from the last HIGH_NOISE_PORTION of [0, T)

    def __post_init__(self) -> None:
        if not 0.0 <= self.text_dropout < 1.0:
            raise InvalidArgumentError("text_dropout", self.text_dropout, "a fraction in [0, 1)")
        if self.snr_gamma is not None and not (isinstance(self.snr_gamma, (int, float)) and 0 < self.snr_gamma < float("inf")):
            raise InvalidArgumentError("snr_gamma", self.snr_gamma, "None or a positive finite number")
        if not 0.0 <= self.high_noise_fraction <= 1.0:
            raise InvalidArgumentError("high_noise_fraction", self.high_noise_fraction, "a fraction in [0, 1]")


@dataclass(frozen=True)
class Draws:
    """The random part of a training batch of B samples."""

    timesteps: torch.Tensor  # (B,) int64
    noise: torch.Tensor  # (B, C, H, W) float32: ε
    dropped: torch.Tensor  # (B,) bool: trained with the empty prompt

    def select(self, rows: slice) -> Draws:
        """The draws of a slice of the batch (a data-parallel rank's share)."""
        return Draws(self.timesteps[rows], self.noise[rows], self.dropped[rows])


@dataclass(frozen=True)
class LossOutput:
    loss: torch.Tensor  # scalar
    timesteps: torch.Tensor  # (B,) int64
    x_t: torch.Tensor  # (B, C, H, W)
    shift: torch.Tensor  # r_φ(x_0, c, t), zeros in the baseline
    dropped: torch.Tensor  # (B,) bool: trained with the empty prompt


class ContextDiffObjective:
    """Computes the loss of §4 for a batch of clean samples x_0 (B, C, H, W) in the model's space and their prompts."""

    def __init__(self, components: ModelComponents, config: LossConfig = LossConfig(), device: str | torch.device = "cpu") -> None:
        self.components, self.config, self.device = components, config, torch.device(device)
        self.schedule = Schedule(components.scheduler_config)
        coefficients = self.schedule.forward_coefficients(np.arange(self.schedule.num_train_timesteps))
        # Tables moved to the device once, as float32 (B, 1, 1, 1)-ready columns.
        as_tensor = lambda a: torch.as_tensor(a, dtype=torch.float32, device=self.device)  # noqa: E731
        self._sqrt_ab = as_tensor(coefficients.sqrt_alpha_bar)
        self._shift = as_tensor(coefficients.shift)
        self._sqrt_1m_ab = as_tensor(coefficients.sqrt_one_minus_alpha_bar)
        self._snr = as_tensor(coefficients.sqrt_alpha_bar**2 / coefficients.sqrt_one_minus_alpha_bar**2)
        self._empty_ids = tokenize(components, [""]).to(self.device)

    def draw(self, shape: Sequence[int], generator: torch.Generator, group: int = 1) -> Draws:
        """The random draws of one batch of ``shape`` (B, C, H, W): steps 1–2 of :meth:`loss`. A data-parallel run
        draws its global batch on every rank and takes its rank's slice (:meth:`Draws.select`), so N ranks with
        batch b see exactly what one process with batch N·b sees. ``group``: consecutive samples that share t and
        text dropout (a video's F frames folded into the batch)."""
        b = shape[0]
        if isinstance(group, bool) or not isinstance(group, int) or group < 1 or b % group:
            raise InvalidArgumentError("group", group, f"a positive divisor of the batch size {b}")
        per_group = lambda v: v.repeat_interleave(group) if group > 1 else v  # noqa: E731
        # 1. t ~ U{0, ..., T−1}, ε ~ N(0, I); a fraction of the batch draws t from the high-noise end instead
        num_t, g = self.schedule.num_train_timesteps, b // group
        t = torch.randint(0, num_t, (g,), generator=generator, device=self.device)
        if self.config.high_noise_fraction > 0:
            low = num_t - max(1, round(HIGH_NOISE_PORTION * num_t))
            high = torch.randint(low, num_t, (g,), generator=generator, device=self.device)
            t = torch.where(torch.rand(g, generator=generator, device=self.device) < self.config.high_noise_fraction, high, t)
        noise = torch.randn(tuple(shape), generator=generator, device=self.device)
        # 2. text dropout: the empty prompt for a fraction of the samples
        dropped = per_group(torch.rand(g, generator=generator, device=self.device) < self.config.text_dropout)
        return Draws(per_group(t), noise, dropped)

    def __call__(self, x0: torch.Tensor, prompts: Sequence[str], generator: torch.Generator, group: int = 1) -> LossOutput:
        """The loss of a batch x_0 (B, C, H, W) with its draws taken from ``generator``."""
        return self.loss(x0, prompts, self.draw(x0.shape, generator, group))

    def loss(self, x0: torch.Tensor, prompts: Sequence[str], draws: Draws) -> LossOutput:
        """The loss of §4 for clean samples x_0 (B, C, H, W) in the model's space, given the batch's draws."""
        c, b = self.components, x0.shape[0]
        if len(prompts) != b:
            raise InvalidArgumentError("prompts", f"{len(prompts)} prompts", f"one prompt per sample ({b})")
        if draws.noise.shape != x0.shape:
            raise InvalidArgumentError("draws", f"noise of shape {tuple(draws.noise.shape)}", f"the shape of x0 {tuple(x0.shape)}")
        t, noise = draws.timesteps, draws.noise.to(x0.dtype)
        # 2. the text of each sample, the empty prompt where dropped
        ids = tokenize(c, prompts).to(self.device)
        ids = torch.where(draws.dropped[:, None], self._empty_ids.expand_as(ids), ids)
        text = c.text_encoder(ids)[0]
        # 3. the context shift r_φ(x_0, c, t) (r ≡ 0 for the baseline)
        shift = c.adapter(x0, text, t) if self.config.use_adapter else torch.zeros_like(x0)
        # 4. x_t = √ᾱ_t x_0 + k_t r + √(1 − ᾱ_t) ε  (§3)
        column = lambda table: table[t].view(b, 1, 1, 1).to(x0.dtype)  # noqa: E731
        x_t = forward_sample(x0, shift, noise, column(self._sqrt_ab), column(self._shift), column(self._sqrt_1m_ab))
        # 5. target (§4): ε̃, x_0 or v, with gradients to the adapter through x_t and the target
        target = training_target(c.scheduler_config.prediction_type, x0, x_t, column(self._sqrt_ab), column(self._sqrt_1m_ab))
        # 6. mean squared error of the UNet's prediction, per sample weighted by min(SNR_t, γ) relative to the
        #    prediction type's own SNR weighting (ε: SNR, x_0: 1, v: SNR + 1) when snr_gamma is set
        prediction = c.predict(x_t, t, text)
        per_sample = F.mse_loss(prediction.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.config.snr_gamma is not None:
            snr = self._snr[t]
            implicit = {"epsilon": snr, "sample": torch.ones_like(snr), "v_prediction": snr + 1}[c.scheduler_config.prediction_type.value]
            per_sample = per_sample * snr.clamp(max=self.config.snr_gamma) / implicit
        return LossOutput(per_sample.mean(), t, x_t, shift, draws.dropped)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trained jointly: UNet, text encoder and (unless baseline) adapter."""
        c = self.components
        modules = [c.unet, c.text_encoder] + ([c.adapter] if self.config.use_adapter else [])
        return [p for m in modules for p in m.parameters()]

    def train(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        for m in (self.components.unet, self.components.text_encoder, self.components.adapter):
            m.train()
