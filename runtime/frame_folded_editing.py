"""What the reference ``contextdiff_ref.video.pipeline.VideoEditPipeline`` and :class:`runtime.video_editor.VideoEditor`
share: an edit is an image pipeline run on a video's F frames folded into the batch (method doc §7), so checking the
frames, :meth:`FrameFoldedEditing.edit` (invert, then sample) and :meth:`FrameFoldedEditing.sample` are one code over
either image pipeline — the reference ``ContextDiffPipeline`` or the engine-backed ``Generator``, which take the same
call arguments. Only the inversion (steps 1–2), which encodes the frames where each pipeline keeps them, is the
subclasses' own. Step caching (``cache_interval``, :mod:`runtime.step_cache`) applies to the sampling pass only, as
for image edits: the inversion runs every step in full. Torch-free.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.noise import draw_noise, resolve_seed
from runtime.sampling import LocalBlend, StepOutput
from runtime.validation import inverted_size, validate_caption, validate_mask, validate_video


def validate_region_noise(value: Any, has_region: bool, region: str = "mask=") -> float:
    """``region_noise``: a number in [0, 1]; above 0 only with a region (``region`` names how one is given)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidArgumentError("region_noise", value, "a number in [0, 1] (0: edit from the inversion alone, 1: the region from fresh noise)")
    if value > 0 and not has_region:
        raise InvalidArgumentError("region_noise", value, f"0 without a region to apply it to (give {region} too)")
    return float(value)


def to_host(array: Any) -> np.ndarray:
    """A float32 NumPy copy of a loop array (torch, CuPy or NumPy)."""
    if hasattr(array, "detach"):  # torch
        array = array.detach().float().cpu().numpy()
    elif hasattr(array, "get") and not isinstance(array, np.ndarray):  # CuPy
        array = array.get()
    return np.array(array, dtype=np.float32)


def recorder(trajectory: list[np.ndarray]) -> Callable[[StepOutput], None]:
    """An inversion callback appending each step's result to ``trajectory`` on the host; ``trajectory`` must be the
    empty list an ``invert(..., trajectory=)`` call was given (else an error naming it)."""
    if not isinstance(trajectory, list) or trajectory:
        shown = f"a list of {len(trajectory)} samples" if isinstance(trajectory, list) else type(trajectory).__name__
        raise InvalidArgumentError("trajectory", shown, "an empty list, which invert fills with its samples (x_0 first, x_T last)")

    def record(out: StepOutput) -> None:
        trajectory.append(to_host(out.sample))

    return record


def region_blend(mask: np.ndarray, x_T: np.ndarray, trajectory: list[np.ndarray], region_noise: float,
                 seed: int | None) -> tuple[LocalBlend, np.ndarray, int | None]:  # fmt: skip
    """The local blend of an edit confined to ``mask`` (N, H, W) in [0, 1] — for videos and images alike: the region in
    the sample space is the pixels' max over each VAE cell; ``trajectory`` the source's samples x_0, …, x_T (an
    inversion's, or an image-to-image forward process's) with ``x_T`` last. ``region_noise`` λ > 0 mixes the initial
    noise draw of ``seed`` into ``x_T`` inside the region: x_T ← m · (√(1 − λ) · x_T + √λ · ε) + (1 − m) · x_T.
    Returns (blend, x_T, seed), the seed resolved where noise was drawn."""
    n, h, w = x_T.shape[0], x_T.shape[2], x_T.shape[3]
    f = mask.shape[1] // h  # the VAE's factor
    cells = mask.reshape(n, h, f, w, f).max(axis=(2, 4))
    blend = LocalBlend(cells[:, None].astype(np.float32), trajectory[:-1])
    if region_noise > 0:
        seed = resolve_seed(seed)
        noise, _ = draw_noise(seed, tuple(x_T.shape), 0, 0.0)
        x_T = blend.mask * (np.float32(np.sqrt(1 - region_noise)) * x_T + np.float32(np.sqrt(region_noise)) * noise) + (1 - blend.mask) * x_T
    return blend, x_T, seed


