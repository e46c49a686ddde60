"""ContextDiffPipeline: the PyTorch reference sampler — the source of truth for exported engines and the runtime.

A call is five named stages: validate -> encode text -> draw noise -> contextual DDIM (runtime.sampling, on
torch tensors) -> decode. The schedule math, the noise order, argument validation and output conversion are
the runtime's own modules, so the reference and the runtime cannot drift apart in them.
"""

from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from contextdiff_ref.models.graphs import VaeEncoderGraph
from contextdiff_ref.models.model_dir import ModelComponents, load_model_dir, model_limits, save_model_dir
from contextdiff_ref.models.step_cache import CachedUNet
from contextdiff_ref.models.text import tokenize
from runtime.images import GenerationOutput, to_images
from runtime.sampling import LocalBlend, StepOutput, contextual_forward, generate, invert
from runtime.schedule import Schedule
from runtime.step_cache import DEFAULT_BRANCH, cached_unet, full_step_plan
from runtime.validation import GenerationRequest, check_strength, validate_inversion, validate_request

logger = logging.getLogger(__name__)


class ContextDiffPipeline:
    """Text-to-image ContextDiff sampling in eager PyTorch.

    >>> pipe = ContextDiffPipeline.from_pretrained("path/to/model_dir")
    >>> images = pipe("a red circle at the top left", seed=0).images  # (1, H, W, 3) float32 in [0, 1]
    """

    def __init__(self, components: ModelComponents, device: str | torch.device = "cpu") -> None:
        self.components = components
        self.schedule = Schedule(components.scheduler_config)
        self.limits = model_limits(components)
        self.device = torch.device("cpu")
        self.to(device)

    # -- loading and saving ----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike[str], *, device: str | torch.device = "cpu", torch_dtype: torch.dtype = torch.float32) -> ContextDiffPipeline:
        """Load a model directory (see :mod:`contextdiff_ref.models.model_dir`); raises ModelDirectoryError naming what is wrong."""
        return cls(load_model_dir(path, torch_dtype=torch_dtype), device=device)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write this model as a model directory (atomically; safetensors weights)."""
        save_model_dir(self.components, path)

    def to(self, device: str | torch.device) -> ContextDiffPipeline:
        self.device = torch.device(device)
        for module in self._modules():
            module.to(self.device)
        return self

    def _modules(self) -> list[torch.nn.Module]:
        c = self.components
        return [m for m in (c.text_encoder, c.unet, c.adapter, c.vae) if m is not None]

    @property
    def dtype(self) -> torch.dtype:
        return self.components.unet.dtype

    # -- stages ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode_prompt(self, prompts: Sequence[str]) -> torch.Tensor:
        """Prompts -> last hidden states (N, L, D) of the text encoder; longer prompts are truncated with a warning."""
        return self.components.text_encoder(tokenize(self.components, prompts).to(self.device))[0]

    def _denoiser(self, text: torch.Tensor, request: GenerationRequest, full: Sequence[bool] | None = None,
                  cache_branch: int = DEFAULT_BRANCH) -> Callable[[torch.Tensor, int], torch.Tensor]:  # fmt: skip
        """Method doc §5 step 1 as ``denoise(x, t)``, called once per step in order. ``full`` (one flag per step run,
        :func:`runtime.step_cache.full_step_plan`): step caching, the steps flagged False run only the UNet's outer
        layers (split at skip branch ``cache_branch``) on the feature of the last full step
        (:mod:`contextdiff_ref.models.step_cache`)."""
        predict, w = self.components.predict, request.guidance_scale
        if full is not None and not all(full):
            predict = _cached_predict(self.components, full, cache_branch)

        def denoise(x: torch.Tensor, t: int) -> torch.Tensor:  # method doc §5 step 1
            model_input = torch.cat([x, x]) if request.do_guidance else x
            output = predict(model_input.to(self.dtype), t, text).float()
            if not request.do_guidance:
                return output
            uncond, cond = output.chunk(2)
            return uncond + w * (cond - uncond)

        return denoise

    def _context_shift(self, text: torch.Tensor) -> Callable[[torch.Tensor, int, int], tuple[torch.Tensor, torch.Tensor]]:
        """Method doc §5 step 3 for text states of k·N rows: one adapter call of batch 2·k·N (r_t and r_s stacked)."""
        adapter, m = self.components.adapter, text.shape[0]
        text2 = torch.cat([text, text])
        timesteps = torch.empty(2 * m, dtype=torch.long, device=self.device)  # once per call; filled in place per step

        def shift(x0: torch.Tensor, t: int, s: int) -> tuple[torch.Tensor, torch.Tensor]:
            timesteps[:m].fill_(t)
            timesteps[m:].fill_(s)
            r = adapter(x0.repeat(2 * m // x0.shape[0], 1, 1, 1).to(self.dtype), text2, timesteps).float()
            return r[:m], r[m:]

        return shift

    @torch.no_grad()
    def decode(self, x0: torch.Tensor, output_type: str) -> Any:
        """Final sample (N, C, h, w) -> images ("np"/"pil") or the sample itself ("latent")."""
        if output_type == "latent":
            return x0.float().cpu().numpy()
        vae = self.components.vae
        if vae is not None:
            latents = x0 / vae.config.scaling_factor
            if getattr(vae.config, "shift_factor", None) is not None:
                latents = latents + vae.config.shift_factor
            x0 = vae.decode(latents.to(vae.dtype)).sample
        return to_images(x0.float().cpu().numpy(), output_type)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W, 3) float32 in [0, 1] -> x_0 (N, C, h, w) float32 in the model's sample space (pixels
        scaled to [-1, 1], or the VAE latents' mean times the scaling factor): the inverse of :meth:`decode`."""
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).permute(0, 3, 1, 2).to(self.device) * 2.0 - 1.0
        vae = self.components.vae
        if vae is None:
            return x.cpu().numpy()
        return VaeEncoderGraph(vae)(x.to(vae.dtype)).float().cpu().numpy()

    encode_images = encode  # the name runtime.image_editing uses (the runtime's encode_images returns host arrays too)

    @torch.no_grad()
    def contextual_forward(self, x_0: np.ndarray, prompt: str, timesteps: Sequence[int], noise: np.ndarray) -> list[np.ndarray]:
        """x_t = √ᾱ_t x_0 + k_t r_φ(x_0, c, t) + √(1 − ᾱ_t) ε (method doc §3) of ``x_0`` (N, C, h, w) at each of
        ``timesteps``, c the text of ``prompt``, ε = ``noise`` (one draw for all): image-to-image's start
        (:func:`runtime.sampling.contextual_forward`). float32 host arrays."""
        text = self.encode_prompt([prompt] * x_0.shape[0])
        to = lambda a: torch.from_numpy(np.array(a, dtype=np.float32)).to(self.device)  # noqa: E731
        return [x.float().cpu().numpy() for x in contextual_forward(self._context_shift(text), to(x_0), to(noise), self.schedule, timesteps)]

    def validate(self, prompt: str | Sequence[str], **kwargs: Any) -> GenerationRequest:
        """Check a call's arguments (those of ``__call__``) against the model; raises InvalidArgumentError naming the argument."""
        return validate_request(self.limits, prompt=prompt, **kwargs)

    def edit(self, image: Any, prompt: str, **kwargs: Any) -> GenerationOutput:
        """Edit one image: mode "img2img" (the contextual forward process to the ``strength`` step, then sampling),
        "invert" (inversion with ``source_prompt``, then sampling), either with a ``mask`` (inpainting) —
        :func:`runtime.image_editing.edit_image`, whose arguments it takes; ``runtime.Generator.edit`` is the same code."""
        from runtime.image_editing import edit_image

        return edit_image(self, image, prompt, **kwargs)

    @torch.no_grad()
    def invert(self, sample: np.ndarray, prompt: str | Sequence[str], num_inference_steps: int = 50, *, strength: float = 1.0,
               progress: bool = True, callback: Callable[[StepOutput], Any] | None = None, clip_sample: bool | None = None) -> np.ndarray:  # fmt: skip
        """Contextual DDIM inversion (method doc §7) of ``sample`` (N, C, h, w) float32 — x_0 in the model's sample
        space (pixels scaled to [-1, 1], or VAE latents times the scaling factor) — with ``prompt`` and no guidance,
        through the schedule's inversion plan. Returns x_T (N, C, h, w) float32: sampling from it
        (``latents=``) with the same prompt, steps and ``guidance_scale=1`` comes back close to ``sample``. With
        ``strength`` < 1 the inversion stops part way (:meth:`runtime.schedule.Schedule.strength_steps`) and returns
        x_t for sampling with the same ``strength``. ``callback`` sees each step's x_t (torch, the loop's own)."""
        request = validate_inversion(self.limits, sample=sample, prompt=prompt, num_inference_steps=num_inference_steps)
        text = self.encode_prompt(request.prompts)
        x_0 = torch.from_numpy(np.array(request.latents)).to(self.device)
        plan = self.schedule.with_clip_sample(clip_sample).inversion_plan(request.num_inference_steps, strength)
        x_T = invert(self._denoiser(text, request), self._context_shift(text), x_0, plan,
                     callback=callback, progress=lambda steps: tqdm(steps, desc="contextual DDIM inversion", disable=not progress, leave=False))  # fmt: skip
        return x_T.float().cpu().numpy()

    # -- the call --------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | Sequence[str],
        negative_prompt: str | Sequence[str] | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        eta: float = 0.0,
        seed: int | None = None,
        latents: np.ndarray | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "np",
        callback: Callable[[StepOutput], Any] | None = None,
        *,
        strength: float = 1.0,
        progress: bool = True,
        blend: LocalBlend | None = None,
        contextual_guidance: str | None = None,
        cache_interval: int = 1,
        full_steps: Sequence[int] | None = None,
        cache_branch: int = DEFAULT_BRANCH,
        clip_sample: bool | None = None,
    ) -> GenerationOutput:
        """Generate images for ``prompt`` (a string or a list of N strings).

        ``guidance_scale=None`` uses the model directory's recommendation (7.5 if none); 1 disables guidance.
        ``latents`` (N, C, h, w) float32 replaces the initial noise; all noise comes from ``seed`` in the order
        documented in :mod:`runtime.noise`. ``callback`` receives a :class:`runtime.sampling.StepOutput`
        (torch tensors) after every step. ``strength`` < 1 (with ``latents``: x at the first timestep run) samples
        only the last steps of the schedule (:meth:`runtime.schedule.Schedule.strength_steps`), as after
        :meth:`invert` with the same strength. ``blend`` (:class:`runtime.sampling.LocalBlend`, host arrays) keeps
        the sample on a source's inversion trajectory outside its mask after every step. ``contextual_guidance``
        ("conditional" or "guided", method doc §5) overrides the model's variant of guidance and the shift; ``clip_sample``
        (True/False) overrides the model's x̂_0 clipping for this call (also :meth:`invert`'s).
        ``cache_interval`` k > 1 (or ``full_steps``, the indices of the full steps among the steps run, starting with
        0): step caching (DeepCache), only every k-th step runs the whole UNet (:mod:`contextdiff_ref.models.step_cache`;
        1, the default, is the exact path), split at skip branch ``cache_branch`` (an engine directory's
        ``build.step_cache_branch``). Returns ``.images``: float32 (N, H, W, 3) in [0, 1] for "np",
        PIL images for "pil", the final sample (N, C, h, w) for "latent".
        """
        request = validate_request(
            self.limits, prompt=prompt, negative_prompt=negative_prompt, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, eta=eta, seed=seed, latents=latents, height=height, width=width,
            output_type=output_type, callback=callback, contextual_guidance=contextual_guidance, cache_interval=cache_interval,
        )
        return self.run(request, progress=progress, strength=strength, blend=blend, clip_sample=clip_sample, full_steps=full_steps,
                        cache_branch=cache_branch)  # fmt: skip

    @torch.no_grad()
    def run(self, request: GenerationRequest, *, progress: bool = True, strength: float = 1.0, blend: LocalBlend | None = None,
            clip_sample: bool | None = None, full_steps: Sequence[int] | None = None, cache_branch: int = DEFAULT_BRANCH) -> GenerationOutput:  # fmt: skip
        """Generate for a validated request (:meth:`validate`; its ``cache_interval`` is step caching's); ``strength``,
        ``blend``, ``clip_sample``, ``full_steps`` and ``cache_branch`` as in ``__call__``."""
        check_strength(strength, request.latents)
        steps_run = len(self.schedule.plan(request.num_inference_steps, request.eta, strength).steps)
        full = full_step_plan(steps_run, request.cache_interval, full_steps)
        return generate(
            request, self.limits, self.schedule.with_clip_sample(clip_sample), strength=strength, encode=self.encode_prompt,
            denoiser=lambda text, req: self._denoiser(text, req, full, cache_branch), context_shift=self._context_shift,
            decode=self.decode, to_device=lambda a: torch.from_numpy(np.array(a)).to(self.device), blend=blend,
            progress=lambda steps: tqdm(steps, desc="contextual DDIM", disable=not progress, leave=False),
        )  # fmt: skip


def _cached_predict(components: ModelComponents, full: Sequence[bool], branch: int = DEFAULT_BRANCH) -> Callable[[torch.Tensor, int, torch.Tensor], torch.Tensor]:
    """``predict(sample, t, text)`` for one run under step caching: call i is a full step where ``full[i]``, else a
    shallow one on the feature of the last full step (the runtime's own plan follower, :func:`runtime.step_cache.cached_unet`,
    over the reference's split UNet)."""
    unet = CachedUNet(components.unet, coordinates=components.unet_coordinate_channels, branch=branch)

    def run_full(feed: dict[str, Any]) -> dict[str, torch.Tensor]:
        output, feature = unet.full(feed["sample"], feed["timestep"], feed["encoder_hidden_states"])
        return {"model_output": output, "feature": feature}

    def run_shallow(feed: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"model_output": unet.shallow(feed["sample"], feed["timestep"], feed["encoder_hidden_states"], feed["feature"])}

    infer = cached_unet(SimpleNamespace(infer=run_full), SimpleNamespace(infer=run_shallow), full)
    return lambda sample, t, states: infer({"sample": sample, "timestep": t, "encoder_hidden_states": states})
