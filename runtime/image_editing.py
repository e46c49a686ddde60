"""Editing one image (issue 37): image-to-image, inversion edits and inpainting — one implementation over either image
pipeline, the reference ``ContextDiffPipeline`` or the engine-backed ``runtime.Generator`` (``.edit`` of each calls
:func:`edit_image`). Torch-free.

Modes (``mode=``):
- ``"img2img"``: x_0 (the image encoded) is brought to the first timestep that ``strength`` runs by the *contextual*
  forward process (method doc §3, :func:`runtime.sampling.contextual_forward`, the edited prompt's text), then sampled
  with the prompt (§5). With r ≡ 0 this is diffusers' ``StableDiffusionImg2ImgPipeline`` with DDIM.
- ``"invert"``: contextual DDIM inversion with ``source_prompt`` up to that timestep, then sampling with the edited
  prompt (§7) — what the video editor does for frames.
Either mode with a ``mask`` is inpainting: local blending keeps the source's trajectory outside the mask
(:func:`runtime.frame_folded_editing.region_blend`, the video editor's), ``region_noise`` mixes fresh noise inside,
and the result is composited with the image in pixels, so outside the mask the image comes back unchanged.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.frame_folded_editing import recorder, region_blend, validate_region_noise
from runtime.images import GenerationOutput, to_images
from runtime.noise import draw_noise, resolve_seed
from runtime.schedule import Schedule
from runtime.validation import OUTPUT_TYPES, ModelLimits, validate_caption, validate_image, validate_image_mask

MODES = ("img2img", "invert")
DEFAULT_STRENGTH = {"img2img": 0.8, "invert": 1.0}  # diffusers' image-to-image default; the whole inversion (§7)


class ImagePipeline(Protocol):
    """What :func:`edit_image` uses of a pipeline (``ContextDiffPipeline``, ``runtime.Generator``)."""

    limits: ModelLimits
    schedule: Schedule

    def validate(self, prompt: str | Sequence[str], **kwargs: Any) -> Any: ...
    def encode_images(self, images: np.ndarray) -> np.ndarray: ...
    def contextual_forward(self, x_0: np.ndarray, prompt: str, timesteps: Sequence[int], noise: np.ndarray) -> list[np.ndarray]: ...
    def invert(self, sample: np.ndarray, prompt: str | Sequence[str], num_inference_steps: int = 50, **kwargs: Any) -> np.ndarray: ...
    def __call__(self, prompt: str | Sequence[str], *args: Any, **kwargs: Any) -> GenerationOutput: ...


def check_edit(pipe: ImagePipeline, image: Any, prompt: str, *, mode: str, source_prompt: str | None, mask: Any, strength: float | None,
               region_noise: float, num_inference_steps: int, **call: Any) -> tuple[np.ndarray, np.ndarray | None, float]:  # fmt: skip
    """Every argument of an edit checked before anything runs: (image (H, W, 3) float32, mask (H, W) float32 or None,
    strength). ``call``: the sampling arguments (guidance_scale, seed, eta, negative_prompt, output_type, ...)."""
    if mode not in MODES:
        raise InvalidArgumentError("mode", mode, f"one of {', '.join(map(repr, MODES))}")
    validate_caption("prompt", prompt)
    if mode == "invert":
        validate_caption("source_prompt", source_prompt)
    elif source_prompt is not None:
        raise InvalidArgumentError("source_prompt", source_prompt, "None in mode 'img2img' (only mode 'invert' inverts with a source prompt)")
    pixels = validate_image(image)
    height, width = pixels.shape[:2]
    region = None if mask is None else validate_image_mask(mask, height, width)
    validate_region_noise(region_noise, region is not None)
    strength = DEFAULT_STRENGTH[mode] if strength is None else strength
    pipe.schedule.strength_steps(num_inference_steps, strength)  # (0, 1], at least one step; names `strength`
    try:
        pipe.validate(prompt, num_inference_steps=num_inference_steps, height=height, width=width, **call)
    except InvalidArgumentError as exc:
        if exc.name not in ("height", "width", "prompt/height/width"):
            raise
        raise InvalidArgumentError("image", f"an image of {width}x{height} (width x height)", f"a size the model takes: {exc.allowed}") from None
    return pixels, region, float(strength)


def edit_image(pipe: ImagePipeline, image: Any, prompt: str, *, mode: str = "img2img", source_prompt: str | None = None, mask: Any = None,
               strength: float | None = None, region_noise: float = 0.0, num_inference_steps: int = 50, guidance_scale: float | None = None,
               seed: int | None = None, negative_prompt: str | None = None, eta: float = 0.0, output_type: str = "np",
               contextual_guidance: str | None = None, progress: bool = True) -> GenerationOutput:  # fmt: skip
    """``image`` edited towards ``prompt``; returns a GenerationOutput with one image (``images`` (1, H, W, 3) for "np").
    ``strength`` (0, 1]: the fraction of the ``num_inference_steps`` run (None: 0.8 for img2img, 1 for invert);
    ``mask`` (H, W) in [0, 1]: where the edit may change the image; ``region_noise`` λ in [0, 1] with a mask;
    ``seed``: the noise (img2img's ε is the seed's initial-noise draw, :mod:`runtime.noise`)."""
    call = dict(guidance_scale=guidance_scale, seed=seed, eta=eta, negative_prompt=negative_prompt, output_type=output_type,
                contextual_guidance=contextual_guidance)  # fmt: skip
    pixels, region, strength = check_edit(pipe, image, prompt, mode=mode, source_prompt=source_prompt, mask=mask, strength=strength,
                                          region_noise=region_noise, num_inference_steps=num_inference_steps, **call)  # fmt: skip
    height, width = pixels.shape[:2]
    seed = resolve_seed(seed)
    x_0 = pipe.encode_images(pixels[None])
    trajectory: list[np.ndarray] = [x_0]  # the source's samples, x_0 first, the start of sampling last
    if mode == "img2img":
        plan = pipe.schedule.plan(num_inference_steps, eta, strength)
        landing = [c.prev_timestep for c in plan.steps[:-1]][::-1] if region is not None else []  # the blend's x_s, ascending
        noise, _ = draw_noise(seed, tuple(x_0.shape), 0, 0.0)
        trajectory += pipe.contextual_forward(x_0, prompt, [*landing, plan.steps[0].timestep], noise)
    else:
        steps: list[np.ndarray] = []  # the inversion's samples under a mask (the blend's source), x_T last
        x_T = pipe.invert(x_0, [source_prompt], num_inference_steps, strength=strength, progress=progress,
                          callback=None if region is None else recorder(steps))  # fmt: skip
        trajectory += [*steps[:-1], x_T]
    x_start, blend = trajectory[-1], None
    if region is not None:
        blend, x_start, _ = region_blend(region[None], x_start, trajectory, region_noise, seed)
    sampled_type = "np" if region is not None and output_type != "latent" else output_type
    out = pipe(prompt, negative_prompt, num_inference_steps, guidance_scale, eta=eta, seed=seed, latents=np.ascontiguousarray(x_start, dtype=np.float32),
               height=height, width=width, output_type=sampled_type, strength=strength, progress=progress, blend=blend,
               contextual_guidance=contextual_guidance)  # fmt: skip
    if region is None or output_type == "latent":
        return out
    m = region[None, :, :, None]
    composed = m * out.images + (1 - m) * pixels[None]  # exactly the image where m = 0
    return GenerationOutput(images=composed if output_type == "np" else to_images(composed.transpose(0, 3, 1, 2) * 2 - 1, output_type), seed=out.seed)


__all__ = ["DEFAULT_STRENGTH", "MODES", "OUTPUT_TYPES", "check_edit", "edit_image"]
