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

from dataclasses import dataclass, replace
from typing import Any, Protocol, Sequence

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.frame_folded_editing import recorder, region_blend, validate_region_noise
from runtime.images import GenerationOutput, to_images
from runtime.sampling import LocalBlend
from runtime.noise import draw_noise, resolve_seed
from runtime.schedule import Schedule
from runtime.validation import GenerationRequest, ModelLimits, validate_caption, validate_image, validate_image_mask

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


@dataclass(frozen=True)
class EditCall:
    """A checked edit (:func:`check_edit`): its image and region, and the sampling call it ends in (``request``, the
    validated arguments of the pipeline's call for this image's size, its seed resolved)."""

    pixels: np.ndarray  # (H, W, 3) float32 in [0, 1]
    region: np.ndarray | None  # (H, W) float32 in [0, 1]
    request: GenerationRequest
    mode: str
    source_prompt: str | None
    strength: float
    region_noise: float
    clip_sample: bool | None

    @property
    def batch_key(self) -> tuple:
        """Edits with equal keys can share one sampling pass (:func:`merge_edits`)."""
        return (*self.request.batch_key, self.strength, self.clip_sample, self.region is not None)


@dataclass(frozen=True)
class PreparedEdit:
    """An edit up to its sampling pass: the sample it starts from and, under a mask, the blend that keeps the source."""

    call: EditCall
    latents: np.ndarray  # (1, C, h, w) float32: x at the first step sampling runs
    blend: LocalBlend | None


def check_edit(pipe: ImagePipeline, image: Any, prompt: str, *, mode: str = "img2img", source_prompt: str | None = None, mask: Any = None,
               strength: float | None = None, region_noise: float = 0.0, num_inference_steps: int = 50, clip_sample: bool | None = False,
               seed: int | None = None, high_seed: int = 2**63, **call: Any) -> EditCall:  # fmt: skip
    """Every argument of an edit checked before anything runs (InvalidArgumentError naming it). ``call``: the sampling
    arguments (guidance_scale, eta, negative_prompt, output_type, contextual_guidance, cache_interval); ``seed`` None draws one below
    ``high_seed``."""
    if mode not in MODES:
        raise InvalidArgumentError("mode", mode, f"one of {', '.join(map(repr, MODES))}")
    validate_caption("prompt", prompt)
    if mode == "invert":
        validate_caption("source_prompt", source_prompt)
    elif source_prompt is not None:
        raise InvalidArgumentError("source_prompt", source_prompt, "None in mode 'img2img' (only mode 'invert' inverts with a source prompt)")
    if clip_sample not in (None, True, False):
        raise InvalidArgumentError("clip_sample", clip_sample, "None (the model's setting), True or False")
    pixels = validate_image(image)
    height, width = pixels.shape[:2]
    region = None if mask is None else validate_image_mask(mask, height, width)
    validate_region_noise(region_noise, region is not None)
    strength = DEFAULT_STRENGTH[mode] if strength is None else strength
    pipe.schedule.strength_steps(num_inference_steps, strength)  # (0, 1], at least one step; names `strength`
    seed = resolve_seed(None, high_seed) if seed is None else seed  # drawn (and logged) once
    try:
        request = pipe.validate(prompt, num_inference_steps=num_inference_steps, height=height, width=width, seed=seed, **call)
    except InvalidArgumentError as exc:
        if exc.name not in ("height", "width", "prompt/height/width"):
            raise
        raise InvalidArgumentError("image", f"an image of {width}x{height} (width x height)", f"a size the model takes: {exc.allowed}") from None
    return EditCall(pixels, region, request, mode, source_prompt, float(strength), float(region_noise), clip_sample)


def prepare_edit(pipe: ImagePipeline, call: EditCall, *, progress: bool = True) -> PreparedEdit:
    """Encode the image; bring it to the first step sampling runs (mode img2img: the contextual forward process; invert:
    the inversion with the source prompt); under a mask, the source's samples for the blend and the region noise."""
    r = call.request
    x_0 = pipe.encode_images(call.pixels[None])
    trajectory: list[np.ndarray] = [x_0]  # the source's samples, x_0 first, the start of sampling last
    if call.mode == "img2img":
        plan = pipe.schedule.plan(r.num_inference_steps, r.eta, call.strength)
        landing = [c.prev_timestep for c in plan.steps[:-1]][::-1] if call.region is not None else []  # the blend's x_s, ascending
        noise, _ = draw_noise(r.seed, tuple(x_0.shape), 0, 0.0)
        trajectory += pipe.contextual_forward(x_0, r.prompts[0], [*landing, plan.steps[0].timestep], noise)
    else:
        steps: list[np.ndarray] = []  # the inversion's samples under a mask (the blend's source), x_T last
        x_T = pipe.invert(x_0, [call.source_prompt], r.num_inference_steps, strength=call.strength, progress=progress, clip_sample=call.clip_sample,
                          callback=None if call.region is None else recorder(steps))  # fmt: skip
        trajectory += [*steps[:-1], x_T]
    x_start, blend = trajectory[-1], None
    if call.region is not None:
        blend, x_start, _ = region_blend(call.region[None], x_start, trajectory, call.region_noise, r.seed)
    return PreparedEdit(call, np.ascontiguousarray(x_start, dtype=np.float32), blend)