class FrameFoldedEditing:
    """Base of the two video editors: subclasses give ``num_frames``, ``image_pipeline`` (called like
    ``Generator.__call__``, with ``limits``) and :meth:`invert`."""

    @property
    def num_frames(self) -> int:
        raise NotImplementedError

    @property
    def image_pipeline(self) -> Any:
        raise NotImplementedError

    def invert(self, video: np.ndarray, source_prompt: str, num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True, trajectory: list[np.ndarray] | None = None) -> np.ndarray:  # fmt: skip
        """Steps 1–2: x_T (F, C, h, w) float32 of the frames, inverted with the source prompt (x_t part way for
        ``strength`` < 1). ``trajectory``, when given (an empty list), receives the inversion's samples on the host,
        x_0 first and x_T last — what :meth:`sample` blends with under a ``mask``."""
        raise NotImplementedError

    def check_video(self, video: np.ndarray) -> np.ndarray:
        """The frames as float32 (F, H, W, 3) in [0, 1], or an error saying what the model takes."""
        return validate_video(video, self.num_frames, self.image_pipeline.limits)

    def edit(self, video: np.ndarray, source_prompt: str, prompt: str, num_inference_steps: int = 50, guidance_scale: float | None = None,
             seed: int | None = None, *, strength: float = 1.0, negative_prompt: str | None = None, eta: float = 0.0,
             mask: np.ndarray | None = None, region_noise: float = 0.0, cache_interval: int = 1, progress: bool = True) -> np.ndarray:  # fmt: skip
        """Frames (F, H, W, 3) float32 in [0, 1] of ``video`` edited from ``source_prompt`` to ``prompt``: :meth:`invert`,
        then 3. contextual DDIM (§5) with the edited prompt and classifier-free guidance.
        ``guidance_scale=None`` uses the model's recommendation (7.5 if none); ``seed`` draws the step noise when
        ``eta`` > 0 (with eta = 0 the edit is deterministic). ``strength`` < 1 inverts only part way and samples back
        from there (the last ⌊n · strength⌋ of n steps, diffusers' image-to-image rule): it keeps more of the
        source's structure; 1 is method doc §7 as written. ``negative_prompt`` is the unconditional branch of the
        guidance (e.g. the source prompt, steering away from what the edit replaces). ``mask`` (F, H, W) in [0, 1]
        confines the edit (local blending, :class:`runtime.sampling.LocalBlend`): where it is 0 every step keeps the
        source's inversion trajectory, so the frames come back as the source there. ``region_noise`` λ in [0, 1] (with
        a ``mask``) mixes fresh noise from ``seed`` into x_T inside it (:meth:`sample`): 1 draws the region anew, so
        the edit is not held to the source's shape there. ``cache_interval`` k > 1: step caching (DeepCache) in the
        sampling pass, only its steps 0, k, 2k, ... run the whole (inflated) UNet (:meth:`sample`); 1 is the exact path.

        The sampling call's arguments are checked before the inversion runs (the pipeline's ``validate``: an engine
        directory without step caching's graphs refuses ``cache_interval`` > 1 there)."""
        validate_caption("prompt", prompt)
        validate_region_noise(region_noise, mask is not None)
        frames = self.check_video(video)
        if mask is not None:
            validate_mask(mask, frames)
        negative = None if negative_prompt is None else [negative_prompt] * self.num_frames
        self.image_pipeline.validate([prompt] * self.num_frames, negative_prompt=negative, num_inference_steps=num_inference_steps,
                                     guidance_scale=guidance_scale, eta=eta, seed=0, height=frames.shape[1], width=frames.shape[2],
                                     cache_interval=cache_interval)  # seed 0 stands in: sample() resolves the real one  # fmt: skip
        trajectory: list[np.ndarray] | None = None if mask is None else []
        x_T = self.invert(video, source_prompt, num_inference_steps, strength=strength, progress=progress, trajectory=trajectory)
        return self.sample(x_T, prompt, num_inference_steps, guidance_scale, seed, strength=strength, negative_prompt=negative_prompt, eta=eta,
                           mask=mask, region_noise=region_noise, trajectory=trajectory, cache_interval=cache_interval, progress=progress)  # fmt: skip

    def sample(self, x_T: np.ndarray, prompt: str, num_inference_steps: int = 50, guidance_scale: float | None = None, seed: int | None = None,
               *, strength: float = 1.0, negative_prompt: str | None = None, eta: float = 0.0, mask: np.ndarray | None = None,
               region_noise: float = 0.0, trajectory: list[np.ndarray] | None = None, cache_interval: int = 1,
               progress: bool = True) -> np.ndarray:  # fmt: skip
        """Step 3 of :meth:`edit` from :meth:`invert`'s x_T (with the same steps and ``strength``): one inversion
        serves several edits of a video (and several cache intervals). A ``mask`` needs the ``trajectory`` that
        :meth:`invert` filled.

        ``cache_interval`` k (an integer >= 1; :func:`runtime.step_cache.full_step_plan`): the sampling steps 0, k,
        2k, ... run the whole inflated UNet and keep the deep feature at the split (DeepCache's skip branch 1); the others run only
        its outer layers on that feature (method doc §5: step 1 approximated; steps 2–6, the adapter included, run on every
        step). 1, the default, is the exact path, bitwise.

        ``region_noise`` λ > 0 (Blended Latent Diffusion's start, made partial): before sampling, inside the mask
        (its values m as weights) x_T ← m · (√(1 − λ) · x_T + √λ · ε) + (1 − m) · x_T, with ε the initial-noise draw
        of ``seed`` (:mod:`runtime.noise`, draw 1). The inverted x_T keeps the source object's outline even at
        strength 1, and an edit to another shape inherits it; noise in the region frees it, while the blend still
        holds everything outside to the source. ``seed=None`` draws a fresh seed (logged)."""
        validate_caption("prompt", prompt)
        validate_region_noise(region_noise, mask is not None)
        height, width = inverted_size(x_T, self.num_frames, self.image_pipeline.limits)
        blend = None
        if mask is not None:
            mask = validate_mask(mask, np.empty((self.num_frames, height, width, 3), np.float32))
            wanted = "the list invert(..., trajectory=) filled for this x_T, with the same num_inference_steps and strength (a mask needs it)"
            if not isinstance(trajectory, list) or not trajectory:
                raise InvalidArgumentError("trajectory", trajectory if not isinstance(trajectory, list) else "an empty list", wanted)
            steps = len(self.image_pipeline.schedule.plan(num_inference_steps, strength=strength).steps)
            if len(trajectory) != steps + 1 or not np.array_equal(trajectory[-1], x_T):
                raise InvalidArgumentError("trajectory", f"{len(trajectory)} samples ending {'at' if np.array_equal(trajectory[-1], x_T) else 'elsewhere than'} this x_T",
                                           f"{wanted}: {steps + 1} samples ending at x_T")  # fmt: skip
            blend, x_T, seed = region_blend(mask, x_T, trajectory, region_noise, seed)
        negative = None if negative_prompt is None else [negative_prompt] * self.num_frames
        out = self.image_pipeline([prompt] * self.num_frames, negative, num_inference_steps, guidance_scale, eta=eta, seed=seed, latents=x_T,
                                  height=height, width=width, strength=strength, progress=progress, blend=blend, cache_interval=cache_interval)  # fmt: skip
        return out.images
