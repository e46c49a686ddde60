"""Argument validation shared by the reference pipeline and the runtime: one set of rules, one message style.

Every check raises :class:`runtime.errors.InvalidArgumentError` naming the argument, its value and what is
allowed. Nothing here imports torch.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np

from runtime.errors import InvalidArgumentError
from runtime.noise import resolve_seed
from runtime.schedule import ContextualGuidance
from runtime.step_cache import validate_cache_interval

OUTPUT_TYPES = ("np", "pil", "latent")
DEFAULT_GUIDANCE_SCALE = 7.5


@dataclass(frozen=True)
class ModelLimits:
    """What a loaded model supports, as far as call arguments are concerned."""

    num_train_timesteps: int
    sample_channels: int  # C of the sampled tensor (latent channels, or 3 in pixel space)
    default_height: int  # output image size in pixels
    default_width: int
    pixel_factor: int  # height and width must be multiples of this
    vae_scale_factor: int  # pixels per sample element (1 in pixel space)
    recommended_guidance_scale: float | None = None
    max_size_ratio: int = 8  # height/width at most this many times the default (a typo must not exhaust memory)


@dataclass(frozen=True)
class GenerationRequest:
    """A validated call: prompts as tuples, every default resolved."""

    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    num_inference_steps: int
    guidance_scale: float
    eta: float
    seed: int
    height: int
    width: int
    output_type: str
    latents: np.ndarray | None
    callback: Callable[..., Any] | None
    seed_parts: tuple[tuple[int, int], ...] = ()  # (seed, images) per joined call (merge_requests); () for one call
    contextual_guidance: ContextualGuidance | None = None  # None: the model's (its scheduler config's) variant
    cache_interval: int = 1  # step caching (runtime.step_cache): every k-th step runs the whole UNet; 1: every step

    @property
    def batch_size(self) -> int:
        return len(self.prompts)

    @property
    def noise_parts(self) -> tuple[tuple[int, int], ...]:
        """(seed, images) per call whose noise this request draws (runtime.noise.draw_noise_parts)."""
        return self.seed_parts or ((self.seed, self.batch_size),)

    @property
    def batch_key(self) -> tuple[int, float, float, int, int, str, str | None, int]:
        """Requests with equal keys can share one engine call (merge_requests): the step caching plan is one per call too."""
        variant = None if self.contextual_guidance is None else self.contextual_guidance.value
        return self.num_inference_steps, self.guidance_scale, self.eta, self.height, self.width, self.output_type, variant, self.cache_interval

    @property
    def do_guidance(self) -> bool:
        """Classifier-free guidance needs the unconditional branch unless w == 1 (o = o_c then)."""
        return self.guidance_scale != 1.0


def _prompts(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)):
        if not value:
            raise InvalidArgumentError(name, value, "a string or a non-empty list of strings")
        bad = [p for p in value if not isinstance(p, str)]
        if bad:
            raise InvalidArgumentError(name, value, f"every item must be a string; got {type(bad[0]).__name__}")
        return tuple(value)
    raise InvalidArgumentError(name, value, "a string or a non-empty list of strings ('' is the unconditional prompt)")


def _negative_prompts(value: Any, count: int) -> tuple[str, ...]:
    if value is None:
        return ("",) * count
    negatives = _prompts("negative_prompt", value)
    if len(negatives) == 1 and count > 1 and isinstance(value, str):
        return negatives * count
    if len(negatives) != count:
        raise InvalidArgumentError("negative_prompt", value, f"None, one string, or a list of {count} strings (one per prompt)")
    return negatives


def _integer(name: str, value: Any, low: int, high: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low or (high is not None and value > high):
        raise InvalidArgumentError(name, value, what)
    return int(value)


def _real(name: str, value: Any, low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or not low <= value <= high:
        raise InvalidArgumentError(name, value, what)
    return float(value)


def _size(name: str, value: Any, default: int, factor: int, ratio: int) -> int:
    if value is None:
        return default
    what = f"a positive integer multiple of {factor} (the model's size factor) up to {ratio * default}, or None for {default}"
    size = _integer(name, value, factor, ratio * default, what)
    if size % factor:
        raise InvalidArgumentError(name, value, what)
    return size


def validate_contextual_guidance(value: Any) -> ContextualGuidance | None:
    """``contextual_guidance``: None (the model's variant), or "conditional" / "guided" (method doc §5)."""
    if value is None or isinstance(value, ContextualGuidance):
        return value
    try:
        return ContextualGuidance(value)
    except (ValueError, TypeError):
        allowed = ", ".join(repr(v.value) for v in ContextualGuidance)
        raise InvalidArgumentError("contextual_guidance", value, f"None (the model's choice) or one of {allowed}") from None


def _latents(value: Any, shape: tuple[int, ...]) -> np.ndarray | None:
    if value is None:
        return None
    if not hasattr(value, "__array__") or not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise InvalidArgumentError("latents", type(value).__name__, f"a float32 array of shape {shape}")
    if tuple(value.shape) != shape:
        raise InvalidArgumentError("latents", f"array of shape {tuple(value.shape)}", f"shape {shape} (batch, channels, height/f, width/f)")
    array = np.asarray(value)
    if array.dtype != np.float32:
        raise InvalidArgumentError("latents", f"array of dtype {array.dtype}", "dtype float32")
    if not np.all(np.isfinite(array)):
        raise InvalidArgumentError("latents", "array with NaN or inf", "finite values")
    return array


def validate_request(
    limits: ModelLimits,
    *,
    prompt: str | Sequence[str],
    negative_prompt: str | Sequence[str] | None = None,
    num_inference_steps: int = 50,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    seed: int | None = None,
    latents: Any = None,
    height: int | None = None,
    width: int | None = None,
    output_type: str = "np",
    callback: Callable[..., Any] | None = None,
    contextual_guidance: str | ContextualGuidance | None = None,
    cache_interval: int = 1,
) -> GenerationRequest:
    """Check every argument of a generation call against ``limits``; resolve defaults (and the seed).
    ``contextual_guidance`` stays None when not given: the sampler then takes the model's variant. ``cache_interval``:
    step caching's k (whether the engines can cache is the engines' check, ``runtime.Generator.validate``)."""
    prompts = _prompts("prompt", prompt)
    negatives = _negative_prompts(negative_prompt, len(prompts))
    T = limits.num_train_timesteps
    steps = _integer("num_inference_steps", num_inference_steps, 1, T, f"an integer from 1 to num_train_timesteps={T}")
    if guidance_scale is None:
        guidance_scale = limits.recommended_guidance_scale or DEFAULT_GUIDANCE_SCALE
    guidance = _real("guidance_scale", guidance_scale, 0.0, math.inf, "a finite number >= 0 (1 disables guidance), or None")
    eta_value = _real("eta", eta, 0.0, 1.0, "a number in [0, 1] (0: deterministic DDIM, 1: DDPM-like)")
    if seed is not None:
        _integer("seed", seed, 0, 2**63 - 1, "None or an integer in [0, 2**63 - 1]")
    h = _size("height", height, limits.default_height, limits.pixel_factor, limits.max_size_ratio)
    w = _size("width", width, limits.default_width, limits.pixel_factor, limits.max_size_ratio)
    f = limits.vae_scale_factor
    array = _latents(latents, (len(prompts), limits.sample_channels, h // f, w // f))
    if output_type not in OUTPUT_TYPES:
        raise InvalidArgumentError("output_type", output_type, f"one of {', '.join(map(repr, OUTPUT_TYPES))}")
    if callback is not None and not callable(callback):
        raise InvalidArgumentError("callback", callback, "None or a callable taking a runtime.sampling.StepOutput")
    variant = validate_contextual_guidance(contextual_guidance)
    interval = validate_cache_interval(cache_interval)
    return GenerationRequest(
        prompts=prompts,
        negative_prompts=negatives,
        num_inference_steps=steps,
        guidance_scale=guidance,
        eta=eta_value,
        seed=resolve_seed(seed),
        height=h,
        width=w,
        output_type=output_type,
        latents=array,
        callback=callback,
        contextual_guidance=variant,
        cache_interval=interval,
    )


def merge_requests(requests: Sequence[GenerationRequest]) -> GenerationRequest:
    """One request for the prompts of several validated calls that share a ``batch_key``, each keeping its own noise
    (its seed, drawn as if alone: runtime.noise.draw_noise_parts). Calls with ``latents`` join only calls with latents
    (stacked: image edits, runtime.image_editing.merge_edits); calls with a callback cannot join."""
    if not requests:
        raise InvalidArgumentError("requests", requests, "a non-empty sequence of validated requests")
    keys = {r.batch_key for r in requests}
    if len(keys) > 1:
        raise InvalidArgumentError("requests", f"{len(requests)} requests with settings {sorted(keys)}",
                                   "requests with equal steps, guidance, eta, size, output type, contextual guidance and cache "
                                   "interval (GenerationRequest.batch_key)")  # fmt: skip
    if any(r.callback is not None for r in requests) or len({r.latents is None for r in requests}) > 1:
        raise InvalidArgumentError("requests", "a request with a callback, or some with latents and some without",
                                   "requests without callback, all with latents or all without (they cannot join a batch otherwise)")  # fmt: skip
    if len(requests) == 1:
        return requests[0]
    return replace(
        requests[0],
        latents=None if requests[0].latents is None else np.concatenate([r.latents for r in requests]),
        prompts=tuple(p for r in requests for p in r.prompts),
        negative_prompts=tuple(p for r in requests for p in r.negative_prompts),
        seed_parts=tuple(part for r in requests for part in r.noise_parts),
    )


def validate_inversion(limits: ModelLimits, *, sample: Any, prompt: str | Sequence[str], num_inference_steps: int = 50) -> GenerationRequest:
    """Check the arguments of an inversion (method doc §7): ``sample`` x_0 (N, C, h, w) float32 in the model's sample
    space, one prompt per item; no guidance (w = 1). Errors about the array name ``sample``."""
    shape = getattr(sample, "shape", None)
    if shape is None or len(shape) != 4:
        raise InvalidArgumentError("sample", type(sample).__name__ if shape is None else f"array of shape {tuple(shape)}",
                                   f"a float32 array (N, {limits.sample_channels}, h, w): x_0 in the model's sample space")  # fmt: skip
    f = limits.vae_scale_factor
    try:
        return validate_request(limits, prompt=prompt, num_inference_steps=num_inference_steps, guidance_scale=1.0, latents=sample, seed=0,
                                height=shape[2] * f, width=shape[3] * f)  # fmt: skip
    except InvalidArgumentError as exc:  # the one array argument is `sample` here
        if exc.name not in ("latents", "height", "width"):
            raise
        raise InvalidArgumentError("sample", exc.value, exc.allowed) from None


def check_strength(strength: Any, latents: Any) -> None:
    """``strength`` < 1 samples only the last steps, so it needs the x_t they start from (the range itself is checked
    by :meth:`runtime.schedule.Schedule.strength_steps`)."""
    if strength != 1.0 and latents is None:
        raise InvalidArgumentError("strength", strength, "1.0 without latents (strength < 1 starts from given latents x_t, e.g. invert's)")


def validate_video(video: Any, num_frames: int, limits: ModelLimits) -> np.ndarray:
    """A video to edit: ``num_frames`` frames (F, H, W, 3) in [0, 1], H and W multiples of the model's factor ->
    float32, or an error saying what the model takes."""
    takes = (f"{num_frames} frames of H x W x 3 in [0, 1], H and W multiples of {limits.pixel_factor} "
             f"(the model's size: {limits.default_height} x {limits.default_width})")  # fmt: skip
    shape = getattr(video, "shape", None)
    q = limits.pixel_factor
    if shape is None or len(shape) != 4 or shape[0] != num_frames or shape[3] != 3 or not shape[1] or not shape[2] or shape[1] % q or shape[2] % q:
        raise InvalidArgumentError("video", type(video).__name__ if shape is None else f"frames of shape {tuple(shape)}", takes)
    frames = np.asarray(video, dtype=np.float32)
    if not np.isfinite(frames).all() or frames.min() < 0.0 or frames.max() > 1.0:
        raise InvalidArgumentError("video", f"values in [{frames.min()}, {frames.max()}]", takes)
    return frames


def validate_mask(mask: Any, frames: np.ndarray) -> np.ndarray:
    """An edit region for ``frames`` (F, H, W, 3): (F, H, W) with values in [0, 1] (1: edit here, 0: keep the source),
    bool or numbers -> float32."""
    takes = f"an (F, H, W) = {frames.shape[:3]} array with values in [0, 1] (1 where the edit may change the video)"
    shape = getattr(mask, "shape", None)
    if shape is None or tuple(shape) != frames.shape[:3]:
        raise InvalidArgumentError("mask", type(mask).__name__ if shape is None else f"array of shape {tuple(shape)}", takes)
    values = np.asarray(mask, dtype=np.float32)
    if not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0:
        raise InvalidArgumentError("mask", f"values in [{values.min()}, {values.max()}]", takes)
    return values


def validate_caption(name: str, value: Any) -> str:
    """A video edit's source or edited prompt: a non-empty text."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgumentError(name, value, "a non-empty text describing the video (the source, or the edit)")
    return value


def inverted_size(x_T: Any, num_frames: int, limits: ModelLimits) -> tuple[int, int]:
    """(height, width) in pixels of the video an inversion's x_T (F, C, h, w) stands for (its values are checked as
    ``latents``)."""
    shape = getattr(x_T, "shape", None)
    if shape is None or len(shape) != 4 or shape[0] != num_frames:
        raise InvalidArgumentError("x_T", type(x_T).__name__ if shape is None else f"array of shape {tuple(shape)}",
                                   f"invert's result: a float32 array ({num_frames}, {limits.sample_channels}, h, w)")  # fmt: skip
    return limits.vae_scale_factor * int(shape[2]), limits.vae_scale_factor * int(shape[3])


def _pixels(name: str, value: Any, what: str) -> tuple[np.ndarray, str]:
    """A PIL image or an array -> (float32 array in [0, 1] where uint8/bool, else as given; what was found)."""
    if hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "getdata"):  # PIL, without importing it
        return np.asarray(value, dtype=np.float32) / (1.0 if value.mode == "1" else 255.0), f"a {value.mode} image of {value.size[0]}x{value.size[1]}"
    if not hasattr(value, "shape") or not hasattr(value, "dtype"):
        raise InvalidArgumentError(name, type(value).__name__, what)
    array = np.asarray(value)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    return array.astype(np.float32) / np.float32(scale), f"an array of shape {tuple(array.shape)}"


def validate_image(image: Any) -> np.ndarray:
    """An image to edit: RGB, (H, W, 3) float in [0, 1] or uint8, or a PIL image in mode RGB -> float32 (H, W, 3) in
    [0, 1]. Whether the model (and its engines) take the size is the caller's check (:func:`runtime.image_editing.edit_image`)."""
    what = "an RGB image: a PIL image in mode RGB, or an (H, W, 3) array (uint8, or float in [0, 1])"
    if hasattr(image, "mode") and getattr(image, "mode", None) != "RGB":
        raise InvalidArgumentError("image", f"a {image.mode} image", f"{what}; convert it first (image.convert('RGB'))")
    pixels, found = _pixels("image", image, what)
    if pixels.ndim != 3 or pixels.shape[2] != 3 or not pixels.shape[0] or not pixels.shape[1]:
        raise InvalidArgumentError("image", found, what)
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise InvalidArgumentError("image", f"values in [{pixels.min()}, {pixels.max()}]", what)
    return pixels


def validate_image_mask(mask: Any, height: int, width: int) -> np.ndarray:
    """An image edit's region: single-channel, ``height`` x ``width``, values in [0, 1] (1: edit here, 0: keep the
    image) — an (H, W) or (H, W, 1) array (bool, uint8 or float) or a PIL image in mode L or 1 -> float32 (H, W)."""
    what = f"a single-channel {width}x{height} mask (the image's size): a PIL image in mode L or 1, or an (H, W) array in [0, 1]"
    if hasattr(mask, "mode") and getattr(mask, "mode", None) not in ("L", "1"):
        raise InvalidArgumentError("mask", f"a {mask.mode} image (not single-channel)", what)
    pixels, found = _pixels("mask", mask, what)
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.shape != (height, width):
        raise InvalidArgumentError("mask", found, what)
    if not np.isfinite(pixels).all() or pixels.min() < 0.0 or pixels.max() > 1.0:
        raise InvalidArgumentError("mask", f"values in [{pixels.min()}, {pixels.max()}]", what)
    return pixels
