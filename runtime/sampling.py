"""The contextual DDIM sampling loop (method doc §5) over two callables: a denoiser and an adapter.

The loop is array-agnostic (NumPy, CuPy or torch, see :mod:`runtime.schedule`): the reference pipeline
runs it on torch tensors, the runtime on NumPy/CuPy arrays. It never branches on who computes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

from runtime.schedule import Array, SamplingPlan, contextual_ddim_step, predict_x0


class Denoiser(Protocol):
    def __call__(self, x_t: Array, timestep: int) -> Array:
        """Guided model output o for x_t (N, C, h, w) at ``timestep`` (method doc §5 step 1), same shape."""


class ContextShift(Protocol):
    def __call__(self, x0: Array, timestep: int, prev_timestep: int) -> tuple[Array, Array]:
        """(r_t, r_s) = r_φ(x̂_0, c, t), r_φ(x̂_0, c, s) for x̂_0 (N, C, h, w) (method doc §5 step 3)."""


@dataclass(frozen=True)
class StepOutput:
    """What a per-step callback receives after the step ``timestep`` -> ``prev_timestep``."""

    step: int  # 0-based index of the step
    timestep: int
    prev_timestep: int
    sample: Array  # x_s (N, C, h, w)
    pred_original_sample: Array  # x̂_0 (N, C, h, w), after clipping


def sample(
    denoise: Denoiser,
    context_shift: ContextShift | None,
    x_T: Array,
    plan: SamplingPlan,
    *,
    step_noise: Array | None = None,
    callback: Callable[[StepOutput], Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> Array:
    """Run contextual DDIM from x_T (N, C, h, w); returns x_0 of the same shape and dtype.

    ``context_shift=None`` means r ≡ 0 (plain DDIM). ``step_noise`` (num_steps, N, C, h, w) is required when
    any step has σ > 0 (η > 0); see :mod:`runtime.noise` for the order it is drawn in.
    ``progress`` wraps the step range (e.g. ``tqdm``).
    """
    if step_noise is None and any(c.sigma > 0 for c in plan.steps):
        raise ValueError("step_noise is required when eta > 0")
    x = x_T
    for i in progress(range(len(plan.steps))):
        c = plan.steps[i]
        output = denoise(x, c.timestep)  # step 1
        x0, eps_total = predict_x0(output, x, c, plan)  # step 2
        r_t, r_s = context_shift(x0, c.timestep, c.adapter_prev_timestep) if context_shift else (None, None)  # step 3
        x = contextual_ddim_step(x, x0, eps_total, r_t, r_s, c, None if step_noise is None else step_noise[i])  # 4-6
        if callback is not None:
            callback(StepOutput(i, c.timestep, c.prev_timestep, x, x0))
    return x