def sampling_call(edit: PreparedEdit) -> dict[str, Any]:
    """The keyword arguments of ``Generator.run`` that sample ``edit`` (its request with its latents)."""
    output_type = "np" if edit.call.region is not None and edit.call.request.output_type != "latent" else edit.call.request.output_type
    return dict(request=replace(edit.call.request, latents=edit.latents, output_type=output_type), strength=edit.call.strength, blend=edit.blend,
                clip_sample=edit.call.clip_sample)  # fmt: skip


def merge_edits(edits: Sequence[PreparedEdit]) -> dict[str, Any]:
    """One sampling pass for edits with one :attr:`EditCall.batch_key` (``Generator.run`` keyword arguments): their
    requests merged (runtime.validation.merge_requests stacks the latents), their blends stacked; every row computes as
    it does alone."""
    from runtime.validation import merge_requests

    calls = [sampling_call(e) for e in edits]
    blends = [c["blend"] for c in calls]
    blend = None if blends[0] is None else LocalBlend(np.concatenate([b.mask for b in blends]),
                                                      [np.concatenate(parts) for parts in zip(*(b.source for b in blends))])  # fmt: skip
    return dict(calls[0], request=merge_requests([c["request"] for c in calls]), blend=blend)


def finish_edit(edit: PreparedEdit, images: Any, seed: int) -> GenerationOutput:
    """The sampled images of ``edit`` as its result: under a mask composited with the image in pixels, so the image
    comes back exactly where the mask is 0."""
    output_type = edit.call.request.output_type
    if edit.call.region is None or output_type == "latent":
        return GenerationOutput(images=images, seed=seed)
    m = edit.call.region[None, :, :, None]
    composed = m * images + (1 - m) * edit.call.pixels[None]  # exactly the image where m = 0
    return GenerationOutput(images=composed if output_type == "np" else to_images(composed.transpose(0, 3, 1, 2) * 2 - 1, output_type), seed=seed)


def run_edits(pipe: ImagePipeline, calls: Sequence[EditCall], *, progress: bool = False) -> list[GenerationOutput]:
    """Several checked edits with one :attr:`EditCall.batch_key`: each prepared alone (:func:`prepare_edit`), then one
    sampling pass for all (:func:`merge_edits`); each gets exactly the output of :func:`edit_image` alone (the engines
    compute batch rows independently, as ``Generator.run_batch`` relies on; asserted in tests/serving/test_edits.py)."""
    edits = [prepare_edit(pipe, c, progress=progress) for c in calls]
    images = pipe.run(**merge_edits(edits), progress=progress).images
    return [finish_edit(e, images[i : i + 1], e.call.request.seed) for i, e in enumerate(edits)]


def edit_image(pipe: ImagePipeline, image: Any, prompt: str, *, mode: str = "img2img", source_prompt: str | None = None, mask: Any = None,
               strength: float | None = None, region_noise: float = 0.0, num_inference_steps: int = 50, guidance_scale: float | None = None,
               seed: int | None = None, negative_prompt: str | None = None, eta: float = 0.0, output_type: str = "np",
               contextual_guidance: str | None = None, clip_sample: bool | None = False, cache_interval: int = 1,
               progress: bool = True) -> GenerationOutput:  # fmt: skip
    """``image`` edited towards ``prompt``; returns a GenerationOutput with one image (``images`` (1, H, W, 3) for "np").
    ``strength`` (0, 1]: the fraction of the ``num_inference_steps`` run (None: 0.8 for img2img, 1 for invert);
    ``mask`` (H, W) in [0, 1]: where the edit may change the image; ``region_noise`` λ in [0, 1] with a mask;
    ``seed``: the noise (img2img's ε is the seed's initial-noise draw, :mod:`runtime.noise`). ``clip_sample``: x̂_0
    clipping, off by default as for video edits (it makes DDIM inversion lossy); None: the model's setting.
    ``cache_interval``: step caching of the sampling pass (the inversion runs every step in full)."""
    call = check_edit(pipe, image, prompt, mode=mode, source_prompt=source_prompt, mask=mask, strength=strength, region_noise=region_noise,
                      num_inference_steps=num_inference_steps, clip_sample=clip_sample, seed=seed, guidance_scale=guidance_scale, eta=eta,
                      negative_prompt=negative_prompt, output_type=output_type, contextual_guidance=contextual_guidance,
                      cache_interval=cache_interval)  # fmt: skip
    edit = prepare_edit(pipe, call, progress=progress)
    sampled = pipe.run(**sampling_call(edit), progress=progress)
    return finish_edit(edit, sampled.images, sampled.seed)


__all__ = ["DEFAULT_STRENGTH", "MODES", "EditCall", "PreparedEdit", "check_edit", "edit_image", "finish_edit", "merge_edits", "prepare_edit", "run_edits", "sampling_call"]
