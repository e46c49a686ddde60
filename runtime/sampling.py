"""The contextual DDIM sampling loop (method doc §5) over two callables: a denoiser and an adapter.

The loop is array-agnostic (NumPy, CuPy or torch, see :mod:`runtime.schedule`): the reference pipeline
runs it on torch tensors, the runtime on NumPy/CuPy arrays. It never branches on who computes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from runtime.images import GenerationOutput
from runtime.noise import draw_noise_parts
from runtime.schedule import Array, ContextualGuidance, InversionPlan, SamplingPlan, Schedule, contextual_ddim_step, forward_sample, predict_x0
from runtime.validation import GenerationRequest, ModelLimits


class Denoiser(Protocol):
    def __call__(self, x_t: Array, timestep: int) -> Array:
        """Guided model output o for x_t (N, C, h, w) at ``timestep`` (method doc §5 step 1), same shape."""


class ContextShift(Protocol):
    def __call__(self, x0: Array, timestep: int, prev_timestep: int) -> tuple[Array, Array]:
        """(r_t, r_s) = r_φ(x̂_0, c, t), r_φ(x̂_0, c, s) for x̂_0 (N, C, h, w) (method doc §5 step 3).

        A backend's shift made for text states of k·N rows (k texts per image, e.g. [uncond; cond]) returns
        (k·N, C, h, w) each: x̂_0 repeated k times, row i with text row i."""


def guided_context_shift(shift: ContextShift, n: int, guidance_scale: float) -> ContextShift:
    """Method doc §5, "Guidance and the shift", variant "guided": ``shift`` evaluates the adapter on the guided batch's
    two texts ([uncond; cond], 2N rows) at t and s; r = r^u + w (r^c − r^u) at each (N rows)."""
    w = guidance_scale

    def guided(x0: Array, timestep: int, prev_timestep: int) -> tuple[Array, Array]:
        r_t, r_s = shift(x0, timestep, prev_timestep)  # 3. r^u and r^c, (2N, C, h, w) each
        return r_t[:n] + w * (r_t[n:] - r_t[:n]), r_s[:n] + w * (r_s[n:] - r_s[:n])

    return guided


@dataclass(frozen=True)
class StepOutput:
    """What a per-step callback receives after the step ``timestep`` -> ``prev_timestep``."""

    step: int  # 0-based index of the step
    timestep: int
    prev_timestep: int
    sample: Array  # x_s (N, C, h, w)
    pred_original_sample: Array  # x̂_0 (N, C, h, w), after clipping


@dataclass(frozen=True)
class LocalBlend:
    """Local blending for edits (Prompt-to-Prompt's local blend, Blended Latent Diffusion): after every sampling step
    the sample keeps the edit where ``mask`` is 1 and takes the source's inversion trajectory where it is 0, so
    nothing outside the edit region changes (at the last step it is the source's x_0 there).

    Sampling step i (of k) mirrors inversion step k − 1 − i, so its result is blended with that step's *input*:
    ``source`` holds the inversion's samples x_0, x_1, …, x_{k−1} (x_T, where sampling starts, not needed). By step,
    not timestep: with ``leading``/``trailing`` spacing a step's landing timestep need not be the next one's start."""

    mask: Array  # (N, 1, h, w) in [0, 1], in the sample space
    source: Sequence[Array]  # k arrays (N, C, h, w): the source's inversion samples, x_0 first

    def __call__(self, x: Array, step: int) -> Array:
        return self.mask * x + (1 - self.mask) * self.source[len(self.source) - 1 - step]

    def to(self, to_device: Callable[[Any], Array]) -> LocalBlend:
        """The same blend with its arrays moved by ``to_device`` (once per call, not per step)."""
        return LocalBlend(to_device(self.mask), [to_device(a) for a in self.source])


def sample(
    denoise: Denoiser,
    context_shift: ContextShift | None,
    x_T: Array,
    plan: SamplingPlan,
    *,
    step_noise: Array | None = None,
    callback: Callable[[StepOutput], Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
    blend: LocalBlend | None = None,
) -> Array:
    """Run contextual DDIM from x_T (N, C, h, w); returns x_0 of the same shape and dtype.

    ``context_shift=None`` means r ≡ 0 (plain DDIM). ``step_noise`` (num_steps, N, C, h, w) is required when
    any step has σ > 0 (η > 0); see :mod:`runtime.noise` for the order it is drawn in.
    ``progress`` wraps the step range (e.g. ``tqdm``). ``blend`` is applied to each step's result (one source
    sample per step).
    """
    if step_noise is None and any(c.sigma > 0 for c in plan.steps):
        raise ValueError("step_noise is required when eta > 0")
    if blend is not None and len(blend.source) != len(plan.steps):
        raise ValueError(f"blend.source holds {len(blend.source)} samples for a plan of {len(plan.steps)} steps")
    x = x_T
    for i in progress(range(len(plan.steps))):
        c = plan.steps[i]
        output = denoise(x, c.timestep)  # step 1
        x0, eps_total = predict_x0(output, x, c, plan)  # step 2
        r_t, r_s = context_shift(x0, c.timestep, c.adapter_prev_timestep) if context_shift else (None, None)  # step 3
        x = contextual_ddim_step(x, x0, eps_total, r_t, r_s, c, None if step_noise is None else step_noise[i])  # 4-6
        if blend is not None:
            x = blend(x, i)
        if callback is not None:
            callback(StepOutput(i, c.timestep, c.prev_timestep, x, x0))
    return x


def invert(
    denoise: Denoiser,
    context_shift: ContextShift | None,
    x_0: Array,
    plan: InversionPlan,
    *,
    callback: Callable[[StepOutput], Any] | None = None,
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
) -> Array:
    """Contextual DDIM inversion (method doc §7) of x_0 (N, C, h, w) up to x_T, same shape and dtype.

    ``denoise`` is called without guidance in mind (the caller's denoiser for the source prompt, w = 1), at the target
    timestep of each step; ``context_shift=None`` means r ≡ 0 (diffusers' DDIMInverseScheduler). The callback sees
    each step's result as ``sample`` (its ``timestep`` is s, ``prev_timestep`` the t reached).
    """
    x = x_0
    for i in progress(range(len(plan.steps))):
        step = plan.steps[i]
        c = step.coefficients
        output = denoise(x, step.next_timestep)  # 1. o = f(x_s, t, c_src)
        x0, eps_total = predict_x0(output, x, c, plan)  # 1. x̂_0 = convert(o, x_s, s), clipped as in §5
        r_s, r_t = context_shift(x0, step.adapter_timestep, step.next_timestep) if context_shift else (None, None)  # 2.
        x = contextual_ddim_step(x, x0, eps_total, r_s, r_t, c)  # 3.–4. x_t = √ᾱ_t x̂_0 + k_t r_t + √(1 − ᾱ_t) ε̂
        if callback is not None:
            callback(StepOutput(i, step.timestep, step.next_timestep, x, x0))
    return x


def contextual_forward(context_shift: ContextShift | None, x_0: Array, noise: Array, schedule: Schedule, timesteps: Sequence[int]) -> list[Array]:
    """The contextual forward process (method doc §3) of x_0 (N, C, h, w) at each of ``timesteps`` with one noise draw ε:
    x_t = √ᾱ_t x_0 + k_t r_φ(x_0, c, t) + √(1 − ᾱ_t) ε — image-to-image's start (and, under a mask, the source's samples
    the blend keeps). The adapter is called on pairs of timesteps (its (r_t, r_s) call); ``context_shift=None``: r ≡ 0,
    diffusers' ``DDIMScheduler.add_noise``."""
    out: list[Array] = []
    for i in range(0, len(timesteps), 2):
        pair = [int(t) for t in timesteps[i : i + 2]]
        shifts = context_shift(x_0, pair[0], pair[-1]) if context_shift else (None, None)
        for t, r in zip(pair, shifts):
            c = schedule.forward_coefficients(np.array([t]))
            a, k, b = float(c.sqrt_alpha_bar[0]), float(c.shift[0]), float(c.sqrt_one_minus_alpha_bar[0])
            out.append(a * x_0 + b * noise if r is None or k == 0 else forward_sample(x_0, r, noise, a, k, b))
    return out


def generate(
    request: GenerationRequest,
    limits: ModelLimits,
    schedule: Schedule,
    *,
    encode: Callable[[tuple[str, ...]], Array],
    denoiser: Callable[[Array, GenerationRequest], Denoiser],
    context_shift: Callable[[Array], ContextShift],
    decode: Callable[[Array, str], Any],
    to_device: Callable[[Any], Array],
    progress: Callable[[Iterable[int]], Iterable[int]] = iter,
    strength: float = 1.0,
    blend: LocalBlend | None = None,
) -> GenerationOutput:
    """The stages of one validated call, shared by the reference pipeline and runtime.Generator: encode the text
    ([uncond; cond] when guiding), draw the noise (runtime.noise), move it to the device once (``to_device``),
    sample (the last steps only when ``strength`` < 1: the latents are then x at the first of them), decode.
    ``context_shift(text)`` makes the adapter's step 3 for text states of k·N rows: the conditional text, or with
    guidance and the "guided" variant (the request's, else the schedule config's) both texts."""
    n = request.batch_size
    text = encode(request.negative_prompts + request.prompts if request.do_guidance else request.prompts)
    variant = request.contextual_guidance or schedule.config.contextual_guidance
    if request.do_guidance and variant is ContextualGuidance.GUIDED:
        shift = guided_context_shift(context_shift(text), n, request.guidance_scale)
    else:
        shift = context_shift(text[n:] if request.do_guidance else text)
    f = limits.vae_scale_factor
    sample_shape = (limits.sample_channels, request.height // f, request.width // f)
    initial, step_noise = draw_noise_parts(request.noise_parts, sample_shape, request.num_inference_steps, request.eta)
    x0 = sample(
        denoiser(text, request), shift, to_device(initial if request.latents is None else request.latents),
        schedule.plan(request.num_inference_steps, request.eta, strength), step_noise=None if step_noise is None else to_device(step_noise),
        callback=request.callback, progress=progress, blend=None if blend is None else blend.to(to_device),
    )  # fmt: skip
    return GenerationOutput(images=decode(x0, request.output_type), seed=request.seed)
